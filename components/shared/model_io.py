"""Loading the Trainer's Keras classifier and feeding it images the way Transform does.

Shared by the Grad-CAM, TFLite and report components: they need the Keras tile classifier
(not the serving signatures), images cut into its tiles and the served image probability.
"""

import dataclasses
import functools
import os
import tempfile

import numpy as np
import tensorflow as tf
from tfx.utils import path_utils

from modules import image_tiles
from modules.trainer import export, recipe


def serving_dir(model_uri: str) -> str:
    """The SavedModel directory inside a Trainer ``Model`` artifact."""
    return path_utils.serving_model_path(model_uri)


def load_classifier(model_uri: str) -> tf.keras.Model:
    """The Keras classifier (tile in [0, 1] -> malignant probability) of a Model artifact:
    its .keras file when the Trainer wrote one, else rebuilt from a Keras SavedModel
    (models exported before the .keras file existed).

    One load per process and file version: locally, Grad-CAM and TFLiteExport run in the
    same process on the same model (3 s each). Callers only read the model."""
    keras_file = export.keras_path(serving_dir(model_uri))
    stamp = tf.io.gfile.stat(keras_file).mtime_nsec if tf.io.gfile.exists(keras_file) else 0
    return _load_classifier(model_uri, stamp)


@functools.lru_cache(maxsize=2)
def _load_classifier(model_uri: str, keras_file_stamp: int) -> tf.keras.Model:
    del keras_file_stamp  # part of the cache key only
    # Registers the custom layers that some backbones contain (ReverseChannels, ...).
    import modules.trainer.backbones  # noqa: F401

    keras_file = export.keras_path(serving_dir(model_uri))
    if tf.io.gfile.exists(keras_file):
        with tempfile.TemporaryDirectory() as folder:  # Keras reads .keras files locally
            local = os.path.join(folder, export.KERAS_FILE)
            tf.io.gfile.copy(keras_file, local)
            return tf.keras.models.load_model(local, compile=False)
    try:
        return tf.keras.models.load_model(serving_dir(model_uri), compile=False)
    except (ValueError, OSError) as error:
        raise ValueError(
            f"{model_uri}: no {export.KERAS_DIR}/{export.KERAS_FILE} and its SavedModel is "
            f"not a Keras one ({error})"
        ) from error


def read_training_metadata(model_uri: str) -> dict:
    """training_metadata.json of the model; {} when the model was exported without it."""
    path = os.path.join(serving_dir(model_uri), export.METADATA_DIR, export.METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    return export.read_metadata(serving_dir(model_uri))


def tile_size(model: tf.keras.Model) -> int:
    """Square tile side the classifier was built for."""
    return int(model.input_shape[1])


@dataclasses.dataclass
class TiledImage:
    """An image as the classifier sees it: its tiles, and the grid they came from."""

    tiles: np.ndarray  # float32 [rows * cols, S, S, 3] in [0, 1], row-major
    rows: int
    cols: int

    def stitch(self, per_tile: np.ndarray) -> np.ndarray:
        """[rows * cols, S, S, ...] -> [rows * S, cols * S, ...]: tiles back in place."""
        s = per_tile.shape[1]
        rest = per_tile.shape[3:]
        grid = per_tile.reshape(self.rows, self.cols, s, s, *rest)
        order = (0, 2, 1, 3, *range(4, grid.ndim))
        return grid.transpose(order).reshape(self.rows * s, self.cols * s, *rest)


def tile_image(encoded: bytes, size: int, max_tiles: int, zoom: float = 1.0) -> TiledImage:
    """Encoded image -> its tiles at ``zoom``, with the serving path's own code
    (modules/image_tiles; the tile cap grows with the zoom, as there)."""
    image = image_tiles.decode(tf.constant(encoded))
    tiles, rows, cols = image_tiles.tiles_at(image, size, max_tiles, zoom)
    return TiledImage(tiles.numpy(), int(rows), int(cols))


def tile_scales(encoded: bytes, size: int, max_tiles: int, metadata: dict) -> list[TiledImage]:
    """The image at every scale the model reads it at (``tile_scales`` in its metadata)."""
    return [tile_image(encoded, size, max_tiles, z) for z in recipe.scales_of(metadata)]


def mean_map(maps: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Per-scale maps over the same image, resized to ``shape`` and averaged (each scale
    weighs the same, as in the image's score)."""
    resized = [tf.image.resize(m[..., np.newaxis], shape).numpy()[..., 0] for m in maps]
    return np.mean(resized, axis=0).astype(np.float32)


def image_probabilities(model: tf.keras.Model, encoded: list[bytes], metadata: dict) -> list[float]:
    """The calibrated image probability ``predict_image`` serves, for each encoded image."""
    tile_logit = recipe.logit_model(model)
    calibration = recipe.calibration_of(metadata)
    size, max_tiles = tile_size(model), int(metadata.get("max_tiles", 1))
    scales = recipe.scales_of(metadata)
    return [
        float(
            recipe.probability(
                recipe.image_logit(tile_logit, tf.constant(e), size, max_tiles, scales),
                calibration,
            )
        )
        for e in encoded
    ]
