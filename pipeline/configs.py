"""Pipeline settings, in one place, with the environment variables that override them.

Runners read these; ``pipeline.create_pipeline`` takes them as arguments so tests can
pass their own. Every setting has a documented default that works for the demo.
"""

import os
from typing import Any

from modules import features


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
TRAINER_MODULE = "modules.trainer.trainer_module"
TUNER_MODULE = "modules.tuner.tuner_module"

# Image size used by Transform (decode + resize) and by the Trainer's model input.
IMAGE_SIZE = _env_int("HISTO_IMAGE_SIZE", features.DEFAULT_IMAGE_SIZE)

# Trainer settings.
BACKBONE = _env("HISTO_BACKBONE", "mobilenet_v2")
WEIGHTS = _env("HISTO_WEIGHTS", "auto")  # auto | imagenet | offline | random | /path/to/file.h5
TRAIN_NUM_STEPS = _env_int("HISTO_TRAIN_STEPS", 200)
EVAL_NUM_STEPS = _env_int("HISTO_EVAL_STEPS", 20)
TRAIN_BATCH_SIZE = _env_int("HISTO_BATCH_SIZE", 16)
EPOCHS_HEAD = _env_int("HISTO_EPOCHS_HEAD", 4)
EPOCHS_FINE_TUNE = _env_int("HISTO_EPOCHS_FINE_TUNE", 2)
LEARNING_RATE = _env_float("HISTO_LEARNING_RATE", 1e-3)
FINE_TUNE_LEARNING_RATE = _env_float("HISTO_FINE_TUNE_LEARNING_RATE", 1e-4)
FINE_TUNE_FRACTION = _env_float("HISTO_FINE_TUNE_FRACTION", 0.3)
DROPOUT = _env_float("HISTO_DROPOUT", 0.3)
SEED = _env_int("HISTO_SEED", 42)

# Optional Tuner between Transform and Trainer (off: each trial costs about one training).
# Its best learning rate, dropout and fine-tune fraction override the settings above.
ENABLE_TUNER = _env("HISTO_ENABLE_TUNER", "false").strip().lower() in ("1", "true", "yes", "on")
TUNER_TRIALS = _env_int("HISTO_TUNER_TRIALS", 4)

# Evaluator blessing: an absolute floor and a "must not be worse than the last blessed model".
EVAL_SPLIT = features.TEST_SPLIT
MIN_AUC = _env_float("HISTO_MIN_AUC", 0.6)
MAX_AUC_DROP = _env_float("HISTO_MAX_AUC_DROP", 0.0)  # candidate AUC >= baseline AUC - this

# Beam options for the Beam-powered components (ExampleGen, StatisticsGen, Transform, Evaluator).
# On 2 cores the DirectRunner in multi-processing mode uses both.
LOCAL_BEAM_PIPELINE_ARGS: list[str] = [
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=0",
]


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
        "seed": SEED,
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
    }
