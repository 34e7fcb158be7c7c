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
    FAST_BEAM_ARGS,
    node_states,
    pushed_versions,
    rewrite_span,
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


def test_1_first_span_is_blessed_and_pushed(ct):
    generate(ct["images"], images_per_patient=5, patients_per_class=8, size=128)
    assert new_span(ct["images"], ct["data"])["warnings"] == []
    summary = run_pipeline(ct["data"], ct["out"])
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


def test_3_another_lab_and_scanner_stop_at_the_drift_gate(ct):
    serving = pushed_versions(ct["out"])
    shift_stain_and_focus(ct["images"], ct["lab2"])
    assert new_span(ct["lab2"], ct["data"])["span"] == 3
    with pytest.raises(RuntimeError, match=r"Data drift in split 'train'") as stopped:
        run_pipeline(ct["data"], ct["out"])
    message = str(stopped.value)
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
