"""Numbers the report derives from TFMA's output (never from the raw predictions).

- ROC and PR points: TFMA's ConfusionMatrixPlot matrices, one point per threshold;
- reliability curve and expected calibration error (ECE): TFMA's CalibrationPlot buckets
  (10 equal-width bins; the under/overflow buckets, which hold p == 1.0, are folded into
  the end bins);
- the patient-level view: TFMA's per-patient slices. A patient's score is the mean of its
  image probabilities (TFMA's ``mean_prediction`` on that slice) and its label the slice's
  ``mean_label``; the patient is called malignant when the score reaches the decision
  threshold. Patient-level AUC ranks patients by that score (Mann-Whitney);
- the image AUC's interval over patients: TFMA's confusion matrices of each patient's slice
  (1000 thresholds) summed over draws of whole patients with replacement, each draw's AUC
  the area under the summed matrices' ROC points (``modules.metrics.bootstrap_over_patients``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from components.eval_report.tfma_reader import EvalData, SliceKey
from modules import features
from modules.metrics import BOOTSTRAP_ROUNDS, bootstrap_over_patients, roc_auc


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def count(value: float) -> int | float:
    """TFMA writes counts as floats (they may be weighted); ours are unweighted integers."""
    return int(round(value)) if value == value else value


def roc_points(matrices: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) per threshold, by increasing FPR, with the
    curve's own endpoints: (0, 0) above every score (TFMA's grid stops at 0.999, and a
    confident image may score higher) and (1, 1) below every score."""
    points = [
        (_ratio(m["fp"], m["fp"] + m["tn"]), _ratio(m["tp"], m["tp"] + m["fn"])) for m in matrices
    ]
    defined = {p for p in points if p[0] == p[0] and p[1] == p[1]}
    return sorted(defined | ({(0.0, 0.0), (1.0, 1.0)} if defined else set()))


def pr_points(matrices: list[dict[str, float]]) -> list[tuple[float, float]]:
    """(recall, precision) per threshold where precision is defined, by increasing recall."""
    points = [
        (_ratio(m["tp"], m["tp"] + m["fn"]), _ratio(m["tp"], m["tp"] + m["fp"])) for m in matrices
    ]
    return sorted(p for p in points if p[0] == p[0] and p[1] == p[1])


def calibration_bins(buckets: list[dict[str, float]]) -> list[dict[str, float]]:
    """Reliability bins: count, mean prediction and fraction malignant per [lower, upper)."""
    inner = [b for b in buckets if b["lower"] > float("-inf") and b["upper"] < float("inf")]
    if not inner:
        return []
    bins = [dict(b) for b in sorted(inner, key=lambda b: b["lower"])]
    for outer in buckets:
        if outer["lower"] == float("-inf"):
            target = bins[0]
        elif outer["upper"] == float("inf"):
            target = bins[-1]
        else:
            continue
        for field in ("count", "label_sum", "prediction_sum"):
            target[field] += outer[field]
    for b in bins:
        b["count"] = count(b["count"])
        b["mean_prediction"] = _ratio(b["prediction_sum"], b["count"])
        b["fraction_positive"] = _ratio(b["label_sum"], b["count"])
    return bins


def expected_calibration_error(bins: list[dict[str, float]]) -> float:
    """Sum over bins of (share of images) * |mean prediction - fraction malignant|."""
    total = sum(b["count"] for b in bins)
    if total <= 0:
        return float("nan")
    return sum(
        b["count"] / total * abs(b["mean_prediction"] - b["fraction_positive"])
        for b in bins
        if b["count"] > 0
    )


def at_threshold(metrics: dict[str, Any], threshold: float) -> dict[str, float]:
    """Counts, sensitivity, specificity and accuracy at ``threshold``, from TFMA's confusion
    matrices (computed on a grid that holds every model's own threshold, recipe's grid)."""
    matrices = metrics.get("confusion_matrix_at_thresholds") or []
    matrix = next((m for m in matrices if abs(m["threshold"] - threshold) < 1e-6), None)
    nan = float("nan")
    if not matrix:
        return {"sensitivity": nan, "specificity": nan, "accuracy": nan}
    return confusion_summary(*(count(matrix[k]) for k in ("tp", "fp", "tn", "fn")))


def confusion_summary(tp: int, fp: int, tn: int, fn: int) -> dict[str, float]:
    """The counts with sensitivity, specificity and accuracy (NaN where undefined)."""
    return {
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
    }


def operating_point(metrics: dict[str, Any], threshold: float) -> dict[str, float]:
    """Confusion matrix, sensitivity and specificity at the model's threshold (TFMA's counts)."""
    point = at_threshold(metrics, threshold)
    point.pop("accuracy")
    return {"threshold": threshold, **point}


def slices_of(data: EvalData, column: str) -> list[tuple[str, dict[str, Any]]]:
    """[(value, metrics)] of the single-column slices on ``column``, sorted by value."""
    found = [
        (key[0][1], metrics)
        for key, metrics in data.metrics.items()
        if len(key) == 1 and key[0][0] == column
    ]
    return sorted(found, key=lambda item: (len(item[0]), item[0]))


def patients(data: EvalData, threshold: float) -> dict[str, Any]:
    """Per-patient rows from TFMA's patient slices, and their patient-level aggregate."""
    rows = []
    for patient, metrics in slices_of(data, features.PATIENT_ID_KEY):
        mean_label = metrics.get("mean_label", float("nan"))
        score = metrics.get("mean_prediction", float("nan"))
        label = int(round(mean_label)) if mean_label == mean_label else -1
        called = int(score >= threshold) if score == score else -1
        rows.append(
            {
                "patient_id": patient,
                "images": count(metrics.get("example_count", float("nan"))),
                "mean_label": mean_label,
                "mixed_labels": 0.0 < mean_label < 1.0,
                "label": label,
                "score": score,
                "called": called,
                "image_accuracy": at_threshold(metrics, threshold)["accuracy"],
            }
        )
    known = [r for r in rows if r["label"] in (0, 1) and r["called"] in (0, 1)]
    tp = sum(r["label"] == 1 and r["called"] == 1 for r in known)
    fn = sum(r["label"] == 1 and r["called"] == 0 for r in known)
    tn = sum(r["label"] == 0 and r["called"] == 0 for r in known)
    fp = sum(r["label"] == 0 and r["called"] == 1 for r in known)
    aggregate = {
        "patients": len(rows),
        **confusion_summary(tp, fp, tn, fn),
        "auc": roc_auc([r["label"] for r in known], [r["score"] for r in known]),
    }
    return {"rows": rows, "aggregate": aggregate}


def overall(data: EvalData) -> dict[str, Any]:
    return data.metrics.get((), {})


def slice_label(key: SliceKey) -> str:
    return ", ".join(f"{c}={v}" for c, v in key) or "overall"


def area_under_roc(tp: np.ndarray, fp: np.ndarray, tn: np.ndarray, fn: np.ndarray) -> float:
    """Trapezoidal area under the ROC points of counts at ascending thresholds, with the
    curve's endpoints (as ``roc_points``); NaN without both classes."""
    positives, negatives = tp[0] + fn[0], fp[0] + tn[0]
    if positives <= 0 or negatives <= 0:
        return float("nan")
    tpr = np.concatenate([[0.0], (tp / positives)[::-1], [1.0]])
    fpr = np.concatenate([[0.0], (fp / negatives)[::-1], [1.0]])
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


COUNTS = ("tp", "fp", "tn", "fn")


def _patient_slices(data: EvalData) -> list[tuple[str, dict[str, Any], int]]:
    """(patient, TFMA's metrics of its slice, its class or -1 for both) in the order of the
    ids, as ``metrics.patient_bootstrap_interval`` (``histo-validate``) draws them, so the
    report and a validation of the same images agree draw for draw."""
    return [
        (patient, m, int(m["mean_label"]) if m.get("mean_label") in (0.0, 1.0) else -1)
        for patient, m in sorted(slices_of(data, features.PATIENT_ID_KEY), key=lambda item: item[0])
    ]


def image_auc_interval(
    data: EvalData, rounds: int = BOOTSTRAP_ROUNDS
) -> tuple[float, float] | None:
    """95% interval of the image-level AUC over draws of the evaluated patients; None when
    TFMA wrote no per-patient plots or a class has fewer than two patients."""
    slices = [
        (label, data.slice_confusion_matrices.get(((features.PATIENT_ID_KEY, patient),)))
        for patient, _, label in _patient_slices(data)
    ]
    slices = [(label, matrices) for label, matrices in slices if matrices]
    if not slices or len({len(matrices) for _, matrices in slices}) != 1:
        return None
    counts = {
        name: np.array([[m[name] for m in matrices] for _, matrices in slices]) for name in COUNTS
    }

    def auc_of(drawn: np.ndarray) -> float:
        return area_under_roc(*(drawn @ counts[name] for name in COUNTS))

    return bootstrap_over_patients([label for label, _ in slices], auc_of, rounds)


def operating_point_intervals(
    data: EvalData, threshold: float, rounds: int = BOOTSTRAP_ROUNDS
) -> dict[str, tuple[float, float] | None]:
    """95% intervals of sensitivity and specificity at ``threshold`` over draws of the
    evaluated patients, from each patient slice's TFMA counts at that threshold; None where
    a patient's counts are missing or a class has fewer than two patients."""
    slices = _patient_slices(data)
    rows = [at_threshold(m, threshold) for _, m, _ in slices]
    if not rows or any(r.get("tp") is None for r in rows):
        return {"sensitivity": None, "specificity": None}
    counts = {name: np.array([r[name] for r in rows], dtype=np.float64) for name in COUNTS}
    labels = [label for _, _, label in slices]

    def share(hit: str, miss: str):
        def of(drawn: np.ndarray) -> float:
            total = drawn @ (counts[hit] + counts[miss])
            return float(drawn @ counts[hit] / total) if total > 0 else float("nan")

        return of

    return {
        "sensitivity": bootstrap_over_patients(labels, share("tp", "fn"), rounds),
        "specificity": bootstrap_over_patients(labels, share("tn", "fp"), rounds),
    }
