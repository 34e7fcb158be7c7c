"""Kubeflow / Vertex deployment settings, read from environment variables.

``tfx pipeline create`` runs the runner file as a script with no arguments, so the
environment is the way to configure a deployment. Every variable has a default; the ones
a real cluster needs (image, bucket) are listed first in docs/kubeflow.md.

==============================  ==========================================================
Variable                        Default / meaning
==============================  ==========================================================
HISTO_PIPELINE_NAME             histopath-classifier (see pipeline/configs.py)
HISTO_IMAGE (or TFX_IMAGE)      histopath-tfx:latest; the image built from ./Dockerfile
HISTO_BUCKET                    gs://histopath-tfx; root of the three paths below
HISTO_PIPELINE_ROOT             $HISTO_BUCKET/tfx_pipeline_output/$HISTO_PIPELINE_NAME
HISTO_DATA_ROOT                 $HISTO_BUCKET/data (holds span-N/; ingestion writes there)
HISTO_IMAGE_ROOT                $HISTO_BUCKET/images: each run converts the images that
                                arrived there into the next span (IngestImages); "none":
                                no ingestion step, spans come from histo-preprocess
HISTO_SERVING_MODEL_DIR         $HISTO_PIPELINE_ROOT/serving_model (Pusher's destination)
HISTO_SCHEMA_FILE               /pipeline/pipeline/schema/schema.pbtxt: the curated schema
                                inside the image (or a gs:// copy of your own)
HISTO_ALLOW_LOCAL_PATHS         0; pods cannot see this machine's disk, so local paths are
                                refused unless set to 1 (e.g. a volume mounted in every pod)
HISTO_BEAM_RUNNER               direct (Beam's FnApiRunner, named explicitly) | dataflow |
                                portable (Flink/Spark job server)
HISTO_BEAM_DIRECT_WORKERS       direct: worker processes (1: in the step's process); CPU request
HISTO_GCP_PROJECT/_REGION       dataflow: required
HISTO_DATAFLOW_TEMP             dataflow: $HISTO_BUCKET/tmp
HISTO_BEAM_JOB_ENDPOINT         portable: required, e.g. flink-jobserver.flink:8099
HISTO_BEAM_ENVIRONMENT_TYPE     portable: EXTERNAL (a Beam worker-pool sidecar)
HISTO_BEAM_ENVIRONMENT_CONFIG   portable: localhost:50000
HISTO_BEAM_EXTRA_ARGS           appended verbatim (shell-quoted words)
HISTO_TRAINER_GPUS              1; 0 runs the Trainer on CPU with no GPU scheduling
HISTO_GPU_NODE_SELECTOR_KEY     cloud.google.com/gke-accelerator
HISTO_GPU_TYPE                  nvidia-tesla-t4 (value of the selector above)
HISTO_TRAINER_NODE_SELECTOR     extra key=value[,key=value] for the Trainer only
HISTO_TRAINER_TOLERATIONS       nvidia.com/gpu:NoSchedule; key[=value][:Effect],...
                                (no value = operator Exists)
HISTO_CPU_REQUEST               1      every step except the Trainer
HISTO_MEMORY_REQUEST            4Gi
HISTO_MEMORY_LIMIT              (none)
HISTO_TRAINER_CPU_REQUEST       4      also the optional Tuner (HISTO_ENABLE_TUNER), no GPU
HISTO_TRAINER_MEMORY_REQUEST    16Gi
HISTO_TRAINER_MEMORY_LIMIT      (none)
HISTO_USE_GCP_SECRET            0; 1 mounts the legacy ``user-gcp-sa`` secret in each pod
HISTO_METADATA_UI_PATH          /tmp/mlpipeline-ui-metadata.json (writable by non-root)
HISTO_KFP_OUTPUT_DIR            current directory; where the compiled package is written
HISTO_VERTEX_ACCELERATOR        NVIDIA_TESLA_T4 (Vertex accelerator enum for the Trainer)
==============================  ==========================================================

Only the standard library, ``pipeline.configs`` and the Beam runner's name are imported, so
this module loads without TensorFlow and its parsing is unit-tested directly.
"""

import dataclasses
import hashlib
import math
import os
import re
import shlex
from collections.abc import Mapping
from typing import Any

from pipeline import configs
from preprocessing import beam_runner

DEFAULT_IMAGE = "histopath-tfx:latest"
DEFAULT_BUCKET = "gs://histopath-tfx"
# The curated schema where the Dockerfile puts the repository (WORKDIR /pipeline).
IMAGE_SCHEMA_FILE = "/pipeline/pipeline/schema/schema.pbtxt"
REMOTE_SCHEMES = ("gs://", "s3://")
TOLERATION_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
BEAM_RUNNERS = ("direct", "dataflow", "portable")


@dataclasses.dataclass(frozen=True)
class Toleration:
    """A Kubernetes toleration; ``value is None`` means operator ``Exists``."""

    key: str
    value: str | None
    effect: str | None

    @property
    def operator(self) -> str:
        return "Exists" if self.value is None else "Equal"


@dataclasses.dataclass(frozen=True)
class KubeflowSettings:
    """Everything the Kubeflow and Vertex runners need besides ``pipeline.configs``."""

    pipeline_name: str
    image: str
    pipeline_root: str
    data_root: str
    image_root: str  # "" when spans come from histo-preprocess only
    serving_model_dir: str
    schema_file: str
    beam_pipeline_args: list[str]
    trainer_gpus: int
    trainer_node_selector: dict[str, str]
    trainer_tolerations: list[Toleration]
    cpu_request: str
    memory_request: str
    memory_limit: str | None
    trainer_cpu_request: str
    trainer_memory_request: str
    trainer_memory_limit: str | None
    use_gcp_secret: bool
    metadata_ui_path: str
    output_dir: str | None
    vertex_accelerator: str


class SettingsError(ValueError):
    """A deployment setting is missing or malformed; the message names the variable."""


def _get(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip()
    return value if value else default


def _flag(env: Mapping[str, str], name: str) -> bool:
    return _get(env, name, "0").lower() in ("1", "true", "yes", "on")


def parse_key_values(text: str, variable: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}``; empty text -> ``{}``."""
    result: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SettingsError(f"{variable}: expected key=value, got {item!r}")
        result[key.strip()] = value.strip()
    return result


def parse_tolerations(text: str, variable: str) -> list[Toleration]:
    """``"nvidia.com/gpu:NoSchedule,dedicated=gpu:NoExecute"`` -> tolerations."""
    tolerations = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key_value, _, effect = item.partition(":")
        key, sep, value = key_value.partition("=")
        if not key or (sep and not value):
            raise SettingsError(f"{variable}: expected key[=value][:Effect], got {item!r}")
        if effect and effect not in TOLERATION_EFFECTS:
            raise SettingsError(
                f"{variable}: effect {effect!r} in {item!r} is not one of {TOLERATION_EFFECTS}"
            )
        tolerations.append(Toleration(key=key, value=value if sep else None, effect=effect or None))
    return tolerations


def cpu_cores(quantity: str) -> float:
    """A Kubernetes CPU quantity (``"2"``, ``"1.5"``, ``"500m"``) in cores."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", quantity.strip())
    if not match:
        raise SettingsError(f"CPU quantity {quantity!r}: expected e.g. 2, 1.5 or 500m")
    value = float(match.group(1))
    return value / 1000 if match.group(2) else value


_MEMORY_UNITS = {
    "": 1,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``"16Gi"``, ``"4G"``) in bytes, validated like kfp does."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|K|M|G|T)?", quantity.strip())
    if not match:
        raise SettingsError(f"memory quantity {quantity!r}: expected e.g. 4Gi, 512Mi or 8G")
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2) or ""]


def _remote_path(env: Mapping[str, str], variable: str, value: str) -> str:
    """Pods only see object storage; a local path would silently land inside one pod."""
    if value.startswith(REMOTE_SCHEMES) or _flag(env, "HISTO_ALLOW_LOCAL_PATHS"):
        return value.rstrip("/")
    raise SettingsError(
        f"{variable}={value!r}: Kubeflow steps run in separate pods and need object storage "
        f"({' or '.join(REMOTE_SCHEMES)} URI). Set HISTO_ALLOW_LOCAL_PATHS=1 only if this path "
        "is a volume mounted into every pod."
    )


def beam_pipeline_args(env: Mapping[str, str], bucket: str, image: str, cpu: str) -> list[str]:
    """Beam options for ExampleGen, StatisticsGen, Transform and Evaluator."""
    runner = _get(env, "HISTO_BEAM_RUNNER", "direct").lower()
    if runner == "direct":
        workers = _get(env, "HISTO_BEAM_DIRECT_WORKERS", str(max(1, math.floor(cpu_cores(cpu)))))
        # One worker runs in the step's own process: a worker process of its own would only
        # add a second TensorFlow start-up (and the Evaluator's a second model load).
        mode = "in_memory" if workers.strip() == "1" else "multi_processing"
        args = [
            beam_runner.RUNNER_ARG,  # no silent switch to Prism where downloads work
            f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}",
        ]
    elif runner == "dataflow":
        project, region = env.get("HISTO_GCP_PROJECT"), env.get("HISTO_GCP_REGION")
        if not project or not region:
            raise SettingsError("HISTO_BEAM_RUNNER=dataflow needs HISTO_GCP_PROJECT and _REGION")
        args = [
            "--runner=DataflowRunner",
            f"--project={project}",
            f"--region={region}",
            f"--temp_location={_get(env, 'HISTO_DATAFLOW_TEMP', bucket + '/tmp')}",
            # Workers run the pipeline image so TFX libraries match the launcher's.
            f"--sdk_container_image={image}",
            "--experiments=use_runner_v2",
        ]
    elif runner == "portable":
        endpoint = env.get("HISTO_BEAM_JOB_ENDPOINT")
        if not endpoint:
            raise SettingsError("HISTO_BEAM_RUNNER=portable needs HISTO_BEAM_JOB_ENDPOINT")
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint={endpoint}",
            f"--environment_type={_get(env, 'HISTO_BEAM_ENVIRONMENT_TYPE', 'EXTERNAL')}",
            f"--environment_config={_get(env, 'HISTO_BEAM_ENVIRONMENT_CONFIG', 'localhost:50000')}",
        ]
    else:
        raise SettingsError(f"HISTO_BEAM_RUNNER={runner!r}: expected one of {BEAM_RUNNERS}")
    return args + shlex.split(env.get("HISTO_BEAM_EXTRA_ARGS", ""))


def _trainer_scheduling(env: Mapping[str, str]) -> tuple[int, dict[str, str], list[Toleration]]:
    """GPU count, node selector and tolerations for the Trainer step only."""
    gpus_text = _get(env, "HISTO_TRAINER_GPUS", "1")
    if not gpus_text.isdigit():
        raise SettingsError(f"HISTO_TRAINER_GPUS={gpus_text!r}: expected 0 or a positive integer")
    gpus = int(gpus_text)
    selector = parse_key_values(
        env.get("HISTO_TRAINER_NODE_SELECTOR", ""), "HISTO_TRAINER_NODE_SELECTOR"
    )
    if gpus == 0:
        return 0, selector, []
    gpu_key = _get(env, "HISTO_GPU_NODE_SELECTOR_KEY", "cloud.google.com/gke-accelerator")
    gpu_type = _get(env, "HISTO_GPU_TYPE", "nvidia-tesla-t4")
    tolerations = parse_tolerations(
        _get(env, "HISTO_TRAINER_TOLERATIONS", "nvidia.com/gpu:NoSchedule"),
        "HISTO_TRAINER_TOLERATIONS",
    )
    return gpus, {gpu_key: gpu_type, **selector}, tolerations


def _checked_cpu(env: Mapping[str, str], name: str, default: str) -> str:
    value = _get(env, name, default)
    try:
        cpu_cores(value)
    except SettingsError as error:
        raise SettingsError(f"{name}: {error}") from None
    return value


def _checked_memory(env: Mapping[str, str], name: str, default: str | None) -> str | None:
    value = env.get(name, "").strip() or default
    if value is not None:
        try:
            memory_bytes(value)
        except SettingsError as error:
            raise SettingsError(f"{name}: {error}") from None
    return value


def from_env(env: Mapping[str, str] | None = None) -> KubeflowSettings:
    """Reads every setting, failing early with the variable's name when one is malformed."""
    env = os.environ if env is None else env
    name = _get(env, "HISTO_PIPELINE_NAME", configs.PIPELINE_NAME)
    image = _get(env, "HISTO_IMAGE", _get(env, "TFX_IMAGE", DEFAULT_IMAGE))
    bucket = _remote_path(env, "HISTO_BUCKET", _get(env, "HISTO_BUCKET", DEFAULT_BUCKET))
    pipeline_root = _remote_path(
        env,
        "HISTO_PIPELINE_ROOT",
        _get(env, "HISTO_PIPELINE_ROOT", f"{bucket}/tfx_pipeline_output/{name}"),
    )
    cpu = _checked_cpu(env, "HISTO_CPU_REQUEST", "1")
    gpus, selector, tolerations = _trainer_scheduling(env)
    return KubeflowSettings(
        pipeline_name=name,
        image=image,
        pipeline_root=pipeline_root,
        data_root=_remote_path(
            env, "HISTO_DATA_ROOT", _get(env, "HISTO_DATA_ROOT", f"{bucket}/data")
        ),
        image_root=_image_root(env, bucket),
        serving_model_dir=_remote_path(
            env,
            "HISTO_SERVING_MODEL_DIR",
            _get(env, "HISTO_SERVING_MODEL_DIR", f"{pipeline_root}/serving_model"),
        ),
        schema_file=_get(env, "HISTO_SCHEMA_FILE", IMAGE_SCHEMA_FILE),
        beam_pipeline_args=beam_pipeline_args(env, bucket, image, cpu),
        trainer_gpus=gpus,
        trainer_node_selector=selector,
        trainer_tolerations=tolerations,
        cpu_request=cpu,
        memory_request=_checked_memory(env, "HISTO_MEMORY_REQUEST", "4Gi") or "4Gi",
        memory_limit=_checked_memory(env, "HISTO_MEMORY_LIMIT", None),
        trainer_cpu_request=_checked_cpu(env, "HISTO_TRAINER_CPU_REQUEST", "4"),
        trainer_memory_request=(
            _checked_memory(env, "HISTO_TRAINER_MEMORY_REQUEST", "16Gi") or "16Gi"
        ),
        trainer_memory_limit=_checked_memory(env, "HISTO_TRAINER_MEMORY_LIMIT", None),
        use_gcp_secret=_flag(env, "HISTO_USE_GCP_SECRET"),
        metadata_ui_path=_get(env, "HISTO_METADATA_UI_PATH", "/tmp/mlpipeline-ui-metadata.json"),
        output_dir=env.get("HISTO_KFP_OUTPUT_DIR") or None,
        vertex_accelerator=_get(env, "HISTO_VERTEX_ACCELERATOR", "NVIDIA_TESLA_T4"),
    )


def _image_root(env: Mapping[str, str], bucket: str) -> str:
    value = _get(env, "HISTO_IMAGE_ROOT", f"{bucket}/images")
    return "" if value.lower() == "none" else _remote_path(env, "HISTO_IMAGE_ROOT", value)


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def create_pipeline_kwargs(settings: KubeflowSettings) -> dict[str, Any]:
    """The create_pipeline arguments both cluster runners share (module paths, not files)."""
    return {
        # Dotted module paths: the code is baked into the image, nothing is packaged at
        # compile time.
        **configs.pipeline_settings(),
        "pipeline_name": settings.pipeline_name,
        "pipeline_root": settings.pipeline_root,
        "data_root": settings.data_root,
        "image_root": settings.image_root,
        "serving_model_dir": settings.serving_model_dir,
        "schema_file": settings.schema_file,
        # The image's schema is this repository's file: its content keys the cache.
        "schema_sha256": (
            _sha256(configs.SCHEMA_FILE) if settings.schema_file == IMAGE_SCHEMA_FILE else None
        ),
        "beam_pipeline_args": settings.beam_pipeline_args,
    }
