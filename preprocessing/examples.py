"""The tf.train.Example written for each image: the single encoder of the raw schema."""

from modules import features
from preprocessing.example_proto import Example
from preprocessing.image_content import ImageContent
from preprocessing.image_io import LoadedImage
from preprocessing.layouts import ImageRecord


def to_example(record: ImageRecord, image: LoadedImage, content: ImageContent) -> Example:
    """The example as a message with tf.train.Example's wire format (TensorFlow not needed)."""
    example = Example()
    feature = example.features.feature
    for key, value in (
        (features.IMAGE_KEY, image.encoded),
        (features.PATIENT_ID_KEY, record.patient_id.encode("utf-8")),
        (features.SLIDE_ID_KEY, (record.slide_id or record.patient_id).encode("utf-8")),
        (features.SOURCE_KEY, record.source.encode("utf-8")),
        (features.SUBTYPE_KEY, record.subtype.encode("utf-8")),
        (features.SOURCE_FORMAT_KEY, content.source_format.encode("utf-8")),
    ):
        feature[key].bytes_list.value.append(value)
    for key, number in (
        (features.LABEL_KEY, record.label),
        (features.MAGNIFICATION_KEY, record.magnification),
        (features.HEIGHT_KEY, image.height),
        (features.WIDTH_KEY, image.width),
    ):
        feature[key].int64_list.value.append(number)
    for key, real in (
        (features.STAIN_HEMATOXYLIN_KEY, content.stain_hematoxylin),
        (features.STAIN_EOSIN_KEY, content.stain_eosin),
        (features.TISSUE_FRACTION_KEY, content.tissue_fraction),
        (features.SHARPNESS_KEY, content.sharpness),
    ):
        feature[key].float_list.value.append(real)
    return example
