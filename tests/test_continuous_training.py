"""The retraining story, as a schedule runs it: images are dropped under one image root and
each run of ``local_runner.py --image-root`` ingests what arrived (IngestImages).

1. the first images become span 1, which trains, is blessed and pushed;
2. a second run with no new images changes nothing: no span, every step that works is
   served from the cache, the serving model stays;
3. more patients arrive: span 2 holds only them, patients keep their splits, training
   and evaluation see spans 1 and 2; compared with the pushed model, pushed only if blessed;
4. another lab's slides (denser stain, out-of-focus scanner) become span 3 and stop at the
   drift gate, before Transform; the serving model stays as it was;
5. good patients arrive again: span 4 trains on spans 1, 2 and 4, never on the stopped 3;
6. records written by another tool, with a missing and an ill-typed feature, stop at the
   schema gate.
The tests run in order on one module-scoped image root, data root and output directory.
"""

import json
import os

import ml_metadata as mlmd
import pytest
from ml_metadata.proto import metadata_store_pb2

import local_runner
from demo.generate import generate, shift_stain_and_focus
from histo_testlib import (
    ALL_NODES,
    FAST_BEAM_ARGS,
    node_states,
    printed_summary,
    pushed_versions,
    rewrite_span,
    run_local_runner,
    run_pipeline,
)
from modules import features
from preprocessing import storage

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ct(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("continuous_training")
    return {name: str(root / name) for name in ("images", "lab2", "data", "out")}


# Spans of 10 patients per class, 8 tiles each (the default HISTO_MIN_NEW_PATIENTS, 20):
# smaller batches of demo patients differ from the baseline by a JSD near the drift
# threshold by chance (README, "Scheduled retraining"; benchmarks/drift_batches.py).
PER_CLASS = 10
TILES = 8


def run(ct: dict, **overrides) -> dict:
    """One scheduled run in this process: ingestion of ct's image root, then the pipeline."""
    from pipeline import configs

    ingest = configs.ingest_settings()
    return run_pipeline(
        ct["data"],
        ct["out"],
        image_root=ct["images"],
        ingest_settings=ingest,
        beam_pipeline_args=FAST_BEAM_ARGS,
        **overrides,
    )


def input_spans(ct: dict, node: str) -> list[int]:
    """Spans of the Examples the node's latest execution read."""
    s = store(ct)
    [context] = [c for c in s.get_contexts_by_type("node") if c.name.endswith("." + node)]
    execution = max(s.get_executions_by_context(context.id), key=lambda e: e.id)
    ids = [
        e.artifact_id
        for e in s.get_events_by_execution_ids([execution.id])
        if e.type == metadata_store_pb2.Event.INPUT and e.path.steps[0].key == "examples"
    ]
    return sorted(a.custom_properties["span"].int_value for a in s.get_artifacts_by_id(ids))


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


def test_1_first_images_become_a_span_that_is_blessed_and_pushed(ct, tmp_path):
    """Run as a person runs it (local_runner.py, default Beam options): the console shows a
    line per component, the trainer's progress and the summary; the rest is in the log."""
    generate(ct["images"], images_per_patient=TILES, patients_per_class=PER_CLASS, size=128)
    run = run_local_runner(
        ct["data"],
        ct["out"],
        str(tmp_path),
        image_root=ct["images"],
    )
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stderr == ""
    assert len(lines) <= CONSOLE_MAX_LINES, run.stdout
    log_path = lines[-1].removeprefix("full log: ")
    assert lines[0].startswith(f"full log: {log_path} ")
    shown = {line.split()[0] for line in lines if line.startswith("  ") and line.split()[-1] == "s"}
    assert shown == ALL_NODES | {"IngestImages"}, run.stdout
    for progress in ("features:", "head:", "calibration:"):
        assert any(line.strip().startswith(progress) for line in lines), run.stdout
    with open(log_path) as f:
        assert "Component Trainer is running." in f.read()  # the full log is there
    summary = printed_summary(run.stdout)
    assert summary["blessed"] and summary["pushed"], summary
    assert storage.span_numbers(ct["data"]) == [1]
    assert len(pushed_versions(ct["out"])) == 1
    assert latest_drift_report(ct)["baseline"] is None  # nothing blessed before


def test_2_a_run_with_no_new_images_changes_nothing(ct, tmp_path):
    """The same command again (the same Beam options: they are part of TFX's cache key)."""
    serving = pushed_versions(ct["out"])
    before = states(ct)
    run = run_local_runner(
        ct["data"],
        ct["out"],
        str(tmp_path),
        image_root=ct["images"],
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    after = states(ct)
    assert storage.span_numbers(ct["data"]) == [1]
    for node in ("IngestImages", "ImportExampleGen", "StatisticsGen", "Transform", "Trainer"):
        assert after[node] == before[node] + ["CACHED"], (node, after[node])
    assert pushed_versions(ct["out"]) == serving


def test_3_more_patients_become_the_next_span_and_train_with_the_first(ct):
    generate(
        ct["images"],
        images_per_patient=TILES,
        patients_per_class=PER_CLASS,
        first_patient=PER_CLASS,
        size=128,
    )
    summary = run(ct)
    assert storage.span_numbers(ct["data"]) == [1, 2]
    with open(os.path.join(ct["data"], "span-2", "summary.json")) as f:
        span = json.load(f)
    assert span["images_written"] == 2 * PER_CLASS * TILES  # the new images only
    assert input_spans(ct, "Transform") == [1, 2]
    assert input_spans(ct, "Evaluator") == [1, 2]
    assert input_spans(ct, "StatisticsGen") == [2]  # the gates judge what is new
    assert states(ct)["Trainer"][-1] == "COMPLETE"
    drift = latest_drift_report(ct)
    assert drift["baseline"] and all(d["distance"] <= d["threshold"] for d in drift["features"])
    assert "baseline_model" in latest_input_keys(ct, "Evaluator")
    # Pushed only if blessed against the first model; never a second copy otherwise.
    assert summary["pushed"] == summary["blessed"]
    assert len(pushed_versions(ct["out"])) == (2 if summary["blessed"] else 1)


def test_4_another_lab_and_scanner_stop_at_the_drift_gate(ct, tmp_path):
    serving = pushed_versions(ct["out"])
    generate(
        ct["lab2"], images_per_patient=4, patients_per_class=PER_CLASS, first_patient=100, size=128
    )
    shift_stain_and_focus(ct["lab2"], ct["images"])
    run = run_local_runner(
        ct["data"],
        ct["out"],
        str(tmp_path),
        image_root=ct["images"],
    )
    assert run.returncode == 2, run.stdout[-3000:] + run.stderr[-3000:]
    assert storage.span_numbers(ct["data"]) == [1, 2, 3]
    assert "=== run stopped by a data gate ===" in run.stdout
    assert f"serving model unchanged: {pushed_versions_dir(ct)}" in run.stdout
    message = run.stdout.split("=== run stopped by a data gate ===", 1)[1]
    assert "Data drift in split 'train'" in message
    assert "sharpness: jensen_shannon_divergence" in message
    assert "stain_" in message and "HISTO_ACCEPT_DRIFT=" in message
    now = states(ct)
    assert now["DriftGate"][-1] == "FAILED" and now["AnomaliesGate"][-1] == "COMPLETE"
    assert now["Transform"].count("COMPLETE") == 2
    assert pushed_versions(ct["out"]) == serving


def test_5_the_stopped_span_never_enters_a_later_training_window(ct):
    generate(
        ct["images"],
        images_per_patient=TILES,
        patients_per_class=PER_CLASS,
        first_patient=200,
        size=128,
    )
    run(ct)
    assert storage.span_numbers(ct["data"]) == [1, 2, 3, 4]
    assert input_spans(ct, "Transform") == [1, 2, 4]
    assert input_spans(ct, "Evaluator") == [1, 2, 4]
    assert states(ct)["Trainer"].count("COMPLETE") == 3


def test_6_records_from_another_tool_stop_at_the_schema_gate(ct):
    serving = pushed_versions(ct["out"])

    def other_tool(example):
        del example.features.feature[features.STAIN_EOSIN_KEY]
        magnification = example.features.feature[features.MAGNIFICATION_KEY]
        magnification.bytes_list.value.append(b"100X")  # a string where an int belongs
        magnification.ClearField("int64_list")

    rewrite_span(os.path.join(ct["data"], "span-2"), os.path.join(ct["data"], "span-5"), other_tool)
    drift_runs = len(states(ct)["DriftGate"])
    with pytest.raises(RuntimeError, match=r"Data anomalies against the schema") as stopped:
        run(ct)
    assert features.STAIN_EOSIN_KEY in str(stopped.value)
    assert features.MAGNIFICATION_KEY in str(stopped.value)
    now = states(ct)
    assert now["IngestImages"][-1] == "CACHED"  # nothing new under the image root
    assert now["AnomaliesGate"][-1] == "FAILED"
    assert len(now["DriftGate"]) == drift_runs  # not run: the schema gate spoke first
    assert now["Transform"].count("COMPLETE") == 3
    assert pushed_versions(ct["out"]) == serving
