"""Trainer module file: the TFX entry point around ``recipe`` (what is trained lives there).

``run_fn`` reads the settings (custom_config, overridden by the Tuner's best values), builds
the datasets of (encoded image, label) from Transform's output, calls ``recipe.train`` and
exports the model with its calibration (``export``). On a GPU node the same code uses
MirroredStrategy and mixed precision; on a laptop it runs on the CPU.
"""

import json
import logging
import math
import os
from typing import Any

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules import features
from modules.trainer import data, export, recipe

# custom_config keys that are not training settings: the pipeline's fingerprint of the
# module code (a cache key only, see pipeline.code_version).
NOT_SETTINGS = ("code_version",)


def hyperparameters(custom_config: dict[str, Any]) -> dict[str, Any]:
    """The recipe's settings from custom_config: every one of ``recipe.HYPERPARAMETERS``.

    The values (and their defaults) come from the pipeline's settings table
    (pipeline/settings.py); this module declares none, so nothing here can disagree.
    """
    config = {k: v for k, v in (custom_config or {}).items() if k not in NOT_SETTINGS}
    unknown = set(config) - set(recipe.HYPERPARAMETERS)
    missing = set(recipe.HYPERPARAMETERS) - set(config)
    if unknown or missing:
        raise ValueError(
            f"trainer custom_config: unknown {sorted(unknown)}, missing {sorted(missing)}; "
            f"expected {sorted(recipe.HYPERPARAMETERS)} (pipeline/settings.py)"
        )
    return config


def tuned_values(tuned_config: dict[str, Any] | None) -> dict[str, Any]:
    """The Tuner's best values from its ``HyperParameters`` config (``fn_args.hyperparameters``).

    They override custom_config; keras_tuner's own bookkeeping entries ("tuner/...") are
    dropped, anything else must be a trainer setting (``hyperparameters`` checks).
    """
    if not tuned_config:
        return {}
    values = keras_tuner.HyperParameters.from_config(tuned_config).values
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}


def global_batch_size(per_replica: int, replicas: int) -> int:
    """Each replica keeps the configured batch, so the global batch grows with replicas."""
    return int(per_replica) * max(1, int(replicas))


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across local GPUs (mixed precision on), the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _callbacks(run_dir: str, phase: str) -> list[tf.keras.callbacks.Callback]:
    return [tf.keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, phase))]


def fine_tune_steps(
    n_train: int, hp: dict[str, Any], replicas: int, train_steps: int | None
) -> int:
    """Steps per fine-tuning epoch: one pass over the training tiles, capped so that all
    epochs stay within ``train_steps`` (TFX passes None when num_steps is unset)."""
    tiles_per_image = 6  # BreakHis-sized images; the cap below is what matters
    steps = math.ceil(n_train * tiles_per_image / global_batch_size(hp["batch_size"], replicas))
    if train_steps and int(hp["epochs_fine_tune"]) > 0:
        steps = min(steps, train_steps // int(hp["epochs_fine_tune"]))
    return max(1, steps)


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point; the Tuner's best values, when wired in, override custom_config."""
    hp = hyperparameters({**(fn_args.custom_config or {}), **tuned_values(fn_args.hyperparameters)})
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = distribution_strategy()
    train_counts = data.count_labels(fn_args.train_files, tf_transform_output)
    eval_counts = data.count_labels(fn_args.eval_files, tf_transform_output)
    logging.info("train images per class %s, eval %s", train_counts, eval_counts)

    trained = recipe.train(
        lambda: data.image_dataset(fn_args.train_files, tf_transform_output),
        lambda: data.image_dataset(fn_args.eval_files, tf_transform_output),
        hp,
        lambda phase: _callbacks(fn_args.model_run_dir, phase),
        fine_tune_steps(sum(train_counts), hp, strategy.num_replicas_in_sync, fn_args.train_steps),
        strategy,
    )
    backbone = trained.backbone
    logging.info("backbone %s, weights: %s", backbone.name, backbone.weights_source)
    metadata = {
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        "last_conv_layer": backbone.last_conv_layer,
        "hyperparameters": hp,
        "tile_size": int(hp["image_size"]),
        "max_tiles": int(hp["max_tiles"]),
        "calibration": {
            "temperature": trained.calibration.temperature,
            "threshold": trained.calibration.threshold,
            "fitted_on": trained.calibration.fitted_on,
        },
        "train_images_per_class": dict(zip(features.LABEL_NAMES, train_counts, strict=True)),
        "eval_images_per_class": dict(zip(features.LABEL_NAMES, eval_counts, strict=True)),
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": tf.keras.mixed_precision.global_policy().name,
        "history": trained.history,
    }
    export.export_model(
        trained.model, tf_transform_output, fn_args.serving_model_dir, metadata, trained.calibration
    )
    tf.io.gfile.makedirs(fn_args.model_run_dir)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        f.write(json.dumps(metadata["history"], indent=2))
