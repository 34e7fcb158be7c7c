"""The report's content as one JSON-able dict; the HTML and report.json both come from it."""

from __future__ import annotations

import math
from typing import Any

from components.eval_report import derive
from components.eval_report.tfma_reader import EvalData
from modules import features

OVERALL_METRICS = (
    "example_count",
    "auc",
    "auc_pr",
    "accuracy",
    "precision",
    "sensitivity",
    "specificity",
    "mean_label",
    "mean_prediction",
)
SLICE_METRICS = (
    "example_count",
    "auc",
    "accuracy",
    "sensitivity",
    "specificity",
    "mean_label",
    "mean_prediction",
)
SLICE_COLUMNS = (features.MAGNIFICATION_KEY, features.SUBTYPE_KEY)


def _pick(metrics: dict[str, Any], names: tuple[str, ...], threshold: float) -> dict[str, Any]:
    """The named metrics; sensitivity and specificity at the model's own threshold."""
    picked = {name: metrics.get(name, float("nan")) for name in names}
    point = derive.at_threshold(metrics, threshold)
    for name in ("sensitivity", "specificity", "accuracy"):
        if name in picked:
            picked[name] = point[name]
    if "example_count" in picked:
        picked["example_count"] = derive.count(picked["example_count"])
    return picked


def build(
    data: EvalData,
    *,
    threshold: float,
    blessing: dict[str, Any],
    class_balance: dict[str, dict[str, int]],
    data_facts: dict[str, Any],
    model_facts: dict[str, Any],
    evaluation_uri: str,
) -> dict[str, Any]:
    overall = derive.overall(data)
    bins = derive.calibration_bins(data.calibration_buckets)
    return {
        "evaluation_uri": evaluation_uri,
        "positive_class": features.LABEL_NAMES[features.POSITIVE_LABEL],
        "blessing": blessing,
        "overall": _pick(overall, OVERALL_METRICS, threshold),
        "operating_point": derive.operating_point(overall, threshold),
        "curves": {
            "roc": derive.roc_points(data.confusion_matrices),
            "pr": derive.pr_points(data.confusion_matrices),
        },
        "calibration": {
            "bins": bins,
            "expected_calibration_error": derive.expected_calibration_error(bins),
        },
        "slices": {
            column: [
                {"value": value, **_pick(metrics, SLICE_METRICS, threshold)}
                for value, metrics in derive.slices_of(data, column)
            ]
            for column in SLICE_COLUMNS
        },
        "patients": derive.patients(data, threshold),
        "auc_interval_over_patients": derive.image_auc_interval(data),
        "operating_point_intervals_over_patients": derive.operating_point_intervals(
            data, threshold
        ),
        "class_balance": class_balance,
        "data": data_facts,
        "model": model_facts,
    }


def json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON), tuples -> lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value
