import subprocess
import sys

import tensorflow as tf

from histo_testlib import REPO
from modules import features
from preprocessing.examples import to_example
from preprocessing.image_content import ImageContent
from preprocessing.image_io import LoadedImage
from preprocessing.layouts import ImageRecord


def test_encoded_example_is_a_tf_train_example_with_every_feature():
    record = ImageRecord("/x/a.png", "malignant/a.png", 1, "14-2523", 400, "DC", "14-2523CD")
    image = LoadedImage(b"\x89PNG\r\n\x1a\n...", height=460, width=700, reencoded=False)
    content = ImageContent(0.25, 0.125, 0.5, 0.0625, "JPEG")
    parsed = tf.train.Example.FromString(to_example(record, image, content).SerializeToString())
    expected = tf.train.Example()
    for key, value in (
        (features.IMAGE_KEY, image.encoded),
        (features.PATIENT_ID_KEY, b"14-2523"),
        (features.SLIDE_ID_KEY, b"14-2523CD"),
        (features.SOURCE_KEY, b"malignant/a.png"),
        (features.SUBTYPE_KEY, b"DC"),
        (features.SOURCE_FORMAT_KEY, b"JPEG"),
    ):
        expected.features.feature[key].bytes_list.value.append(value)
    for key, number in (
        (features.LABEL_KEY, 1),
        (features.MAGNIFICATION_KEY, 400),
        (features.HEIGHT_KEY, 460),
        (features.WIDTH_KEY, 700),
    ):
        expected.features.feature[key].int64_list.value.append(number)
    for key, real in (
        (features.STAIN_HEMATOXYLIN_KEY, 0.25),
        (features.STAIN_EOSIN_KEY, 0.125),
        (features.TISSUE_FRACTION_KEY, 0.5),
        (features.SHARPNESS_KEY, 0.0625),
    ):
        expected.features.feature[key].float_list.value.append(real)
    assert parsed == expected


def test_beam_workers_encode_without_importing_tensorflow():
    code = "import sys, preprocessing.beam_job; print('tensorflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.stdout.strip() == "False", out.stderr[-2000:]
