"""serving.validate: the pushed model scored on a labelled tree of unseen patients, with the
files it cannot use named, and its report written whole or not at all."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

import local_runner
from demo.generate import generate
from modules import features
from modules.metrics import expected_calibration_error, patient_bootstrap_interval, roc_auc
from serving import validate
from tf_serving_standin import TFServingStandIn


@pytest.fixture(scope="module")
def model_dir(first_run) -> str:
    return first_run["summary"]["pushed_to"]


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> str:
    """Demo patients the first run never saw (other numbers, another seed), plus a truncated
    image in one patient's folder and an image outside any class folder."""
    root = str(tmp_path_factory.mktemp("unseen"))
    generate(root, images_per_patient=3, patients_per_class=3, size=128, seed=11, first_patient=500)
    first = sorted(glob.glob(os.path.join(root, "malignant", "*", "*.png")))[0]
    with open(first, "rb") as f:
        data = f.read()
    with open(os.path.join(os.path.dirname(first), "cut.png"), "wb") as f:
        f.write(data[: len(data) // 3])
    with open(os.path.join(root, "stray.png"), "wb") as f:
        f.write(data)
    return root


@pytest.fixture(scope="module")
def report(model_dir, unseen, tmp_path_factory) -> dict:
    output = str(tmp_path_factory.mktemp("report") / "validation.json")
    code = validate.main([unseen, "--model-dir", model_dir, "--output", output])
    with open(output) as f:
        document = json.load(f)
    return {"code": code, "document": document, "output": output}


def _label_of(source: str) -> int:
    return features.LABEL_NAMES.index(source.split("/")[0])


def test_every_good_image_is_scored_and_the_figures_are_its_answers(report):
    document = report["document"]
    scored = [r for r in document["results"] if "probability_malignant" in r]
    assert len(scored) == 18  # 6 patients x 3 images; the cut file is not among them
    labels = [_label_of(r["file"]) for r in scored]
    probabilities = [r["probability_malignant"] for r in scored]
    images = document["images"]
    assert (images["count"], images["malignant"]) == (18, 9)
    assert images["auc"] == pytest.approx(roc_auc(labels, probabilities))
    assert images["ece"] == pytest.approx(expected_calibration_error(labels, probabilities))
    threshold = document["threshold"]
    assert document["threshold_source"] == "the model's"
    assert threshold == scored[0]["threshold"]
    called = np.array(probabilities) >= threshold
    positives = np.array(labels) == 1
    assert images["sensitivity"] == pytest.approx(called[positives].mean())
    assert images["specificity"] == pytest.approx((~called[~positives]).mean())
    patients = [r["patient_id"] for r in scored]
    interval = patient_bootstrap_interval(labels, probabilities, patients)
    assert images["auc_interval"] == pytest.approx(list(interval))


def test_each_patient_is_the_mean_of_its_images_called_at_the_models_threshold(report):
    document = report["document"]
    scored = [r for r in document["results"] if "probability_malignant" in r]
    rows = {row["patient_id"]: row for row in document["per_patient"]}
    assert len(rows) == 6 and document["patients"]["count"] == 6
    for patient, row in rows.items():
        mine = [r for r in scored if r["patient_id"] == patient]
        mean = np.mean([r["probability_malignant"] for r in mine])
        assert row["images"] == len(mine) == 3
        assert row["probability_malignant"] == pytest.approx(mean)
        label = {_label_of(r["file"]) for r in mine}
        assert row["label"] == features.LABEL_NAMES[label.pop()]
        assert row["called_right"] == (
            (mean >= document["threshold"]) == (row["label"] == "malignant")
        )
    means = [rows[p]["probability_malignant"] for p in sorted(rows)]
    patient_labels = [int(rows[p]["label"] == "malignant") for p in sorted(rows)]
    assert document["patients"]["auc"] == pytest.approx(roc_auc(patient_labels, means))


def test_over_tf_serving_the_figures_are_those_of_the_model_on_disk(
    model_dir, unseen, report, tmp_path
):
    output = str(tmp_path / "over_rest.json")
    version = os.path.basename(model_dir.rstrip("/"))
    with TFServingStandIn(model_dir, local_runner.configs.PIPELINE_NAME, version) as server:
        code = validate.main([unseen, "--url", server.url, "--output", output])
    with open(output) as f:
        over_rest = json.load(f)
    assert code == 1 and over_rest["model"].startswith("http://")
    local = report["document"]
    for level in ("images", "patients"):
        interval = over_rest[level].pop("auc_interval")
        assert interval == pytest.approx(local[level]["auc_interval"], abs=1e-6), level
        expected = {k: v for k, v in local[level].items() if k != "auc_interval"}
        assert over_rest[level] == pytest.approx(expected, abs=1e-6), level


def test_files_it_cannot_use_are_named_with_the_reason_and_the_exit_status_says_so(report):
    assert report["code"] == 1
    left_out = {item["file"]: item["error"] for item in report["document"]["left_out"]}
    assert set(left_out) == {"stray.png", next(f for f in left_out if f.endswith("cut.png"))}
    assert "label/patient unknown" in left_out["stray.png"]
    cut = next(f for f in left_out if f.endswith("cut.png"))
    assert cut.startswith("malignant/") and left_out[cut]


def test_a_failed_run_leaves_the_earlier_report_as_it_was(report, unseen, tmp_path, capsys):
    output = str(tmp_path / "validation.json")
    with open(report["output"]) as f:
        earlier = f.read()
    with open(output, "w") as f:
        f.write(earlier)
    code = validate.main([unseen, "--model-dir", str(tmp_path / "no-model"), "--output", output])
    assert code == 2
    assert "validate:" in capsys.readouterr().err
    with open(output) as f:
        assert f.read() == earlier
    assert os.listdir(tmp_path) == ["validation.json"]


def test_one_class_gives_no_auc_and_says_why(model_dir, unseen, tmp_path, capsys):
    benign = tmp_path / "benign_only"
    shutil.copytree(os.path.join(unseen, "benign"), benign / "benign")
    code = validate.main([str(benign), "--model-dir", model_dir])
    out = capsys.readouterr().out
    assert code == 0
    assert "images: 9 (0 malignant)  AUC n/a" in out
    assert "one class only (benign): no AUC" in out


def test_a_tree_without_labels_names_a_file_and_why(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.png").write_bytes(b"not an image")
    code = validate.main([str(tmp_path), "--model-dir", str(tmp_path / "unused")])
    error = capsys.readouterr().err
    assert code == 2
    assert "no labelled image found (1 files left out; e.g. scans/a.png:" in error


def test_patients_whose_images_disagree_on_the_label_are_kept_out_of_the_patient_figures():
    scored = [
        {"patient_id": "P1", "label": 0, "probability_malignant": 0.2, "subtype": "F"},
        {"patient_id": "P1", "label": 1, "probability_malignant": 0.9, "subtype": "DC"},
        {"patient_id": "P2", "label": 1, "probability_malignant": 0.7, "subtype": ""},
    ]
    rows = validate.patient_rows(scored, 0.5)
    assert rows[0] == {
        "patient_id": "P1",
        "images": 2,
        "subtypes": ["DC", "F"],
        "probability_malignant": pytest.approx(0.55),
        "mixed_labels": True,
    }
    assert rows[1]["label"] == "malignant" and rows[1]["called_right"] is True


def test_real_breakhis_crops_are_grouped_into_their_patients(breakhis_crops):
    records, left_out = validate.labelled_images(breakhis_crops, rule="breakhis")
    assert left_out == [] and len(records) == 78
    patients = {r.patient_id for r in records}
    assert len(patients) == 12  # 13 slide ids, two of them slides of one patient
    assert "14-22549" in patients and not any(p.endswith(("AB", "CD", "EF")) for p in patients)
