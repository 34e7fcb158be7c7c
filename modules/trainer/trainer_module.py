"""Trainer module file: transfer learning from an ImageNet backbone, in two phases.

Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top of the
backbone (BatchNorm excepted) at a lower learning rate. Class weights balance the
training split, augmentation runs on the training split only, and the Keras callbacks
watch validation AUC. On a GPU node the same code uses MirroredStrategy and mixed
precision; on a laptop it runs on the CPU.
"""

import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from typing import Any

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules import features
from modules.trainer import backbones, data, export
from modules.trainer.model import build_classifier, freeze_backbone, unfreeze_top

DEFAULTS: dict[str, Any] = {
    "backbone": "mobilenet_v2",
    "weights": "auto",
    "image_size": features.DEFAULT_IMAGE_SIZE,
    "batch_size": 16,
    "epochs_head": 4,
    "epochs_fine_tune": 2,
    "learning_rate": 1e-3,
    "fine_tune_learning_rate": 1e-4,
    "fine_tune_fraction": 0.3,
    "dropout": 0.3,
    "early_stopping_patience": 3,
    "seed": 42,
}


def hyperparameters(custom_config: dict[str, Any]) -> dict[str, Any]:
    unknown = set(custom_config or {}) - set(DEFAULTS) - {"weights_cache_dir"}
    if unknown:
        raise ValueError(f"unknown trainer settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **(custom_config or {})}


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


def class_weights(counts: list[int]) -> dict[int, float]:
    """Inverse-frequency weights (sklearn's 'balanced'): each class contributes equally."""
    total = sum(counts)
    present = [c for c in counts if c]
    return {i: (total / (len(present) * c) if c else 0.0) for i, c in enumerate(counts)}


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across local GPUs (mixed precision on), the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def schedule_callbacks(patience: int) -> list[tf.keras.callbacks.Callback]:
    """Early stopping and LR decay on validation AUC: part of the recipe (the Tuner uses them)."""
    return [
        tf.keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=patience, restore_best_weights=True
        ),
        tf.keras.callbacks.ReduceLROnPlateau(
            monitor="val_auc", mode="max", factor=0.3, patience=max(1, patience // 2), min_lr=1e-6
        ),
    ]


def _callbacks(run_dir: str, patience: int, phase: str) -> list[tf.keras.callbacks.Callback]:
    return schedule_callbacks(patience) + [
        tf.keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", f"{phase}-best.weights.h5"),
            monitor="val_auc",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
        tf.keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, phase), update_freq="epoch"),
    ]


def compile_model(model: tf.keras.Model, learning_rate: float) -> None:
    """Adam + binary cross-entropy, with the metrics the callbacks and the Tuner watch."""
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate),
        loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[
            tf.keras.metrics.AUC(name="auc"),
            tf.keras.metrics.BinaryAccuracy(name="accuracy"),
            tf.keras.metrics.Precision(name="precision"),
            tf.keras.metrics.Recall(name="recall"),
        ],
    )


@dataclasses.dataclass
class TrainingInputs:
    """What the Trainer and the Tuner feed to ``fit``, and the counts behind it."""

    train_counts: list[int]
    eval_counts: list[int]
    class_weights: dict[int, float]
    fit_kwargs: dict[str, Any]


def training_inputs(
    fn_args: tfx.components.FnArgs,
    tf_transform_output: tft.TFTransformOutput,
    hp: dict[str, Any],
    replicas: int,
) -> TrainingInputs:
    """Datasets, steps and class weights for ``fit``.

    An epoch covers each split once, capped so that all epochs together stay within
    ``train_steps`` (TFX passes None when the proto leaves num_steps unset).
    """
    train_counts = data.count_labels(fn_args.train_files, tf_transform_output)
    eval_counts = data.count_labels(fn_args.eval_files, tf_transform_output)
    weights = class_weights(train_counts)
    batch_size = global_batch_size(hp["batch_size"], replicas)
    n_train, n_eval, seed = sum(train_counts), sum(eval_counts), int(hp["seed"])
    epochs = max(1, int(hp["epochs_head"]) + int(hp["epochs_fine_tune"]))
    steps_per_epoch = math.ceil(n_train / batch_size)
    if fn_args.train_steps:
        steps_per_epoch = min(steps_per_epoch, fn_args.train_steps // epochs)
    validation_steps = math.ceil(n_eval / batch_size)
    if fn_args.eval_steps:
        validation_steps = min(validation_steps, fn_args.eval_steps)
    fit_kwargs = dict(
        x=data.make_dataset(
            fn_args.train_files, tf_transform_output, batch_size, True, n_train, seed
        ),
        validation_data=data.make_dataset(
            fn_args.eval_files, tf_transform_output, batch_size, False, n_eval, seed
        ),
        steps_per_epoch=max(1, steps_per_epoch),
        validation_steps=max(1, validation_steps),
        class_weight=weights,
        verbose=2,
    )
    return TrainingInputs(train_counts, eval_counts, weights, fit_kwargs)


def build_model(hp: dict[str, Any]) -> tuple[tf.keras.Model, backbones.Backbone]:
    """Backbone + head, compiled for phase 1. Call inside the strategy scope.

    A pretrained backbone is frozen for phase 1; a randomly initialised one trains whole from
    the start (freezing random features would leave only the head to learn).
    """
    backbone = backbones.build_backbone(
        hp["backbone"], int(hp["image_size"]), hp["weights"], hp.get("weights_cache_dir")
    )
    model = build_classifier(backbone, int(hp["image_size"]), float(hp["dropout"]))
    if backbone.pretrained:
        freeze_backbone(backbone.model)
    compile_model(model, float(hp["learning_rate"]))
    return model, backbone


def fit_two_phases(
    model: tf.keras.Model,
    backbone_model: tf.keras.Model,
    hp: dict[str, Any],
    strategy: tf.distribute.Strategy,
    callbacks: Callable[[str], list[tf.keras.callbacks.Callback]],
    **fit_kwargs: Any,
) -> dict[str, dict[str, list[float]]]:
    """Phase "head" on the frozen backbone, then "fine_tune" of its top at a lower rate.

    A backbone trained from scratch (random initialisation, never frozen) trains whole in
    both phases; the second only lowers the learning rate.

    One function for the Trainer, the Tuner and the benchmarks, so they all train the same
    way. ``callbacks(phase)`` gives each phase fresh callbacks. Returns the Keras histories.
    """
    history = {
        "head": model.fit(
            epochs=int(hp["epochs_head"]), callbacks=callbacks("head"), **fit_kwargs
        ).history
    }
    from_scratch = backbone_model.trainable  # random initialisation: every layer trains
    wanted = from_scratch or float(hp["fine_tune_fraction"]) > 0
    if int(hp["epochs_fine_tune"]) > 0 and wanted:
        with strategy.scope():
            if not from_scratch:
                trainable = unfreeze_top(backbone_model, float(hp["fine_tune_fraction"]))
                logging.info("fine-tuning %d backbone layers", trainable)
            compile_model(model, float(hp["fine_tune_learning_rate"]))
        history["fine_tune"] = model.fit(
            epochs=int(hp["epochs_fine_tune"]), callbacks=callbacks("fine_tune"), **fit_kwargs
        ).history
    return history


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point; the Tuner's best values, when wired in, override custom_config."""
    hp = hyperparameters({**(fn_args.custom_config or {}), **tuned_values(fn_args.hyperparameters)})
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    strategy = distribution_strategy()
    inputs = training_inputs(fn_args, tf_transform_output, hp, strategy.num_replicas_in_sync)
    train_counts, eval_counts = inputs.train_counts, inputs.eval_counts
    weights = inputs.class_weights
    logging.info(
        "train images per class %s, eval %s, class weights %s", train_counts, eval_counts, weights
    )

    with strategy.scope():
        model, backbone = build_model(hp)
    logging.info("backbone %s, weights: %s", backbone.name, backbone.weights_source)

    patience = int(hp["early_stopping_patience"])
    history = fit_two_phases(
        model,
        backbone.model,
        hp,
        strategy,
        lambda phase: _callbacks(fn_args.model_run_dir, patience, phase),
        **inputs.fit_kwargs,
    )

    metadata = {
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        "last_conv_layer": backbone.last_conv_layer,
        "hyperparameters": hp,
        "train_images_per_class": dict(zip(features.LABEL_NAMES, train_counts, strict=True)),
        "eval_images_per_class": dict(zip(features.LABEL_NAMES, eval_counts, strict=True)),
        "class_weights": weights,
        "replicas": strategy.num_replicas_in_sync,
        "mixed_precision": tf.keras.mixed_precision.global_policy().name,
        "history": {
            phase: {k: [float(v) for v in values] for k, values in h.items()}
            for phase, h in history.items()
        },
    }
    export.export_model(model, tf_transform_output, fn_args.serving_model_dir, metadata)
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, "history.json"), "w") as f:
        f.write(json.dumps(metadata["history"], indent=2))
