"""The tf.train.Example written for each image: the single encoder of the raw schema."""

import tensorflow as tf

from modules import features
from preprocessing.image_io import LoadedImage
from preprocessing.layouts import ImageRecord


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def to_example(record: ImageRecord, image: LoadedImage) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                features.IMAGE_KEY: _bytes(image.encoded),
                features.LABEL_KEY: _int(record.label),
                features.PATIENT_ID_KEY: _bytes(record.patient_id.encode("utf-8")),
                features.MAGNIFICATION_KEY: _int(record.magnification),
                features.HEIGHT_KEY: _int(image.height),
                features.WIDTH_KEY: _int(image.width),
                features.SOURCE_KEY: _bytes(record.source.encode("utf-8")),
                features.SUBTYPE_KEY: _bytes(record.subtype.encode("utf-8")),
            }
        )
    )
