"""The one exact ROC AUC for numbers computed outside TFMA (TFLite parity, patient-level
AUC in the report, the BreakHis benchmark), so they all rank the same way."""

from collections.abc import Sequence

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
