"""Stops the run when a new span's data drifted from the data behind the serving model.

A span from another lab (stain), scanner (blur, size) or magnification mix can still pass
the schema and then train, bless itself on its own shifted test split and be pushed. This
gate compares the new span's statistics of one split (train by default) with the same
split of the span the last blessed model was trained on (``BaselineStatisticsStrategy``),
using TFDV's drift comparators: Jensen-Shannon divergence for numeric features, L-infinity
distance for categorical ones. Without a baseline (first run) it passes and says so.

A deliberate shift (a new lab joins on purpose) is let through by naming the features in
``accepted`` (or ``all``): they are still measured and reported, marked accepted.
"""

import dataclasses
import json
import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.artifact import Artifact

from components import kfp_ui
from components.gate_error import DataGateError

REPORT_FILE = "drift.json"
JSD = "jensen_shannon_divergence"
LINF = "infinity_norm"
_MEASURE_NAMES = {
    anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: JSD,
    anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: LINF,
}


class DriftReport(Artifact):
    """Per-feature distances to the baseline span: written by the gate when it passes."""

    TYPE_NAME = "histopath.DriftReport"


@dataclasses.dataclass(frozen=True)
class Drift:
    feature: str
    measure: str
    distance: float
    threshold: float
    accepted: bool = False

    @property
    def exceeded(self) -> bool:
        return self.distance > self.threshold


def load_split_statistics(statistics: types.Artifact, split: str):
    uri = artifact_utils.get_split_uri([statistics], split)
    return tfdv.load_stats_binary(os.path.join(uri, "FeatureStats.pb"))


def measure_drift(
    current, baseline, schema: schema_pb2.Schema, thresholds: dict[str, dict[str, float]]
) -> list[Drift]:
    """Distances of every thresholded feature, from TFDV's drift comparators."""
    with_comparators = schema_pb2.Schema()
    with_comparators.CopyFrom(schema)
    for name, rule in thresholds.items():
        comparator = tfdv.get_feature(with_comparators, name).drift_comparator
        for measure, threshold in rule.items():
            getattr(comparator, measure).threshold = threshold
    anomalies = tfdv.validate_statistics(current, with_comparators, previous_statistics=baseline)
    drifts = []
    for info in anomalies.drift_skew_info:
        name = ".".join(info.path.step)
        for measurement in info.drift_measurements:
            measure = _MEASURE_NAMES[measurement.type]
            drifts.append(Drift(name, measure, measurement.value, thresholds[name][measure]))
    missing = set(thresholds) - {d.feature for d in drifts}
    if missing:
        raise DataGateError(
            f"Drift could not be measured for {sorted(missing)}: the statistics lack them"
        )
    return sorted(drifts, key=lambda d: d.feature)


def check_drift(
    statistics: types.Artifact,
    baseline: types.Artifact | None,
    schema: schema_pb2.Schema,
    thresholds: dict[str, dict[str, float]],
    accepted: set[str],
    split: str,
) -> dict:
    """The report to write; raises naming each drifted feature and its distance."""
    if baseline is None:
        return {"baseline": None, "note": "no blessed model yet: nothing to compare with"}
    drifts = [
        dataclasses.replace(d, accepted=d.exceeded and ("all" in accepted or d.feature in accepted))
        for d in measure_drift(
            load_split_statistics(statistics, split),
            load_split_statistics(baseline, split),
            schema,
            thresholds,
        )
    ]
    blocking = [d for d in drifts if d.exceeded and not d.accepted]
    if blocking:
        detail = "; ".join(
            f"{d.feature}: {d.measure} {d.distance:.3f} > {d.threshold:g}" for d in blocking
        )
        raise DataGateError(
            f"Data drift in split '{split}' against the data behind the last blessed model "
            f"({baseline.uri}), run stopped before Transform: {detail}. If the shift is "
            "intended, accept it with HISTO_ACCEPT_DRIFT="
            + ",".join(d.feature for d in blocking)
            + " (or all)."
        )
    return {
        "baseline": baseline.uri,
        "split": split,
        "features": [dataclasses.asdict(d) for d in drifts],
    }


def ui_summary(result: dict) -> str:
    """The passed gate's markdown: the distances it measured, or why there were none."""
    if not result.get("baseline"):
        return f"## DriftGate passed\n\n{result['note']}."
    rows = [
        (
            d["feature"],
            d["measure"],
            f"{d['distance']:.4f}",
            d["threshold"],
            "accepted" if d["accepted"] else "",
        )
        for d in result["features"]
    ]
    header = ("feature", "measure", "distance", "threshold", "")
    return (
        f"## DriftGate passed\n\nSplit `{result['split']}` against the data behind the last "
        f"blessed model (`{result['baseline']}`).\n\n{kfp_ui.table(rows, header)}"
    )


def parse_accepted(text: str) -> set[str]:
    return {name.strip() for name in text.split(",") if name.strip()}


@component
def DriftGate(
    statistics: InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    schema: InputArtifact[tfx.types.standard_artifacts.Schema],
    report: OutputArtifact[DriftReport],
    thresholds: Parameter[str],
    baseline_statistics: InputArtifact[tfx.types.standard_artifacts.ExampleStatistics] = None,
    accepted: Parameter[str] = "",
    split: Parameter[str] = "train",
) -> None:
    """Raises when a thresholded feature drifted beyond its threshold and is not accepted."""
    schema_proto = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    try:
        result = check_drift(
            statistics,
            baseline_statistics,
            schema_proto,
            json.loads(thresholds),
            parse_accepted(accepted),
            split,
        )
    except DataGateError as stopped:
        kfp_ui.emit([kfp_ui.markdown(f"## DriftGate: run stopped\n\n{stopped}")])
        raise
    kfp_ui.emit([kfp_ui.markdown(ui_summary(result))])
    with fileio.open(os.path.join(report.uri, REPORT_FILE), "w") as f:
        f.write(json.dumps(result, indent=2))
