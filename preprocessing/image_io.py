"""Opening one image safely and deciding which bytes go into the example.

Bytes are kept exactly as found when they are 8-bit RGB PNG or JPEG, so nothing is lost to
re-encoding; anything else (grayscale, RGBA, palette, 16-bit, CMYK, TIFF, BMP) is converted
to an 8-bit RGB PNG so Transform's decoder sees one kind of input.
"""

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image

DEFAULT_MIN_SIDE = 32
DEFAULT_MAX_PIXELS = 50_000_000  # a 700x460 BreakHis image is 0.3 MP; 50 MP is a bomb here


class BadImageError(ValueError):
    """The file cannot become an example; the message is the reason shown in the report."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    encoded: bytes
    height: int
    width: int
    reencoded: bool


def _to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit and 32-bit greys are rescaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))  # slide background is white
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    return image.convert("RGB")


def load_image(
    data: bytes, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Validates encoded bytes fully (header, pixel data, size); returns what to store."""
    if not data:
        raise BadImageError("zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
                fmt = probe.format
                if width * height > max_pixels:
                    raise BadImageError(
                        f"decompression bomb: {width}x{height} = {width * height} pixels "
                        f"> limit {max_pixels}"
                    )
                probe.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()  # decodes every pixel: truncated files fail here
                mode = image.mode
                bits = image.info.get("bits", 8)
                rgb = None if (fmt in ("PNG", "JPEG") and mode == "RGB") else _to_rgb8(image)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"decompression bomb: {err}") from None
    except Exception as err:  # PIL raises many types for broken files
        raise BadImageError(f"unreadable or truncated image: {type(err).__name__}: {err}") from None
    if min(width, height) < min_side:
        raise BadImageError(f"too small: {width}x{height}, minimum side is {min_side}px")
    if rgb is None and bits == 8:
        return LoadedImage(data, height, width, reencoded=False)
    buffer = io.BytesIO()
    (rgb or _to_rgb8(Image.open(io.BytesIO(data)))).save(buffer, format="PNG")
    return LoadedImage(buffer.getvalue(), height, width, reencoded=True)
