"""Reading the split TFRecords of an Examples artifact without Beam (small per-split scans)."""

import os
from collections.abc import Iterator

import tensorflow as tf
from tfx import types
from tfx.dsl.io import fileio
from tfx.types import artifact_utils


def split_files(examples: types.Artifact) -> dict[str, list[str]]:
    """Maps each split name of an Examples artifact to its (gzipped) TFRecord files."""
    out: dict[str, list[str]] = {}
    for split in artifact_utils.decode_split_names(examples.split_names):
        split_uri = artifact_utils.get_split_uri([examples], split)
        out[split] = sorted(fileio.glob(os.path.join(split_uri, "*")))
    return out


def iter_bytes_feature(files: list[str], key: str) -> Iterator[bytes]:
    """Yields the first value of a bytes feature from every tf.Example in the files."""
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    for record in dataset.as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        values = example.features.feature[key].bytes_list.value
        yield values[0] if values else b""
