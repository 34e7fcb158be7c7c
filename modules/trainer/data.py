"""Input over Transform's output: (encoded image, label) pairs, one ordered pass.

``recipe`` decodes and tiles each image itself (``modules/image_tiles``), with the same
functions the serving signatures use.
"""

import tensorflow as tf
import tensorflow_transform as tft

from modules import features


def files(patterns: list[str]) -> list[str]:
    return sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))


def _parser(tf_transform_output: tft.TFTransformOutput):
    spec = tf_transform_output.transformed_feature_spec()
    wanted = {k: spec[k] for k in (features.TRANSFORMED_IMAGE_KEY, features.TRANSFORMED_LABEL_KEY)}

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized, wanted)
        image = tf.reshape(parsed[features.TRANSFORMED_IMAGE_KEY], [])
        return image, tf.reshape(parsed[features.TRANSFORMED_LABEL_KEY], [])

    return parse


def image_dataset(
    patterns: list[str], tf_transform_output: tft.TFTransformOutput
) -> tf.data.Dataset:
    """Every (encoded image, int64 label) of a split, in file order."""
    dataset = tf.data.TFRecordDataset(files(patterns), compression_type="GZIP")
    return dataset.map(_parser(tf_transform_output), num_parallel_calls=tf.data.AUTOTUNE)


def count_labels(patterns: list[str], tf_transform_output: tft.TFTransformOutput) -> list[int]:
    """Images per class in a split, for the training metadata."""
    counts = [0] * len(features.LABEL_NAMES)
    for _, label in image_dataset(patterns, tf_transform_output).batch(256):
        for value in label.numpy():
            counts[int(value)] += 1
    return counts


def patient_ids(
    patterns: list[str], tf_transform_output: tft.TFTransformOutput
) -> list[str] | None:
    """Each image's patient in ``image_dataset``'s order; None for a Transform graph that
    does not pass patients through (the recipe then calibrates on the eval split alone)."""
    spec = tf_transform_output.transformed_feature_spec()
    if features.TRANSFORMED_PATIENT_KEY not in spec:
        return None
    wanted = {features.TRANSFORMED_PATIENT_KEY: spec[features.TRANSFORMED_PATIENT_KEY]}
    dataset = tf.data.TFRecordDataset(files(patterns), compression_type="GZIP")
    parsed = dataset.batch(256).map(lambda s: tf.io.parse_example(s, wanted))
    return [
        patient.decode("utf-8")
        for batch in parsed
        for patient in batch[features.TRANSFORMED_PATIENT_KEY].numpy().reshape(-1)
    ]
