"""The report's model card: intended use, data, metrics with their uncertainty, limitations.

Model Card Toolkit does not install against this stack (it needs TFMA < 0.42), so the
card is a section of the report, from the same numbers. Intervals are 95%. The image-level
figures' (AUC, sensitivity, specificity) resample whole patients (the report's
``auc_interval_over_patients`` and ``operating_point_intervals_over_patients``, from TFMA's
per-patient counts): images of one patient are not independent, and with few patients that
is most of the uncertainty. Where those cannot be drawn (fewer than two patients of a
class), the textbook intervals, which treat images as independent, and the card says so:
Wilson's for a proportion, Hanley & McNeil's (1982) standard error for an AUC (also the
patient AUC's, whose units are the patients).
"""

from __future__ import annotations

import math
from typing import Any

Z95 = 1.959964
PATIENTS_RESAMPLED = "patients resampled"
HANLEY_MCNEIL = "Hanley & McNeil"
WILSON = "Wilson"

INTENDED_USE = (
    "Research on breast histopathology image classification (benign vs malignant H&E "
    "tissue images). Not a diagnostic device: it must not be used for diagnosis, "
    "treatment or any decision about a patient."
)


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (nan, nan) without trials."""
    if trials <= 0:
        return math.nan, math.nan
    p = successes / trials
    shrink = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / shrink
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / shrink
    return max(0.0, centre - half), min(1.0, centre + half)


def auc_interval(auc: float, positives: int, negatives: int, z: float = Z95) -> tuple[float, float]:
    """AUC +- z * Hanley & McNeil's standard error, clipped to [0, 1]; (nan, nan) where the
    formula has nothing to say (one class, or an AUC of exactly 0 or 1: its error is 0)."""
    if positives <= 0 or negatives <= 0 or auc is None or math.isnan(auc):
        return math.nan, math.nan
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    if variance <= 0:
        return math.nan, math.nan
    half = z * math.sqrt(variance)
    return max(0.0, auc - half), min(1.0, auc + half)


def interval_over_patients(
    resampled: list[float] | tuple[float, float] | None,
    textbook: tuple[float, float],
    method: str,
) -> tuple[tuple[float, float], str]:
    """The interval over patients, widened to the textbook one where that reaches further,
    and what it came from. Each misses what the other sees: the textbook interval treats
    images as independent; the patient bootstrap sees no uncertainty where no draw holds an
    error (a model right on every evaluated image gets 1.000 - 1.000), which Wilson's
    interval, counting the images, does not claim. Without patients to draw: the textbook."""
    if not resampled:
        return textbook, method
    low, high = resampled
    known = all(v == v for v in textbook)
    wider = known and (textbook[0] < low or textbook[1] > high)
    if not wider:
        return (low, high), PATIENTS_RESAMPLED
    return (min(low, textbook[0]), max(high, textbook[1])), f"{PATIENTS_RESAMPLED}, {method}"


def build(report: dict[str, Any]) -> dict[str, Any]:
    """The card's facts from the report's content (``content.build``)."""
    op = report["operating_point"]
    tp, fn, tn, fp = (int(op.get(k) or 0) for k in ("tp", "fn", "tn", "fp"))
    auc = report["overall"].get("auc")
    patients = report["patients"]["aggregate"]
    over_patients = report.get("auc_interval_over_patients")
    point = report.get("operating_point_intervals_over_patients") or {}
    metrics = [
        (
            "AUC (image)",
            auc,
            *interval_over_patients(
                over_patients, auc_interval(auc, tp + fn, tn + fp), HANLEY_MCNEIL
            ),
        ),
        (
            "sensitivity",
            op.get("sensitivity"),
            *interval_over_patients(point.get("sensitivity"), wilson_interval(tp, tp + fn), WILSON),
        ),
        (
            "specificity",
            op.get("specificity"),
            *interval_over_patients(point.get("specificity"), wilson_interval(tn, tn + fp), WILSON),
        ),
        (
            "AUC (patient)",
            patients.get("auc"),
            auc_interval(
                patients.get("auc"),
                int(patients.get("tp") or 0) + int(patients.get("fn") or 0),
                int(patients.get("tn") or 0) + int(patients.get("fp") or 0),
            ),
            HANLEY_MCNEIL,
        ),
    ]
    evaluated = report["data"]["evaluated_split"]
    textbook = [n for n, _, _, method in metrics[:3] if not method.startswith(PATIENTS_RESAMPLED)]
    if not textbook:
        caveat = (
            "the image-level intervals draw whole patients, so they show how much these "
            f"{patients.get('patients')} patients can tell, not how the model does on others"
        )
    else:
        caveat = (
            f"the intervals of {', '.join(textbook)} count images as independent, and images "
            "of one patient are not, so with few patients the real uncertainty is wider"
        )
    limitations = [
        f"Evaluated on {tp + fn + tn + fp} images of {patients.get('patients')} patients "
        f"(split '{evaluated}'); {caveat}.",
        "Trained and evaluated on the data of this run only (one staining protocol, scanner "
        "and magnification mix): expect lower performance on other labs' slides; the drift "
        "gate compares new data with the data behind the serving model.",
        "The patient-level figure averages a patient's image probabilities; it is not a "
        "slide-level or clinical diagnosis.",
    ]
    return {
        "intended_use": INTENDED_USE,
        "train_images_per_class": report["model"].get("train_images_per_class", {}),
        "refit_images_per_class": report["model"].get("refit_images_per_class", {}),
        "calibration_fitted_on": report["model"].get("calibration_fitted_on", ""),
        "class_balance": report["class_balance"],
        "metrics": [
            {"name": n, "value": v, "low": low, "high": high, "method": method}
            for n, v, (low, high), method in metrics
        ],
        "limitations": limitations,
    }
