"""What a person wants after a run: the evaluation metrics, the blessing and the push.

Read from ML Metadata (the same record TFX keeps), not from guessed paths, so the answer
is right for a cached rerun too.
"""

import json
import os
from typing import Any

import ml_metadata as mlmd
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx.dsl.io import fileio

from components.eval_report import sources
from modules import features


def _latest(store: mlmd.MetadataStore, type_name: str) -> metadata_store_pb2.Artifact | None:
    artifacts = [
        a
        for a in store.get_artifacts_by_type(type_name)
        if a.state == metadata_store_pb2.Artifact.LIVE
    ]
    return max(artifacts, key=lambda a: a.id) if artifacts else None


def _prop(artifact: metadata_store_pb2.Artifact, name: str) -> Any:
    value = artifact.custom_properties.get(name)
    if value is None:
        return None
    return value.string_value or value.int_value


def overall_metrics(evaluation_uri: str) -> dict[str, float]:
    """Overall-slice metrics of the candidate model as TFMA wrote them."""
    result = tfma.load_metrics(evaluation_uri)
    for record in result:
        if not record.slice_key.single_slice_keys:
            out = {}
            for kv in record.metric_keys_and_values:
                if kv.key.model_name == "candidate" or not kv.key.model_name:
                    if kv.value.HasField("double_value") and not kv.key.is_diff:
                        out[kv.key.name] = round(kv.value.double_value.value, 4)
            return out
    return {}


def summarize(connection_config: metadata_store_pb2.ConnectionConfig) -> dict[str, Any]:
    store = mlmd.MetadataStore(connection_config)
    summary: dict[str, Any] = {}
    evaluation = _latest(store, "ModelEvaluation")
    if evaluation is not None:
        summary["evaluation_uri"] = evaluation.uri
        summary["metrics"] = overall_metrics(evaluation.uri)
        validation = tfma.load_validation_result(evaluation.uri)
        summary["blessed"] = bool(validation.validation_ok)
        summary["failed_checks"] = [
            sources.failure_text(f)
            for per_slice in validation.metric_validations_per_slice
            for f in per_slice.failures
        ]
    pushed = _latest(store, "PushedModel")
    if pushed is not None:
        summary["pushed"] = bool(_prop(pushed, "pushed"))
        summary["pushed_to"] = _prop(pushed, "pushed_destination")
    pushes = [a for a in store.get_artifacts_by_type("PushedModel") if _prop(a, "pushed")]
    if pushes:
        summary["serving"] = _prop(max(pushes, key=lambda a: a.id), "pushed_destination")
    report = _latest(store, "histopath.EvaluationReport")
    if report is not None:
        summary["report"] = _prop(report, "html")
    gallery = _latest(store, "histopath.GradCamGallery")
    if gallery is not None:
        summary["grad_cam_gallery"] = f"{gallery.uri}/index.html"
    drift = _latest(store, "histopath.DriftReport")
    if drift is not None:
        with fileio.open(os.path.join(drift.uri, "drift.json")) as f:
            summary["drift"] = json.loads(f.read())
    summary["positive_class"] = features.LABEL_NAMES[features.POSITIVE_LABEL]
    return summary


def _drift_lines(drift: dict[str, Any] | None) -> list[str]:
    if not drift:
        return []
    if not drift.get("baseline"):
        return [f"drift: {drift.get('note', 'no baseline')}"]
    worst = max(drift["features"], key=lambda d: d["distance"] / d["threshold"], default=None)
    if worst is None:
        return []
    return [
        f"drift vs the data behind the last blessed model: largest {worst['feature']} "
        f"{worst['measure']} {worst['distance']:.3f} (threshold {worst['threshold']:g})"
    ]


def format_stopped(reason: str, summary: dict[str, Any]) -> str:
    """What a person reads when a data gate stopped the run: why, and what still serves."""
    lines = ["", "=== run stopped by a data gate ===", reason]
    if summary.get("serving"):
        lines.append(f"serving model unchanged: {summary['serving']}")
    else:
        lines.append("no model has been pushed yet")
    return "\n".join(lines)


def format_summary(summary: dict[str, Any]) -> str:
    lines = ["", "=== run summary ==="]
    for name, value in sorted(summary.get("metrics", {}).items()):
        lines.append(f"  {name:<24} {value}")
    lines.extend(_drift_lines(summary.get("drift")))
    lines.append(f"blessed: {summary.get('blessed')}")
    for check in summary.get("failed_checks", []):
        lines.append(f"  failed check: {check}")
    if summary.get("pushed"):
        lines.append(f"pushed to: {summary['pushed_to']}")
    else:
        lines.append("pushed: no (the model was not blessed)")
    if summary.get("report"):
        lines.append(f"evaluation report: {summary['report']}")
    if summary.get("grad_cam_gallery"):
        lines.append(f"Grad-CAM gallery: {summary['grad_cam_gallery']}")
    lines.append(json.dumps(summary, sort_keys=True))
    return "\n".join(lines)
