import io

import numpy as np
import pytest
from PIL import Image

from histo_testlib import png_bytes
from preprocessing.image_io import BadImageError, load_image


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_rgb_png_and_jpeg_are_kept_byte_for_byte():
    for fmt in ("PNG", "JPEG"):
        data = png_bytes("RGB", (80, 60), fmt)
        loaded = load_image(data)
        assert loaded.encoded == data and not loaded.reencoded
        assert (loaded.height, loaded.width) == (60, 80)


@pytest.mark.parametrize(
    "mode, fmt", [("L", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG"), ("CMYK", "JPEG")]
)
def test_other_modes_become_8bit_rgb_png(mode, fmt):
    loaded = load_image(png_bytes(mode, (64, 48), fmt))
    image = decoded(loaded.encoded)
    assert loaded.reencoded and image.format == "PNG" and image.mode == "RGB"
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "PNG"), ("RGB", "JPEG"), ("L", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG")],
)
def test_the_decoded_pixels_are_the_stored_ones(mode, fmt):
    # The content figures (stains, sharpness) are read from ``pixels`` without a second
    # decode: they must be exactly what the example's encoded image decodes to.
    data = png_bytes(mode, (64, 48), fmt)
    loaded = load_image(data)
    stored = np.asarray(decoded(loaded.encoded).convert("RGB"))
    assert loaded.pixels.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded.pixels), stored)
    assert loaded.source_format == fmt


def test_16bit_grey_is_rescaled_not_clipped():
    array = np.full((40, 40), 65535, dtype=np.uint16)
    array[:20] = 32768
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    image = np.asarray(decoded(load_image(buffer.getvalue()).encoded))
    assert image[30, 0, 0] == 255 and 125 <= image[0, 0, 0] <= 130


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "zero-byte"),
        (b"not an image at all", "not an image"),
        (png_bytes("RGB", (64, 64))[:300], "truncated image"),
        (png_bytes("RGB", (20, 64)), "too small"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(BadImageError, match=reason):
        load_image(data)


def test_decompression_bomb_is_rejected_before_decoding():
    data = png_bytes("RGB", (400, 300))
    with pytest.raises(BadImageError, match="decompression bomb"):
        load_image(data, max_pixels=100_000)
