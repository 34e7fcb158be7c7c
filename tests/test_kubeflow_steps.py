"""The compiled Kubeflow workflow, executed: every Argo step runs TFX's container entrypoint.

``tfx pipeline compile --engine kubeflow`` writes the package from kubeflow_runner.py;
``kfp_steps`` runs its steps in DAG order as subprocesses of the project venv (standing in
for the image) with a KFP pod's environment, against ML Metadata over gRPC
(``mlmd_grpc``: a real store behind the gRPC API, SQLite on disk). Local pipeline, image
and data roots with HISTO_ALLOW_LOCAL_PATHS=1, a small image size, few steps, one Beam
worker. The images are converted by the workflow's own IngestImages step: run 1 makes
span 1, run 3 (after new images arrived) span 2; nobody runs histo-preprocess.

Run alone with ``./scripts/test.sh -m kfp_steps``. What still needs a cluster: Argo itself,
pod scheduling (GPU node pool), the image, object stores, KFP's UI rendering.
"""

import json
import os
import shutil
import subprocess

import ml_metadata as mlmd
import pytest
from ml_metadata.proto import metadata_store_pb2

from demo.generate import generate
from histo_testlib import BIN, E2E_EPOCHS, REPO, RESOLVERS, cli_env
from kfp_steps import run_workflow
from mlmd_grpc import MetadataGrpcServer
from preprocessing import storage

pytestmark = [pytest.mark.e2e, pytest.mark.kfp_steps]

PIPELINE_NAME = "histo-kfp-steps"
CONSTANT_TRAINER_DIR = os.path.join(REPO, "tests", "fixtures", "constant_trainer")
SMALL = {
    "HISTO_IMAGE_SIZE": "96",
    "HISTO_TRAIN_STEPS": "40",
    "HISTO_EVAL_STEPS": "5",
    "HISTO_EPOCHS_HEAD": "30",
    "HISTO_LEARNING_RATE": str(E2E_EPOCHS["learning_rate"]),
    "HISTO_BEAM_RUNNER": "direct",
    "HISTO_BEAM_DIRECT_WORKERS": "1",
    "HISTO_TRAINER_GPUS": "0",
}


@pytest.fixture(scope="module")
def kfp(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("kfp_steps")
    paths = {name: str(work / name) for name in ("images", "data", "root", "serving", "runs")}
    generate(paths["images"], images_per_patient=5, patients_per_class=8, size=128)
    server = MetadataGrpcServer(str(work / "mlmd.sqlite"))
    settings = {
        "HISTO_PIPELINE_NAME": PIPELINE_NAME,
        "HISTO_ALLOW_LOCAL_PATHS": "1",
        "HISTO_PIPELINE_ROOT": paths["root"],
        "HISTO_DATA_ROOT": paths["data"],
        "HISTO_IMAGE_ROOT": paths["images"],
        "HISTO_MIN_NEW_PATIENTS": "1",
        "HISTO_SERVING_MODEL_DIR": paths["serving"],
        # The image holds the repository at /pipeline; here the repository is the image.
        "HISTO_SCHEMA_FILE": os.path.join(REPO, "pipeline", "schema", "schema.pbtxt"),
        **SMALL,
    }
    yield {
        "work": work,
        "paths": paths,
        "server": server,
        "settings": settings,
        "package": compile_package(work / "compile-default", settings),
    }
    server.stop()


def compile_package(out_dir, settings: dict) -> str:
    out_dir.mkdir()
    env = cli_env(str(out_dir / "home"), HISTO_KFP_OUTPUT_DIR=str(out_dir), **settings)
    command = [os.path.join(BIN, "tfx"), "pipeline", "compile", "--engine", "kubeflow"]
    command += ["--pipeline_path", os.path.join(REPO, "kubeflow_runner.py")]
    result = subprocess.run(
        command, env=env, cwd=str(out_dir), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return str(out_dir / f"{PIPELINE_NAME}.tar.gz")


def run(kfp: dict, run_id: str, package: str | None = None, **env) -> dict:
    steps_env = cli_env(os.environ.get("HOME", str(kfp["work"])), **env)
    results = run_workflow(
        package or kfp["package"],
        mlmd_port=kfp["server"].port,
        run_id=run_id,
        workdir=kfp["paths"]["runs"],
        env=steps_env,
    )
    failed = [r for r in results if r.returncode]
    assert not failed, f"step {failed[0].name} failed:\n{failed[0].tail()}"
    return {r.name: r for r in results}


def store(kfp: dict) -> mlmd.MetadataStore:
    config = metadata_store_pb2.MetadataStoreClientConfig(host="127.0.0.1", port=kfp["server"].port)
    return mlmd.MetadataStore(config)


def executions_of_run(kfp: dict, run_id: str) -> dict:
    """{node id: execution} of one KFP run, through its pipeline-run context."""
    s = store(kfp)
    [context] = [c for c in s.get_contexts_by_type("pipeline_run") if c.name == run_id]
    node_of = {}
    for execution in s.get_executions_by_context(context.id):
        for c in s.get_contexts_by_execution(execution.id):
            if c.type_id == s.get_context_type("node").id:
                node_of[c.name.split(".", 1)[1]] = execution
    return node_of


def state(execution) -> str:
    return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def versions(kfp: dict) -> list[str]:
    serving = kfp["paths"]["serving"]
    return sorted(os.listdir(serving)) if os.path.isdir(serving) else []


def test_run_1_every_step_runs_and_a_blessed_model_is_pushed(kfp):
    steps = run(kfp, "histo-run-1")
    assert len(steps) == 20
    executions = executions_of_run(kfp, "histo-run-1")
    assert len(executions) == 20
    assert storage.span_numbers(kfp["paths"]["data"]) == [1]  # written by IngestImages
    assert all(state(e) == "COMPLETE" for e in executions.values()), {
        n: state(e) for n, e in executions.items()
    }
    for node, execution in executions.items():
        if node in RESOLVERS:
            continue  # resolvers record no pod name: they produce no new artifacts
        pod = execution.custom_properties["kfp_pod_name"].string_value
        assert pod.startswith("histo-run-1-"), node
    assert len(versions(kfp)) == 1
    blessing = store(kfp).get_artifacts_by_type("ModelBlessing")
    assert [b.custom_properties["blessed"].int_value for b in blessing] == [1]


def test_run_1_ui_shows_report_gallery_and_gates(kfp):
    ui = {
        name: os.path.join(kfp["paths"]["runs"], "histo-run-1", name, "mlpipeline-ui-metadata.json")
        for name in (
            "evalreport",
            "gradcam",
            "anomaliesgate",
            "driftgate",
            "patientleakagegate",
            "kfp-ui-viewers",
        )
    }
    viewers = {name: json.load(open(path))["outputs"] for name, path in ui.items()}
    types = {name: [v["type"] for v in outputs] for name, outputs in viewers.items()}
    assert "web-app" in types["evalreport"] and "web-app" in types["gradcam"]
    report_app = next(v for v in viewers["evalreport"] if v["type"] == "web-app")
    assert report_app["storage"] == "inline" and "<html" in report_app["source"].lower()
    assert len(report_app["source"]) < 2_000_000
    summary = [v["source"] for v in viewers["evalreport"] if v["type"] == "markdown"]
    assert any("blessed" in s.lower() and "auc" in s.lower() for s in summary)
    assert types["kfp-ui-viewers"].count("web-app") == 2
    for gate in ("anomaliesgate", "driftgate", "patientleakagegate"):
        notes = [v["source"] for v in viewers[gate] if v["type"] == "markdown"]
        assert any("passed" in n.lower() for n in notes), gate


def test_run_2_with_a_new_run_id_is_served_from_the_cache(kfp):
    steps = run(kfp, "histo-run-2")
    executions = executions_of_run(kfp, "histo-run-2")
    # As locally: the pushed model became the baseline of the Evaluator and the drift gate.
    rerun = {"DriftGate", "Evaluator", "EvalReport", "Pusher", "TFLitePusher"}
    cached = {n for n, e in executions.items() if state(e) == "CACHED"}
    assert set(executions) - rerun - RESOLVERS <= cached, {
        n: state(e) for n, e in executions.items()
    }
    assert "IngestImages" in cached and "Transform" in cached and "Trainer" in cached
    assert storage.span_numbers(kfp["paths"]["data"]) == [1]
    assert len(versions(kfp)) == 1  # the identical model is not pushed twice
    # GradCam was cached: no executor ran, so its step shows only TFX's own entry; the
    # viewers step (a resolver, never cached) shows the cached gallery and the report.
    assert "GradCam" in cached
    assert [v["type"] for v in steps["gradcam"].ui_metadata["outputs"]] == ["markdown"]
    shown = steps["kfp-ui-viewers"].ui_metadata["outputs"]
    [gallery] = store(kfp).get_artifacts_by_type("histopath.GradCamGallery")
    notes = [v["source"] for v in shown if v["type"] == "markdown"]  # TFX's entry first
    assert any(f"gallery: `{gallery.uri}`" in note for note in notes)
    pages = [v["source"] for v in shown if v["type"] == "web-app"]
    assert len(pages) == 2 and "Grad-CAM audit set" in pages[1]
    assert "data:image/jpeg;base64," in pages[1]
    assert any("DriftGate passed" in note for note in notes)


def test_run_3_new_span_retrains_and_a_worse_model_is_not_pushed(kfp):
    paths = kfp["paths"]
    generate(paths["images"], images_per_patient=5, patients_per_class=2, first_patient=8, size=128)
    worse = compile_package(
        kfp["work"] / "compile-constant",
        {
            **kfp["settings"],
            "HISTO_TRAINER_MODULE": "constant_trainer_module",
            # Four new patients read as drift by chance (README, "Batches"); this run is
            # about blessing, so their drift is accepted (measured and reported).
            "HISTO_ACCEPT_DRIFT": "all",
        },
    )
    before = versions(kfp)
    run(kfp, "histo-run-3", package=worse, PYTHONPATH=CONSTANT_TRAINER_DIR)
    executions = executions_of_run(kfp, "histo-run-3")
    assert state(executions["Trainer"]) == "COMPLETE"
    assert state(executions["IngestImages"]) == "COMPLETE"
    assert storage.span_numbers(paths["data"]) == [1, 2]
    assert state(executions["Transform"]) == "COMPLETE"  # a new span: nothing cached
    s = store(kfp)
    latest_blessing = max(s.get_artifacts_by_type("ModelBlessing"), key=lambda a: a.id)
    assert latest_blessing.custom_properties["blessed"].int_value == 0
    latest_push = max(s.get_artifacts_by_type("PushedModel"), key=lambda a: a.id)
    assert latest_push.custom_properties["pushed"].int_value == 0
    assert versions(kfp) == before
    shutil.rmtree(paths["runs"], ignore_errors=True)
