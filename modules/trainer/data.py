"""tf.data input pipeline over Transform's output: parse, augment (train only), batch, prefetch."""

import tensorflow as tf
import tensorflow_transform as tft

from modules import features
from modules.trainer.augment import augment

AUTOTUNE = tf.data.AUTOTUNE
# Cache decoded batches in memory only when the split is small enough (bytes of float images).
CACHE_LIMIT_BYTES = 2 * 1024**3


def _files(patterns: list[str]) -> list[str]:
    return sorted(path for pattern in patterns for path in tf.io.gfile.glob(pattern))


def _parser(tf_transform_output: tft.TFTransformOutput):
    spec = tf_transform_output.transformed_feature_spec()

    def parse(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        label = tf.cast(tf.reshape(parsed.pop(features.TRANSFORMED_LABEL_KEY), [-1]), tf.float32)
        return {features.TRANSFORMED_IMAGE_KEY: parsed[features.TRANSFORMED_IMAGE_KEY]}, label

    return parse


def count_labels(patterns: list[str], tf_transform_output: tft.TFTransformOutput) -> list[int]:
    """Images per class in a split: class weights and steps per epoch come from this."""
    counts = [0] * len(features.LABEL_NAMES)
    label_spec = {
        features.TRANSFORMED_LABEL_KEY: tf_transform_output.transformed_feature_spec()[
            features.TRANSFORMED_LABEL_KEY
        ]
    }
    dataset = tf.data.TFRecordDataset(_files(patterns), compression_type="GZIP").batch(256)
    for batch in dataset:
        labels = tf.io.parse_example(batch, label_spec)[features.TRANSFORMED_LABEL_KEY]
        for label in tf.reshape(labels, [-1]).numpy():
            counts[int(label)] += 1
    return counts


def make_dataset(
    patterns: list[str],
    tf_transform_output: tft.TFTransformOutput,
    batch_size: int,
    training: bool,
    num_examples: int,
    seed: int,
) -> tf.data.Dataset:
    """Training: shuffled, augmented, repeated forever. Evaluation: one ordered pass."""
    image_size = tf_transform_output.transformed_feature_spec()[
        features.TRANSFORMED_IMAGE_KEY
    ].shape[0]
    files = _files(patterns)
    dataset = tf.data.TFRecordDataset(
        files, compression_type="GZIP", num_parallel_reads=min(len(files), 4) or None
    )
    dataset = dataset.batch(64).map(_parser(tf_transform_output), num_parallel_calls=AUTOTUNE)
    dataset = dataset.unbatch()
    if num_examples * image_size * image_size * 3 * 4 <= CACHE_LIMIT_BYTES:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(min(num_examples, 2048), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
        dataset = dataset.map(
            lambda x, y: ({k: augment(v, seed) for k, v in x.items()}, y),
            num_parallel_calls=AUTOTUNE,
        )
    return dataset.batch(batch_size, drop_remainder=False).prefetch(AUTOTUNE)
