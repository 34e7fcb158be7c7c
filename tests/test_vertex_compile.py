"""KFP v2 / Vertex compilation through ``tfx pipeline compile --engine vertex``.

The PipelineJob JSON is parsed strictly into kfp's ``PipelineSpec`` proto, then the tests
read tasks, executors and images from it. Nothing is submitted (that needs GCP).
"""

import json
import os
import subprocess

import pytest
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from histo_testlib import ALL_NODES, BIN, cli_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_NAME = "histo-vertex-test"
IMAGE = "europe-west4-docker.pkg.dev/histo/images/histopath-tfx:v2-test"
SETTINGS_ENV = {
    "HISTO_PIPELINE_NAME": PIPELINE_NAME,
    "HISTO_IMAGE": IMAGE,
    "HISTO_BUCKET": "gs://histo-vertex-bucket",
    "HISTO_VERTEX_ACCELERATOR": "NVIDIA_L4",
    "HISTO_TRAINER_CPU_REQUEST": "8",
    "HISTO_TRAINER_MEMORY_REQUEST": "30G",
}
# The resolver compiles to 2 tasks; the drift gate and its baseline lookup, and the span
# window, are local and KFP v1 only (KFP v2 compiles TFX's built-in resolver strategies
# alone; kubeflow_v2_runner.py leaves them out, and ingestion with them).
COMPONENTS = ALL_NODES - {
    "latest_blessed_model_resolver",
    "baseline_statistics_resolver",
    "DriftGate",
    "kfp_ui_viewers",
    "span_window_resolver",
}
ENTRYPOINT = "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"
RESOLVER_TASKS = {
    "latest_blessed_model_resolver-model-blessing-resolver",
    "latest_blessed_model_resolver-model-resolver",
}


@pytest.fixture(scope="module")
def vertex_job(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("vertex_compile")
    env = cli_env(str(work / "home"), HISTO_KFP_OUTPUT_DIR=str(work), **SETTINGS_ENV)
    command = [os.path.join(BIN, "tfx"), "pipeline", "compile", "--engine", "vertex"]
    command += ["--pipeline_path", os.path.join(REPO, "kubeflow_v2_runner.py")]
    result = subprocess.run(
        command, env=env, cwd=str(work), capture_output=True, text=True, timeout=240, check=False
    )
    if "Invalid custom artifact type name" in result.stderr:
        pytest.fail(
            "KFP v2 needs custom artifact TYPE_NAMEs of the form 'namespace.Name' "
            "(e.g. 'histopath.PatientSplitReport', 'histopath.AnomaliesCheck' in components/): "
            + result.stderr.strip().splitlines()[-1]
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    with open(work / f"{PIPELINE_NAME}_pipeline.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def spec(vertex_job) -> pipeline_spec_pb2.PipelineSpec:
    json_format.ParseDict(vertex_job, pipeline_spec_pb2.PipelineJob())  # the whole job, strictly
    return json_format.ParseDict(vertex_job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())


def container(spec: pipeline_spec_pb2.PipelineSpec, task: str) -> dict:
    executor = spec.components[spec.root.dag.tasks[task].component_ref.name].executor_label
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    return executors[executor]["container"]


def test_job_is_named_and_versioned(vertex_job, spec):
    assert vertex_job["displayName"] == PIPELINE_NAME
    assert spec.pipeline_info.name == PIPELINE_NAME
    assert spec.schema_version == "2.0.0" and spec.sdk_version == "tfx-1.15.1"
    root = vertex_job["runtimeConfig"]["gcsOutputDirectory"]
    assert root == f"gs://histo-vertex-bucket/tfx_pipeline_output/{PIPELINE_NAME}"


def test_every_component_is_a_task_with_its_dependencies(spec):
    tasks = spec.root.dag.tasks
    assert set(tasks) == COMPONENTS | RESOLVER_TASKS
    assert set(tasks["Transform"].dependent_tasks) == {
        "ImportExampleGen",
        "ImportSchemaGen",
        "PatientLeakageGate",
        "AnomaliesGate",
    }
    assert set(tasks["Evaluator"].dependent_tasks) == {
        "ImportExampleGen",
        "Trainer",
        "latest_blessed_model_resolver-model-resolver",
    }
    assert set(tasks["Pusher"].dependent_tasks) == {"Evaluator", "Trainer"}


def test_every_container_runs_the_project_image(spec):
    for task in COMPONENTS:
        step = container(spec, task)
        assert step["image"] == IMAGE, task
        assert step["command"] == ["python", "-m", ENTRYPOINT], task


def test_only_the_trainer_asks_for_an_accelerator(spec):
    for task in COMPONENTS - {"Trainer"}:
        assert "resources" not in container(spec, task), task
    resources = container(spec, "Trainer")["resources"]
    assert resources["accelerator"] == {"type": "NVIDIA_L4", "count": "1"}
    assert resources["cpuLimit"] == 8.0 and resources["memoryLimit"] == 30.0


def test_resolver_is_compiled_to_mlmd_queries_for_vertex(spec):
    """Vertex runs these artifact queries; the open-source KFP v2 backend does not."""
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    queries = [
        executor["resolver"]
        for name, executor in executors.items()
        if name.startswith("latest_blessed_model_resolver")
    ]
    assert len(queries) == 2
    assert any("tfx.ModelBlessing" in json.dumps(q) for q in queries)


def test_module_paths_and_beam_args(spec):
    transform = spec.root.dag.tasks["Transform"].inputs.parameters["preprocessing_fn"]
    preprocessing_fn = transform.runtime_value.constant_value.string_value
    assert preprocessing_fn == "modules.transform.transform_module.preprocessing_fn"
    run_fn = spec.root.dag.tasks["Trainer"].inputs.parameters["run_fn"]
    assert (
        run_fn.runtime_value.constant_value.string_value == "modules.trainer.trainer_module.run_fn"
    )
    for task in ("ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"):
        assert "--direct_running_mode=in_memory" in container(spec, task)["args"], task
