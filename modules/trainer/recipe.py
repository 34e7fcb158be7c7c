"""The training recipe: what wins on real tissue, measured by ``benchmarks/breakhis_quality.py``.

1. **Tiles at native resolution and magnified 1.5x** (``modules/image_tiles``, ``tile_scales``
   ``1.0,1.5``): every view of every tile goes through the frozen ImageNet backbone once; an
   image's feature is the mean over scales of each scale's mean over its tiles and views.
2. **Head on cached features**: the classifier's head (standardisation, dropout (0 by
   default), one logistic unit with L2) trains on those features for many cheap epochs at a
   small step (3e-4), class-balanced, every epoch by default (``early_stopping_patience`` > 0
   stops it on the eval split's image-level AUC instead). The head is linear, so the image
   logit is the mean of the tile logits: the exported model scores tiles and averages,
   exactly this.
3. **Optional fine-tuning** (``epochs_fine_tune`` > 0): the top of the backbone (BatchNorm
   frozen) trains on random augmented tiles at a lower rate, then the features are re-read.
   Off by default: on the shared BreakHis sets it was not measured to win on CPU budgets.
4. **Calibration on out-of-fold logits of every training patient**: a temperature for the
   image logit (minimal NLL), then the operating threshold by ``threshold_rule``, on a 0.01
   grid (so TFMA computes the confusion matrix at exactly that threshold). Both travel with
   the model. The logits come from heads that never saw the patient: the eval split's from
   step 2's head, the train patients' from ``calibration_folds`` - 1 more heads, each
   trained as step 5 trains on the other patients (``calibration_folds`` 1, or no patient
   ids: the eval split alone, whose five-odd patients gave temperatures from 1.1 to 15
   between the benchmark's folds; pooled ECE 0.136 there against 0.098 out of fold, the
   AUCs unchanged). The temperature's fit, and a threshold rule's sensitivity and
   specificity, weigh each patient the same (``calibration_weights`` ``patient``;
   ``image`` weighs each image the same), so the
   patient with the most images does not set it alone: patients, not images, are what a
   training set holds independent samples of.
5. **Head refit** (``head_refit``, on by default): the head trains again from its initial
   weights on train + eval for the epochs step 2 trained; the temperature and threshold
   stay those of step 4 (fitted on images the heads had not seen). It won on the shared
   BreakHis sets: with ~25 patients a fold, the eval fifth is worth learning from.

The Trainer's ``run_fn``, the Tuner and the benchmark all call ``train`` on Transform-format
datasets of (encoded image, label), so they all train the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from modules import image_tiles
from modules.metrics import roc_auc
from modules.progress import logger as progress
from modules.trainer import backbones
from modules.trainer.augment import augment
from modules.trainer.model import build_classifier, freeze_backbone, unfreeze_top

# The settings the recipe reads (its ``hp``), each declared with its default and meaning in
# the pipeline's settings table (pipeline/settings.py, group training).
HYPERPARAMETERS: tuple[str, ...] = (
    "image_size",
    "backbone",
    "weights",
    "weights_cache_dir",
    "max_tiles",
    "tile_scales",
    "batch_size",
    "head_batch_size",
    "epochs_head",
    "early_stopping_patience",
    "epochs_fine_tune",
    "learning_rate",
    "fine_tune_learning_rate",
    "fine_tune_fraction",
    "dropout",
    "head_l2",
    "label_smoothing",
    "head_refit",
    "calibration_folds",
    "calibration_weights",
    "tile_cache_mb",
    "threshold_rule",
    "seed",
)
CALIBRATION_WEIGHTS = ("patient", "image")
THRESHOLD_GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))
TEMPERATURE_GRID = tuple(float(t) for t in np.exp(np.linspace(math.log(0.05), math.log(20), 241)))
DEFAULT_THRESHOLD, DEFAULT_TEMPERATURE = 0.5, 1.0
# Smallest variance the standardisation divides by, as a fraction of the mean feature
# variance: a channel (nearly) constant on the training split would otherwise get a weight of
# up to 1/epsilon, and any later activation there (another image, int8 weights) swamps the logit.
VARIANCE_FLOOR = 0.01

Images = Callable[[], tf.data.Dataset]  # () -> dataset of (encoded image, label) pairs


@dataclasses.dataclass
class Calibration:
    """How the image logit becomes a probability and a class: sigmoid(z / T) >= threshold."""

    temperature: float = DEFAULT_TEMPERATURE
    threshold: float = DEFAULT_THRESHOLD
    fitted_on: str = "defaults (eval split had one class)"


@dataclasses.dataclass
class TrainedClassifier:
    model: tf.keras.Model  # tile [S, S, 3] in [0, 1] -> malignant probability
    backbone: backbones.Backbone
    calibration: Calibration
    history: dict[str, dict[str, list[float]]]
    eval_logits: np.ndarray  # image logits of the eval split, before temperature
    eval_labels: np.ndarray


def scales_of(hp_or_metadata: dict[str, Any]) -> tuple[float, ...]:
    """The zooms a recipe reads its images at (``tile_scales``; native only when absent)."""
    try:
        return image_tiles.parse_scales(
            hp_or_metadata.get("tile_scales", image_tiles.NATIVE_SCALES)
        )
    except ValueError as error:
        raise ValueError(f"tile_scales (HISTO_TILE_SCALES): {error}") from error


def image_logit(
    tile_logit: tf.keras.Model,
    image_bytes: tf.Tensor,
    size: int,
    max_tiles: int,
    scales: Sequence[float] = image_tiles.NATIVE_SCALES,
):
    """One encoded image -> its logit: the mean over every view of every tile (a scalar),
    each scale weighing the same."""
    per_scale = [
        tf.reduce_mean(tf.cast(tile_logit(views, training=False), tf.float32))
        for views in image_tiles.scaled_views(image_bytes, size, max_tiles, scales)
    ]
    return tf.add_n(per_scale) / len(per_scale)


def probability(logit: tf.Tensor, calibration: Calibration) -> tf.Tensor:
    """The calibrated malignant probability of an image logit."""
    return tf.sigmoid(tf.cast(logit, tf.float32) / calibration.temperature)


def calibration_of(metadata: dict[str, Any]) -> Calibration:
    """The Calibration recorded in a model's training metadata (defaults when absent)."""
    return Calibration(**metadata.get("calibration", {}))


def logit_model(model: tf.keras.Model) -> tf.keras.Model:
    """Tile -> malignant logit (the head's pre-sigmoid output), sharing the model's layers."""
    return tf.keras.Model(model.inputs, model.get_layer("malignant_logit").output)


def features_model(model: tf.keras.Model) -> tf.keras.Model:
    """Tile -> pooled backbone features (the head's input)."""
    return tf.keras.Model(model.inputs, model.get_layer("pool").output)


def image_features(
    network: tf.keras.Model,
    images: tf.data.Dataset,
    tile_size: int,
    max_tiles: int,
    cache: dict[str, np.ndarray] | None = None,
    scales: Sequence[float] = image_tiles.NATIVE_SCALES,
) -> tuple[np.ndarray, np.ndarray]:
    """([n, D] mean feature over every view of every tile, [n] labels) of a dataset; with
    several ``scales`` the mean of each scale's mean.

    ``cache`` (the benchmark's, across folds) maps an image's digest to its feature; it must
    belong to one frozen ``network`` and one set of ``scales``.
    """

    @tf.function(reduce_retracing=True)
    def view_mean(views: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.cast(network(views, training=False), tf.float32), axis=0)

    def mean_feature(per_scale: tuple) -> np.ndarray:
        return np.mean([view_mean(views).numpy() for views in per_scale], axis=0)

    def with_views(image: tf.Tensor, label: tf.Tensor):
        per_scale = image_tiles.scaled_views(image, tile_size, max_tiles, scales)
        return image, tuple(per_scale), label

    rows, labels = [], []
    if cache is None:
        # Decoding and tiling run in tf.data's threads, ahead of the backbone.
        tiled = images.map(with_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        for _, views, label in tiled.prefetch(tf.data.AUTOTUNE):
            rows.append(mean_feature(views))
            labels.append(int(label))
    else:  # decode only what the cache lacks
        for image, label in images.prefetch(tf.data.AUTOTUNE):
            key = hashlib.sha1(image.numpy()).hexdigest()
            if key not in cache:
                cache[key] = mean_feature(with_views(image, label)[1])
            rows.append(cache[key])
            labels.append(int(label))
    width = int(network.output_shape[-1])
    return np.asarray(rows, np.float32).reshape(-1, width), np.asarray(labels, np.int64)


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """Inverse-frequency weights (sklearn's 'balanced'): each class contributes equally."""
    counts = np.bincount(labels.astype(int), minlength=2)
    present = int((counts > 0).sum())
    return {i: (len(labels) / (present * c) if c else 0.0) for i, c in enumerate(counts)}


def head_logits(model: tf.keras.Model, pooled: np.ndarray) -> np.ndarray:
    """Image logits from mean pooled features: the same numbers as ``image_logit``."""
    return _head(model)(pooled, training=False).numpy().reshape(-1)


def _head(model: tf.keras.Model) -> tf.keras.Model:
    """The classifier's head as a model of its own, sharing its layers (pooled -> logit)."""
    width = int(model.get_layer("pool").output_shape[-1])
    inputs = tf.keras.Input((width,), name="pooled")
    x = inputs
    for name in ("feature_norm", "head_dropout", "malignant_logit"):
        x = model.get_layer(name)(x)
    return tf.keras.Model(inputs, x, name="head")


class _ValidationAuc(tf.keras.callbacks.Callback):
    """Puts the eval split's image-level AUC into the logs as ``val_auc`` (Keras' AUC would
    need the eval set as a dataset and costs more than the head's epoch)."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        super().__init__()
        self.features, self.labels = features, labels

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logits = self.model(self.features, training=False).numpy().reshape(-1)
        auc = roc_auc(self.labels.tolist(), logits.tolist())
        if logs is not None:
            logs["val_auc"] = 0.5 if math.isnan(auc) else auc


def adapt_standardisation(norm: tf.keras.layers.Normalization, features: np.ndarray) -> None:
    """Adapts ``norm`` to the features, with variances floored at ``VARIANCE_FLOOR`` x mean."""
    norm.adapt(features)
    variance = norm.adapt_variance.numpy()
    floor = VARIANCE_FLOOR * float(variance.mean()) or 1.0  # all constant: leave them be
    norm.adapt_variance.assign(np.maximum(variance, floor))
    norm.finalize_state()


def _fit_head_epochs(
    model: tf.keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    hp: dict[str, Any],
    epochs: int,
    callbacks: list[tf.keras.callbacks.Callback],
    strategy: tf.distribute.Strategy | None,
) -> dict[str, list[float]]:
    """The head on cached features: standardisation adapted to them, then mini-batches,
    class-balanced, for up to ``epochs``. Under the strategy the classifier was built in."""
    x, y = train
    batch_size = int(hp["head_batch_size"])
    with (strategy or tf.distribute.get_strategy()).scope():
        adapt_standardisation(model.get_layer("feature_norm"), x)
        head = _head(model)
        head.compile(
            optimizer=tf.keras.optimizers.Adam(float(hp["learning_rate"])),
            loss=tf.keras.losses.BinaryCrossentropy(
                from_logits=True, label_smoothing=float(hp["label_smoothing"])
            ),
            # A whole epoch per call: the same steps, without a Python round trip per batch
            # of a linear head (half the head's time on 400 images; the same weights).
            steps_per_execution=max(1, math.ceil(len(y) / batch_size)),
        )
    history = head.fit(
        x,
        y.astype(np.float32),
        batch_size=batch_size,
        epochs=epochs,
        class_weight=class_weights(y),
        shuffle=True,
        verbose=0,
        callbacks=list(callbacks),
    )
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def fit_head(
    model: tf.keras.Model,
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    hp: dict[str, Any],
    callbacks: list[tf.keras.callbacks.Callback],
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, list[float]]:
    """Trains the head on cached features with early stopping on the eval split's AUC
    (``early_stopping_patience`` 0: none, every epoch is trained and the last weights kept)."""
    watch: list[tf.keras.callbacks.Callback] = [_ValidationAuc(*evaluation)]
    if early_stopping(hp):
        watch.append(
            tf.keras.callbacks.EarlyStopping(
                monitor="val_auc",
                mode="max",
                patience=int(hp["early_stopping_patience"]),
                restore_best_weights=True,
            )
        )
    epochs = int(hp["epochs_head"])
    return _fit_head_epochs(model, train, hp, epochs, watch + list(callbacks), strategy)


def early_stopping(hp: dict[str, Any]) -> bool:
    """Whether the head's epochs are chosen on the eval split (patience > 0)."""
    return int(hp["early_stopping_patience"]) > 0


def refit_epochs(history: dict[str, list[float]], hp: dict[str, Any]) -> int:
    """The refit's epochs: those early stopping kept, or every epoch trained without it."""
    return best_epochs(history) if early_stopping(hp) else len(history.get("loss") or [0])


def best_epochs(history: dict[str, list[float]]) -> int:
    """How many head epochs early stopping kept: the epoch of the best eval AUC (1-based)."""
    auc = np.asarray(history.get("val_auc") or [np.nan], np.float64)
    return 1 + (int(np.nanargmax(auc)) if not np.all(np.isnan(auc)) else 0)


def refit_head(
    model: tf.keras.Model,
    initial_weights: list[np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    epochs: int,
    hp: dict[str, Any],
    callbacks: list[tf.keras.callbacks.Callback],
    strategy: tf.distribute.Strategy | None = None,
) -> dict[str, list[float]]:
    """The head again from its initial weights on train + eval, for the epochs that early
    stopping chose: the eval patients' images teach the head too, nothing is chosen on them.

    With ~25 patients a fold, the fifth held out for early stopping is a fifth of what the
    head could learn from (``benchmarks/breakhis_quality.py``: ``recipe`` against
    ``recipe-no-refit``)."""
    with (strategy or tf.distribute.get_strategy()).scope():
        model.get_layer("malignant_logit").set_weights(initial_weights)
    both = (np.concatenate([train[0], evaluation[0]]), np.concatenate([train[1], evaluation[1]]))
    return _fit_head_epochs(model, both, hp, epochs, callbacks, strategy)


def tile_cache_fits(n_images: int | None, hp: dict[str, Any]) -> bool:
    """Whether every training tile, decoded, fits the in-memory budget (``tile_cache_mb``),
    counting every scale's tile cap of float32 tiles per image (an upper bound). Above it
    each epoch decodes again: memory stays flat however many images there are."""
    if n_images is None:
        return False
    size, max_tiles = int(hp["image_size"]), int(hp["max_tiles"])
    per_image = sum(image_tiles.scale_cap(max_tiles, z) for z in scales_of(hp))
    return n_images * per_image * size * size * 3 * 4 <= float(hp["tile_cache_mb"]) * 2**20


def tile_dataset(
    images: tf.data.Dataset, hp: dict[str, Any], seed: int, n_images: int | None = None
) -> tf.data.Dataset:
    """Fine-tuning input: every tile (of every scale) of every training image, shuffled and
    augmented; decoded once and kept in memory when ``tile_cache_fits``."""
    size, max_tiles, scales = int(hp["image_size"]), int(hp["max_tiles"]), scales_of(hp)

    def tiles(image: tf.Tensor, label: tf.Tensor) -> tf.data.Dataset:
        decoded = image_tiles.decode(image)
        cut = tf.concat(image_tiles.scaled_tiles(decoded, size, max_tiles, scales), axis=0)
        labels = tf.fill([tf.shape(cut)[0]], tf.cast(label, tf.float32))
        return tf.data.Dataset.from_tensor_slices((cut, labels))

    tiled = images.flat_map(tiles)
    if tile_cache_fits(n_images, hp):
        tiled = tiled.cache()
    return (
        tiled.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .map(lambda t, y: (augment(t, seed), y), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(int(hp["batch_size"]))
        .prefetch(tf.data.AUTOTUNE)
    )


def fine_tune(
    model: tf.keras.Model,
    backbone_model: tf.keras.Model,
    images: Images,
    hp: dict[str, Any],
    steps_per_epoch: int,
    callbacks: list[tf.keras.callbacks.Callback],
    n_images: int | None = None,
) -> dict[str, list[float]]:
    """The top of the backbone and the head, end to end on augmented tiles."""
    trainable = unfreeze_top(backbone_model, float(hp["fine_tune_fraction"]))
    logging.info("fine-tuning %d backbone layers", trainable)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(float(hp["fine_tune_learning_rate"])),
        loss=tf.keras.losses.BinaryCrossentropy(label_smoothing=float(hp["label_smoothing"])),
    )
    history = model.fit(
        tile_dataset(images(), hp, int(hp["seed"]), n_images),
        steps_per_epoch=max(1, steps_per_epoch),
        epochs=int(hp["epochs_fine_tune"]),
        callbacks=list(callbacks),
        verbose=2,
    )
    freeze_backbone(backbone_model)
    losses = history.history.get("loss") or [float("nan")]
    progress.info(
        "fine-tune: top %d backbone layers, %d epochs, last loss %.3f",
        *(trainable, len(losses), losses[-1]),
    )
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """The temperature with the smallest (weighted) negative log-likelihood of the labels
    (grid search)."""
    z, y = logits.astype(np.float64), labels.astype(np.float64)
    w = np.ones_like(z) if weights is None else np.asarray(weights, np.float64)

    def nll(t: float) -> float:
        s = z / t
        return float(np.average(np.logaddexp(0.0, s) - y * s, weights=w))

    return min(TEMPERATURE_GRID, key=nll)


def _weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """NaN for no values, as ``np.mean`` gives (one class: no sensitivity or specificity)."""
    return float(np.average(values, weights=weights)) if len(values) else float("nan")


def pick_threshold(
    probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """The grid threshold with the best balanced accuracy (ties: the one nearest 0.5); with
    ``weights``, sensitivity and specificity are weighted means (each patient the same)."""
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, np.float64)
    positive, negative = labels == 1, labels == 0

    def balanced_accuracy(t: float) -> float:
        called = probabilities >= t
        sensitivity = _weighted_mean(called[positive], w[positive])
        specificity = _weighted_mean(~called[negative], w[negative])
        return (sensitivity + specificity) / 2

    return max(THRESHOLD_GRID, key=lambda t: (round(balanced_accuracy(t), 9), -abs(t - 0.5)))


THRESHOLD_RULES = ("balanced_prior", "eval_balanced_accuracy", "eval_sensitivity")
MIN_SENSITIVITY = 0.9  # the eval_sensitivity rule: the highest threshold that keeps this


def pick_threshold_for_sensitivity(
    probabilities: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """The highest grid threshold whose eval sensitivity (a weighted mean with ``weights``)
    is at least MIN_SENSITIVITY."""
    positive = labels == 1
    scores = probabilities[positive]
    w = None if weights is None else np.asarray(weights, np.float64)[positive]
    kept = [t for t in THRESHOLD_GRID if _weighted_mean(scores >= t, w) >= MIN_SENSITIVITY]
    return max(kept) if kept else THRESHOLD_GRID[0]


def patient_weights(patients: Sequence[str]) -> np.ndarray:
    """Each image's weight when every patient weighs the same: 1 / its patient's images,
    scaled so the weights average 1."""
    _, index, counts = np.unique(np.asarray(patients), return_inverse=True, return_counts=True)
    weights = 1.0 / counts[index]
    return weights * len(weights) / weights.sum()


def calibrate(
    logits: np.ndarray,
    labels: np.ndarray,
    rule: str = "eval_balanced_accuracy",
    source: str = "eval split",
    patients: Sequence[str] | None = None,
) -> Calibration:
    """Temperature from held-out logits (the eval split's, or out of fold over train + eval;
    never the test split), each patient weighing the same in its fit and in the threshold
    rules where ``patients`` (each logit's) are given, each image otherwise; then the
    threshold by ``rule``:

    - ``balanced_prior``: 0.5, the class-balanced head's own balance point (a temperature
      does not move it): nothing is fitted to the few eval patients;
    - ``eval_balanced_accuracy``: the best balanced accuracy on the eval split;
    - ``eval_sensitivity``: the highest threshold with eval sensitivity >= MIN_SENSITIVITY.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}: use one of {THRESHOLD_RULES}")
    if len(set(labels.tolist())) < 2:
        logging.warning("eval split holds one class: temperature 1, threshold 0.5")
        return Calibration()
    if patients is not None and len(patients) != len(labels):
        raise ValueError(f"{len(patients)} patient ids for {len(labels)} calibration logits")
    weights = None if patients is None else patient_weights(patients)
    temperature = fit_temperature(logits, labels, weights)
    probabilities = 1.0 / (1.0 + np.exp(-logits / temperature))
    threshold = {
        "balanced_prior": lambda: DEFAULT_THRESHOLD,
        "eval_balanced_accuracy": lambda: pick_threshold(probabilities, labels, weights),
        "eval_sensitivity": lambda: pick_threshold_for_sensitivity(probabilities, labels, weights),
    }[rule]()
    return Calibration(
        temperature=float(temperature),
        threshold=float(threshold),
        fitted_on=f"{source}: {len(labels)} images, {int(labels.sum())} malignant"
        + ("" if patients is None else f" of {len(set(patients))} patients, each weighing the same")
        + f"; threshold rule {rule}",
    )


def calibration_groups(
    patients: Sequence[str], labels: np.ndarray, folds: int, seed: int
) -> np.ndarray | None:
    """Each training image's calibration fold, 1 .. ``folds`` - 1 (fold 0 is the eval split):
    patients dealt round-robin within their class (majority label) in a seeded order, so a
    patient never spans two folds and each fold holds both classes where it can. None when
    there is no fold to deal (``folds`` 1, or fewer than two training patients)."""
    names = sorted(set(patients))
    slots = min(int(folds) - 1, len(names))
    if slots < 1 or len(names) < 2:
        return None
    malignant: dict[str, list[int]] = {}
    for patient, label in zip(patients, labels.tolist(), strict=True):
        malignant.setdefault(patient, []).append(int(label))

    def order(patient: str) -> str:
        return hashlib.sha256(f"{seed}/{patient}".encode()).hexdigest()

    group: dict[str, int] = {}
    dealt = 0
    for label in (0, 1):
        members = [p for p in names if (np.mean(malignant[p]) >= 0.5) == bool(label)]
        for patient in sorted(members, key=order):
            group[patient] = 1 + dealt % slots
            dealt += 1
    return np.array([group[p] for p in patients], np.int64)


def out_of_fold_logits(
    model: tf.keras.Model,
    initial_weights: list[np.ndarray],
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray, np.ndarray],
    groups: np.ndarray,
    epochs: int,
    hp: dict[str, Any],
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits of every train + eval image from a head that never saw its patient: the eval
    split's from the head trained on train (``evaluation``: features, labels, logits), each
    train fold's from ``refit_head`` (same epochs, from the initial weights) on the other
    folds + eval. Returns logits, labels and, for the logits after the eval split's, their
    rows in ``train``. Leaves the model's head as the last fold's: callers
    restore or refit it. A fold whose rest holds one class is left out."""
    x, y = train
    eval_x, eval_y, eval_logits = evaluation
    logits, labels, rows = [eval_logits], [eval_y], [np.zeros(0, np.int64)]
    for fold in np.unique(groups):
        held = groups == fold
        if len(np.unique(np.concatenate([y[~held], eval_y]))) < 2:
            continue
        rest = (x[~held], y[~held])
        refit_head(model, initial_weights, rest, (eval_x, eval_y), epochs, hp, [], strategy)
        logits.append(head_logits(model, x[held]))
        labels.append(y[held])
        rows.append(np.flatnonzero(held))
    return np.concatenate(logits), np.concatenate(labels), np.concatenate(rows)


def _weighs_patients(hp: dict[str, Any]) -> bool:
    """Whether the temperature's fit weighs patients (True) or images (False) the same."""
    weights = str(hp["calibration_weights"])
    if weights not in CALIBRATION_WEIGHTS:
        raise ValueError(
            f"unknown calibration weights {weights!r}: use one of {CALIBRATION_WEIGHTS}"
        )
    return weights == "patient"


def _head_state(model: tf.keras.Model) -> list[tuple[tf.keras.layers.Layer, list[np.ndarray]]]:
    """The head's trained state (standardisation and logit), to put back with set_weights."""
    layers = [model.get_layer(name) for name in ("feature_norm", "malignant_logit")]
    return [(layer, layer.get_weights()) for layer in layers]


def build(hp: dict[str, Any]) -> tuple[tf.keras.Model, backbones.Backbone]:
    """The tile classifier with its backbone frozen. Call inside the strategy scope."""
    backbone = backbones.build_backbone(
        hp["backbone"], int(hp["image_size"]), hp["weights"], hp["weights_cache_dir"] or None
    )
    model = build_classifier(
        backbone, int(hp["image_size"]), float(hp["dropout"]), float(hp["head_l2"])
    )
    freeze_backbone(backbone.model)
    return model, backbone


def _say_head(history: dict[str, list[float]], hp: dict[str, Any]) -> None:
    auc, best = history.get("val_auc") or [float("nan")], best_epochs(history)
    if early_stopping(hp):
        progress.info(
            "head: %d epochs, best eval image AUC %.3f at epoch %d (kept)",
            len(auc),
            auc[best - 1],
            best,
        )
    else:  # every epoch kept: say where it ended, and where it peaked
        progress.info(
            "head: %d epochs, eval image AUC %.3f at the last (best %.3f at epoch %d)",
            len(auc),
            auc[-1],
            auc[best - 1],
            best,
        )


def train(
    train_images: Images,
    eval_images: Images,
    hp: dict[str, Any],
    callbacks: Callable[[str], list[tf.keras.callbacks.Callback]] = lambda phase: [],
    fine_tune_steps: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    built: tuple[tf.keras.Model, backbones.Backbone] | None = None,
    feature_cache: dict[str, np.ndarray] | None = None,
    train_patients: Sequence[str] | None = None,
    eval_patients: Sequence[str] | None = None,
) -> TrainedClassifier:
    """The whole recipe on datasets of (encoded image, label); see the module docstring.

    ``train_patients``: each training image's patient, in ``train_images``' order; with them
    the calibration comes from out-of-fold logits over every train + eval patient
    (``calibration_folds``), without them from the eval split alone. ``eval_patients``, the
    same for ``eval_images``: with every calibration logit's patient known, the temperature's
    fit weighs each patient the same (``calibration_weights`` ``patient``).

    ``built``: a classifier already made by ``build(hp)`` (the Tuner builds before it fits).
    ``feature_cache``: frozen features by image digest, for callers that train many times
    with one backbone (the benchmark's folds); it must not outlive that backbone's settings.
    """
    strategy = strategy or tf.distribute.get_strategy()
    size, max_tiles, scales = int(hp["image_size"]), int(hp["max_tiles"]), scales_of(hp)
    by_patient = _weighs_patients(hp) and eval_patients is not None  # checked before features
    if built is None:
        with strategy.scope():
            built = build(hp)
    model, backbone = built
    history: dict[str, dict[str, list[float]]] = {}

    def read_features(cache: dict | None) -> tuple[tuple, tuple]:
        network = features_model(model)
        return (
            image_features(network, train_images(), size, max_tiles, cache, scales),
            image_features(network, eval_images(), size, max_tiles, cache, scales),
        )

    initial_head = model.get_layer("malignant_logit").get_weights()
    started = time.monotonic()
    train_features, eval_features = read_features(feature_cache)
    progress.info(
        "features: %d train + %d eval images, up to %d tiles x %d views each (read at %s), "
        "%s (%.0f s)",
        *(len(train_features[1]), len(eval_features[1])),
        sum(image_tiles.scale_cap(max_tiles, z) for z in scales),
        *(image_tiles.VIEWS, ", ".join(f"{z:g}x" for z in scales)),
        *(backbone.name, time.monotonic() - started),
    )
    head_phase = "head"
    history[head_phase] = fit_head(
        model, train_features, eval_features, hp, callbacks(head_phase), strategy
    )
    _say_head(history[head_phase], hp)
    if int(hp["epochs_fine_tune"]) > 0 and float(hp["fine_tune_fraction"]) > 0:
        with strategy.scope():
            steps = fine_tune_steps or max(1, len(train_features[1]) // int(hp["batch_size"]))
            history["fine_tune"] = fine_tune(
                model,
                backbone.model,
                train_images,
                hp,
                steps,
                callbacks("fine_tune"),
                n_images=len(train_features[1]),
            )
        train_features, eval_features = read_features(None)  # the backbone has changed
        head_phase = "head_after_fine_tune"
        history[head_phase] = fit_head(
            model, train_features, eval_features, hp, callbacks(head_phase), strategy
        )
        _say_head(history[head_phase], hp)
    eval_logits = head_logits(model, eval_features[0])
    epochs = refit_epochs(history[head_phase], hp)
    for patients, split, labels in (
        (train_patients, "training", train_features[1]),
        (eval_patients, "eval", eval_features[1]),
    ):
        if patients is not None and len(patients) != len(labels):
            raise ValueError(f"{len(patients)} patient ids for {len(labels)} {split} images")
    groups = None
    if train_patients is not None:
        groups = calibration_groups(
            list(train_patients), train_features[1], int(hp["calibration_folds"]), int(hp["seed"])
        )
    if groups is None:
        calibration = calibrate(
            eval_logits,
            eval_features[1],
            str(hp["threshold_rule"]),
            patients=list(eval_patients) if by_patient else None,
        )
    else:
        trained_head = _head_state(model)
        oof_logits, oof_labels, rows = out_of_fold_logits(
            model,
            initial_head,
            train_features,
            (*eval_features, eval_logits),
            groups,
            epochs,
            hp,
            strategy,
        )
        with strategy.scope():
            for layer, weights in trained_head:
                layer.set_weights(weights)
        folds = f"{1 + len(np.unique(groups))} patient folds, the eval split one"
        oof_patients = None
        if by_patient:  # in the logits' order: the eval split's, then the held rows'
            oof_patients = list(eval_patients) + [train_patients[r] for r in rows]
        calibration = calibrate(
            oof_logits,
            oof_labels,
            str(hp["threshold_rule"]),
            f"out-of-fold logits ({folds})",
            oof_patients,
        )
    progress.info(
        "calibration: temperature %.2f, threshold %.2f (%s)",
        *(calibration.temperature, calibration.threshold, calibration.fitted_on),
    )
    if hp["head_refit"]:
        history["head_refit"] = refit_head(
            model,
            initial_head,
            train_features,
            eval_features,
            epochs,
            hp,
            callbacks("head_refit"),
            strategy,
        )
        calibration.fitted_on += "; head then refitted on train + eval"
        progress.info(
            "head refitted on %d train + eval images for %d epochs",
            len(train_features[1]) + len(eval_features[1]),
            epochs,
        )
    return TrainedClassifier(model, backbone, calibration, history, eval_logits, eval_features[1])
