"""The Trainer's pieces: tiling, the recipe (head on cached features, calibration), freezing
rules, inference-mode BatchNorm, the input over Transform's output, strategy / mixed
precision, and the claim the export rests on: the mean of tile logits is the logit the
head computes from the mean feature.

Models are MobileNetV2 with random weights at 32-px tiles, inputs are small gzipped
TFRecords in Transform's output format (encoded PNG, label), so the file runs in about a
minute on 2 cores.
"""

from __future__ import annotations

import os
import types

import numpy as np
import pytest
import tensorflow as tf

from histo_testlib import trainer_config
from modules import features, image_tiles
from modules.metrics import roc_auc
from modules.trainer import data, devices, hyperparameters, recipe, trainer_module
from modules.trainer.model import unfreeze_top
from pipeline import settings

SIZE = 32  # the smallest input MobileNetV2 accepts


# --------------------------------------------------------------------------- test inputs


class TransformOutputStandIn:
    """The one thing ``data`` reads from a ``tft.TFTransformOutput``: the transformed spec,
    as ``transform_module.preprocessing_fn`` produces it (encoded image, int64 label,
    patient)."""

    def transformed_feature_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {
            features.TRANSFORMED_IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
            features.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
            features.TRANSFORMED_PATIENT_KEY: tf.io.FixedLenFeature([], tf.string),
        }


def encoded_images(count: int, shape=(2 * SIZE, 3 * SIZE), seed: int = 0) -> list[bytes]:
    """Random RGB PNGs; the default shape cuts into 2 x 3 tiles of SIZE."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, *shape, 3), dtype=np.uint8)
    return [tf.io.encode_png(p).numpy() for p in pixels]


def write_transformed_records(
    path: str, images: list[bytes], labels: list[int], patients: list[str]
) -> str:
    """Gzipped tf.Examples as Transform writes them: encoded image, int64 label, patient."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for image, label, patient in zip(images, labels, patients, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        features.TRANSFORMED_IMAGE_KEY: tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[image])
                        ),
                        features.TRANSFORMED_LABEL_KEY: tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[int(label)])
                        ),
                        features.TRANSFORMED_PATIENT_KEY: tf.train.Feature(
                            bytes_list=tf.train.BytesList(value=[patient.encode()])
                        ),
                    }
                )
            )
            writer.write(example.SerializeToString())
    return path


def tiny_splits(root: str, n_train: int = 12, n_eval: int = 6) -> dict:
    """Train/eval record folders (labels 2:1 in train) and the images that went in; a
    patient holds one or two neighbouring images of one class."""
    train_images, eval_images = encoded_images(n_train, seed=1), encoded_images(n_eval, seed=2)
    train_labels = [int(i % 3 == 0) for i in range(n_train)]
    eval_labels = [i % 2 for i in range(n_eval)]
    train_patients = [f"{'BM'[y]}{i // 2}" for i, y in enumerate(train_labels)]
    eval_patients = [f"E{'BM'[y]}{i // 2}" for i, y in enumerate(eval_labels)]
    write_transformed_records(
        os.path.join(root, "train", "data.gz"), train_images, train_labels, train_patients
    )
    write_transformed_records(
        os.path.join(root, "eval", "data.gz"), eval_images, eval_labels, eval_patients
    )
    return {
        "train_files": [os.path.join(root, "train", "*")],
        "eval_files": [os.path.join(root, "eval", "*")],
        "train_images": train_images,
        "eval_images": eval_images,
        "train_labels": train_labels,
        "eval_labels": eval_labels,
        "train_patients": train_patients,
        "eval_patients": eval_patients,
    }


def tiny_settings(**overrides) -> dict:
    return hyperparameters.hyperparameters(
        trainer_config(
            **{
                "image_size": SIZE,
                "weights": "random",
                "batch_size": 4,
                "epochs_head": 5,
                **overrides,
            }
        )
    )


def pairs(images: list[bytes], labels: list[int]):
    return lambda: tf.data.Dataset.from_tensor_slices((images, np.asarray(labels, np.int64)))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    """A local weights file: the backbone counts as pretrained, as with ImageNet weights."""
    from modules.trainer import backbones

    tf.keras.utils.set_random_seed(1)
    path = str(tmp_path_factory.mktemp("weights") / "mobilenet_v2.weights.h5")
    backbones.build_backbone("mobilenet_v2", SIZE, "random").model.save_weights(path)
    return path


@pytest.fixture
def splits(tmp_path) -> dict:
    return tiny_splits(str(tmp_path))


@pytest.fixture
def restore_policy():
    """Leaves the global Keras dtype policy as it found it."""
    before = tf.keras.mixed_precision.global_policy()
    yield
    tf.keras.mixed_precision.set_global_policy(before)


def _batch_norm_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    return [
        layer for layer in model.layers if isinstance(layer, tf.keras.layers.BatchNormalization)
    ]


def _moving_statistics(model: tf.keras.Model) -> list[np.ndarray]:
    return [
        v.numpy()
        for layer in _batch_norm_layers(model)
        for v in (layer.moving_mean, layer.moving_variance)
    ]


# --------------------------------------------------------------------------- settings


def test_hyperparameters_need_every_recipe_setting_and_reject_unknown_keys():
    config = trainer_config(dropout=0.5, code_version="abc")
    hp = hyperparameters.hyperparameters(config)
    assert hp["dropout"] == 0.5 and "code_version" not in hp
    with pytest.raises(ValueError, match=r"unknown \['learning_rat'\]"):
        hyperparameters.hyperparameters({**config, "learning_rat": 1e-3})
    partial = {k: v for k, v in config.items() if k != "seed"}
    with pytest.raises(ValueError, match=r"missing \['seed'\]"):
        hyperparameters.hyperparameters(partial)


def test_the_settings_table_declares_exactly_the_recipes_settings():
    """Each recipe setting has one declared default (pipeline/settings.py), none here."""
    assert set(settings.training_config({})) == set(recipe.HYPERPARAMETERS)
    assert not hasattr(trainer_module, "DEFAULTS")


def test_class_weights_are_balanced():
    weights = recipe.class_weights(np.array([0] * 30 + [1] * 10))
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    assert 30 * weights[0] == pytest.approx(10 * weights[1]) == pytest.approx(20)
    assert recipe.class_weights(np.zeros(8, int)) == {0: 1.0, 1: 0.0}


def test_global_batch_size_scales_with_replicas():
    assert devices.global_batch_size(16, 1) == 16
    assert devices.global_batch_size(16, 4) == 64
    assert devices.global_batch_size(16, 0) == 16


def test_fine_tune_steps_keep_all_epochs_within_train_steps():
    hp = tiny_settings(batch_size=4, epochs_fine_tune=3)
    assert devices.fine_tune_steps(10, hp, 1, None) == 15  # 60 tiles / 4
    assert devices.fine_tune_steps(10, hp, 1, 9) == 3  # 9 steps over 3 epochs
    assert devices.fine_tune_steps(10, hp, 2, None) == 8  # global batch 8


# --------------------------------------------------------------------------- tiles


@pytest.mark.parametrize(
    ("height", "width", "grid"),
    [(460, 700, (2, 3)), (456, 700, (2, 3)), (224, 224, (1, 1)), (50, 50, (1, 1))],
)
def test_tile_grid_keeps_the_native_scale(height, width, grid):
    rows, cols = image_tiles.tile_grid(height, width, 224, 12)
    assert (int(rows), int(cols)) == grid


def test_tile_grid_shrinks_huge_images_to_max_tiles():
    for height, width in [(3000, 3000), (2000, 9000), (230, 20000)]:
        rows, cols = image_tiles.tile_grid(height, width, 224, 12)
        assert 1 <= int(rows) * int(cols) <= 12, (height, width, int(rows), int(cols))


def test_zoomed_tiles_cover_fewer_native_pixels_each():
    # 700x460 magnified 1.5x is 1050x690: 3 x 5 tiles, each about 150 native pixels wide.
    rows, cols = image_tiles.tile_grid(460, 700, 224, 27, zoom=1.5)
    assert (int(rows), int(cols)) == (3, 5)
    image = tf.random.uniform([2 * SIZE, 2 * SIZE, 3], seed=2)
    tiles = image_tiles.to_tiles(image, SIZE, 16, zoom=2.0).numpy()
    assert tiles.shape == (16, SIZE, SIZE, 3)
    # The top-left tile is the top-left half-tile of the image, enlarged twice.
    enlarged = tf.image.resize(image[: SIZE // 2, : SIZE // 2], [SIZE, SIZE]).numpy()
    assert np.abs(tiles[0] - enlarged).mean() < 0.05
    np.testing.assert_array_equal(
        image_tiles.to_tiles(image, SIZE, 16, zoom=1.0), image_tiles.to_tiles(image, SIZE, 16)
    )


def test_tile_scales_are_read_from_settings_and_metadata_and_checked():
    assert image_tiles.parse_scales("1.0, 1.5") == (1.0, 1.5)
    assert image_tiles.parse_scales([1.0]) == image_tiles.NATIVE_SCALES
    assert recipe.scales_of({}) == (1.0,)  # a model from before tile_scales: native tiles
    for bad in ("", "1.0,x", "1.0,1.0", "1.0,9", "nan"):
        with pytest.raises(ValueError, match="HISTO_TILE_SCALES"):
            recipe.scales_of({"tile_scales": bad})
    # Each scale's cap grows with its area: a 700x460 image keeps its 3 x 5 zoomed grid.
    assert image_tiles.scale_cap(12, 1.0) == 12 and image_tiles.scale_cap(12, 1.5) == 27
    stacks = image_tiles.scaled_tiles(tf.zeros([460, 700, 3]), 224, 12, (1.0, 1.5))
    assert [int(t.shape[0]) for t in stacks] == [6, 15]


def test_tiles_are_the_resized_image_cut_row_major():
    image = tf.random.uniform([2 * SIZE, 3 * SIZE, 3], seed=1)
    tiles = image_tiles.to_tiles(image, SIZE, 12).numpy()
    assert tiles.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_allclose(tiles[1], image.numpy()[:SIZE, SIZE : 2 * SIZE], atol=1e-5)
    np.testing.assert_allclose(tiles[5], image.numpy()[SIZE:, 2 * SIZE :], atol=1e-5)
    views = image_tiles.views(tf.constant(tiles)).numpy()
    assert views.shape == (6 * image_tiles.VIEWS, SIZE, SIZE, 3)
    np.testing.assert_array_equal(views[6], tiles[0][:, ::-1])  # the mirror of tile 0


# --------------------------------------------------------------------------- freezing


@pytest.fixture(scope="module")
def backbone_model() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    _, backbone = recipe.build(tiny_settings())
    return backbone.model


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_unfreeze_top_trains_the_top_fraction_but_never_batchnorm(backbone_model, fraction):
    trainable = unfreeze_top(backbone_model, fraction)
    layers = backbone_model.layers
    first = int(round(len(layers) * (1.0 - fraction)))
    for index, layer in enumerate(layers):
        is_bn = isinstance(layer, tf.keras.layers.BatchNormalization)
        assert layer.trainable == (index >= first and not is_bn), layer.name
    assert trainable == sum(1 for layer in layers if layer.trainable and layer.weights)
    bn_variables = {id(v) for layer in _batch_norm_layers(backbone_model) for v in layer.weights}
    assert not bn_variables & {id(v) for v in backbone_model.trainable_weights}
    if fraction == 0.3:
        assert 0 < trainable < sum(1 for layer in layers if layer.weights)


def test_fine_tuning_runs_the_backbone_in_inference_mode(weights_file):
    tf.keras.utils.set_random_seed(0)
    model, backbone = recipe.build(tiny_settings(weights=weights_file))
    assert backbone.pretrained and not backbone.model.trainable
    unfreeze_top(backbone.model, 0.3)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), loss="binary_crossentropy")
    statistics = _moving_statistics(backbone.model)
    top_conv = [layer for layer in backbone.model.layers if layer.trainable and layer.weights][-1]
    kernel = top_conv.weights[0].numpy()

    images = tf.random.uniform([4, SIZE, SIZE, 3], seed=3) * 4.0  # far from ImageNet statistics
    model.train_on_batch(images, tf.constant([0.0, 1.0, 0.0, 1.0]))

    after = _moving_statistics(backbone.model)
    assert all(np.array_equal(a, b) for a, b in zip(statistics, after, strict=True))
    assert not np.array_equal(kernel, top_conv.weights[0].numpy())  # it did train


# --------------------------------------------------------------------------- input


def test_image_dataset_is_one_ordered_pass_of_bytes_and_labels(splits):
    dataset = data.image_dataset(splits["eval_files"], TransformOutputStandIn())
    got = [(image.numpy(), int(label)) for image, label in dataset]
    assert got == list(zip(splits["eval_images"], splits["eval_labels"], strict=True))


def test_split_index_reads_labels_and_patients_in_the_images_order(splits):
    index = data.split_index(splits["train_files"], TransformOutputStandIn())
    assert index.labels == splits["train_labels"] and index.per_class() == [8, 4]
    assert index.patients == splits["train_patients"]

    class WithoutPatients(TransformOutputStandIn):  # a Transform graph from before patients
        def transformed_feature_spec(self) -> dict[str, tf.io.FixedLenFeature]:
            spec = super().transformed_feature_spec()
            return {k: v for k, v in spec.items() if k != features.TRANSFORMED_PATIENT_KEY}

    older = data.split_index(splits["train_files"], WithoutPatients())
    assert older.labels == splits["train_labels"] and older.patients is None


# --------------------------------------------------------------------------- calibration


def test_fit_temperature_recovers_the_temperature_of_the_labels():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, 4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-logits / 2.5))).astype(int)
    assert recipe.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.1)


def test_pick_threshold_maximises_balanced_accuracy_on_the_grid():
    probabilities = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    threshold = recipe.pick_threshold(probabilities, labels)
    assert threshold in recipe.THRESHOLD_GRID
    assert 0.3 < threshold <= 0.35  # calls 0.35 malignant, 0.3 benign: every image right


def test_threshold_rules_weigh_each_patient_the_same_when_given_patient_weights():
    """A large benign patient scored 0.55 outvotes three small ones image by image; with
    each patient weighing the same the threshold keeps the malignant image at 0.45."""
    probabilities = np.array([0.55] * 10 + [0.2, 0.2, 0.2] + [0.45, 0.58, 0.9])
    labels = np.array([0] * 13 + [1] * 3)
    patients = ["big"] * 10 + ["b1", "b2", "b3", "m1", "m2", "m3"]
    weights = recipe.patient_weights(patients)
    assert recipe.pick_threshold(probabilities, labels) == pytest.approx(0.56)
    assert recipe.pick_threshold(probabilities, labels, weights) == pytest.approx(0.45)
    # Sensitivity: one large malignant patient at 0.3, nine small ones at 0.8.
    probabilities = np.array([0.3] * 10 + [0.8] * 9 + [0.1])
    labels = np.array([1] * 19 + [0])
    weights = recipe.patient_weights(["big"] * 10 + [f"m{k}" for k in range(9)] + ["b"])
    assert recipe.pick_threshold_for_sensitivity(probabilities, labels) == pytest.approx(0.3)
    kept = recipe.pick_threshold_for_sensitivity(probabilities, labels, weights)
    assert kept == pytest.approx(0.8)


def test_calibrate_picks_the_threshold_with_the_patients_weights():
    rng = np.random.default_rng(1)
    logits = np.concatenate([rng.normal(0.4, 0.2, 10), [-2.0, -2.0, -2.0, -0.3, 0.6, 3.0]])
    labels = np.array([0] * 13 + [1] * 3)
    patients = ["big"] * 10 + ["b1", "b2", "b3", "m1", "m2", "m3"]
    for given, weights in ((patients, recipe.patient_weights(patients)), (None, None)):
        calibration = recipe.calibrate(logits, labels, "eval_balanced_accuracy", patients=given)
        probabilities = 1.0 / (1.0 + np.exp(-logits / calibration.temperature))
        expected = recipe.pick_threshold(probabilities, labels, weights)
        assert calibration.threshold == pytest.approx(expected)
    weighted = recipe.calibrate(logits, labels, "eval_balanced_accuracy", patients=patients)
    unweighted = recipe.calibrate(logits, labels, "eval_balanced_accuracy")
    assert weighted.threshold < unweighted.threshold  # the small benign patients' say


def test_calibrate_falls_back_to_defaults_on_one_class():
    calibration = recipe.calibrate(np.array([1.0, 2.0]), np.array([1, 1]))
    assert (calibration.temperature, calibration.threshold) == (1.0, 0.5)


def test_patient_weights_give_every_patient_the_same_share():
    weights = recipe.patient_weights(["A"] * 6 + ["B"] * 2 + ["C"])
    np.testing.assert_allclose(weights.mean(), 1.0)
    shares = [weights[:6].sum(), weights[6:8].sum(), weights[8:].sum()]
    np.testing.assert_allclose(shares, [3.0, 3.0, 3.0])


def test_a_patient_weighted_temperature_is_the_one_of_patients_of_equal_size():
    """Weighing each patient the same fits the temperature an unweighted fit finds when
    every patient holds as many images: here the small patient's images repeated five
    times. Unweighted, the large patient (confidently wrong) sets it."""
    rng = np.random.default_rng(0)
    big_logits = rng.normal(4.0, 1.0, 10)  # confidently malignant, half of them benign
    big_labels = np.array([1, 0] * 5)
    small_logits, small_labels = np.array([3.0, -3.0]), np.array([1, 0])  # right
    logits = np.concatenate([big_logits, small_logits])
    labels = np.concatenate([big_labels, small_labels])
    patients = ["big"] * 10 + ["small"] * 2
    weighted = recipe.fit_temperature(logits, labels, recipe.patient_weights(patients))
    repeated = recipe.fit_temperature(
        np.concatenate([big_logits, np.tile(small_logits, 5)]),
        np.concatenate([big_labels, np.tile(small_labels, 5)]),
    )
    assert weighted == repeated
    assert weighted < recipe.fit_temperature(logits, labels)
    calibration = recipe.calibrate(logits, labels, "balanced_prior", "held out", patients)
    assert calibration.temperature == weighted
    assert calibration.fitted_on == (
        "held out: 12 images, 6 malignant of 2 patients, each weighing the same; "
        "threshold rule balanced_prior"
    )
    with pytest.raises(ValueError, match="11 patient ids for 12 calibration logits"):
        recipe.calibrate(logits, labels, "balanced_prior", "held out", patients[:11])


def test_calibration_folds_keep_each_patient_whole_and_deal_each_class_across_them():
    patients = [f"B{k}" for k in range(6) for _ in range(3)] + [f"M{k}" for k in range(4)] * 2
    labels = np.array([0] * 18 + [1] * 8)
    groups = recipe.calibration_groups(patients, labels, folds=5, seed=3)
    assert groups is not None and set(groups.tolist()) == {1, 2, 3, 4}
    for patient in set(patients):
        assert len({g for p, g in zip(patients, groups, strict=True) if p == patient}) == 1
    fold_of = dict(zip(patients, groups.tolist(), strict=True))
    for prefix, patients_per_fold in (("B", {1, 2}), ("M", {1})):  # 6 and 4 over 4 folds
        counts = np.bincount([g for p, g in fold_of.items() if p[0] == prefix], minlength=5)
        assert set(counts[1:].tolist()) == patients_per_fold
    assert np.array_equal(groups, recipe.calibration_groups(patients, labels, 5, seed=3))
    assert recipe.calibration_groups(patients, labels, folds=1, seed=3) is None
    assert recipe.calibration_groups(["P"] * 4, np.array([0, 1, 0, 1]), 5, seed=3) is None
    few = recipe.calibration_groups(["A", "B", "C"], np.array([0, 1, 0]), folds=5, seed=3)
    assert sorted(few.tolist()) == [1, 2, 3]  # one fold a patient when there are fewer


def test_a_patients_out_of_fold_logits_come_from_heads_that_never_saw_its_labels():
    """Flipping one patient's labels changes every other patient's out-of-fold logits (its
    images train their heads) and none of its own (no head that scores it saw them)."""
    rng = np.random.default_rng(0)
    patients = [f"P{k}" for k in range(8) for _ in range(4)]
    labels = np.array([k % 2 for k in range(8) for _ in range(4)])
    x = rng.normal(0.0, 1.0, (32, 6)).astype(np.float32)
    x[:, 0] += labels  # learnable, not separable
    eval_x = rng.normal(0.0, 1.0, (6, 6)).astype(np.float32)
    eval_y = np.array([0, 1] * 3)
    groups = recipe.calibration_groups(patients, labels, folds=5, seed=0)
    hp = _head_settings(early_stopping_patience=0, epochs_head=5)

    def oof(train_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tf.keras.utils.set_random_seed(0)
        model = _head_only_classifier(6)
        initial = model.get_layer("malignant_logit").get_weights()
        evaluation = (eval_x, eval_y, np.linspace(-1, 1, 6))
        train = (x, train_labels)
        return recipe.out_of_fold_logits(model, initial, train, evaluation, groups, 5, hp)

    logits, oof_labels, rows = oof(labels)
    flipped = labels.copy()
    flipped[:4] = 1 - flipped[:4]  # patient P0
    logits_flipped, _, _ = oof(flipped)
    assert len(logits) == 38 and oof_labels.sum() == 16 + 3
    np.testing.assert_array_equal(logits[:6], np.linspace(-1, 1, 6))  # the eval split's own
    # out_of_fold_logits orders the train images fold by fold after the eval split's.
    order = np.concatenate([np.flatnonzero(groups == g) for g in np.unique(groups)])
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(oof_labels[6:], labels[rows])
    own = np.isin(order, np.flatnonzero(np.array(patients) == "P0"))
    mine, mine_flipped = logits[6:][own], logits_flipped[6:][own]
    np.testing.assert_allclose(mine, mine_flipped, rtol=0, atol=1e-6)
    others_moved = np.abs(logits[6:][~own] - logits_flipped[6:][~own])
    assert others_moved.max() > 1e-3


def _head_only_classifier(width: int) -> tf.keras.Model:
    """The classifier's head layers (names as recipe._head reads them) on a 1x1 feature map."""
    inputs = tf.keras.Input((1, 1, width))
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    x = tf.keras.layers.Normalization(name="feature_norm")(x)
    x = tf.keras.layers.Dropout(0.0, name="head_dropout")(x)
    x = tf.keras.layers.Dense(1, name="malignant_logit")(x)
    return tf.keras.Model(inputs, x)


def _head_settings(**overrides) -> dict:
    hp = {"learning_rate": 0.05, "early_stopping_patience": 5, "head_batch_size": 16}
    return {**hp, "label_smoothing": 0.0, **overrides}


def test_label_smoothing_keeps_the_head_from_pushing_logits_to_extremes():
    """On separable features hard labels drive the logits outward for as long as training
    runs; with smoothing e the loss is least at |logit| = log((1 - e/2) / (e/2))."""
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 32)
    train = rng.normal(0.0, 1.0, (64, 4)).astype(np.float32)
    train[:, 0] += np.where(labels == 1, 4.0, -4.0)  # separable on channel 0
    smoothed = 0.4
    spread = {}
    for smoothing in (0.0, smoothed):
        tf.keras.utils.set_random_seed(0)
        model = _head_only_classifier(4)
        hp = _head_settings(epochs_head=150, early_stopping_patience=150, label_smoothing=smoothing)
        recipe.fit_head(model, (train, labels), (train, labels), hp, [])
        spread[smoothing] = float(np.abs(recipe.head_logits(model, train)).mean())
    optimum = float(np.log((1 - smoothed / 2) / (smoothed / 2)))  # 1.39 for e = 0.4
    assert spread[smoothed] < 1.5 * optimum
    assert spread[0.0] > 2 * spread[smoothed]


def test_best_epochs_is_the_epoch_early_stopping_kept():
    assert recipe.best_epochs({"val_auc": [0.6, 0.8, 0.7, 0.8]}) == 2
    assert recipe.best_epochs({"loss": [1.0]}) == 1  # no eval AUC recorded: the first


def test_patience_zero_trains_every_head_epoch_and_refits_as_many():
    """With nothing to gain on the eval split, patience 2 stops after 3 epochs and the refit
    takes the first; patience 0 trains all of them and the refit takes them all."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 16)
    train = rng.normal(0.0, 1.0, (32, 3)).astype(np.float32)
    train[:, 0] += np.where(labels == 1, 2.0, -2.0)
    flat = (np.zeros((32, 3), np.float32), labels)  # the same AUC every epoch
    for patience, trained, refit in ((2, 3, 1), (0, 12, 12)):
        tf.keras.utils.set_random_seed(0)
        hp = _head_settings(epochs_head=12, early_stopping_patience=patience)
        history = recipe.fit_head(_head_only_classifier(3), (train, labels), flat, hp, [])
        assert len(history["loss"]) == trained
        assert len(history["val_auc"]) == trained  # the eval AUC is still recorded
        assert recipe.refit_epochs(history, hp) == refit


def test_the_refitted_head_learns_from_the_eval_images_too():
    """Only the eval images show that channel 1 matters: the head fitted on train alone
    cannot rank them, the head refitted on train + eval can, from its initial weights."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 32)
    sign = np.where(labels == 1, 1.0, -1.0)
    train = rng.normal(0.0, 1.0, (64, 4)).astype(np.float32)
    train[:, 0] += 3 * sign  # train: channel 0 tells the classes apart, channel 1 is noise
    evaluation = rng.normal(0.0, 1.0, (64, 4)).astype(np.float32)
    evaluation[:, 1] += 3 * sign  # eval: channel 1 does, channel 0 is noise
    tf.keras.utils.set_random_seed(0)
    model = _head_only_classifier(4)
    initial = model.get_layer("malignant_logit").get_weights()
    hp = _head_settings(epochs_head=30, early_stopping_patience=30)
    recipe.fit_head(model, (train, labels), (train, labels), hp, [])
    before = roc_auc(labels.tolist(), recipe.head_logits(model, evaluation).tolist())
    history = recipe.refit_head(model, initial, (train, labels), (evaluation, labels), 30, hp, [])
    after = roc_auc(labels.tolist(), recipe.head_logits(model, evaluation).tolist())
    assert len(history["loss"]) == 30  # exactly the epochs asked for: no early stopping
    assert before < 0.75 < 0.95 < after
    assert roc_auc(labels.tolist(), recipe.head_logits(model, train).tolist()) > 0.95
    norm = model.get_layer("feature_norm")  # standardised over train + eval
    np.testing.assert_allclose(
        norm.mean.numpy().reshape(-1), np.concatenate([train, evaluation]).mean(0), atol=1e-4
    )


def test_a_channel_constant_in_training_cannot_swamp_the_logit():
    """A ReLU channel dead on every training image (common on small or synthetic sets) must
    not get a weight of 1/epsilon: later activations there would decide every prediction."""
    rng = np.random.default_rng(0)
    train = rng.normal(1.0, 0.3, (64, 8)).astype(np.float32)
    train[:, 0] = 0.0  # dead on the training split
    labels = (train[:, 1] > 1.0).astype(int)
    model = _head_only_classifier(8)
    recipe.fit_head(model, (train, labels), (train, labels), _head_settings(epochs_head=20), [])
    probe = train[:4].copy()
    moved = probe.copy()
    moved[:, 0] = 0.01  # a small activation, a few % of a typical feature's spread
    change = recipe.head_logits(model, moved) - recipe.head_logits(model, probe)
    assert np.abs(change).max() < 1.0
    assert recipe.roc_auc(labels.tolist(), recipe.head_logits(model, train).tolist()) > 0.9


# --------------------------------------------------------------------------- the recipe


def test_the_recipe_trains_calibrates_and_scores_like_the_exported_graph(weights_file, splits):
    """Early-stopped head on cached features; the tile-logit mean equals the head's logit."""
    tf.keras.utils.set_random_seed(0)
    hp = tiny_settings(weights=weights_file, epochs_head=40, early_stopping_patience=5)
    cache: dict = {}
    trained = recipe.train(
        pairs(splits["train_images"], splits["train_labels"]),
        pairs(splits["eval_images"], splits["eval_labels"]),
        hp,
        feature_cache=cache,
    )
    history = trained.history["head"]
    assert 1 <= len(history["val_auc"]) <= 40 and "loss" in history
    assert len(cache) == 18  # every distinct image once
    assert trained.calibration.threshold in recipe.THRESHOLD_GRID
    assert trained.calibration.fitted_on.startswith("eval split: 6 images")
    tile_logit = recipe.logit_model(trained.model)
    graph = [
        float(recipe.image_logit(tile_logit, tf.constant(image), SIZE, 12))
        for image in splits["eval_images"]
    ]
    np.testing.assert_allclose(graph, trained.eval_logits, rtol=1e-4, atol=1e-4)


def test_with_two_scales_each_scale_weighs_the_same_in_training_and_the_graph(weights_file, splits):
    """tile_scales 1.0,1.5: the features are the mean of the scales' means, the image
    logit the mean of the scales' logits, and the graph still scores like the recipe."""
    tf.keras.utils.set_random_seed(0)
    hp = tiny_settings(
        weights=weights_file, epochs_head=10, head_refit=False, tile_scales="1.0,1.5"
    )
    train, evaluation = (
        pairs(splits[f"{s}_images"], splits[f"{s}_labels"]) for s in ("train", "eval")
    )
    trained = recipe.train(train, evaluation, hp)
    network = recipe.features_model(trained.model)
    both, _ = recipe.image_features(network, evaluation(), SIZE, 12, scales=(1.0, 1.5))
    native, _ = recipe.image_features(network, evaluation(), SIZE, 12)
    zoomed, _ = recipe.image_features(network, evaluation(), SIZE, 12, scales=(1.5,))
    # (random backbone weights: tiny features, so compared relatively)
    np.testing.assert_allclose(both, (native + zoomed) / 2, rtol=1e-4, atol=0)
    assert not np.allclose(native, zoomed, rtol=1e-2, atol=0)  # 2 x 3 tiles against 3 x 4
    tile_logit = recipe.logit_model(trained.model)

    def graph(image: bytes, scales: tuple) -> float:
        return float(recipe.image_logit(tile_logit, tf.constant(image), SIZE, 12, scales))

    images = splits["eval_images"]
    np.testing.assert_allclose(
        [graph(i, (1.0, 1.5)) for i in images], trained.eval_logits, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        [graph(i, (1.0, 1.5)) for i in images],
        [(graph(i, (1.0,)) + graph(i, (1.5,))) / 2 for i in images],
        rtol=1e-5,
        atol=1e-5,
    )


def test_with_head_refit_the_recipe_refits_for_the_kept_epochs(weights_file, splits):
    """Calibration comes from the held-out head; then the head retrains on both splits."""
    tf.keras.utils.set_random_seed(0)
    hp = tiny_settings(
        weights=weights_file, epochs_head=20, early_stopping_patience=3, head_refit=True
    )
    eval_images = pairs(splits["eval_images"], splits["eval_labels"])
    trained = recipe.train(pairs(splits["train_images"], splits["train_labels"]), eval_images, hp)
    kept = recipe.best_epochs(trained.history["head"])
    assert len(trained.history["head_refit"]["loss"]) == kept
    assert trained.calibration.fitted_on.endswith("head then refitted on train + eval")
    tile_logit = recipe.logit_model(trained.model)
    refitted = [
        float(recipe.image_logit(tile_logit, tf.constant(image), SIZE, 12))
        for image in splits["eval_images"]
    ]  # the calibration's logits were the held-out head's, not the refitted one's
    assert not np.allclose(refitted, trained.eval_logits, rtol=1e-3, atol=0.0)


def test_with_patients_the_recipe_calibrates_out_of_fold_and_keeps_the_trained_head(
    weights_file, splits
):
    """Every train + eval image gets a logit from a head that never saw its patient; the
    temperature is fitted on those, and the model keeps the head trained on train."""
    tf.keras.utils.set_random_seed(0)
    hp = tiny_settings(weights=weights_file, epochs_head=5, head_refit=False)
    train = pairs(splits["train_images"], splits["train_labels"])
    evaluation = pairs(splits["eval_images"], splits["eval_labels"])
    patients = splits["train_patients"]
    trained = recipe.train(train, evaluation, hp, train_patients=patients)
    assert trained.calibration.fitted_on.startswith(
        "out-of-fold logits (5 patient folds, the eval split one): 18 images, 7 malignant;"
    )  # without the eval split's patients every image weighs the same
    assert trained.calibration.temperature in recipe.TEMPERATURE_GRID
    tile_logit = recipe.logit_model(trained.model)
    graph = [
        float(recipe.image_logit(tile_logit, tf.constant(image), SIZE, 12, recipe.scales_of(hp)))
        for image in splits["eval_images"]
    ]  # the last calibration fold's head was put back to the one trained on train
    np.testing.assert_allclose(graph, trained.eval_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="11 patient ids for 12 training images"):
        recipe.train(train, evaluation, hp, train_patients=patients[:11])


def test_with_every_patient_known_each_weighs_the_same_in_the_temperatures_fit(
    monkeypatch, weights_file, splits
):
    """The calibration gets each out-of-fold logit's own patient: every train + eval patient
    once over, each with its own label; ``calibration_weights`` image leaves them out."""
    seen = []
    real_calibrate = recipe.calibrate

    def calibrate(logits, labels, rule, source="eval split", patients=None):
        seen.append((labels.tolist(), patients))
        return real_calibrate(logits, labels, rule, source, patients)

    monkeypatch.setattr(recipe, "calibrate", calibrate)
    train = pairs(splits["train_images"], splits["train_labels"])
    evaluation = pairs(splits["eval_images"], splits["eval_labels"])
    both = {"train_patients": splits["train_patients"], "eval_patients": splits["eval_patients"]}
    hp = tiny_settings(weights=weights_file, epochs_head=2, head_refit=False)
    cache: dict = {}  # the frozen features once for the three trainings
    trained = recipe.train(train, evaluation, hp, feature_cache=cache, **both)
    labels, patients = seen[-1]
    everyone = splits["eval_patients"] + splits["train_patients"]
    assert sorted(patients) == sorted(everyone)
    label_of = dict(zip(everyone, splits["eval_labels"] + splits["train_labels"], strict=True))
    assert labels == [label_of[p] for p in patients]
    assert f" of {len(set(everyone))} patients, each weighing the same;" in (
        trained.calibration.fitted_on
    )
    image_weighted = {**hp, "calibration_weights": "image"}
    recipe.train(train, evaluation, image_weighted, feature_cache=cache, **both)
    assert seen[-1][1] is None
    with pytest.raises(ValueError, match="5 patient ids for 6 eval images"):
        short = splits["eval_patients"][:5]
        recipe.train(train, evaluation, hp, feature_cache=cache, eval_patients=short)
    with pytest.raises(ValueError, match="unknown calibration weights 'slide'"):
        recipe.train(train, evaluation, {**hp, "calibration_weights": "slide"}, **both)


def test_run_fn_is_the_recipe_then_the_export(monkeypatch, splits, tmp_path):
    """run_fn hands the recipe both splits and writes the calibration into the metadata."""
    seen = {}

    def fake_train(
        train_images, eval_images, hp, callbacks, steps, strategy, train_patients, eval_patients
    ):
        seen["train"] = [int(y) for _, y in train_images()]
        seen["train_patients"], seen["eval_patients"] = train_patients, eval_patients
        seen["eval"] = [int(y) for _, y in eval_images()]
        model, backbone = recipe.build(hp)
        calibration = recipe.Calibration(1.5, 0.37, "eval split: test")
        return recipe.TrainedClassifier(model, backbone, calibration, {}, np.zeros(0), np.zeros(0))

    def fake_export(model, tf_transform_output, serving_dir, metadata, calibration):
        seen["metadata"], seen["calibration"] = metadata, calibration

    monkeypatch.setattr(recipe, "train", fake_train)
    monkeypatch.setattr(trainer_module.export, "export_model", fake_export)
    monkeypatch.setattr(trainer_module.tft, "TFTransformOutput", lambda _: TransformOutputStandIn())
    fn_args = types.SimpleNamespace(
        train_files=splits["train_files"],
        eval_files=splits["eval_files"],
        train_steps=10,
        transform_output="unused",
        serving_model_dir=str(tmp_path / "serving"),
        model_run_dir=str(tmp_path / "run"),
        custom_config=trainer_config(image_size=SIZE, weights="random"),
        hyperparameters=None,
    )
    trainer_module.run_fn(fn_args)
    assert seen["train"] == splits["train_labels"] and seen["eval"] == splits["eval_labels"]
    assert seen["train_patients"] == splits["train_patients"]  # in the images' order
    assert seen["eval_patients"] == splits["eval_patients"]
    assert seen["metadata"]["calibration"]["threshold"] == 0.37
    assert seen["metadata"]["train_images_per_class"] == {"benign": 8, "malignant": 4}
    assert seen["metadata"]["tile_size"] == SIZE


# --------------------------------------------------------------------------- devices


def test_cpu_gets_the_default_strategy_and_float32(restore_policy):
    assert not tf.config.list_physical_devices("GPU")
    strategy = devices.distribution_strategy()
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert tf.keras.mixed_precision.global_policy().name == "float32"


def test_a_gpu_gets_mirrored_strategy_and_mixed_precision(monkeypatch, restore_policy):
    real = tf.config.list_physical_devices
    fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(
        tf.config,
        "list_physical_devices",
        lambda device_type=None: [fake_gpu] if device_type == "GPU" else real(device_type),
    )
    strategy = devices.distribution_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
    # The head still answers in float32: a float16 sigmoid saturates.
    with strategy.scope():
        model, _ = recipe.build(tiny_settings())
    assert model.output.dtype == tf.float32


def test_the_recipe_trains_and_fine_tunes_under_mirrored_strategy(weights_file, splits):
    """What a GPU node runs (MirroredStrategy; here over the CPU): head, fine-tuning, head."""
    tf.keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    hp = tiny_settings(weights=weights_file, epochs_head=3, epochs_fine_tune=1)
    trained = recipe.train(
        pairs(splits["train_images"], splits["train_labels"]),
        pairs(splits["eval_images"], splits["eval_labels"]),
        hp,
        fine_tune_steps=2,
        strategy=strategy,
    )
    assert set(trained.history) == {"head", "fine_tune", "head_after_fine_tune", "head_refit"}
    assert len(trained.history["fine_tune"]["loss"]) == 1
    kept = recipe.refit_epochs(trained.history["head_after_fine_tune"], hp)
    assert len(trained.history["head_refit"]["loss"]) == kept  # refit on the tuned features
    assert len(trained.eval_logits) == len(splits["eval_labels"])


def test_fine_tuning_tiles_are_kept_in_memory_only_within_the_budget():
    hp = hyperparameters.hyperparameters(
        trainer_config(image_size=224, max_tiles=12, tile_scales="1.0")
    )
    assert recipe.tile_cache_fits(500, hp)  # the shared BreakHis sets: 3.4 GiB at most
    assert not recipe.tile_cache_fits(10_000, hp)  # 67 GiB: decoded again each epoch
    assert not recipe.tile_cache_fits(None, hp)  # unknown size: never cached
    assert recipe.tile_cache_fits(10_000, {**hp, "tile_cache_mb": 80 * 1024})


@pytest.mark.parametrize("n_images", [None, 4])
def test_the_tile_input_is_the_same_with_or_without_its_cache(n_images):
    hp = tiny_settings(batch_size=4)
    images, labels = encoded_images(4), [0, 1, 0, 1]
    dataset = recipe.tile_dataset(pairs(images, labels)(), hp, seed=1, n_images=n_images)
    tiles, tile_labels = next(iter(dataset))
    assert tiles.shape == (4, SIZE, SIZE, 3) and tile_labels.shape == (4,)
    assert 0.0 <= float(tf.reduce_min(tiles)) and float(tf.reduce_max(tiles)) <= 1.0


def test_fine_tuning_sees_the_tiles_of_every_scale():
    # A 64x96 benign image: 2 x 3 native tiles of 32 px, 3 x 4 at 1.5x; a 32x32 malignant
    # one: 1 tile, and 2 x 2 at 1.5x. One epoch is 23 tiles of which 5 malignant (native
    # tiles only: 7 and 1), so four epochs hold exactly 20 malignant tiles (not 13 or 14).
    hp = tiny_settings(batch_size=92, tile_scales="1.0,1.5")
    images = [encoded_images(1)[0], encoded_images(1, shape=(SIZE, SIZE))[0]]
    dataset = recipe.tile_dataset(pairs(images, [0, 1])(), hp, seed=1, n_images=2)
    tiles, tile_labels = next(iter(dataset))
    assert tiles.shape == (92, SIZE, SIZE, 3)
    assert int(tf.reduce_sum(tile_labels)) == 20
    # The in-memory budget counts every scale's cap: 12 + 27 tiles of 224 px per image.
    one_scale = hyperparameters.hyperparameters(
        trainer_config(image_size=224, max_tiles=12, tile_scales="1.0")
    )
    assert recipe.tile_cache_fits(500, one_scale)
    assert not recipe.tile_cache_fits(500, {**one_scale, "tile_scales": "1.0,1.5"})
