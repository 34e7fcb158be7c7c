"""Facts around the metrics: class balance per split, data span, model lineage, blessing."""

from __future__ import annotations

import json
import re
from typing import Any

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.types import artifact_utils

from components.eval_report import derive
from components.eval_report.tfma_reader import EvalData, slice_key
from modules import features


def class_balance(statistics: types.Artifact) -> dict[str, dict[str, int]]:
    """{split: {"benign": n, "malignant": n, "total": n}} from StatisticsGen's label stats.

    The label is an int 0/1 (the schema and the anomalies gate guarantee it), so TFDV's
    ``num_zeros`` is the benign count and the rest of the non-missing values are malignant.
    """
    out: dict[str, dict[str, int]] = {}
    for split in artifact_utils.decode_split_names(statistics.split_names):
        stats = stats_artifact_utils.load_statistics(statistics, split).proto()
        dataset = stats.datasets[0]
        for feature in dataset.features:
            if list(feature.path.step) == [features.LABEL_KEY]:
                present = int(feature.num_stats.common_stats.num_non_missing)
                benign = int(feature.num_stats.num_zeros)
                names = features.LABEL_NAMES
                out[split] = {names[0]: benign, names[1]: present - benign, "total": present}
    return out


def _int_fact(artifact: types.Artifact, name: str) -> int | None:
    """ExampleGen records span/version as custom properties (TFX 1.15), else as properties."""
    if artifact.has_custom_property(name):
        return artifact.get_int_custom_property(name)
    return getattr(artifact, name, None) if name in artifact.PROPERTIES else None


def data_facts(examples: types.Artifact, blessing_split: str) -> dict[str, Any]:
    return {
        "span": _int_fact(examples, "span"),
        "version": _int_fact(examples, "version"),
        "examples_uri": examples.uri,
        "evaluated_split": blessing_split,
    }


def model_facts(model: types.Artifact, metadata: dict[str, Any]) -> dict[str, Any]:
    """Lineage: what was trained, from what, with which settings, and how training went."""
    history = metadata.get("history", {})
    last_epoch = {
        phase: {k: round(v[-1], 4) for k, v in values.items() if v}
        for phase, values in history.items()
    }
    return {
        "model_uri": model.uri,
        "model_artifact_id": model.id,
        "backbone": metadata.get("backbone", "unknown"),
        "weights_source": metadata.get("weights_source", "unknown"),
        "hyperparameters": metadata.get("hyperparameters", {}),
        "train_images_per_class": metadata.get("train_images_per_class", {}),
        # The head's refit (HISTO_HEAD_REFIT) learned from the eval split's images too.
        "refit_images_per_class": (
            metadata.get("eval_images_per_class", {}) if "head_refit" in history else {}
        ),
        # Where the temperature and threshold were fitted (recipe.calibrate's own words).
        "calibration_fitted_on": metadata.get("calibration", {}).get("fitted_on", ""),
        "last_epoch": last_epoch,
    }


def _metric_name(config: tfma.MetricConfig) -> str:
    if config.config:
        name = json.loads("{" + config.config + "}").get("name")
        if name:
            return name
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", config.class_name).lower()


def _describe(threshold: tfma.MetricThreshold, name: str) -> list[str]:
    rules = []
    value = threshold.value_threshold
    if value.HasField("lower_bound"):
        rules.append(f"{name} >= {value.lower_bound.value:g}")
    if value.HasField("upper_bound"):
        rules.append(f"{name} <= {value.upper_bound.value:g}")
    change = threshold.change_threshold
    if change.HasField("absolute"):
        sign = ">=" if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER else "<="
        rules.append(f"{name} - baseline {name} {sign} {change.absolute.value:+.4g}")
    if change.HasField("relative"):
        rules.append(f"{name} relative change vs baseline: {change.relative.value:+.4g}")
    return rules


def failed_rules(failure: Any) -> list[str]:
    """The rules a TFMA ``ValidationFailure`` broke: the change rules when its value is the
    difference to the baseline, else the value bounds (a threshold can hold both)."""
    name = failure.metric_key.name
    broken = tfma.MetricThreshold()
    if failure.metric_key.is_diff:
        broken.change_threshold.CopyFrom(failure.metric_threshold.change_threshold)
    else:
        broken.value_threshold.CopyFrom(failure.metric_threshold.value_threshold)
    return _describe(broken, name) or _describe(failure.metric_threshold, name)


def failure_text(failure: Any) -> str:
    """One failed blessing check in words, e.g. ``auc = 0.5859, needs auc >= 0.6`` (TFMA
    leaves ``message`` empty for threshold checks)."""
    name = failure.metric_key.name
    shown = f"{name} - baseline {name}" if failure.metric_key.is_diff else name
    if failure.metric_value.HasField("double_value"):
        value = failure.metric_value.double_value.value
        shown += f" = {value:+.4g}" if failure.metric_key.is_diff else f" = {value:.4g}"
    text = f"{shown}, needs {' and '.join(failed_rules(failure))}"
    return f"{text} ({failure.message.strip()})" if failure.message.strip() else text


def thresholds(config: tfma.EvalConfig) -> list[dict[str, Any]]:
    """Every blessing rule of the EvalConfig, with the slices it applies to."""
    rules = []
    for spec in config.metrics_specs:
        for metric in spec.metrics:
            name = _metric_name(metric)
            if metric.HasField("threshold"):
                rules.append({"rules": _describe(metric.threshold, name), "slices": "all"})
            for per_slice in metric.per_slice_thresholds:
                slices = [
                    "overall" if not s.feature_keys else "per " + ", ".join(s.feature_keys)
                    for s in per_slice.slicing_specs
                ]
                rules.append(
                    {"rules": _describe(per_slice.threshold, name), "slices": ", ".join(slices)}
                )
    return rules


def blessing_facts(data: EvalData, blessed: bool) -> dict[str, Any]:
    """Blessed or not, and why: the rules, the values they saw, and every failure."""
    validation = data.validation
    failures = []
    for per_slice in validation.metric_validations_per_slice:
        where = derive.slice_label(slice_key(per_slice.slice_key))
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value
            rules = failed_rules(failure)
            failures.append(
                {
                    "slice": where,
                    "metric": failure.metric_key.name,
                    "value": value if failure.HasField("metric_value") else None,
                    "rule": "; ".join(rules),
                    "message": failure.message.strip(),
                }
            )
    overall = data.metrics.get((), {})
    baseline = data.baseline_metrics.get((), {})
    return {
        "blessed": blessed,
        "validation_ok": bool(validation.validation_ok),
        "rubber_stamp": bool(validation.rubber_stamp),
        "has_baseline": data.baseline_name is not None,
        "rules": thresholds(data.eval_config),
        "candidate_auc": overall.get("auc"),
        "baseline_auc": baseline.get("auc"),
        "auc_diff": data.diffs.get((), {}).get("auc"),
        "failures": failures,
    }
