"""SavedModel signatures: clients send raw images; the Transform graph travels with the model.

- ``serving_default``: serialized tf.Examples holding the encoded image (TFX, TFMA, batch);
- ``predict_image``: raw encoded PNG/JPEG bytes, what a TF Serving REST client sends as
  ``{"b64": ...}``;
- ``transform_features``: serialized tf.Examples -> transformed features (for TFMA).
Both prediction signatures return the malignant probability, the class id and its name.
"""

import json
import os
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from modules import features

METADATA_FILE = "training_metadata.json"
METADATA_DIR = "assets.extra"  # TF Serving's place for files that travel with a model
DECISION_THRESHOLD = 0.5


def _outputs(probability: tf.Tensor) -> dict[str, tf.Tensor]:
    probability = tf.reshape(tf.cast(probability, tf.float32), [-1])
    class_id = tf.cast(probability >= DECISION_THRESHOLD, tf.int64)
    names = tf.constant(list(features.LABEL_NAMES))
    return {
        features.PROBABILITY_OUTPUT: probability,
        features.CLASS_OUTPUT: class_id,
        features.CLASS_NAME_OUTPUT: tf.gather(names, class_id),
    }


def build_signatures(model: tf.keras.Model, tf_transform_output: tft.TFTransformOutput) -> dict:
    """The three signatures, sharing one Transform layer tracked by the model."""
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}

    def predict_from_raw(raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        transformed = model.tft_layer(raw)
        return _outputs(model(transformed[features.TRANSFORMED_IMAGE_KEY], training=False))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_from_raw(tf.io.parse_example(serialized, image_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_from_raw({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    return {
        "serving_default": serve_examples.get_concrete_function(),
        "predict_image": serve_image_bytes.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }


def export_model(
    model: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    serving_model_dir: str,
    metadata: dict[str, Any],
) -> None:
    """Saves the SavedModel with its signatures and the training metadata beside it."""
    signatures = build_signatures(model, tf_transform_output)
    model.save(serving_model_dir, save_format="tf", signatures=signatures)
    extra = os.path.join(serving_model_dir, METADATA_DIR)
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True, default=str))


def read_metadata(saved_model_dir: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(os.path.join(saved_model_dir, METADATA_DIR, METADATA_FILE)) as f:
        return json.loads(f.read())
