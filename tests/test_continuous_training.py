"""Continuous training over four spans in one data root, as a retraining schedule sees them.

1. the first span trains, is blessed and pushed;
2. more patients arrive: the next span keeps every earlier patient's split, retrains and is
   compared with the pushed model as baseline; it is pushed only if blessed;
3. another lab's slides (denser stain, out-of-focus scanner) stop at the drift gate,
   before Transform, and the serving model stays as it was;
4. records written by another tool, with a missing and an ill-typed feature, stop at the
   schema gate.
The tests run in order on one module-scoped data root and output directory.
"""

import json
import os

import ml_metadata as mlmd
import pytest
from ml_metadata.proto import metadata_store_pb2

import local_runner
from demo.generate import generate
from histo_testlib import (
    ALL_NODES,
    FAST_BEAM_ARGS,
    node_states,
    printed_summary,
    pushed_versions,
    rewrite_span,
    run_local_runner,
    run_pipeline,
    shift_stain_and_focus,
)
from modules import features
from preprocessing import layouts
from preprocessing.beam_job import preprocess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("continuous_training")
    return {name: str(root / name) for name in ("images", "lab2", "data", "out")}


def new_span(images: str, data: str) -> dict:
    records, rejects = layouts.discover(images)
    return preprocess(records, rejects, data, (0.7, 0.15, 0.15), beam_args=FAST_BEAM_ARGS)


CONSOLE_MAX_LINES = 60  # issue 12: the demo run's console, summary included


def pushed_versions_dir(ct: dict) -> str:
    root = os.path.join(ct["out"], "serving_model", local_runner.configs.PIPELINE_NAME)
    return os.path.join(root, pushed_versions(ct["out"])[-1])


def states(ct: dict) -> dict:
    return node_states(local_runner.metadata_path(ct["out"]))


def store(ct: dict) -> mlmd.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = local_runner.metadata_path(ct["out"])
    return mlmd.MetadataStore(config)


def latest_drift_report(ct: dict) -> dict:
    artifacts = store(ct).get_artifacts_by_type("histopath.DriftReport")
    with open(os.path.join(max(artifacts, key=lambda a: a.id).uri, "drift.json")) as f:
        return json.load(f)


def latest_input_keys(ct: dict, node: str) -> set[str]:
    s = store(ct)
    [context] = [c for c in s.get_contexts_by_type("node") if c.name.endswith("." + node)]
    execution = max(s.get_executions_by_context(context.id), key=lambda e: e.id)
    return {
        e.path.steps[0].key
        for e in s.get_events_by_execution_ids([execution.id])
        if e.type == metadata_store_pb2.Event.INPUT
    }


def test_1_first_span_is_blessed_and_pushed(ct, tmp_path):
    """Run as a person runs it (local_runner.py, default Beam options): the console shows a
    line per component, the trainer's progress and the summary; the rest is in the log."""
    generate(ct["images"], images_per_patient=5, patients_per_class=8, size=128)
    assert new_span(ct["images"], ct["data"])["warnings"] == []
    run = run_local_runner(ct["data"], ct["out"], str(tmp_path))
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr == ""
    assert len(lines) <= CONSOLE_MAX_LINES, run.stdout
    log_path = lines[-1].removeprefix("full log: ")
    assert lines[0].startswith(f"full log: {log_path} ")
    shown = {line.split()[0] for line in lines if line.startswith("  ") and line.split()[-1] == "s"}
    assert shown == ALL_NODES, run.stdout
    for progress in ("features:", "head:", "calibration:"):
        assert any(line.strip().startswith(progress) for line in lines), run.stdout
    with open(log_path) as f:
        assert "Component Trainer is running." in f.read()  # the full log is there
    summary = printed_summary(run.stdout)
    assert summary["blessed"] and summary["pushed"], summary
    assert len(pushed_versions(ct["out"])) == 1
    assert latest_drift_report(ct)["baseline"] is None  # nothing blessed before


def test_2_more_patients_retrain_against_the_pushed_baseline(ct):
    generate(ct["images"], images_per_patient=5, patients_per_class=3, first_patient=8, size=128)
    span = new_span(ct["images"], ct["data"])
    assert span["span"] == 2 and span["patients_kept_from_earlier_spans"] == 16
    summary = run_pipeline(ct["data"], ct["out"])
    assert [s for s in states(ct)["Trainer"]] == ["COMPLETE", "COMPLETE"]
    drift = latest_drift_report(ct)
    assert drift["baseline"] and all(d["distance"] <= d["threshold"] for d in drift["features"])
    assert "baseline_model" in latest_input_keys(ct, "Evaluator")
    # Pushed only if blessed against the first model; never a second copy otherwise.
    assert summary["pushed"] == summary["blessed"]
    assert len(pushed_versions(ct["out"])) == (2 if summary["blessed"] else 1)


def test_3_another_lab_and_scanner_stop_at_the_drift_gate(ct, tmp_path):
    serving = pushed_versions(ct["out"])
    shift_stain_and_focus(ct["images"], ct["lab2"])
    assert new_span(ct["lab2"], ct["data"])["span"] == 3
    run = run_local_runner(ct["data"], ct["out"], str(tmp_path))
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert "=== run stopped by a data gate ===" in run.stdout
    assert f"serving model unchanged: {pushed_versions_dir(ct)}" in run.stdout
    message = run.stdout.split("=== run stopped by a data gate ===", 1)[1]
    assert "Data drift in split 'train'" in message
    assert "sharpness: jensen_shannon_divergence" in message
    assert "stain_" in message and "HISTO_ACCEPT_DRIFT=" in message
    now = states(ct)
    assert now["DriftGate"][-1] == "FAILED" and now["AnomaliesGate"][-1] == "COMPLETE"
    assert len(now["Transform"]) == 2 and len(now["Trainer"]) == 2
    assert pushed_versions(ct["out"]) == serving


def test_4_records_from_another_tool_stop_at_the_schema_gate(ct):
    serving = pushed_versions(ct["out"])

    def other_tool(example):
        del example.features.feature[features.STAIN_EOSIN_KEY]
        magnification = example.features.feature[features.MAGNIFICATION_KEY]
        magnification.bytes_list.value.append(b"100X")  # a string where an int belongs
        magnification.ClearField("int64_list")

    rewrite_span(os.path.join(ct["data"], "span-2"), os.path.join(ct["data"], "span-4"), other_tool)
    with pytest.raises(RuntimeError, match=r"Data anomalies against the schema") as stopped:
        run_pipeline(ct["data"], ct["out"])
    assert features.STAIN_EOSIN_KEY in str(stopped.value)
    assert features.MAGNIFICATION_KEY in str(stopped.value)
    now = states(ct)
    assert now["AnomaliesGate"][-1] == "FAILED"
    assert len(now["DriftGate"]) == 3  # not run: the schema gate spoke first
    assert len(now["Transform"]) == 2
    assert pushed_versions(ct["out"]) == serving
