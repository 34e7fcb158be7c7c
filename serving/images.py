"""Client-side checks of image files before they are sent to the model.

The model decodes PNG/JPEG bytes itself and cuts any size into its tiles, so a
valid RGB PNG or JPEG is sent as is. Everything else is either repaired or refused:

- empty, unreadable, not an image, truncated or corrupt: refused with the reason;
- smaller than ``MIN_SIDE`` pixels on a side: refused. The model would upsample it to its
  training size (224 px by default), inventing the cell-level detail it relies on; crops
  for this model are hundreds of pixels per side;
- grayscale, 16-bit, palette, RGBA or CMYK: converted to 8-bit RGB and re-encoded as PNG
  (noted in the answer; a grayscale tile has lost its stain colours, so treat its answer
  with care);
- other formats PIL reads (TIFF, WebP, ...): re-encoded as PNG, which the model decodes.

Files are read from this machine or from an object store (``gs://``, ``s3://``), as the
preprocessing reads its input (``preprocessing/storage.py``).
"""

from __future__ import annotations

import dataclasses
import io

from PIL import Image, UnidentifiedImageError

from preprocessing import image_io, storage  # image_io: the one conversion, shared with training

MIN_SIDE = 32


class BadImageError(ValueError):
    """A file the model cannot be asked about; the message says why, for a person."""


@dataclasses.dataclass
class Prepared:
    path: str
    data: bytes  # what is sent: the original bytes or an RGB PNG
    size: tuple[int, int]  # (width, height) of the file
    notes: list[str]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def prepare(path: str, min_side: int = MIN_SIDE) -> Prepared:
    """Validated bytes for the model, or BadImageError with a reason a person understands."""
    return prepare_bytes(path, read(path), min_side)


def read(path: str) -> bytes:
    """The file's bytes, or BadImageError saying why they cannot be read."""
    try:
        return storage.read_bytes(path)
    except OSError as error:  # Beam's BeamIOError is one too
        raise BadImageError(f"cannot read file: {error.strerror or error}") from error


def prepare_bytes(name: str, data: bytes, min_side: int = MIN_SIDE) -> Prepared:
    """``prepare`` for bytes already in memory (an upload): same checks, same repairs."""
    path = name
    if not data:
        raise BadImageError("empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums
        image = Image.open(io.BytesIO(data))
        image.load()  # every pixel: catches truncated files
    except UnidentifiedImageError as error:
        raise BadImageError("not an image (no image format recognised)") from error
    except Image.DecompressionBombError as error:
        raise BadImageError(f"image too large to decode safely: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise BadImageError(f"truncated or corrupt {_format(data)} image: {error}") from error
    width, height = image.size
    if min(width, height) < min_side:
        raise BadImageError(
            f"image too small: {width}x{height} px, needs at least {min_side} px per side"
        )
    notes = []
    bits = int(image.info.get("bits", 8))
    if image_io.sent_as_is(image.format, image.mode, bits):
        return Prepared(path, data, (width, height), notes)
    if image.mode != "RGB":
        notes.append(f"converted {image.mode} to RGB")
    if image.format not in image_io.KEPT_FORMATS:
        notes.append(f"re-encoded {image.format} as PNG")
    elif bits != 8:
        notes.append(f"converted {bits}-bit to 8-bit")
    return Prepared(path, _png(image_io.to_rgb8(image)), (width, height), notes)


def _format(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "image"
