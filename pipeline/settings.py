"""Every setting of the project, declared once: its ``HISTO_*`` name, type, default, unit
and meaning, grouped by the job it tunes.

``pipeline.configs`` (local runs and the pipeline's arguments), ``pipeline.kubeflow_settings``
(deployment), the CLIs and the components' parameter defaults all read their values here;
module files (``modules/``) get theirs through ``custom_config`` and never import this.
``docs/settings.md`` is generated from this table (``python -m pipeline.settings``) and a
test keeps it in step. Only the standard library is imported: it loads without TensorFlow.

A default may name other settings (``$HISTO_BUCKET/data``): the deployment settings expand
it with their resolved values. ``None`` means "not set" (what that implies is in the meaning).
"""

from __future__ import annotations

import dataclasses
import os
import string
import sys
from collections.abc import Mapping
from typing import Any

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str  # the environment variable
    group: str
    kind: type  # str, int, float or bool
    default: Any
    meaning: str
    unit: str = ""
    config_key: str = ""  # its key in the Trainer's custom_config, for training settings


class SettingError(ValueError):
    """A setting is unknown or its value malformed; the message names the variable."""


GROUPS: dict[str, str] = {
    "pipeline": "What runs",
    "data": "Data and ingestion",
    "gates": "Data gates",
    "training": "Training",
    "blessing": "Blessing",
    "report": "Report",
    "tflite": "TFLite",
    "local": "Local run",
    "deployment": "Deployment (Kubeflow, Vertex)",
    "serving": "Serving",
}

S = Setting
SETTINGS: tuple[Setting, ...] = (
    # ------------------------------------------------------------------ what runs
    S("HISTO_PIPELINE_NAME", "pipeline", str, "histopath-classifier",
      "pipeline name: metadata context, output folders, the Kubeflow pipeline"),
    S("HISTO_TRAINER_MODULE", "pipeline", str, "modules.trainer.trainer_module",
      "the Trainer's module (dotted; importable in the image on Kubeflow)"),
    # ------------------------------------------------------------------ data
    S("HISTO_PATIENT_RULE", "data", str, "breakhis",
      "which slide ids are one patient: breakhis (slide letters dropped), as-is, "
      "regex:<pattern>; ingestion, histo-preprocess, the leakage gate and predict alike"),
    S("HISTO_LAYOUT", "data", str, "auto",
      "how labels and patients are read from the image tree (preprocessing/layouts.py)"),
    S("HISTO_MANIFEST", "data", str, "",
      "CSV path,label,patient_id[,...] naming labels and patients; empty: from the layout"),
    S("HISTO_SPLIT_RATIOS", "data", str, "0.7,0.15,0.15",
      "train,eval,test shares, drawn per patient (patients keep their split)"),
    S("HISTO_SPLIT_SALT", "data", str, "", "change to draw a different patient split"),
    S("HISTO_MAX_REJECT_FRACTION", "data", float, 0.05,
      "more unreadable new files than this share stops the span", "fraction"),
    S("HISTO_MIN_SIDE", "data", int, 32, "images with a shorter side are rejected", "px"),
    S("HISTO_MAX_PIXELS", "data", int, 50_000_000,
      "images with more pixels are rejected (decompression bombs)", "px"),
    S("HISTO_MIN_NEW_PATIENTS", "data", int, 20,
      "after the first span, arrivals wait until this many new patients are there "
      "(a batch the drift gate can judge)", "patients"),
    S("HISTO_SPAN_WINDOW", "data", str, "all",
      "spans Transform and the Evaluator see: all, latest or a number of newest spans "
      "that passed the gates"),
    S("HISTO_SCHEMA_FILE", "data", str, "pipeline/schema/schema.pbtxt",
      "the curated raw-data schema (ImportSchemaGen); relative paths are from the "
      "repository root (in the image: /pipeline)"),
    # ------------------------------------------------------------------ gates
    S("HISTO_DRIFT_MAX_JSD", "gates", float, 0.1,
      "drift gate: largest Jensen-Shannon divergence of a numeric feature against the "
      "blessed model's training data", "JSD"),
    S("HISTO_DRIFT_MAX_FORMAT_LINF", "gates", float, 0.2,
      "drift gate: largest L-infinity distance of the file-format mix", "L-inf"),
    S("HISTO_ACCEPT_DRIFT", "gates", str, "",
      "features whose drift is accepted on purpose (comma-separated, or all); still reported"),
    # ------------------------------------------------------------------ training
    S("HISTO_IMAGE_SIZE", "training", int, 224,
      "tile side: the model's input; images are cut into tiles of about this size", "px",
      "image_size"),
    S("HISTO_BACKBONE", "training", str, "mobilenet_v2",
      "ImageNet backbone: mobilenet_v2, efficientnet_b0, densenet121, ...", "", "backbone"),
    S("HISTO_WEIGHTS", "training", str, "auto",
      "backbone weights: auto, imagenet, offline, random or a file", "", "weights"),
    S("HISTO_WEIGHTS_CACHE", "training", str, "",
      "where converted offline weights are kept; empty: $XDG_CACHE_HOME (or ~/.cache)"
      "/histopath-tfx on the machine that trains", "", "weights_cache_dir"),
    S("HISTO_MAX_TILES", "training", int, 12,
      "tiles per image at most (larger images are shrunk to fit)", "tiles", "max_tiles"),
    S("HISTO_TILE_SCALES", "training", str, "1.0,1.5",
      "zooms each image is read at, comma-separated: 1.0 native tiles; 1.0,1.5 adds tiles of "
      "the image magnified 1.5x (each scale weighs the same in the image's score)", "",
      "tile_scales"),
    S("HISTO_BATCH_SIZE", "training", int, 16,
      "fine-tuning batch per replica", "tiles", "batch_size"),
    S("HISTO_HEAD_BATCH_SIZE", "training", int, 32,
      "head training batch (cached features)", "images", "head_batch_size"),
    S("HISTO_EPOCHS_HEAD", "training", int, 200,
      "head epochs on cached features (all of them unless early stopping is on)", "epochs",
      "epochs_head"),
    S("HISTO_EARLY_STOPPING_PATIENCE", "training", int, 0,
      "head epochs without a better eval AUC before stopping (0: no early stopping, "
      "every epoch trained)", "epochs",
      "early_stopping_patience"),
    S("HISTO_EPOCHS_FINE_TUNE", "training", int, 0,
      "fine-tuning epochs of the top of the backbone (0: head only)", "epochs",
      "epochs_fine_tune"),
    S("HISTO_LEARNING_RATE", "training", float, 3e-4, "head learning rate", "",
      "learning_rate"),
    S("HISTO_FINE_TUNE_LEARNING_RATE", "training", float, 1e-4, "fine-tuning learning rate",
      "", "fine_tune_learning_rate"),
    S("HISTO_FINE_TUNE_FRACTION", "training", float, 0.3,
      "top share of the backbone's layers that fine-tuning trains", "fraction",
      "fine_tune_fraction"),
    S("HISTO_DROPOUT", "training", float, 0.0, "dropout before the head", "fraction",
      "dropout"),
    S("HISTO_HEAD_L2", "training", float, 0.02, "L2 weight of the head", "", "head_l2"),
    S("HISTO_LABEL_SMOOTHING", "training", float, 0.0,
      "label smoothing of the training loss, head and fine-tuning (0: hard labels)",
      "fraction", "label_smoothing"),
    S("HISTO_HEAD_REFIT", "training", bool, True,
      "after early stopping and calibration, train the head again on train + eval for the "
      "epochs it trained (or early stopping kept)", "", "head_refit"),
    S("HISTO_TILE_CACHE_MB", "training", int, 4096,
      "decoded fine-tuning tiles kept in memory up to this", "MB", "tile_cache_mb"),
    S("HISTO_CALIBRATION_FOLDS", "training", int, 5,
      "the temperature (and a fitted threshold) come from out-of-fold logits of every train + "
      "eval patient: the eval split is one fold, the train patients are dealt into this many "
      "minus one more, each fold's head trained on the rest; 1: the eval split alone",
      "folds", "calibration_folds"),
    S("HISTO_CALIBRATION_WEIGHTS", "training", str, "patient",
      "what weighs the same in the temperature's fit and in the eval_* threshold rules: patient "
      "(each patient's images share one "
      "weight, so the patient with the most images does not set it alone) or image; patient "
      "needs the patient ids Transform passes through (recipe.CALIBRATION_WEIGHTS)",
      "", "calibration_weights"),
    S("HISTO_THRESHOLD_RULE", "training", str, "balanced_prior",
      "how the operating threshold is chosen on the calibration logits (recipe.THRESHOLD_RULES)",
      "", "threshold_rule"),
    S("HISTO_SEED", "training", int, 42, "random seed of training", "", "seed"),
    S("HISTO_TRAIN_STEPS", "training", int, 200,
      "caps fine-tuning steps over all epochs (TrainArgs.num_steps)", "steps"),
    S("HISTO_EVAL_STEPS", "training", int, 20, "EvalArgs.num_steps", "steps"),
    S("HISTO_ENABLE_TUNER", "training", bool, False,
      "run the Tuner before the Trainer (its best head L2 and dropout win)"),
    S("HISTO_TUNER_TRIALS", "training", int, 4, "Tuner trials (each about one training)",
      "trials"),
    # ------------------------------------------------------------------ blessing
    S("HISTO_MIN_AUC", "blessing", float, 0.6,
      "the Evaluator blesses a model with at least this AUC on the test split", "AUC"),
    S("HISTO_MAX_AUC_DROP", "blessing", float, 0.0,
      "... and at most this much below the last blessed model's AUC (0: never worse)", "AUC"),
    # ------------------------------------------------------------------ report
    S("HISTO_GRAD_CAM_PER_CLASS", "report", int, 4,
      "Grad-CAM gallery: audit tiles per class, spread over patients", "tiles"),
    # ------------------------------------------------------------------ TFLite
    S("HISTO_TFLITE_MAX_IMAGES", "tflite", int, 600,
      "held-out images the TFLite parity check scores at most", "images"),
    S("HISTO_TFLITE_MAX_AUC_LOSS", "tflite", float, 0.01,
      "the TFLite model may score at most this much AUC below the SavedModel on the same "
      "images, else it is not shipped", "AUC"),
    # ------------------------------------------------------------------ local run
    S("HISTO_OUTPUT_DIR", "local", str, "outputs",
      "local_runner.py: pipeline outputs, metadata, pushed models, the log"),
    S("HISTO_BEAM_MODE", "local", str, "auto",
      "local Beam: auto (by the data's size), in_memory or multi_processing"),
    S("HISTO_SMALL_DATA_BYTES", "local", int, 256 * 2**20,
      "auto Beam mode: TFRecords under the data root below this run in one process", "bytes"),
    # ------------------------------------------------------------------ deployment
    S("HISTO_IMAGE", "deployment", str, "histopath-tfx:latest",
      "the image built from ./Dockerfile that every step runs (TFX_IMAGE also read)"),
    S("HISTO_BUCKET", "deployment", str, "gs://histopath-tfx",
      "root of the paths below"),
    S("HISTO_PIPELINE_ROOT", "deployment", str,
      "$HISTO_BUCKET/tfx_pipeline_output/$HISTO_PIPELINE_NAME", "all pipeline artifacts"),
    S("HISTO_DATA_ROOT", "deployment", str, "$HISTO_BUCKET/data",
      "span-N/{train,eval,test}/, written by IngestImages or histo-preprocess "
      "(local_runner.py: --data-root, no default)"),
    S("HISTO_IMAGE_ROOT", "deployment", str, "$HISTO_BUCKET/images",
      "slides: each run ingests what arrived into the next span; none: no ingestion step "
      "(local_runner.py: --image-root, none by default)"),
    S("HISTO_SERVING_MODEL_DIR", "deployment", str, "$HISTO_PIPELINE_ROOT/serving_model",
      "the Pusher's destination (versioned SavedModels for TF Serving)"),
    S("HISTO_ALLOW_LOCAL_PATHS", "deployment", bool, False,
      "accept local paths (pods cannot see this machine's disk; only for a volume mounted "
      "in every pod)"),
    S("HISTO_BEAM_RUNNER", "deployment", str, "direct",
      "Beam for ExampleGen, StatisticsGen, Transform, Evaluator: direct, dataflow or "
      "portable (Flink/Spark job server)"),
    S("HISTO_BEAM_DIRECT_WORKERS", "deployment", int, None,
      "direct: worker processes; not set: the CPU request, rounded down (1: in the step's "
      "process)", "processes"),
    S("HISTO_GCP_PROJECT", "deployment", str, None, "dataflow: required"),
    S("HISTO_GCP_REGION", "deployment", str, None, "dataflow: required"),
    S("HISTO_DATAFLOW_TEMP", "deployment", str, "$HISTO_BUCKET/tmp", "dataflow: temp location"),
    S("HISTO_BEAM_JOB_ENDPOINT", "deployment", str, None,
      "portable: required, e.g. flink-jobserver.flink:8099"),
    S("HISTO_BEAM_ENVIRONMENT_TYPE", "deployment", str, "EXTERNAL",
      "portable: a Beam worker-pool sidecar"),
    S("HISTO_BEAM_ENVIRONMENT_CONFIG", "deployment", str, "localhost:50000",
      "portable: the worker pool's address"),
    S("HISTO_BEAM_EXTRA_ARGS", "deployment", str, "", "Beam options appended (shell words)"),
    S("HISTO_TRAINER_GPUS", "deployment", int, 1,
      "nvidia.com/gpu limit of the Trainer; 0: CPU Trainer, no GPU scheduling", "GPUs"),
    S("HISTO_GPU_NODE_SELECTOR_KEY", "deployment", str, "cloud.google.com/gke-accelerator",
      "node label the Trainer selects on"),
    S("HISTO_GPU_TYPE", "deployment", str, "nvidia-tesla-t4",
      "its value (e.g. nvidia-l4, nvidia-tesla-a100)"),
    S("HISTO_TRAINER_NODE_SELECTOR", "deployment", str, "",
      "extra key=value,... for the Trainer, e.g. cloud.google.com/gke-nodepool=gpu-pool"),
    S("HISTO_TRAINER_TOLERATIONS", "deployment", str, "nvidia.com/gpu:NoSchedule",
      "the Trainer's tolerations: key[=value][:Effect],... (no value: Exists)"),
    S("HISTO_CPU_REQUEST", "deployment", str, "1", "every step but the Trainer", "cores"),
    S("HISTO_MEMORY_REQUEST", "deployment", str, "4Gi", "every step but the Trainer", "bytes"),
    S("HISTO_MEMORY_LIMIT", "deployment", str, None, "every step but the Trainer", "bytes"),
    S("HISTO_TRAINER_CPU_REQUEST", "deployment", str, "4",
      "the Trainer (and the optional Tuner, which gets no GPU)", "cores"),
    S("HISTO_TRAINER_MEMORY_REQUEST", "deployment", str, "16Gi", "the Trainer and Tuner",
      "bytes"),
    S("HISTO_TRAINER_MEMORY_LIMIT", "deployment", str, None, "the Trainer and Tuner", "bytes"),
    S("HISTO_USE_GCP_SECRET", "deployment", bool, False,
      "mount the legacy user-gcp-sa secret in each pod"),
    S("HISTO_METADATA_UI_PATH", "deployment", str, "/tmp/mlpipeline-ui-metadata.json",
      "where steps write the KFP UI's viewer file (writable by non-root)"),
    S("HISTO_KFP_OUTPUT_DIR", "deployment", str, None,
      "where the compiled package is written; not set: the current directory"),
    S("HISTO_VERTEX_ACCELERATOR", "deployment", str, "NVIDIA_TESLA_T4",
      "Vertex accelerator enum for the Trainer"),
    # ------------------------------------------------------------------ serving
    S("HISTO_WEB_HOST", "serving", str, "127.0.0.1", "histo-web: address to listen on"),
    S("HISTO_WEB_PORT", "serving", int, 8080, "histo-web: port", "port"),
)  # fmt: skip
del S

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def setting(name: str) -> Setting:
    try:
        return BY_NAME[name]
    except KeyError:
        raise SettingError(f"{name}: not a declared setting (pipeline/settings.py)") from None


def default(name: str) -> Any:
    """The declared default, as its type."""
    return setting(name).default


def parse(name: str, text: str) -> Any:
    """``text`` as the setting's type; the error names the variable."""
    kind = setting(name).kind
    value = text.strip()
    try:
        if kind is bool:
            if value.lower() in TRUE_WORDS:
                return True
            if value.lower() in FALSE_WORDS:
                return False
            raise ValueError(f"expected one of {TRUE_WORDS + FALSE_WORDS}")
        return kind(value)
    except ValueError as error:
        raise SettingError(f"{name}={text!r}: not a {kind.__name__} ({error})") from None


def read(name: str, env: Mapping[str, str] | None = None) -> Any:
    """The setting from the environment (unset or blank: its default), as its type."""
    env = os.environ if env is None else env
    text = env.get(name, "").strip()
    return parse(name, text) if text else default(name)


def expand(value: str, resolved: Mapping[str, Any]) -> str:
    """``$HISTO_*`` names in a default replaced by the resolved values of those settings."""
    return string.Template(value).substitute({k: str(v) for k, v in resolved.items()})


def group(name: str) -> list[Setting]:
    return [s for s in SETTINGS if s.group == name]


def training_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The Trainer's custom_config: every training setting that has a config key."""
    return {s.config_key: read(s.name, env) for s in SETTINGS if s.config_key}


def _shown(value: Any) -> str:
    if value is None:
        return "(not set)"
    if value == "":
        return "(empty)"
    if isinstance(value, bool):
        return "1" if value else "0"
    return f"`{value}`"


def markdown() -> str:
    """docs/settings.md: one table per group."""
    lines = [
        "# Settings",
        "",
        "Generated from `pipeline/settings.py` by `python -m pipeline.settings > "
        "docs/settings.md`; a test checks it is current. Every setting is an environment "
        "variable; unset or blank means its default.",
    ]
    for key, title in GROUPS.items():
        lines += ["", f"## {title}", "", "| Variable | Type | Default | Unit | Meaning |"]
        lines.append("|---|---|---|---|---|")
        for s in group(key):
            lines.append(
                f"| `{s.name}` | {s.kind.__name__} | {_shown(s.default)} | {s.unit} | {s.meaning} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
