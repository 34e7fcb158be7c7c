"""One image conversion: a file gives the model the same pixels whether it arrives through
preprocessing (training, evaluation) or through ``serving.images`` (predict, the web page).
Both hand the model encoded bytes; the model decodes them with ``image_tiles.decode``."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from modules import image_tiles
from preprocessing.image_io import load_image
from serving import images

SIZE = (64, 48)  # width, height


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _rgb(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8))


def _cases() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    grey16 = rng.integers(0, 65536, SIZE[::-1], dtype=np.uint16)
    grey32 = rng.integers(0, 10**6, SIZE[::-1], dtype=np.int32)
    floats = rng.random(SIZE[::-1], dtype=np.float32) * 3.0  # a float TIFF above 1.0
    rgba = _rgb().convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, SIZE[::-1], dtype=np.uint8)))
    palette = _rgb().convert("P", palette=Image.Palette.ADAPTIVE)
    rgb16 = rng.integers(0, 65536, (SIZE[1], SIZE[0], 3), dtype=np.uint16)
    return {
        "RGB PNG": _saved(_rgb(), "PNG"),
        "RGB JPEG": _saved(_rgb(), "JPEG"),
        "grey PNG": _saved(_rgb().convert("L"), "PNG"),
        "grey + alpha PNG": _saved(rgba.convert("LA"), "PNG"),
        "RGBA PNG": _saved(rgba, "PNG"),
        "palette PNG": _saved(palette, "PNG"),
        "palette PNG, transparent": _saved(palette, "PNG", transparency=0),
        "16-bit grey PNG": _saved(Image.fromarray(grey16), "PNG"),
        "16-bit RGB PNG": tf.io.encode_png(tf.constant(rgb16)).numpy(),
        "32-bit grey TIFF": _saved(Image.fromarray(grey32, mode="I"), "TIFF"),
        "float TIFF": _saved(Image.fromarray(floats, mode="F"), "TIFF"),
        "CMYK JPEG": _saved(_rgb().convert("CMYK"), "JPEG"),
        "RGB TIFF": _saved(_rgb(), "TIFF"),
        "BMP": _saved(_rgb(), "BMP"),
        "GIF": _saved(palette, "GIF"),
        "WebP, lossless": _saved(_rgb(), "WEBP", lossless=True),
    }


CASES = _cases()


def model_pixels(encoded: bytes) -> np.ndarray:
    return image_tiles.decode(tf.constant(encoded)).numpy()


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_and_serving_give_the_model_the_same_pixels(name):
    data = CASES[name]
    trained_on = model_pixels(load_image(data).encoded)
    served = model_pixels(images.prepare_bytes(name, data).data)
    assert trained_on.shape == (SIZE[1], SIZE[0], 3)
    np.testing.assert_array_equal(trained_on, served)


def test_wide_ranges_are_rescaled_into_8_bits_not_clipped():
    # A float TIFF reaching 3.0 and a 32-bit grey image: clipping would make most of
    # either saturate at white; rescaling keeps its contrast.
    for name in ("float TIFF", "32-bit grey TIFF"):
        pixels = model_pixels(images.prepare_bytes(name, CASES[name]).data)
        assert (pixels >= 1.0).mean() < 0.05 and pixels.std() > 0.1, name
