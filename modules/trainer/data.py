"""Input over Transform's output: (encoded image, label) pairs, one ordered pass; and
each split's labels and patients, read without the images.

``recipe`` decodes and tiles each image itself (``modules/image_tiles``), with the same
functions the serving signatures use.
"""

import dataclasses

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


@dataclasses.dataclass(frozen=True)
class SplitIndex:
    """A split's labels and patients in ``image_dataset``'s order, read without the images."""

    labels: list[int]
    patients: list[str] | None  # None: a Transform graph that does not pass patients through

    def per_class(self) -> list[int]:
        """Images per class, for the training metadata."""
        return [self.labels.count(k) for k in range(len(features.LABEL_NAMES))]


def split_index(patterns: list[str], tf_transform_output: tft.TFTransformOutput) -> SplitIndex:
    """One pass over a split for what ``run_fn`` needs before training: each image's label
    and patient (the recipe calibrates on the eval split alone without patients)."""
    spec = tf_transform_output.transformed_feature_spec()
    keys = [features.TRANSFORMED_LABEL_KEY, features.TRANSFORMED_PATIENT_KEY]
    wanted = {key: spec[key] for key in keys if key in spec}
    has_patients = features.TRANSFORMED_PATIENT_KEY in wanted
    dataset = tf.data.TFRecordDataset(files(patterns), compression_type="GZIP")
    labels: list[int] = []
    patients: list[str] = []
    for batch in dataset.batch(256).map(lambda s: tf.io.parse_example(s, wanted)):
        labels.extend(int(v) for v in batch[features.TRANSFORMED_LABEL_KEY].numpy().reshape(-1))
        if has_patients:
            found = batch[features.TRANSFORMED_PATIENT_KEY].numpy().reshape(-1)
            patients.extend(p.decode("utf-8") for p in found)
    return SplitIndex(labels, patients if has_patients else None)
