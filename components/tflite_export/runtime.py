"""Running the TFLite classifier, including the client-side preprocessing it needs.

The TFLite model takes float32 [1, S, S, 3] RGB in [0, 1], where S is the training size
(``input_size``), and returns the malignant probability [1, 1]. A client must reproduce
Transform's preprocessing itself: decode to RGB (grey and RGBA become RGB), scale uint8 to
[0, 1], resize to S x S with antialiased bilinear resampling (aspect ratio not kept),
clip to [0, 1]. ``preprocess`` does exactly that with TensorFlow's ops; docs/serving.md
explains the substitutes on a device without TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def preprocess(encoded: list[bytes], size: int) -> np.ndarray:
    """Encoded PNG/JPEG -> float32 [N, size, size, 3] in [0, 1], as Transform does it."""
    from modules.transform.transform_module import decode_and_resize

    return decode_and_resize(tf.constant(encoded), size).numpy()


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
