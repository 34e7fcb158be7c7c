import pytest

from preprocessing import splits


def test_split_depends_on_patient_alone():
    ratios = (0.7, 0.15, 0.15)
    first = {f"p{i}": splits.split_for_patient(f"p{i}", ratios) for i in range(200)}
    again = {f"p{i}": splits.split_for_patient(f"p{i}", ratios) for i in range(300)}
    assert all(again[p] == s for p, s in first.items())  # new patients move nobody


def test_ratios_are_respected_on_many_patients():
    ratios = splits.parse_ratios("0.6,0.2,0.2")
    counts = {"train": 0, "eval": 0, "test": 0}
    for i in range(5000):
        counts[splits.split_for_patient(f"patient-{i}", ratios)] += 1
    assert abs(counts["train"] / 5000 - 0.6) < 0.03
    assert abs(counts["test"] / 5000 - 0.2) < 0.03


def test_salt_draws_another_split():
    ratios = (0.5, 0.25, 0.25)
    a = [splits.split_for_patient(f"p{i}", ratios) for i in range(50)]
    b = [splits.split_for_patient(f"p{i}", ratios, salt="x") for i in range(50)]
    assert a != b


@pytest.mark.parametrize("text", ["0.7,0.3", "1,-1,1", "0,0,0", "a,b,c"])
def test_bad_ratios(text):
    with pytest.raises(ValueError):
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
