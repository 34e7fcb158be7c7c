from collections import Counter

import pytest

from modules import features
from preprocessing import patients, splits

RATIOS = (0.7, 0.15, 0.15)


def cohort(n_benign: int, n_malignant: int, images=lambda i: 3 + i % 5, prefix="p"):
    return {
        f"{prefix}{label}-{i}": Counter({label: images(i)})
        for label, n in ((0, n_benign), (1, n_malignant))
        for i in range(n)
    }


def per_split_classes(assignment, cohort_):
    held = {s: Counter() for s in features.SPLITS}
    for patient, split in assignment.items():
        held[split].update(cohort_[patient])
    return held


@pytest.mark.parametrize("n_benign,n_malignant", [(3, 3), (4, 9), (8, 22), (40, 60)])
def test_every_split_gets_both_classes_when_the_patients_allow(n_benign, n_malignant):
    data = cohort(n_benign, n_malignant)
    held = per_split_classes(splits.assign_splits(data, RATIOS), data)
    assert all(held[s][0] > 0 and held[s][1] > 0 for s in features.SPLITS), held


def test_two_patients_of_a_class_go_to_train_and_test_first():
    data = cohort(2, 10)
    held = per_split_classes(splits.assign_splits(data, RATIOS), data)
    assert held["train"][0] and held["test"][0] and not held["eval"][0]


def test_image_shares_follow_the_ratios_per_class_on_many_patients():
    data = cohort(300, 300)
    held = per_split_classes(splits.assign_splits(data, (0.6, 0.2, 0.2)), data)
    for label in (0, 1):
        total = sum(held[s][label] for s in features.SPLITS)
        assert abs(held["train"][label] / total - 0.6) < 0.02
        assert abs(held["test"][label] / total - 0.2) < 0.02


def test_new_patients_move_nobody():
    first_cohort = cohort(5, 8)
    first = splits.assign_splits(first_cohort, RATIOS)
    grown = {**first_cohort, **cohort(20, 20, prefix="new")}
    again = splits.assign_splits(grown, RATIOS, previous=first)
    assert all(again[p] == s for p, s in first.items())
    assert set(again) == set(grown)


def test_salt_draws_another_split():
    data = cohort(20, 20)
    assert splits.assign_splits(data, RATIOS) != splits.assign_splits(data, RATIOS, salt="x")
    assert splits.assign_splits(data, RATIOS) == splits.assign_splits(
        dict(reversed(data.items())), RATIOS
    )


def test_zero_ratio_split_stays_empty():
    data = cohort(6, 6)
    assert "eval" not in set(splits.assign_splits(data, (0.8, 0.0, 0.2)).values())


@pytest.mark.parametrize("text", ["0.7,0.3", "1,-1,1", "0,0,0", "a,b,c"])
def test_bad_ratios(text):
    with pytest.raises(ValueError, match="split ratios"):
        splits.parse_ratios(text)


def test_summary_and_missing_class_warning():
    rows = [("train", "p1", 0), ("train", "p2", 1), ("train", "p2", 1), ("eval", "p3", 1)]
    summary = splits.summarize(rows)
    assert summary["train"] == {
        "images": 3,
        "patients": 2,
        "per_class": {"benign": 1, "malignant": 2},
    }
    warnings = splits.class_warnings(summary)
    assert any("'eval' has no benign" in w for w in warnings)
    assert any("'test' has no benign and no malignant" in w for w in warnings)


@pytest.mark.parametrize(
    "slide,rule,patient",
    [
        ("14-21998AB", "breakhis", "14-21998"),
        ("14-21998EF", "breakhis", "14-21998"),
        ("14-21998", "breakhis", "14-21998"),  # idempotent
        ("10253", "breakhis", "10253"),  # IDC ids stay as they are
        ("demo-B001", "breakhis", "demo-B001"),
        ("14-21998AB", "as-is", "14-21998AB"),
        ("site3_case17_slide2", r"regex:^(site\d+_case\d+)", "site3_case17"),
        ("other", r"regex:^(site\d+_case\d+)", "other"),
    ],
)
def test_patient_rule(slide, rule, patient):
    assert patients.patient_of(slide, rule) == patient


@pytest.mark.parametrize("rule", ["numeric", "regex:(unclosed"])
def test_bad_patient_rule_is_named(rule):
    with pytest.raises(ValueError, match="patient rule"):
        patients.validate_rule(rule)
