"""SavedModel signatures: clients send raw images; tiling and calibration travel inside.

- ``serving_default``: serialized tf.Examples holding the encoded image (TFX, TFMA, batch);
- ``predict_image``: raw encoded image bytes, what a TF Serving REST client sends as
  ``{"b64": ...}``;
- ``explain_image``: raw encoded image bytes -> what ``predict_image`` returns plus Grad-CAM
  maps over the whole image (``modules/trainer/grad_cam``, the GradCam component's math);
- ``transform_features``: serialized tf.Examples -> transformed features (for TFMA).
Both prediction signatures cut each image into native-resolution tiles and their views
(``modules/image_tiles``), average the tiles' logits, divide by the calibration temperature
and return the malignant probability, the class at the model's own operating threshold
(fitted out of fold on the training patients, ``recipe.calibrate``), its name, and the
threshold itself (so a client can call a patient's mean probability the same way).
"""

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from modules import features, image_tiles
from modules.trainer import grad_cam, recipe

METADATA_FILE = "training_metadata.json"
METADATA_DIR = "assets.extra"  # TF Serving's place for files that travel with a model
# The bare Keras tile classifier beside the SavedModel in the Trainer's Model artifact
# (not pushed): the report, Grad-CAM and TFLite components load it in ~2 s instead of
# rebuilding Keras objects from the SavedModel's traced functions (~9 s each).
KERAS_DIR, KERAS_FILE = "Format-Keras", "classifier.keras"


def keras_path(serving_model_dir: str) -> str:
    """<model artifact>/Format-Keras/classifier.keras for <model artifact>/Format-Serving."""
    artifact = os.path.dirname(serving_model_dir.rstrip("/"))
    return os.path.join(artifact, KERAS_DIR, KERAS_FILE)


def operating_threshold(metadata: dict[str, Any]) -> float:
    """The model's own threshold from its training metadata (0.5 for models without one)."""
    return float(metadata.get("calibration", {}).get("threshold", recipe.DEFAULT_THRESHOLD))


def build_signatures(
    model: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    tile_size: int,
    max_tiles: int,
    calibration: recipe.Calibration,
    conv_hint: str | None = None,
    scales: Sequence[float] = image_tiles.NATIVE_SCALES,
) -> dict:
    """The four signatures, sharing one Transform layer tracked by the model (three for a
    model without a conv feature map, which Grad-CAM cannot explain)."""
    try:
        cam: grad_cam.CamNetwork | None = grad_cam.cam_network(model, conv_hint)
    except ValueError as error:
        logging.warning("no explain_image signature: %s", error)
        cam = None
    model.tft_layer = tf_transform_output.transform_features_layer()
    model.tile_logit = recipe.logit_model(model)
    if cam is not None:
        model.grad_cam_outputs = cam.two_outputs
    raw_spec = tf_transform_output.raw_feature_spec()
    image_spec = {features.IMAGE_KEY: raw_spec[features.IMAGE_KEY]}
    threshold = tf.constant(calibration.threshold, tf.float32)
    names = tf.constant(list(features.LABEL_NAMES))

    def image_logit(image_bytes: tf.Tensor) -> tf.Tensor:
        return recipe.image_logit(model.tile_logit, image_bytes, tile_size, max_tiles, scales)

    def predict_from_raw(raw: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        encoded = tf.reshape(model.tft_layer(raw)[features.TRANSFORMED_IMAGE_KEY], [-1])
        logits = tf.map_fn(image_logit, encoded, fn_output_signature=tf.float32)
        probability = recipe.probability(logits, calibration)
        class_id = tf.cast(probability >= threshold, tf.int64)
        return {
            features.PROBABILITY_OUTPUT: probability,
            features.CLASS_OUTPUT: class_id,
            features.CLASS_NAME_OUTPUT: tf.gather(names, class_id),
            features.THRESHOLD_OUTPUT: tf.fill(tf.shape(probability), threshold),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_from_raw(tf.io.parse_example(serialized, image_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        return predict_from_raw({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})

    def heatmaps(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Each scale's maps cover the whole image: averaged, as the scales' logits are."""
        image = image_tiles.decode(image_bytes)
        per_scale = [
            grad_cam.image_heatmaps(
                cam, *image_tiles.tiles_at(image, tile_size, max_tiles, zoom), features.HEATMAP_SIDE
            )
            for zoom in scales
        ]
        malignant, benign = zip(*per_scale, strict=True)
        return tf.add_n(malignant) / len(scales), tf.add_n(benign) / len(scales)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def explain_image_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        answer = predict_from_raw({features.IMAGE_KEY: tf.reshape(image_bytes, [-1, 1])})
        side = features.HEATMAP_SIDE
        maps = tf.TensorSpec([side, side], tf.float32)
        malignant, benign = tf.map_fn(heatmaps, image_bytes, fn_output_signature=(maps, maps))
        return {
            **answer,
            features.HEATMAP_OUTPUT: malignant,
            features.BENIGN_HEATMAP_OUTPUT: benign,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def transform_features(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        return model.tft_layer(tf.io.parse_example(serialized, raw_spec))

    signatures = {
        "serving_default": serve_examples.get_concrete_function(),
        "predict_image": serve_image_bytes.get_concrete_function(),
        "transform_features": transform_features.get_concrete_function(),
    }
    if cam is not None:
        signatures["explain_image"] = explain_image_bytes.get_concrete_function()
    return signatures


def export_model(
    model: tf.keras.Model,
    tf_transform_output: tft.TFTransformOutput,
    serving_model_dir: str,
    metadata: dict[str, Any],
    calibration: recipe.Calibration,
) -> None:
    """Saves the SavedModel with its signatures and the training metadata beside it, and
    the bare Keras classifier next to the SavedModel (``keras_path``).

    The SavedModel holds the signatures, the classifier's variables and the Transform
    graph, not the Keras object graph: Keras' own SavedModel also traces every layer's
    call (about 700 functions for MobileNetV2) that every ``tf.saved_model.load`` then
    rebuilds — 4.5 s against 1.5 s for each load by TFMA, TF Serving or ``predict``.
    Keras reads the ``.keras`` file instead."""
    save_keras(model, keras_path(serving_model_dir))
    signatures = build_signatures(
        model,
        tf_transform_output,
        int(metadata["tile_size"]),
        int(metadata["max_tiles"]),
        calibration,
        metadata.get("last_conv_layer"),
        recipe.scales_of(metadata),
    )
    tf.saved_model.save(serving_module(model), serving_model_dir, signatures=signatures)
    extra = os.path.join(serving_model_dir, METADATA_DIR)
    tf.io.gfile.makedirs(extra)
    with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
        f.write(json.dumps(metadata, indent=2, sort_keys=True, default=str))


def serving_module(model: tf.keras.Model) -> tf.Module:
    """What the signatures capture, tracked without Keras' per-layer traces."""
    module = tf.Module()
    module.classifier_variables = list(model.variables)
    module.tft_layer = model.tft_layer
    return module


def save_keras(model: tf.keras.Model, target: str) -> None:
    """The tile classifier alone, as one .keras file (written locally, then copied)."""
    bare = tf.keras.Model(model.inputs, model.outputs, name=model.name)
    with tempfile.TemporaryDirectory() as folder:
        local = os.path.join(folder, KERAS_FILE)
        bare.save(local)
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(local, target, overwrite=True)


def read_metadata(saved_model_dir: str) -> dict[str, Any]:
    with tf.io.gfile.GFile(os.path.join(saved_model_dir, METADATA_DIR, METADATA_FILE)) as f:
        return json.loads(f.read())
