"""Trainer module file: the TFX entry point around ``recipe`` (what is trained lives there).

``run_fn`` reads the settings (custom_config, overridden by the Tuner's best values), builds
the datasets of (encoded image, label) and the training patients from Transform's output,
calls ``recipe.train`` and exports the model with its calibration (``export``). On a GPU
node the same code uses MirroredStrategy and mixed precision; on a laptop it runs on the CPU.
"""

import json
import logging
import os

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules import features
from modules.trainer import data, devices, export, recipe
from modules.trainer.hyperparameters import hyperparameters, tuned_values


def _callbacks(run_dir: str, phase: str) -> list[tf.keras.callbacks.Callback]:
    return [tf.keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, phase))]


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point; the Tuner's best values, when wired in, override custom_config."""
    hp = hyperparameters({**(fn_args.custom_config or {}), **tuned_values(fn_args.hyperparameters)})
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = devices.distribution_strategy()
    train_index = data.split_index(fn_args.train_files, tf_transform_output)
    eval_index = data.split_index(fn_args.eval_files, tf_transform_output)
    train_counts, eval_counts = train_index.per_class(), eval_index.per_class()
    logging.info("train images per class %s, eval %s", train_counts, eval_counts)

    trained = recipe.train(
        lambda: data.image_dataset(fn_args.train_files, tf_transform_output),
        lambda: data.image_dataset(fn_args.eval_files, tf_transform_output),
        hp,
        lambda phase: _callbacks(fn_args.model_run_dir, phase),
        devices.fine_tune_steps(
            sum(train_counts), hp, strategy.num_replicas_in_sync, fn_args.train_steps
        ),
        strategy,
        train_patients=train_index.patients,
        eval_patients=eval_index.patients,
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
        "tile_scales": list(recipe.scales_of(hp)),
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
