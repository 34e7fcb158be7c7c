"""serving.predict's own logic without a trained model: per-file errors, batches a server
refuses, patients read from file names and the per-patient answer.

The backend here speaks the same row-format REST contract as TF Serving (``predict_image``:
one DT_STRING input, ``probability``/``class_id``/``threshold`` outputs) and scores an image
by its mean red level, so every expected answer can be computed by hand. The real model
behind the same calls is tested end to end in tests/test_predict.py.
"""

import io

import numpy as np
import pytest
from PIL import Image

from modules import features
from serving import predict, rest

THRESHOLD = 0.4


def png(red: int, side: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (red, 90, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


class RedLevelBackend:
    """Probability = mean red / 255; refuses any batch holding an image of red level 13."""

    target = "stand-in"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def signature(self) -> rest.SignatureInfo:
        string = rest.TensorInfo("DT_STRING", [-1])
        out = rest.TensorInfo("DT_FLOAT", [-1])
        outputs = {features.PROBABILITY_OUTPUT: out, features.THRESHOLD_OUTPUT: out}
        return rest.SignatureInfo(rest.SIGNATURE, {"image_bytes": string}, outputs)

    def predict(self, body: dict) -> dict:
        images = rest.decode_instances(body)
        self.batches.append(len(images))
        reds = [
            float(np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))[..., 0].mean())
            for d in images
        ]
        if 13.0 in reds:
            return {"error": "Invalid argument: cannot decode this image"}
        return {
            "predictions": [
                {
                    "probability": r / 255,
                    "class_id": int(r / 255 >= THRESHOLD),
                    "class_name": features.LABEL_NAMES[int(r / 255 >= THRESHOLD)],
                    features.THRESHOLD_OUTPUT: THRESHOLD,
                }
                for r in reds
            ]
        }


@pytest.fixture()
def files(tmp_path) -> dict[str, str]:
    """Two images of one BreakHis patient (two slides), one of another, bad files."""
    made = {
        "SOB_M_DC-14-2523AB-100-001.png": png(204),
        "SOB_M_DC-14-2523CD-100-002.png": png(51),
        "SOB_B_A-14-22549AB-100-001.png": png(25),
        "refused.png": png(13),
        "notes.png": b"patient notes, not an image\n",
        "empty.png": b"",
    }
    paths = {}
    for name, data in made.items():
        folder = tmp_path / "case-7"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


def test_every_file_gets_an_answer_or_the_reason_it_has_none(files):
    backend = RedLevelBackend()
    document = predict.predict_files(list(files.values()), backend)
    by_name = {r["file"].rsplit("/", 1)[1]: r for r in document["results"]}
    assert by_name["SOB_M_DC-14-2523AB-100-001.png"]["probability_malignant"] == pytest.approx(0.8)
    assert by_name["SOB_M_DC-14-2523AB-100-001.png"]["class_name"] == features.LABEL_NAMES[1]
    assert by_name["SOB_B_A-14-22549AB-100-001.png"]["class_name"] == features.LABEL_NAMES[0]
    assert "model refused the image" in by_name["refused.png"]["error"]
    for bad in ("notes.png", "empty.png"):
        assert "probability_malignant" not in by_name[bad] and by_name[bad]["error"]
    # One batch of the four readable images was refused as a whole, then asked file by file.
    assert backend.batches == [4, 1, 1, 1, 1]


def test_patients_come_from_breakhis_names_else_the_folder(files):
    document = predict.predict_files(list(files.values()), RedLevelBackend())
    patient = {r["file"].rsplit("/", 1)[1]: r["patient_id"] for r in document["results"]}
    assert patient["SOB_M_DC-14-2523AB-100-001.png"] == "14-2523"
    assert patient["SOB_M_DC-14-2523CD-100-002.png"] == "14-2523"  # slides of one patient
    assert patient["SOB_B_A-14-22549AB-100-001.png"] == "14-22549"
    assert patient["refused.png"] == patient["notes.png"] == "case-7"


def test_one_answer_per_patient_is_the_mean_called_at_the_models_threshold(files):
    document = predict.predict_files(list(files.values()), RedLevelBackend())
    patients = {p["patient_id"]: p for p in document["patients"]}
    two_slides = patients["14-2523"]
    assert (two_slides["images"], two_slides["answered"]) == (2, 2)
    assert two_slides["probability_malignant"] == pytest.approx((0.8 + 0.2) / 2)
    assert two_slides["threshold"] == THRESHOLD
    assert two_slides["class_name"] == features.LABEL_NAMES[1]  # 0.5 >= 0.4
    assert patients["14-22549"]["class_name"] == features.LABEL_NAMES[0]
    # A patient none of whose images could be answered is listed, with no probability.
    folder = patients["case-7"]
    assert (folder["images"], folder["answered"]) == (3, 0)
    assert "probability_malignant" not in folder


def test_a_patient_named_on_the_command_line_takes_every_file(files):
    document = predict.predict_files(list(files.values()), RedLevelBackend(), patient="P1")
    [only] = document["patients"]
    assert only["patient_id"] == "P1" and (only["images"], only["answered"]) == (6, 3)
    assert only["probability_malignant"] == pytest.approx((0.8 + 0.2 + 25 / 255) / 3)


def test_a_model_without_a_probability_output_is_refused_before_any_file_is_sent(files):
    backend = RedLevelBackend()
    info = backend.signature()
    del info.outputs[features.PROBABILITY_OUTPUT]
    backend.signature = lambda: info
    with pytest.raises(rest.SignatureMismatchError, match="probability"):
        predict.predict_files(list(files.values()), backend)
    assert backend.batches == []
