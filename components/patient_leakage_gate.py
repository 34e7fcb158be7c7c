"""Fails the run when a patient's images sit in more than one split.

Images of one patient are strongly correlated; a patient in both train and test makes
every reported metric optimistic. Preprocessing splits by patient already; this gate
checks what actually reached ExampleGen (manifests, hand-made spans, bugs).
"""

import json
import os
from collections import defaultdict

from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types.artifact import Artifact

from components import kfp_ui
from components.example_io import iter_bytes_feature, split_files
from components.gate_error import DataGateError
from modules import features
from preprocessing import patients

REPORT_FILE = "patients_per_split.json"


class PatientSplitReport(Artifact):
    """Which patients each split holds: written by the gate when it passes."""

    TYPE_NAME = "histopath.PatientSplitReport"


def find_leaking_patients(patients_by_split: dict[str, set[str]]) -> dict[str, list]:
    """Returns {patient_id: [splits]} for every patient present in more than one split."""
    splits_by_patient: dict[str, list] = defaultdict(list)
    for split, members in sorted(patients_by_split.items()):
        for patient in members:
            splits_by_patient[patient].append(split)
    return {p: s for p, s in sorted(splits_by_patient.items()) if len(s) > 1}


def patients_by_split(examples: tfx.types.standard_artifacts.Examples, rule: str) -> dict:
    """{split: {patient}} under the patient rule (slide ids of one patient become one)."""
    return {
        split: {
            patients.patient_of(value.decode("utf-8"), rule)
            for value in iter_bytes_feature(files, features.PATIENT_ID_KEY)
        }
        for split, files in split_files(examples).items()
    }


def check_leakage(patients_by_split: dict[str, set[str]]) -> None:
    """Raises naming every patient that sits in more than one split."""
    leaks = find_leaking_patients(patients_by_split)
    if leaks:
        detail = "; ".join(f"{p} in {', '.join(s)}" for p, s in leaks.items())
        raise DataGateError(
            f"Patient leakage: {len(leaks)} patient(s) appear in more than one split "
            f"({detail}). Splits must be patient-disjoint: re-run preprocessing or fix the "
            "manifest."
        )


def ui_summary(patients_per_split: dict) -> str:
    """The passed gate's markdown: patients per split (the report file's content, counted)."""
    rows = [(split, len(ids)) for split, ids in patients_per_split.items()]
    return "## PatientLeakageGate passed\n\nNo patient in two splits.\n\n" + kfp_ui.table(
        rows, ("split", "patients")
    )


@component
def PatientLeakageGate(
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    report: OutputArtifact[PatientSplitReport],
    patient_rule: Parameter[str] = patients.DEFAULT_RULE,
) -> None:
    """Reads patient ids per split; raises with the offending ids if any split shares one."""
    found = patients_by_split(examples, patient_rule)
    try:
        check_leakage(found)
    except DataGateError as stopped:
        kfp_ui.emit([kfp_ui.markdown(f"## PatientLeakageGate: run stopped\n\n{stopped}")])
        raise
    kfp_ui.emit([kfp_ui.markdown(ui_summary(found))])
    summary = {split: sorted(p) for split, p in found.items()}
    with fileio.open(os.path.join(report.uri, REPORT_FILE), "w") as f:
        f.write(json.dumps(summary, indent=2))
