"""TFMA's evaluation output as plain Python: metrics per slice, plots, validation.

Only metrics configured in the EvalConfig are read (their keys carry ``example_weighted``);
the Keras metrics TFMA copies from the compiled model have the same names and would
otherwise shadow them. With a baseline, TFMA names the models "candidate" and
"baseline"; without one the candidate has no name.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.writers import eval_config_writer

SliceKey = tuple  # ((column, value), ...); () is the overall slice
CANDIDATE_NAMES = ("", "candidate")


@dataclasses.dataclass
class EvalData:
    eval_config: tfma.EvalConfig
    baseline_name: str | None
    metrics: dict[SliceKey, dict[str, Any]]  # candidate, configured metrics only
    baseline_metrics: dict[SliceKey, dict[str, Any]]
    diffs: dict[SliceKey, dict[str, float]]  # candidate - baseline
    confusion_matrices: list[dict[str, float]]  # overall slice, candidate, ascending threshold
    calibration_buckets: list[dict[str, float]]  # overall slice, candidate
    validation: Any  # tfma ValidationResult proto
    # every slice's ConfusionMatrixPlot (1000 thresholds, ascending), candidate: the
    # per-patient ones give an interval that resamples patients (derive.image_auc_interval)
    slice_confusion_matrices: dict[SliceKey, list[dict[str, float]]] = dataclasses.field(
        default_factory=dict
    )


def slice_key(proto: Any) -> SliceKey:
    """TFMA's SliceKey proto -> ((column, value as str), ...)."""
    out = []
    for single in proto.single_slice_keys:
        kind = single.WhichOneof("kind")
        value = getattr(single, kind) if kind else ""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out.append((single.column, str(value)))
    return tuple(out)


def _value(metric_value: Any) -> Any:
    kind = metric_value.WhichOneof("type")
    if kind == "double_value":
        return float(metric_value.double_value.value)
    if kind == "confusion_matrix_at_thresholds":
        return [_matrix(m) for m in metric_value.confusion_matrix_at_thresholds.matrices]
    return None


def _matrix(m: Any) -> dict[str, float]:
    return {
        "threshold": float(m.threshold),
        "tp": float(m.true_positives),
        "fp": float(m.false_positives),
        "tn": float(m.true_negatives),
        "fn": float(m.false_negatives),
        "precision": float(m.precision),
        "recall": float(m.recall),
    }


def _baseline_name(config: tfma.EvalConfig) -> str | None:
    for spec in config.model_specs:
        if spec.is_baseline:
            return spec.name
    return None


def _read_metrics(uri: str, baseline: str | None) -> tuple[dict, dict, dict]:
    candidate: dict[SliceKey, dict] = {}
    base: dict[SliceKey, dict] = {}
    diffs: dict[SliceKey, dict] = {}
    for record in tfma.load_metrics(uri):
        key = slice_key(record.slice_key)
        for kv in record.metric_keys_and_values:
            if not kv.key.HasField("example_weighted"):
                continue  # a compiled Keras metric, not one of the EvalConfig's
            value = _value(kv.value)
            if value is None:
                continue
            if kv.key.is_diff:
                diffs.setdefault(key, {})[kv.key.name] = value
            elif baseline is not None and kv.key.model_name == baseline:
                base.setdefault(key, {})[kv.key.name] = value
            elif kv.key.model_name in CANDIDATE_NAMES:
                candidate.setdefault(key, {})[kv.key.name] = value
    return candidate, base, diffs


def _read_plots(uri: str) -> tuple[dict[SliceKey, list], list]:
    """Every slice's confusion matrices (ascending threshold), the overall slice's buckets."""
    matrices: dict[SliceKey, list[dict]] = {}
    buckets: list[dict] = []
    for record in tfma.load_plots(uri):
        key = slice_key(record.slice_key)
        for kv in record.plot_keys_and_values:
            if kv.key.model_name not in CANDIDATE_NAMES:
                continue
            plot = kv.value
            if plot.confusion_matrix_at_thresholds.matrices:
                matrices[key] = sorted(
                    (_matrix(m) for m in plot.confusion_matrix_at_thresholds.matrices),
                    key=lambda m: m["threshold"],
                )
            if key == () and plot.calibration_histogram_buckets.buckets:
                buckets = [
                    {
                        "lower": b.lower_threshold_inclusive,
                        "upper": b.upper_threshold_exclusive,
                        "count": b.num_weighted_examples.value,
                        "label_sum": b.total_weighted_label.value,
                        "prediction_sum": b.total_weighted_refined_prediction.value,
                    }
                    for b in plot.calibration_histogram_buckets.buckets
                ]
    return matrices, buckets


def load(evaluation_uri: str) -> EvalData:
    """Everything the report shows from one Evaluator output directory."""
    config, _data_location, _file_format, _models = eval_config_writer.load_eval_run(evaluation_uri)
    baseline = _baseline_name(config)
    metrics, baseline_metrics, diffs = _read_metrics(evaluation_uri, baseline)
    matrices, buckets = _read_plots(evaluation_uri)
    return EvalData(
        eval_config=config,
        baseline_name=baseline,
        metrics=metrics,
        baseline_metrics=baseline_metrics,
        diffs=diffs,
        confusion_matrices=matrices.get((), []),
        calibration_buckets=buckets,
        validation=tfma.load_validation_result(evaluation_uri),
        slice_confusion_matrices=matrices,
    )


def is_number(value: Any) -> bool:
    return isinstance(value, float) and not math.isnan(value)
