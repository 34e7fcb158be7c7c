"""Stops the run when ExampleValidator found anomalies.

ExampleValidator only records anomalies; nothing downstream reads them. Training on data
that does not match the schema (missing images, wrong label values, new feature types)
silently produces a bad model, so this gate turns recorded anomalies into a failed run.
"""

import json
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types.artifact import Artifact

from components import kfp_ui
from components.gate_error import DataGateError

REPORT_FILE = "anomalies_summary.json"


class AnomaliesCheck(Artifact):
    """Per-split anomaly summary: written by the gate when it passes."""

    TYPE_NAME = "histopath.AnomaliesCheck"


def anomalies_by_split(anomalies: Artifact) -> dict[str, list[str]]:
    """Returns {split: ["feature: description", ...]} for every split with anomalies."""
    found: dict[str, list[str]] = {}
    for split in artifact_utils.decode_split_names(anomalies.split_names):
        split_uri = artifact_utils.get_split_uri([anomalies], split)
        with fileio.open(os.path.join(split_uri, "SchemaDiff.pb"), "rb") as f:
            proto = anomalies_pb2.Anomalies.FromString(f.read())
        problems = [
            f"{name}: {info.short_description or info.description}"
            for name, info in sorted(proto.anomaly_info.items())
        ]
        if proto.HasField("dataset_anomaly_info"):
            problems.append(f"<dataset>: {proto.dataset_anomaly_info.description}")
        if problems:
            found[split] = problems
    return found


def check_anomalies(anomalies: Artifact) -> None:
    """Raises, listing every anomaly per split, when ExampleValidator reported any."""
    found = anomalies_by_split(anomalies)
    if found:
        detail = " | ".join(f"{split}: {'; '.join(items)}" for split, items in found.items())
        raise DataGateError(f"Data anomalies against the schema, run stopped: {detail}")


@component
def AnomaliesGate(
    anomalies: InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
    check: OutputArtifact[AnomaliesCheck],
) -> None:
    """Raises, listing every anomaly per split, when ExampleValidator reported any."""
    try:
        check_anomalies(anomalies)
    except DataGateError as stopped:
        kfp_ui.emit([kfp_ui.markdown(f"## AnomaliesGate: run stopped\n\n{stopped}")])
        raise
    splits = ", ".join(artifact_utils.decode_split_names(anomalies.split_names))
    kfp_ui.emit(
        [
            kfp_ui.markdown(
                f"## AnomaliesGate passed\n\nNo anomalies against the schema in {splits}."
            )
        ]
    )
    with fileio.open(os.path.join(check.uri, REPORT_FILE), "w") as f:
        f.write(json.dumps({"anomalies": {}}, indent=2))
