"""Running the TFLite classifier, including the client-side preprocessing it needs.

The TFLite model is the tile classifier: float32 [1, S, S, 3] RGB in [0, 1], where S is the
tile size (``input_size``), -> the malignant probability [1, 1] of that tile. A client cuts
an image into tiles the way ``modules/image_tiles`` does (decode to RGB, scale to [0, 1],
resize to a grid of ``round(side / S)`` tiles each way with antialiased bilinear
resampling, cut; at every zoom of the model's ``tile_scales``) and averages the tiles'
logits (per scale, then over the scales); ``preprocess`` cuts the tiles with
TensorFlow's ops; docs/serving.md explains the substitutes on a device without TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from modules import image_tiles


def preprocess(
    encoded: list[bytes],
    size: int,
    max_tiles: int,
    scales: Sequence[float] = image_tiles.NATIVE_SCALES,
) -> tuple[np.ndarray, list[int]]:
    """Encoded images -> (float32 [tiles, size, size, 3] in [0, 1], tiles per image), every
    scale's tiles of an image in a row (``image_tiles.scaled_tiles``)."""
    tiles = [
        tf.concat(
            image_tiles.scaled_tiles(image_tiles.decode(e), size, max_tiles, scales), 0
        ).numpy()
        for e in encoded
    ]
    if not tiles:
        return np.zeros((0, size, size, 3), np.float32), []
    return np.concatenate(tiles), [len(t) for t in tiles]


class TFLiteClassifier:
    """A TFLite interpreter that answers one image at a time (batch 1, as on a device)."""

    def __init__(self, model_content: bytes, num_threads: int | None = None) -> None:
        self._interpreter = tf.lite.Interpreter(
            model_content=model_content, num_threads=num_threads
        )
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    @property
    def input_size(self) -> int:
        return int(self._input["shape"][1])

    def predict_one(self, image: np.ndarray) -> float:
        self._interpreter.set_tensor(
            self._input["index"], image[np.newaxis].astype(self._input["dtype"])
        )
        self._interpreter.invoke()
        return float(self._interpreter.get_tensor(self._output["index"]).reshape(-1)[0])

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Malignant probabilities [N] for float images [N, S, S, 3]."""
        return np.array([self.predict_one(image) for image in images], dtype=np.float32)
