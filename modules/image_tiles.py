"""One image -> the tiles the classifier sees: native-resolution tiles, and their views.

Pathologists read a slide image at the resolution it was taken at; squeezing a 700x460
BreakHis image into one 224-px square throws most of that away (measured in
``benchmarks/breakhis_quality.py``). So the model scores square tiles cut at (about) the
native scale and averages their logits. The same functions run in the Trainer's input
pipeline, in the exported serving signatures and in the benchmark, so training, evaluation
and ``predict`` see exactly the same pixels.

- ``decode``: encoded bytes -> float RGB in [0, 1] (any format TensorFlow decodes);
- ``tile_grid``: rows x columns of tiles for an image, ``round(side / tile_size)`` each way
  (at least 1), shrunk evenly when it would exceed ``max_tiles``;
- ``to_tiles``: the image resized to exactly that grid (a rescale of at most ~25%) and cut;
- ``views``: test-time views of each tile (identity, mirror, quarter turn): tissue has no
  orientation, and averaging over them steadies the score.
- ``zoom`` (tile_grid, to_tiles, tiles_at): the grid of the image magnified ``zoom``
  times, so each tile covers ``tile_size / zoom`` native pixels and the nuclei fill more of
  the backbone's receptive field (as at a higher magnification);
- ``scales`` (``scaled_views``; the Trainer's ``tile_scales``): the zooms an image is read
  at. Its score is the mean over scales of the mean over that scale's tiles and views, so
  each scale weighs the same however many tiles it has. Each scale's tile cap is
  ``max_tiles`` grown with its area (``scale_cap``), so it still only stops unusually large
  images. (1.0 alone: native tiles only; the quality benchmark measures the others.)
"""

import math
from collections.abc import Sequence

import tensorflow as tf

VIEWS = 3  # identity, left-right mirror, quarter turn
NATIVE_SCALES = (1.0,)  # what models without a recorded ``tile_scales`` were trained on


def decode(image_bytes: tf.Tensor) -> tf.Tensor:
    """Scalar encoded image -> float32 [H, W, 3] in [0, 1]."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.image.convert_image_dtype(image, tf.float32)


def tile_grid(
    height: tf.Tensor, width: tf.Tensor, tile_size: int, max_tiles: int, zoom: float = 1.0
) -> tuple:
    """(rows, cols) int32 tensors: native-scale tiles (``zoom`` times magnified), at most
    ``max_tiles`` of them."""
    size = tf.constant(float(tile_size))
    h, w = tf.cast(height, tf.float32) * zoom, tf.cast(width, tf.float32) * zoom
    # Shrink factor so that rows * cols stays within max_tiles (1.0 for ordinary images).
    shrink = tf.maximum(1.0, tf.sqrt((h / size) * (w / size) / float(max_tiles)))
    rows = tf.maximum(1, tf.cast(tf.round(h / size / shrink), tf.int32))
    cols = tf.maximum(1, tf.cast(tf.round(w / size / shrink), tf.int32))
    # Rounding may still overshoot by a row or column: drop from the longer side.
    over = rows * cols > max_tiles
    rows = tf.where(over & (rows >= cols), tf.maximum(1, max_tiles // cols), rows)
    cols = tf.where(rows * cols > max_tiles, tf.maximum(1, max_tiles // rows), cols)
    return rows, cols


def to_tiles(image: tf.Tensor, tile_size: int, max_tiles: int, zoom: float = 1.0) -> tf.Tensor:
    """Float [H, W, 3] -> float32 [n, tile_size, tile_size, 3] in [0, 1], row-major."""
    shape = tf.shape(image)
    rows, cols = tile_grid(shape[0], shape[1], tile_size, max_tiles, zoom)
    resized = tf.image.resize(image, [rows * tile_size, cols * tile_size], antialias=True)
    resized = tf.clip_by_value(resized, 0.0, 1.0)
    grid = tf.reshape(resized, [rows, tile_size, cols, tile_size, 3])
    return tf.reshape(tf.transpose(grid, [0, 2, 1, 3, 4]), [-1, tile_size, tile_size, 3])


def views(tiles: tf.Tensor) -> tf.Tensor:
    """[n, S, S, 3] -> [VIEWS * n, S, S, 3]: each tile as is, mirrored, turned a quarter."""
    return tf.concat([tiles, tf.image.flip_left_right(tiles), tf.image.rot90(tiles)], axis=0)


def image_views(image_bytes: tf.Tensor, tile_size: int, max_tiles: int) -> tf.Tensor:
    """Encoded image -> every view of every tile: what one image-level score averages over."""
    return views(to_tiles(decode(image_bytes), tile_size, max_tiles))


def parse_scales(value: str | Sequence[float]) -> tuple[float, ...]:
    """``"1.0,1.5"`` (a setting) or a sequence (a model's metadata) -> the zooms, checked."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        scales = tuple(float(part) for part in parts if str(part).strip())
    except ValueError as error:
        raise ValueError(f"tile scales must be numbers like '1.0,1.5'; got {value!r}") from error
    if not scales or any(not math.isfinite(z) or not 0.25 <= z <= 4.0 for z in scales):
        raise ValueError(f"tile scales must be zooms between 0.25 and 4; got {value!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"tile scales must not repeat; got {value!r}")
    return scales


def scale_cap(max_tiles: int, zoom: float) -> int:
    """The tile cap at ``zoom``: ``max_tiles`` grown with the magnified area."""
    return max(1, math.ceil(max_tiles * zoom**2 - 1e-9))


def tiles_at(image: tf.Tensor, tile_size: int, max_tiles: int, zoom: float) -> tuple:
    """Float [H, W, 3] -> (tiles, rows, cols) at ``zoom`` under its ``scale_cap``: the grid
    is what Grad-CAM stitches the tiles' maps back into."""
    cap = scale_cap(max_tiles, zoom)
    shape = tf.shape(image)
    rows, cols = tile_grid(shape[0], shape[1], tile_size, cap, zoom)
    return to_tiles(image, tile_size, cap, zoom), rows, cols


def scaled_tiles(
    image: tf.Tensor, tile_size: int, max_tiles: int, scales: Sequence[float]
) -> list[tf.Tensor]:
    """Float [H, W, 3] -> one [n_scale, S, S, 3] tile stack per scale."""
    return [to_tiles(image, tile_size, scale_cap(max_tiles, z), z) for z in scales]


def scaled_views(
    image_bytes: tf.Tensor, tile_size: int, max_tiles: int, scales: Sequence[float]
) -> list[tf.Tensor]:
    """Encoded image -> every view of every tile, one stack per scale (decoded once)."""
    return [views(t) for t in scaled_tiles(decode(image_bytes), tile_size, max_tiles, scales)]
