"""Kubeflow / Vertex deployment settings, read from environment variables.

``tfx pipeline create`` runs the runner file as a script with no arguments, so the
environment is the way to configure a deployment. The variables, their defaults and
meanings are declared in ``pipeline/settings.py`` (group deployment; docs/settings.md);
this module reads them, expands defaults such as ``$HISTO_BUCKET/data`` and checks them,
failing early with the variable's name.

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

from pipeline import configs, settings
from preprocessing import beam_runner

DEFAULT_IMAGE: str = settings.default("HISTO_IMAGE")
DEFAULT_BUCKET: str = settings.default("HISTO_BUCKET")
# Where the Dockerfile puts the repository (WORKDIR /pipeline): relative paths start there.
IMAGE_REPOSITORY_ROOT = "/pipeline"
# The curated schema inside the image.
IMAGE_SCHEMA_FILE = f"{IMAGE_REPOSITORY_ROOT}/{settings.default('HISTO_SCHEMA_FILE')}"
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


def _get(env: Mapping[str, str], name: str, **resolved: str) -> Any:
    """The setting from ``env`` or its declared default, ``$HISTO_*`` in it expanded."""
    try:
        value = settings.read(name, env)
    except settings.SettingError as error:
        raise SettingsError(str(error)) from None
    if isinstance(value, str) and "$" in value:
        value = settings.expand(value, resolved)
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    return bool(_get(env, name))


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
    runner = _get(env, "HISTO_BEAM_RUNNER").lower()
    if runner == "direct":
        workers = _get(env, "HISTO_BEAM_DIRECT_WORKERS")
        if workers is None:
            workers = max(1, math.floor(cpu_cores(cpu)))
        # One worker runs in the step's own process: a worker process of its own would only
        # add a second TensorFlow start-up (and the Evaluator's a second model load).
        mode = "in_memory" if workers == 1 else "multi_processing"
        args = [
            beam_runner.RUNNER_ARG,  # no silent switch to Prism where downloads work
            f"--direct_running_mode={mode}",
            f"--direct_num_workers={workers}",
        ]
    elif runner == "dataflow":
        project, region = _get(env, "HISTO_GCP_PROJECT"), _get(env, "HISTO_GCP_REGION")
        if not project or not region:
            raise SettingsError("HISTO_BEAM_RUNNER=dataflow needs HISTO_GCP_PROJECT and _REGION")
        args = [
            "--runner=DataflowRunner",
            f"--project={project}",
            f"--region={region}",
            f"--temp_location={_get(env, 'HISTO_DATAFLOW_TEMP', HISTO_BUCKET=bucket)}",
            # Workers run the pipeline image so TFX libraries match the launcher's.
            f"--sdk_container_image={image}",
            "--experiments=use_runner_v2",
        ]
    elif runner == "portable":
        endpoint = _get(env, "HISTO_BEAM_JOB_ENDPOINT")
        if not endpoint:
            raise SettingsError("HISTO_BEAM_RUNNER=portable needs HISTO_BEAM_JOB_ENDPOINT")
        args = [
            "--runner=PortableRunner",
            f"--job_endpoint={endpoint}",
            f"--environment_type={_get(env, 'HISTO_BEAM_ENVIRONMENT_TYPE')}",
            f"--environment_config={_get(env, 'HISTO_BEAM_ENVIRONMENT_CONFIG')}",
        ]
    else:
        raise SettingsError(f"HISTO_BEAM_RUNNER={runner!r}: expected one of {BEAM_RUNNERS}")
    return args + shlex.split(_get(env, "HISTO_BEAM_EXTRA_ARGS"))


def _trainer_scheduling(env: Mapping[str, str]) -> tuple[int, dict[str, str], list[Toleration]]:
    """GPU count, node selector and tolerations for the Trainer step only."""
    gpus = _get(env, "HISTO_TRAINER_GPUS")
    if gpus < 0:
        raise SettingsError(f"HISTO_TRAINER_GPUS={gpus!r}: expected 0 or a positive integer")
    selector = parse_key_values(
        _get(env, "HISTO_TRAINER_NODE_SELECTOR"), "HISTO_TRAINER_NODE_SELECTOR"
    )
    if gpus == 0:
        return 0, selector, []
    gpu_key = _get(env, "HISTO_GPU_NODE_SELECTOR_KEY")
    gpu_type = _get(env, "HISTO_GPU_TYPE")
    tolerations = parse_tolerations(
        _get(env, "HISTO_TRAINER_TOLERATIONS"), "HISTO_TRAINER_TOLERATIONS"
    )
    return gpus, {gpu_key: gpu_type, **selector}, tolerations


def _checked_cpu(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    try:
        cpu_cores(value)
    except SettingsError as error:
        raise SettingsError(f"{name}: {error}") from None
    return value


def _checked_memory(env: Mapping[str, str], name: str) -> str | None:
    value = _get(env, name)
    if value is not None:
        try:
            memory_bytes(value)
        except SettingsError as error:
            raise SettingsError(f"{name}: {error}") from None
    return value


def from_env(env: Mapping[str, str] | None = None) -> KubeflowSettings:
    """Reads every setting, failing early with the variable's name when one is malformed."""
    env = os.environ if env is None else env
    name = _get(env, "HISTO_PIPELINE_NAME")
    image = env.get("HISTO_IMAGE", "").strip() or env.get("TFX_IMAGE", "").strip()
    image = image or _get(env, "HISTO_IMAGE")
    bucket = _remote_path(env, "HISTO_BUCKET", _get(env, "HISTO_BUCKET"))
    pipeline_root = _remote_path(
        env,
        "HISTO_PIPELINE_ROOT",
        _get(env, "HISTO_PIPELINE_ROOT", HISTO_BUCKET=bucket, HISTO_PIPELINE_NAME=name),
    )
    cpu = _checked_cpu(env, "HISTO_CPU_REQUEST")
    gpus, selector, tolerations = _trainer_scheduling(env)
    return KubeflowSettings(
        pipeline_name=name,
        image=image,
        pipeline_root=pipeline_root,
        data_root=_remote_path(
            env, "HISTO_DATA_ROOT", _get(env, "HISTO_DATA_ROOT", HISTO_BUCKET=bucket)
        ),
        image_root=_image_root(env, bucket),
        serving_model_dir=_remote_path(
            env,
            "HISTO_SERVING_MODEL_DIR",
            _get(env, "HISTO_SERVING_MODEL_DIR", HISTO_PIPELINE_ROOT=pipeline_root),
        ),
        schema_file=_image_path(_get(env, "HISTO_SCHEMA_FILE")),
        beam_pipeline_args=beam_pipeline_args(env, bucket, image, cpu),
        trainer_gpus=gpus,
        trainer_node_selector=selector,
        trainer_tolerations=tolerations,
        cpu_request=cpu,
        memory_request=_checked_memory(env, "HISTO_MEMORY_REQUEST"),
        memory_limit=_checked_memory(env, "HISTO_MEMORY_LIMIT"),
        trainer_cpu_request=_checked_cpu(env, "HISTO_TRAINER_CPU_REQUEST"),
        trainer_memory_request=_checked_memory(env, "HISTO_TRAINER_MEMORY_REQUEST"),
        trainer_memory_limit=_checked_memory(env, "HISTO_TRAINER_MEMORY_LIMIT"),
        use_gcp_secret=_flag(env, "HISTO_USE_GCP_SECRET"),
        metadata_ui_path=_get(env, "HISTO_METADATA_UI_PATH"),
        output_dir=_get(env, "HISTO_KFP_OUTPUT_DIR"),
        vertex_accelerator=_get(env, "HISTO_VERTEX_ACCELERATOR"),
    )


def _image_path(path: str) -> str:
    """A path inside the image: relative ones start at the repository's folder there."""
    if path.startswith("/") or "://" in path:
        return path
    return f"{IMAGE_REPOSITORY_ROOT}/{path}"


def _image_root(env: Mapping[str, str], bucket: str) -> str:
    value = _get(env, "HISTO_IMAGE_ROOT", HISTO_BUCKET=bucket)
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
