"""The numbers the quality benchmark reports, and serving's per-patient answer, on cases
worked out by hand."""

import numpy as np
import pytest

from modules.metrics import (
    bootstrap_over_patients,
    expected_calibration_error,
    operating_point,
    patient_bootstrap_interval,
    roc_auc,
)
from serving import predict


def test_ece_is_zero_when_every_bin_is_calibrated_and_weighs_bins_by_their_share():
    labels = [0, 1, 0, 1, 1, 1]
    assert expected_calibration_error(labels, [0.5, 0.5, 0.5, 0.5, 0.95, 0.95], 10) == (
        pytest.approx(4 / 6 * 0.0 + 2 / 6 * 0.05)
    )
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0  # p = 1 falls in the top bin
    assert np.isnan(expected_calibration_error([], []))


def test_operating_point_counts_at_the_threshold_inclusive():
    point = operating_point([1, 1, 0, 0], [0.7, 0.4, 0.4, 0.1], 0.4)
    assert point == {"sensitivity": 1.0, "specificity": 0.5, "balanced_accuracy": 0.75}
    assert roc_auc([1, 1, 0, 0], [0.7, 0.4, 0.4, 0.1]) == pytest.approx(0.875)


def test_patient_answers_average_answered_images_at_the_models_threshold():
    results = [
        {"patient_id": "A", "probability_malignant": 0.2, "threshold": 0.4},
        {"patient_id": "A", "probability_malignant": 0.7, "threshold": 0.4},
        {"patient_id": "A", "error": "not an image"},
        {"patient_id": "B", "probability_malignant": 0.3, "threshold": 0.4},
    ]
    a, b = predict.patient_answers(results)
    assert a == {
        "patient_id": "A",
        "images": 3,
        "answered": 2,
        "probability_malignant": pytest.approx(0.45),
        "threshold": 0.4,
        "class_name": "malignant",
    }
    assert b["class_name"] == "benign" and b["answered"] == 1


@pytest.mark.parametrize(
    ("path", "patient"),
    [
        ("/x/benign/SOB_B_A-14-22549AB-100-001.jpg", "14-22549"),
        ("/x/SOB_M_DC_14-2523C_3.png", "14-2523"),
        ("/scans/patient-7/slide 3.png", "patient-7"),
    ],
)
def test_a_files_patient_comes_from_its_name_else_its_folder(path, patient):
    assert predict.patient_of_file(path) == patient


def test_the_auc_interval_resamples_patients_not_their_images():
    """Two benign and two malignant patients, 30 images each, every patient's images close
    together: which patients a draw holds decides its AUC (benign 0.6 against malignant
    0.4 ranks them all wrong, benign 0.2 against malignant 0.8 all right), so an interval
    over patients spans most of [0, 1]; one that treats every image as independent is
    narrow around the same point estimate, the false certainty the patients remove."""
    rng = np.random.default_rng(0)
    centres = {"benign-a": (0, 0.2), "benign-b": (0, 0.6), "mal-c": (1, 0.4), "mal-d": (1, 0.8)}
    labels, scores, patients = [], [], []
    for patient, (label, centre) in centres.items():
        labels += [label] * 30
        scores += list(centre + rng.normal(0, 0.02, 30))
        patients += [patient] * 30
    low, high = patient_bootstrap_interval(labels, scores, patients)
    assert low < 0.2 and high == 1.0
    images = patient_bootstrap_interval(labels, scores, [str(i) for i in range(120)])
    assert images[0] <= roc_auc(labels, scores) <= images[1] and images[1] - images[0] < 0.2


def test_the_interval_is_a_point_where_every_draw_agrees_and_none_with_one_patient_a_class():
    labels = [0, 0, 1, 1, 1]
    assert patient_bootstrap_interval(labels, [0.1, 0.2, 0.7, 0.8, 0.9], list("aabcd")) is None
    separated = patient_bootstrap_interval(labels, [0.1, 0.2, 0.7, 0.8, 0.9], list("abcde"))
    assert separated == (1.0, 1.0)


def test_a_statistic_that_never_scores_a_draw_gives_no_interval_instead_of_no_end():
    assert bootstrap_over_patients([0, 0, 1, 1], lambda drawn: float("nan"), rounds=10) is None
