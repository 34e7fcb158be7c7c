"""The one exact ROC AUC for numbers computed outside TFMA (TFLite parity, patient-level
AUC in the report, the BreakHis benchmark, ``histo-validate``), so they all rank the same
way; ECE and the operating point beside it, and an interval that resamples patients."""

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Mann-Whitney U over average ranks (ties count half); NaN with a single class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if not positives or not negatives:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def expected_calibration_error(
    labels: Sequence[int], probabilities: Sequence[float], bins: int = 10
) -> float:
    """Sum over equal-width probability bins of (share of images) * |mean p - fraction
    positive|: the report's definition (components/eval_report/derive.py), on raw numbers."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if not len(labels):
        return float("nan")
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            gap = abs(probabilities[members].mean() - labels[members].mean())
            total += members.mean() * gap
    return float(total)


def operating_point(
    labels: Sequence[int], probabilities: Sequence[float], threshold: float
) -> dict[str, float]:
    """Sensitivity, specificity and balanced accuracy of calling p >= threshold malignant."""
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(probabilities, dtype=np.float64) >= threshold
    sensitivity = float(called[labels].mean()) if labels.any() else float("nan")
    specificity = float((~called[~labels]).mean()) if (~labels).any() else float("nan")
    return {
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": (sensitivity + specificity) / 2,
    }


BOOTSTRAP_ROUNDS = 1000  # draws of patients behind every interval (report, validate, benchmark)
MAX_DRAWS_PER_ROUND = 100  # redraws allowed per kept draw before giving up


def bootstrap_over_patients(
    patient_labels: Sequence[int],
    statistic: Callable[[np.ndarray], float],
    rounds: int = BOOTSTRAP_ROUNDS,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile interval of ``statistic`` over draws of whole patients with replacement.

    Images of one patient are not independent (one slide, one stain, one tumour), so a
    figure on a few patients is only as certain as those patients: resampling images would
    give an interval far too narrow. ``statistic`` gets how many times each patient was
    drawn; a draw it cannot score (NaN: one class only) is redrawn. ``patient_labels`` is
    each patient's class (0 or 1; anything else for a patient of both); None when a class
    has fewer than two patients (no interval says anything then), or when the statistic
    cannot score even one draw in a hundred."""
    labels = np.asarray(patient_labels)
    if (labels == 1).sum() < 2 or (labels == 0).sum() < 2:
        return None
    generator = np.random.default_rng(seed)
    uniform = np.full(len(labels), 1 / len(labels))
    values: list[float] = []
    for _ in range(MAX_DRAWS_PER_ROUND * rounds):  # a statistic NaN on every draw: no end
        value = statistic(generator.multinomial(len(labels), uniform))
        if not np.isnan(value):
            values.append(value)
            if len(values) == rounds:
                break
    else:
        return None
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def patient_bootstrap_interval(
    labels: Sequence[int],
    scores: Sequence[float],
    patients: Sequence[str],
    rounds: int = BOOTSTRAP_ROUNDS,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float] | None:
    """The AUC's interval over patients (``bootstrap_over_patients``) from each image's
    label, score and patient. Patients are drawn in the order of their ids, as the
    evaluation report draws its patient slices, so both give the same draws."""
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for index, patient in enumerate(patients):
        groups.setdefault(patient, []).append(index)
    members = [np.asarray(groups[patient]) for patient in sorted(groups)]  # as the report's
    classes = [set(labels[rows].tolist()) for rows in members]
    patient_labels = [next(iter(c)) if len(c) == 1 else -1 for c in classes]

    def auc_of(counts: np.ndarray) -> float:
        drawn = np.concatenate([np.tile(members[i], n) for i, n in enumerate(counts) if n])
        return roc_auc(labels[drawn], scores[drawn])

    return bootstrap_over_patients(patient_labels, auc_of, rounds, level, seed)
