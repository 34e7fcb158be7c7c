"""Opening one image safely and deciding which bytes go into the example.

Bytes are kept exactly as found when they are 8-bit RGB PNG or JPEG, so nothing is lost to
re-encoding; anything else (grayscale, RGBA, palette, 16-bit, CMYK, TIFF, BMP) is converted
to an 8-bit RGB PNG so Transform's decoder sees one kind of input.
"""

import dataclasses
import io
import re
import warnings

import numpy as np
from PIL import Image

from pipeline import settings

DEFAULT_MIN_SIDE: int = settings.default("HISTO_MIN_SIDE")
DEFAULT_MAX_PIXELS: int = settings.default("HISTO_MAX_PIXELS")  # 700x460 BreakHis: 0.3 MP


class BadImageError(ValueError):
    """The file cannot become an example; the message is the reason shown in the report."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    encoded: bytes
    height: int
    width: int
    reencoded: bool
    # The decoded 8-bit RGB pixels, so the content figures need no second decode.
    pixels: Image.Image | None = dataclasses.field(default=None, compare=False, repr=False)
    source_format: str = "unknown"  # the file's own encoding (Pillow's name)


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; 16-bit and 32-bit greys are rescaled, not clipped.

    The one conversion: preprocessing stores these pixels and ``serving.images`` sends
    them, so a file gives the model the same pixels in training and in ``predict``."""
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


KEPT_FORMATS = ("PNG", "JPEG")  # encodings the model's decoder reads as they are


def sent_as_is(fmt: str | None, mode: str, bits: int = 8) -> bool:
    """8-bit RGB PNG or JPEG: bytes the model's decoder reads as they are (kept byte for
    byte); anything else goes through ``to_rgb8`` and is re-encoded as PNG."""
    return fmt in KEPT_FORMATS and mode == "RGB" and bits == 8


# The raster formats a slide tile comes in. Pillow knows ~40 more (EPS would run
# Ghostscript on a hostile file); a file in any other format is "not a recognised image".
READ_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
# What an accepted file's format can be named (the ``source_format`` feature): Pillow names a
# multi-picture JPEG "MPO". The curated schema's domain for that feature is this list.
SOURCE_FORMATS = tuple(sorted(READ_FORMATS + ("MPO",)))
_IMAGE_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
)
_OTHER_SIGNATURES = (
    (b"%PDF-", "a PDF document"),
    (b"%!PS", "a PostScript document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "gzip-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),
)
_OBJECT_REPR = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>")
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,}\b")
_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


def _plain(text: str, limit: int = 160) -> str:
    """Pillow's message without object reprs or memory addresses, on one short line."""
    text = _ADDRESS.sub("", _OBJECT_REPR.sub("the data", text))
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _signature_format(data: bytes) -> str | None:
    return next((name for magic, name in _IMAGE_SIGNATURES if data.startswith(magic)), None)


def _not_an_image_reason(data: bytes) -> str:
    """Why Pillow could not identify the bytes, from what they start with."""
    fmt = _signature_format(data)
    if fmt:  # the right magic number but nothing Pillow can parse after it
        return f"truncated or corrupt {fmt}: its header cannot be read ({len(data)} bytes)"
    for magic, what in _OTHER_SIGNATURES:
        if data.startswith(magic):
            return f"not an image: content is {what}"
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith(b"<") and b"<html" in head
    ):
        return "not an image: content starts like HTML (a web page saved under an image name?)"
    if head.startswith(b"<?xml") or head.startswith(b"<svg"):
        if b"<svg" in head:
            return "not an image: content is an SVG drawing, not a raster image"
        return "not an image: content starts like XML"
    try:
        text = data[:512].decode("utf-8")
    except UnicodeDecodeError as err:  # a character cut at byte 512 is still text
        text = data[: err.start].decode("utf-8") if err.start > 500 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return "not an image: content is plain text"
    first = " ".join(f"{b:02x}" for b in data[:8])
    return f"not a recognised image format (first bytes: {first})"


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone, without Pillow's decompression bomb check."""
    for fmt in READ_FORMATS:
        factory, accept = Image.OPEN[fmt]
        try:
            accepted = accept(data[:16]) if accept else True
            if accepted and not isinstance(accepted, str):
                with factory(io.BytesIO(data), "") as image:
                    return image.size
        except Exception:  # any failure only means "dimensions unknown"
            continue
    return None


def _bomb_reason(data: bytes, max_pixels: int, err: Exception) -> str:
    size = _header_size(data)
    if size:
        pixels = size[0] * size[1]
        limit = max_pixels if pixels > max_pixels else Image.MAX_IMAGE_PIXELS
        return f"decompression bomb: {size[0]}x{size[1]} = {pixels} pixels > limit {limit}"
    claimed = _PIL_BOMB_PIXELS.search(str(err))
    if claimed:
        return f"decompression bomb: {claimed[1]} pixels > limit {max_pixels} (dimensions unknown)"
    return f"decompression bomb: header claims more than {Image.MAX_IMAGE_PIXELS} pixels"


def _decode_failure_reason(err: Exception, fmt: str | None) -> str:
    detail = _plain(str(err)) or type(err).__name__
    what = fmt or "image"
    if isinstance(err, EOFError) or "truncat" in detail.lower():
        return f"truncated image: the {what} data ends early (decoder: {detail})"
    return f"corrupt image: the {what} data cannot be decoded (decoder: {detail})"


def load_image(
    data: bytes, min_side: int = DEFAULT_MIN_SIDE, max_pixels: int = DEFAULT_MAX_PIXELS
) -> LoadedImage:
    """Validates encoded bytes fully (header, pixel data, size); returns what to store."""
    if not data:
        raise BadImageError("zero-byte file")
    fmt = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=READ_FORMATS) as probe:
                width, height = probe.size
                fmt = probe.format
                if width * height > max_pixels:
                    raise BadImageError(
                        f"decompression bomb: {width}x{height} = {width * height} pixels "
                        f"> limit {max_pixels}"
                    )
                probe.verify()
            with Image.open(io.BytesIO(data), formats=READ_FORMATS) as image:
                image.load()  # decodes every pixel: truncated files fail here
                kept = sent_as_is(fmt, image.mode, int(image.info.get("bits", 8)))
                pixels = to_rgb8(image)  # a copy: the file closes with this block
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(_bomb_reason(data, max_pixels, err)) from None
    except Image.UnidentifiedImageError:
        raise BadImageError(_not_an_image_reason(data)) from None
    except Exception as err:  # PIL raises many types for broken files
        raise BadImageError(_decode_failure_reason(err, fmt or _signature_format(data))) from None
    if min(width, height) < min_side:
        raise BadImageError(f"too small: {width}x{height}, minimum side is {min_side}px")
    source_format = fmt or "unknown"
    if kept:
        return LoadedImage(data, height, width, False, pixels, source_format)
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG")
    return LoadedImage(buffer.getvalue(), height, width, True, pixels, source_format)
