"""Loading the Trainer's Keras classifier and feeding it images the way Transform does.

Shared by the Grad-CAM and TFLite components: both need the Keras model (not the serving
signatures) and float images in [0, 1] at the training size.
"""

import os

import numpy as np
import tensorflow as tf
from tfx.utils import path_utils

from modules.trainer import export


def serving_dir(model_uri: str) -> str:
    """The SavedModel directory inside a Trainer ``Model`` artifact."""
    return path_utils.serving_model_path(model_uri)


def load_classifier(model_uri: str) -> tf.keras.Model:
    """The Keras classifier (image in [0, 1] -> malignant probability) of a Model artifact."""
    # Registers the custom ReverseChannels layer that ResNet50/VGG16 backbones contain.
    import modules.trainer.backbones  # noqa: F401

    return tf.keras.models.load_model(serving_dir(model_uri), compile=False)


def read_training_metadata(model_uri: str) -> dict:
    """training_metadata.json of the model; {} when the model was exported without it."""
    path = os.path.join(serving_dir(model_uri), export.METADATA_DIR, export.METADATA_FILE)
    if not tf.io.gfile.exists(path):
        return {}
    return export.read_metadata(serving_dir(model_uri))


def image_size(model: tf.keras.Model) -> int:
    """Square input side the classifier was built for."""
    return int(model.input_shape[1])


def decode_images(encoded: list[bytes], size: int) -> np.ndarray:
    """Encoded PNG/JPEG -> float32 [N, size, size, 3] in [0, 1], with Transform's own code."""
    from modules.transform.transform_module import decode_and_resize

    if not encoded:
        return np.zeros((0, size, size, 3), np.float32)
    return decode_and_resize(tf.constant(encoded), size).numpy()
