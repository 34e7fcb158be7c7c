"""Pipeline settings, in one place, with the environment variables that override them.

Runners read these; ``pipeline.create_pipeline`` takes them as arguments so tests can
pass their own. Every setting has a documented default that works for the demo.
"""

import json
import os
from typing import Any

from modules import features
from modules.trainer.trainer_module import DEFAULTS as TRAINER_DEFAULTS
from preprocessing import beam_runner, patients
from preprocessing.image_io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, str(default)))


PIPELINE_NAME = _env("HISTO_PIPELINE_NAME", "histopath-classifier")

# Module files for Transform and Trainer. Locally they are passed as files (TFX builds a
# user-code wheel); on Kubeflow as dotted module paths baked into the container image.
TRANSFORM_MODULE = "modules.transform.transform_module"
# HISTO_TRAINER_MODULE swaps the Trainer's module (dotted, importable in the image).
TRAINER_MODULE = _env("HISTO_TRAINER_MODULE", "modules.trainer.trainer_module")
TUNER_MODULE = "modules.tuner.tuner_module"

# Tile side in pixels: the model's input; images are cut into tiles of about this size.
IMAGE_SIZE = _env_int("HISTO_IMAGE_SIZE", features.DEFAULT_IMAGE_SIZE)

# Trainer settings (modules/trainer/recipe.py): defaults are the recipe's measured winner,
# declared once in trainer_module.DEFAULTS; each HISTO_* variable overrides one.
BACKBONE = _env("HISTO_BACKBONE", TRAINER_DEFAULTS["backbone"])
WEIGHTS = _env("HISTO_WEIGHTS", TRAINER_DEFAULTS["weights"])  # auto|imagenet|offline|random|path
MAX_TILES = _env_int("HISTO_MAX_TILES", TRAINER_DEFAULTS["max_tiles"])
TRAIN_NUM_STEPS = _env_int("HISTO_TRAIN_STEPS", 200)  # caps fine-tuning steps, all epochs
EVAL_NUM_STEPS = _env_int("HISTO_EVAL_STEPS", 20)
TRAIN_BATCH_SIZE = _env_int("HISTO_BATCH_SIZE", TRAINER_DEFAULTS["batch_size"])
EPOCHS_HEAD = _env_int("HISTO_EPOCHS_HEAD", TRAINER_DEFAULTS["epochs_head"])
EPOCHS_FINE_TUNE = _env_int("HISTO_EPOCHS_FINE_TUNE", TRAINER_DEFAULTS["epochs_fine_tune"])
LEARNING_RATE = _env_float("HISTO_LEARNING_RATE", TRAINER_DEFAULTS["learning_rate"])
FINE_TUNE_LEARNING_RATE = _env_float(
    "HISTO_FINE_TUNE_LEARNING_RATE", TRAINER_DEFAULTS["fine_tune_learning_rate"]
)
FINE_TUNE_FRACTION = _env_float("HISTO_FINE_TUNE_FRACTION", TRAINER_DEFAULTS["fine_tune_fraction"])
DROPOUT = _env_float("HISTO_DROPOUT", TRAINER_DEFAULTS["dropout"])
HEAD_L2 = _env_float("HISTO_HEAD_L2", TRAINER_DEFAULTS["head_l2"])
# How the operating threshold is chosen on the eval split (recipe.THRESHOLD_RULES).
THRESHOLD_RULE = _env("HISTO_THRESHOLD_RULE", TRAINER_DEFAULTS["threshold_rule"])
SEED = _env_int("HISTO_SEED", TRAINER_DEFAULTS["seed"])

# Optional Tuner between Transform and Trainer (off: each trial costs about one training).
# Its best head L2 and dropout override the settings above.
ENABLE_TUNER = _env("HISTO_ENABLE_TUNER", "false").strip().lower() in ("1", "true", "yes", "on")
TUNER_TRIALS = _env_int("HISTO_TUNER_TRIALS", 4)

# Ingestion (IngestImages, when the runner is given an image root): how the images that
# arrived since the last span become the next span. The same meanings as histo-preprocess.
LAYOUT = _env("HISTO_LAYOUT", "auto")  # preprocessing.layouts.LAYOUTS
MANIFEST = _env("HISTO_MANIFEST", "")  # CSV path,label,patient_id[,...]; "" for none
SPLIT_RATIOS = _env("HISTO_SPLIT_RATIOS", "0.7,0.15,0.15")  # train,eval,test, per patient
SPLIT_SALT = _env("HISTO_SPLIT_SALT", "")
MAX_REJECT_FRACTION = _env_float("HISTO_MAX_REJECT_FRACTION", 0.05)  # of the new files
MIN_SIDE = _env_int("HISTO_MIN_SIDE", DEFAULT_MIN_SIDE)  # pixels
MAX_PIXELS = _env_int("HISTO_MAX_PIXELS", DEFAULT_MAX_PIXELS)
# After the first span, arrivals wait until this many new patients are there: a span is
# then a batch the drift gate can judge (README, "Scheduled retraining").
MIN_NEW_PATIENTS = _env_int("HISTO_MIN_NEW_PATIENTS", 20)


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
SPAN_WINDOW = parse_span_window(_env("HISTO_SPAN_WINDOW", "all"))

# Data gates (before Transform). The patient rule must be the one preprocessing used.
PATIENT_RULE = patients.configured_rule()  # HISTO_PATIENT_RULE
# The curated raw-data schema (ImportSchemaGen); regenerate with pipeline/schema/curate.py.
SCHEMA_FILE = _env(
    "HISTO_SCHEMA_FILE",
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "schema.pbtxt"),
)
# Drift gate: the new span's train split against the train split behind the last blessed
# model. Jensen-Shannon divergence for numeric features, L-infinity for the format.
# Measured (README, "Data gates"): demo span plus new patients <= 0.011; train splits of two
# patient draws of the shared BreakHis sets <= 0.03; demo tiles with denser stain and a blur
# 0.16-1.0.
DRIFT_MAX_JSD = _env_float("HISTO_DRIFT_MAX_JSD", 0.1)
DRIFT_MAX_FORMAT_LINF = _env_float("HISTO_DRIFT_MAX_FORMAT_LINF", 0.2)
DRIFT_JSD_FEATURES: tuple[str, ...] = (
    features.STAIN_HEMATOXYLIN_KEY,
    features.STAIN_EOSIN_KEY,
    features.TISSUE_FRACTION_KEY,
    features.SHARPNESS_KEY,
    features.MAGNIFICATION_KEY,
    features.HEIGHT_KEY,
    features.WIDTH_KEY,
)
# Features whose drift is accepted on purpose (comma-separated, or "all"): still reported.
ACCEPT_DRIFT = _env("HISTO_ACCEPT_DRIFT", "")

# Evaluator blessing: an absolute floor and a "must not be worse than the last blessed model".
EVAL_SPLIT = features.TEST_SPLIT
MIN_AUC = _env_float("HISTO_MIN_AUC", 0.6)
MAX_AUC_DROP = _env_float("HISTO_MAX_AUC_DROP", 0.0)  # candidate AUC >= baseline AUC - this

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
# HISTO_BEAM_MODE: auto (by the size of the data root), in_memory or multi_processing.
LOCAL_BEAM_IN_MEMORY_ARGS: list[str] = [
    beam_runner.RUNNER_ARG,
    "--direct_running_mode=in_memory",
    "--direct_num_workers=1",
]
BEAM_MODE = _env("HISTO_BEAM_MODE", "auto")
SMALL_DATA_BYTES = _env_int("HISTO_SMALL_DATA_BYTES", 256 * 2**20)  # TFRecords under data root


def drift_thresholds() -> str:
    """The drift gate's thresholds as its JSON parameter: {feature: {comparator: max}}."""
    thresholds = {name: {"jensen_shannon_divergence": DRIFT_MAX_JSD} for name in DRIFT_JSD_FEATURES}
    thresholds[features.SOURCE_FORMAT_KEY] = {"infinity_norm": DRIFT_MAX_FORMAT_LINF}
    return json.dumps(thresholds, sort_keys=True)


def trainer_config() -> dict[str, Any]:
    """The Trainer's custom_config from these settings (the pipeline adds image_size)."""
    return {
        "backbone": BACKBONE,
        "weights": WEIGHTS,
        "batch_size": TRAIN_BATCH_SIZE,
        "epochs_head": EPOCHS_HEAD,
        "epochs_fine_tune": EPOCHS_FINE_TUNE,
        "learning_rate": LEARNING_RATE,
        "fine_tune_learning_rate": FINE_TUNE_LEARNING_RATE,
        "fine_tune_fraction": FINE_TUNE_FRACTION,
        "dropout": DROPOUT,
        "head_l2": HEAD_L2,
        "max_tiles": MAX_TILES,
        "threshold_rule": THRESHOLD_RULE,
        "seed": SEED,
    }


def ingest_settings() -> dict[str, Any]:
    """IngestImages' parameters from these settings (create_pipeline adds the two roots and
    its patient_rule, the one the leakage gate uses)."""
    return {
        "layout": LAYOUT,
        "manifest": MANIFEST,
        "split_ratios": SPLIT_RATIOS,
        "split_salt": SPLIT_SALT,
        "max_reject_fraction": MAX_REJECT_FRACTION,
        "min_side": MIN_SIDE,
        "max_pixels": MAX_PIXELS,
        "min_new_patients": MIN_NEW_PATIENTS,
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
        "image_size": IMAGE_SIZE,
        "trainer_config": trainer_config(),
        "train_steps": TRAIN_NUM_STEPS,
        "eval_steps": EVAL_NUM_STEPS,
        "min_auc": MIN_AUC,
        "max_auc_drop": MAX_AUC_DROP,
        "eval_split": EVAL_SPLIT,
        "schema_file": SCHEMA_FILE,
        "patient_rule": PATIENT_RULE,
        "drift_thresholds": drift_thresholds(),
        "accept_drift": ACCEPT_DRIFT,
        "ingest_settings": ingest_settings(),
        "span_window": SPAN_WINDOW,
    }
