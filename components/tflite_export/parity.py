"""The parity gate: the TFLite model may lose at most ``max_auc_loss`` AUC on the same images.

Both models see identical float inputs and both AUCs are computed by the same exact
(rank-based) formula, so the difference measures the conversion alone, not preprocessing
or metric approximations. Latency is timed the same way for both: batch 1, warm-up first.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from modules.metrics import roc_auc


@dataclasses.dataclass
class Parity:
    images: int
    positives: int
    auc_savedmodel: float
    auc_tflite: float
    auc_loss: float  # savedmodel - tflite; positive = TFLite is worse
    max_auc_loss: float
    max_abs_probability_diff: float
    parity_ok: bool
    reason: str


def check(
    savedmodel: np.ndarray, tflite: np.ndarray, labels: np.ndarray, max_auc_loss: float
) -> Parity:
    """Passes when both classes are present and AUC(tflite) >= AUC(savedmodel) - max drop."""
    labels = np.asarray(labels).astype(int)
    reference, candidate = roc_auc(labels, savedmodel), roc_auc(labels, tflite)
    drop = reference - candidate
    if np.isnan(reference) or np.isnan(candidate):
        ok, reason = False, "AUC undefined: the parity images must hold both classes"
    elif drop > max_auc_loss + 1e-12:
        ok, reason = False, f"TFLite AUC {candidate:.4f} is {drop:.4f} below {reference:.4f}"
    else:
        ok, reason = True, f"AUC loss {drop:+.4f} within {max_auc_loss}"
    diff = np.abs(np.asarray(savedmodel) - np.asarray(tflite))
    return Parity(
        images=int(len(labels)),
        positives=int(labels.sum()),
        auc_savedmodel=reference,
        auc_tflite=candidate,
        auc_loss=float(drop),
        max_auc_loss=float(max_auc_loss),
        max_abs_probability_diff=float(diff.max()) if len(diff) else float("nan"),
        parity_ok=bool(ok),
        reason=reason,
    )


def latency_ms(predict_one: Callable[[np.ndarray], object], images: np.ndarray) -> float:
    """Mean milliseconds per image, batch 1, after two warm-up calls."""
    if len(images) == 0:
        return float("nan")
    for image in images[:2]:
        predict_one(image)
    start = time.perf_counter()
    for image in images:
        predict_one(image)
    return 1000.0 * (time.perf_counter() - start) / len(images)
