"""Trainer module file: transfer learning from an ImageNet backbone, in two phases.

Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the top of the
backbone (BatchNorm excepted) at a lower learning rate. Class weights balance the
training split, augmentation runs on the training split only, and the Keras callbacks
watch validation AUC. On a GPU node the same code uses MirroredStrategy and mixed
precision; on a laptop it runs on the CPU.
"""

import json
import logging
import math
import os
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules import features
from modules.trainer import backbones, data, export
from modules.trainer.model import build_classifier, freeze_backbone, unfreeze_top

DEFAULTS: Dict[str, Any] = {
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


def hyperparameters(custom_config: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(custom_config or {}) - set(DEFAULTS) - {"weights_cache_dir"}
    if unknown:
        raise ValueError(f"unknown trainer settings {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **(custom_config or {})}


def class_weights(counts: List[int]) -> Dict[int, float]:
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


def _callbacks(run_dir: str, patience: int, phase: str) -> List[tf.keras.callbacks.Callback]:
    return [
        tf.keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=patience, restore_best_weights=True
        ),
        tf.keras.callbacks.ReduceLROnPlateau(
            monitor="val_auc", mode="max", factor=0.3, patience=max(1, patience // 2), min_lr=1e-6
        ),
        tf.keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, "checkpoints", f"{phase}-best.weights.h5"),
            monitor="val_auc",
            mode="max",
            save_best_only=True,
            save_weights_only=True,
        ),
        tf.keras.callbacks.TensorBoard(log_dir=os.path.join(run_dir, phase), update_freq="epoch"),
    ]


def _compile(model: tf.keras.Model, learning_rate: float) -> None:
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


def run_fn(fn_args: tfx.components.FnArgs) -> None:
    """TFX Trainer entry point."""
    hp = hyperparameters(fn_args.custom_config)
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train_counts = data.count_labels(fn_args.train_files, tf_transform_output)
    eval_counts = data.count_labels(fn_args.eval_files, tf_transform_output)
    weights = class_weights(train_counts)
    logging.info("train images per class %s, eval %s, class weights %s",
                 train_counts, eval_counts, weights)

    strategy = distribution_strategy()
    batch_size = int(hp["batch_size"]) * strategy.num_replicas_in_sync
    n_train = sum(train_counts)
    epochs = int(hp["epochs_head"]) + int(hp["epochs_fine_tune"])
    steps_per_epoch = max(1, min(math.ceil(n_train / batch_size), fn_args.train_steps // epochs))
    validation_steps = max(1, min(math.ceil(sum(eval_counts) / batch_size), fn_args.eval_steps))
    train_ds = data.make_dataset(fn_args.train_files, tf_transform_output, batch_size, True,
                                 n_train, int(hp["seed"]))
    eval_ds = data.make_dataset(fn_args.eval_files, tf_transform_output, batch_size, False,
                                sum(eval_counts), int(hp["seed"]))

    with strategy.scope():
        backbone = backbones.build_backbone(
            hp["backbone"], int(hp["image_size"]), hp["weights"], hp.get("weights_cache_dir")
        )
        model = build_classifier(backbone, int(hp["image_size"]), float(hp["dropout"]))
        freeze_backbone(backbone.model)
        _compile(model, float(hp["learning_rate"]))
    logging.info("backbone %s, weights: %s", backbone.name, backbone.weights_source)

    fit = dict(
        x=train_ds,
        validation_data=eval_ds,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        class_weight=weights,
        verbose=2,
    )
    patience = int(hp["early_stopping_patience"])
    history = {"head": model.fit(epochs=int(hp["epochs_head"]),
                                 callbacks=_callbacks(fn_args.model_run_dir, patience, "head"),
                                 **fit).history}
    if int(hp["epochs_fine_tune"]) > 0 and float(hp["fine_tune_fraction"]) > 0:
        with strategy.scope():
            trainable = unfreeze_top(backbone.model, float(hp["fine_tune_fraction"]))
            _compile(model, float(hp["fine_tune_learning_rate"]))
        logging.info("fine-tuning %d backbone layers", trainable)
        history["fine_tune"] = model.fit(
            epochs=int(hp["epochs_fine_tune"]),
            callbacks=_callbacks(fn_args.model_run_dir, patience, "fine_tune"),
            **fit,
        ).history

    metadata = {
        "backbone": backbone.name,
        "weights_source": backbone.weights_source,
        "last_conv_layer": backbone.last_conv_layer,
        "hyperparameters": hp,
        "train_images_per_class": dict(zip(features.LABEL_NAMES, train_counts)),
        "eval_images_per_class": dict(zip(features.LABEL_NAMES, eval_counts)),
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
