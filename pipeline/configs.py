"""The pipeline's settings as values: read from the declared table (pipeline/settings.py,
docs/settings.md), overridden by the HISTO_* environment variables.

Runners read these; ``pipeline.create_pipeline`` takes them as arguments so tests can
pass their own.
"""

import json
import os
from typing import Any

from modules import features
from pipeline import settings
from preprocessing import beam_runner, patients


def _read(name: str) -> Any:
    return settings.read(name)


PIPELINE_NAME: str = _read("HISTO_PIPELINE_NAME")

# Module files for Transform and Trainer. Locally they are passed as files (TFX builds a
# user-code wheel); on Kubeflow as dotted module paths baked into the container image.
TRANSFORM_MODULE = "modules.transform.transform_module"
TRAINER_MODULE: str = _read("HISTO_TRAINER_MODULE")
TUNER_MODULE = "modules.tuner.tuner_module"

# Trainer settings: what the Trainer's custom_config holds (settings.py, group training).
IMAGE_SIZE: int = _read("HISTO_IMAGE_SIZE")
TRAIN_NUM_STEPS: int = _read("HISTO_TRAIN_STEPS")
EVAL_NUM_STEPS: int = _read("HISTO_EVAL_STEPS")
ENABLE_TUNER: bool = _read("HISTO_ENABLE_TUNER")
TUNER_TRIALS: int = _read("HISTO_TUNER_TRIALS")


def parse_span_window(text: str) -> int:
    """HISTO_SPAN_WINDOW: "all" (0), "latest" (1) or a number of newest spans."""
    value = text.strip().lower()
    if value in ("all", "0"):
        return 0
    if value == "latest":
        return 1
    if value.isdigit():
        return int(value)
    raise ValueError(f"HISTO_SPAN_WINDOW={text!r}: expected all, latest or a number of spans")


# Training and evaluation window: the newest span plus earlier spans that passed the gates.
SPAN_WINDOW = parse_span_window(_read("HISTO_SPAN_WINDOW"))

# Data gates (before Transform). The patient rule must be the one preprocessing used.
PATIENT_RULE = patients.configured_rule()  # HISTO_PATIENT_RULE
REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The curated raw-data schema (ImportSchemaGen); regenerate with pipeline/schema/curate.py.
_SCHEMA: str = _read("HISTO_SCHEMA_FILE")
SCHEMA_FILE = _SCHEMA if "://" in _SCHEMA else os.path.join(REPOSITORY_ROOT, _SCHEMA)
# Drift gate: the new span's train split against the train split behind the last blessed
# model. Jensen-Shannon divergence for numeric features, L-infinity for the format.
# Measured (README, "Data gates"): demo span plus new patients <= 0.011; train splits of two
# patient draws of the shared BreakHis sets <= 0.03; demo tiles with denser stain and a blur
# 0.16-1.0.
DRIFT_MAX_JSD: float = _read("HISTO_DRIFT_MAX_JSD")
DRIFT_MAX_FORMAT_LINF: float = _read("HISTO_DRIFT_MAX_FORMAT_LINF")
DRIFT_JSD_FEATURES: tuple[str, ...] = (
    features.STAIN_HEMATOXYLIN_KEY,
    features.STAIN_EOSIN_KEY,
    features.TISSUE_FRACTION_KEY,
    features.SHARPNESS_KEY,
    features.MAGNIFICATION_KEY,
    features.HEIGHT_KEY,
    features.WIDTH_KEY,
)
ACCEPT_DRIFT: str = _read("HISTO_ACCEPT_DRIFT")

# Evaluator blessing on the held-out patients of the test split (features.EVAL_SPLIT is
# the split the Trainer early-stops and calibrates on: a different one).
BLESSING_SPLIT = features.TEST_SPLIT
MIN_AUC: float = _read("HISTO_MIN_AUC")
MAX_AUC_DROP: float = _read("HISTO_MAX_AUC_DROP")  # candidate AUC >= baseline AUC - this

# Report and TFLite.
GRAD_CAM_PER_CLASS: int = _read("HISTO_GRAD_CAM_PER_CLASS")
TFLITE_MAX_IMAGES: int = _read("HISTO_TFLITE_MAX_IMAGES")
TFLITE_MAX_AUC_LOSS: float = _read("HISTO_TFLITE_MAX_AUC_LOSS")

# Beam options for the Beam-powered components (ExampleGen, StatisticsGen, Transform, Evaluator).
# The DirectRunner's batch engine named explicitly (preprocessing/beam_runner.py: no Prism
# download attempt), multi-processing on every core.
LOCAL_BEAM_PIPELINE_ARGS: list[str] = [
    beam_runner.RUNNER_ARG,
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
]
# Small data runs in one process instead: each worker process imports TensorFlow (and the
# Evaluator's loads the model), 10-15 s per Beam component, more than the work on a demo span.
LOCAL_BEAM_IN_MEMORY_ARGS: list[str] = [
    beam_runner.RUNNER_ARG,
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
]
BEAM_MODE: str = _read("HISTO_BEAM_MODE")
SMALL_DATA_BYTES: int = _read("HISTO_SMALL_DATA_BYTES")


def drift_thresholds() -> str:
    """The drift gate's thresholds as its JSON parameter: {feature: {comparator: max}}."""
    thresholds = {name: {"jensen_shannon_divergence": DRIFT_MAX_JSD} for name in DRIFT_JSD_FEATURES}
    thresholds[features.SOURCE_FORMAT_KEY] = {"infinity_norm": DRIFT_MAX_FORMAT_LINF}
    return json.dumps(thresholds, sort_keys=True)


def trainer_config() -> dict[str, Any]:
    """The Trainer's custom_config from the training settings (settings.training_config)."""
    return settings.training_config()


def ingest_settings() -> dict[str, Any]:
    """IngestImages' parameters from these settings (create_pipeline adds the two roots and
    its patient_rule, the one the leakage gate uses)."""
    return {
        "layout": _read("HISTO_LAYOUT"),
        "manifest": _read("HISTO_MANIFEST"),
        "split_ratios": _read("HISTO_SPLIT_RATIOS"),
        "split_salt": _read("HISTO_SPLIT_SALT"),
        "max_reject_fraction": _read("HISTO_MAX_REJECT_FRACTION"),
        "min_side": _read("HISTO_MIN_SIDE"),
        "max_pixels": _read("HISTO_MAX_PIXELS"),
        "min_new_patients": _read("HISTO_MIN_NEW_PATIENTS"),
    }


def pipeline_settings() -> dict[str, Any]:
    """The create_pipeline arguments every runner takes from these settings, as they are.

    Runners add what is theirs: paths, Beam options, metadata, and (locally) module files
    in place of these dotted module paths.
    """
    return {
        "transform_module": TRANSFORM_MODULE,
        "trainer_module": TRAINER_MODULE,
        "enable_tuner": ENABLE_TUNER,
        "tuner_module": TUNER_MODULE,
        "tuner_trials": TUNER_TRIALS,
        "trainer_config": trainer_config(),
        "train_steps": TRAIN_NUM_STEPS,
        "eval_steps": EVAL_NUM_STEPS,
        "min_auc": MIN_AUC,
        "max_auc_drop": MAX_AUC_DROP,
        "blessing_split": BLESSING_SPLIT,
        "grad_cam_per_class": GRAD_CAM_PER_CLASS,
        "tflite_max_images": TFLITE_MAX_IMAGES,
        "tflite_max_auc_loss": TFLITE_MAX_AUC_LOSS,
        "schema_file": SCHEMA_FILE,
        "patient_rule": PATIENT_RULE,
        "drift_thresholds": drift_thresholds(),
        "accept_drift": ACCEPT_DRIFT,
        "ingest_settings": ingest_settings(),
        "span_window": SPAN_WINDOW,
    }
