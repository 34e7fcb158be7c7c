"""Transform module file: the encoded image passes through; the model cuts its own tiles.

The classifier scores native-resolution tiles of the whole image (``modules/image_tiles``),
and how many tiles an image gives depends on its size, so decoding happens in the model's
own graph: the Trainer's input pipeline and the serving signatures call the same functions,
and what Transform writes stays the size of the encoded source (decoded float pixels took
~15x the encoded bytes on disk). Transform still validates the contract (one image, one
label per example) and travels in the serving graph, so clients send raw PNG/JPEG bytes.
The patient id passes through for training only: the Trainer calibrates on out-of-fold
logits of its training patients (``recipe.calibration_folds``), each patient weighing the
same (``calibration_weights``).
"""

from typing import Any

import tensorflow as tf

from modules import features


def preprocessing_fn(
    inputs: dict[str, tf.Tensor], custom_config: dict[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """tf.Transform entry point: [batch, 1] image bytes, labels, patients -> [batch] of each."""
    del custom_config  # the tile size and count are the Trainer's settings
    outputs = {features.TRANSFORMED_IMAGE_KEY: tf.reshape(inputs[features.IMAGE_KEY], [-1])}
    if features.LABEL_KEY in inputs:  # absent at serving time
        outputs[features.TRANSFORMED_LABEL_KEY] = tf.reshape(inputs[features.LABEL_KEY], [-1])
    if features.PATIENT_ID_KEY in inputs:  # absent at serving time
        patient = inputs[features.PATIENT_ID_KEY]
        outputs[features.TRANSFORMED_PATIENT_KEY] = tf.reshape(patient, [-1])
    return outputs
