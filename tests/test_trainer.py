"""The Trainer's pieces: class weights, freezing rules, inference-mode BatchNorm, the input
pipeline (augmentation on training only), strategy / mixed precision and batch scaling.

Models are MobileNetV2 with random weights at 32 px, inputs are small gzipped TFRecords in
Transform's output format, so the file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import math
import os
import types

import numpy as np
import pytest
import tensorflow as tf

from modules import features
from modules.trainer import data, trainer_module
from modules.trainer.model import unfreeze_top

SIZE = 32  # the smallest input MobileNetV2 accepts


# --------------------------------------------------------------------------- test inputs


class TransformOutputStandIn:
    """The one thing ``data`` reads from a ``tft.TFTransformOutput``: the transformed spec.

    It matches what ``transform_module.preprocessing_fn`` produces: a float image of the
    training size and a scalar int64 label.
    """

    def __init__(self, size: int):
        self.size = size

    def transformed_feature_spec(self) -> dict[str, tf.io.FixedLenFeature]:
        return {
            features.TRANSFORMED_IMAGE_KEY: tf.io.FixedLenFeature(
                [self.size, self.size, 3], tf.float32
            ),
            features.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        }


def random_images(count: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, size, size, 3), dtype=np.float32)


def write_transformed_records(path: str, images: np.ndarray, labels: list[int]) -> str:
    """Gzipped tf.Examples as Transform writes them: flat float image, int64 label."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for image, label in zip(images, labels, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        features.TRANSFORMED_IMAGE_KEY: tf.train.Feature(
                            float_list=tf.train.FloatList(value=image.reshape(-1))
                        ),
                        features.TRANSFORMED_LABEL_KEY: tf.train.Feature(
                            int64_list=tf.train.Int64List(value=[int(label)])
                        ),
                    }
                )
            )
            writer.write(example.SerializeToString())
    return path


def tiny_splits(root: str, size: int = SIZE, n_train: int = 12, n_eval: int = 6) -> dict:
    """Train/eval record folders (labels 2:1 in train) and the images that went in."""
    train_images, eval_images = random_images(n_train, size, 1), random_images(n_eval, size, 2)
    train_labels = [int(i % 3 == 0) for i in range(n_train)]
    eval_labels = [i % 2 for i in range(n_eval)]
    write_transformed_records(os.path.join(root, "train", "data.gz"), train_images, train_labels)
    write_transformed_records(os.path.join(root, "eval", "data.gz"), eval_images, eval_labels)
    return {
        "train_files": [os.path.join(root, "train", "*")],
        "eval_files": [os.path.join(root, "eval", "*")],
        "train_images": train_images,
        "eval_images": eval_images,
        "train_labels": train_labels,
        "eval_labels": eval_labels,
    }


def tiny_settings(**overrides) -> dict:
    return trainer_module.hyperparameters(
        {"image_size": SIZE, "weights": "random", "batch_size": 4, **overrides}
    )


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


def test_hyperparameters_fill_defaults_and_reject_unknown_keys():
    hp = trainer_module.hyperparameters({"dropout": 0.5, "weights_cache_dir": "/tmp/w"})
    assert hp["dropout"] == 0.5 and hp["learning_rate"] == trainer_module.DEFAULTS["learning_rate"]
    with pytest.raises(ValueError, match=r"unknown trainer settings \['learning_rat'\]"):
        trainer_module.hyperparameters({"learning_rat": 1e-3})


def test_class_weights_are_balanced():
    weights = trainer_module.class_weights([30, 10])
    assert weights == pytest.approx({0: 40 / 60, 1: 40 / 20})
    # Each class then weighs as much as the other, and the total is unchanged.
    assert 30 * weights[0] == pytest.approx(10 * weights[1]) == pytest.approx(20)


def test_class_weights_ignore_an_absent_class():
    assert trainer_module.class_weights([8, 0]) == {0: 1.0, 1: 0.0}


def test_global_batch_size_scales_with_replicas():
    assert trainer_module.global_batch_size(16, 1) == 16
    assert trainer_module.global_batch_size(16, 4) == 64
    assert trainer_module.global_batch_size(16, 0) == 16


# --------------------------------------------------------------------------- freezing


@pytest.fixture(scope="module")
def backbone_model() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    _, backbone = trainer_module.build_model(tiny_settings())
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


def _fine_tune_step(model: tf.keras.Model) -> None:
    images = tf.constant(random_images(4, seed=3) * 4.0)  # far from ImageNet statistics
    model.train_on_batch(images, tf.constant([0.0, 1.0, 0.0, 1.0]))


def test_fine_tuning_runs_the_backbone_in_inference_mode(weights_file):
    tf.keras.utils.set_random_seed(0)
    model, backbone = trainer_module.build_model(tiny_settings(weights=weights_file))
    assert backbone.pretrained and not backbone.model.trainable
    unfreeze_top(backbone.model, 0.3)
    trainer_module.compile_model(model, 1e-2)
    statistics = _moving_statistics(backbone.model)
    top_conv = [layer for layer in backbone.model.layers if layer.trainable and layer.weights][-1]
    kernel = top_conv.weights[0].numpy()

    _fine_tune_step(model)

    after = _moving_statistics(backbone.model)
    assert all(np.array_equal(a, b) for a, b in zip(statistics, after, strict=True))
    assert not np.array_equal(kernel, top_conv.weights[0].numpy())  # it did train


def test_batchnorm_statistics_stay_even_if_batchnorm_were_trainable(weights_file):
    """``build_classifier`` calls a pretrained backbone with training=False: even trainable
    BatchNorm layers keep their moving statistics (Keras' transfer-learning rule)."""
    tf.keras.utils.set_random_seed(0)
    model, backbone = trainer_module.build_model(tiny_settings(weights=weights_file))
    backbone.model.trainable = True  # BatchNorm included
    trainer_module.compile_model(model, 1e-2)
    statistics = _moving_statistics(backbone.model)
    _fine_tune_step(model)
    after = _moving_statistics(backbone.model)
    assert all(np.array_equal(a, b) for a, b in zip(statistics, after, strict=True))


def test_a_randomly_initialised_backbone_trains_whole_with_batch_statistics():
    """Frozen random features are useless: from scratch, every layer and BatchNorm learn."""
    tf.keras.utils.set_random_seed(0)
    model, backbone = trainer_module.build_model(tiny_settings(weights="random"))
    assert not backbone.pretrained and backbone.model.trainable
    statistics = _moving_statistics(backbone.model)
    _fine_tune_step(model)
    after = _moving_statistics(backbone.model)
    assert not all(np.array_equal(a, b) for a, b in zip(statistics, after, strict=True))


# --------------------------------------------------------------------------- input pipeline


def _images(dataset: tf.data.Dataset, batches: int) -> np.ndarray:
    return np.concatenate(
        [x[features.TRANSFORMED_IMAGE_KEY].numpy() for x, _ in dataset.take(batches)]
    )


def test_eval_dataset_is_one_deterministic_unaugmented_pass(splits):
    spec = TransformOutputStandIn(SIZE)
    dataset = data.make_dataset(splits["eval_files"], spec, 4, False, 6, seed=0)
    first, second = _images(dataset, 100), _images(dataset, 100)
    assert first.shape == (6, SIZE, SIZE, 3)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, splits["eval_images"], atol=1e-7)
    labels = np.concatenate([y.numpy() for _, y in dataset])
    assert labels.tolist() == splits["eval_labels"]


def test_training_dataset_is_augmented_repeated_and_keeps_shape_and_range(splits):
    spec = TransformOutputStandIn(SIZE)
    dataset = data.make_dataset(splits["train_files"], spec, 4, True, 12, seed=0)
    first, second = _images(dataset, 6), _images(dataset, 6)  # 24 images: repeats past 12
    assert first.shape == (24, SIZE, SIZE, 3) and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not np.array_equal(first, second)
    # No training image is an untouched original: the zoom alone resamples every pixel.
    originals = splits["train_images"].reshape(len(splits["train_images"]), -1)
    distances = np.abs(first.reshape(len(first), 1, -1) - originals[None]).max(axis=-1)
    assert distances.min() > 1e-3
    x, y = next(iter(dataset))
    assert y.shape == (4,) and y.dtype == tf.float32


def test_count_labels_reads_the_split(splits):
    counts = data.count_labels(splits["train_files"], TransformOutputStandIn(SIZE))
    assert counts == [8, 4]


def test_training_inputs_scale_the_batch_by_replicas(splits):
    fn_args = types.SimpleNamespace(
        train_files=splits["train_files"],
        eval_files=splits["eval_files"],
        train_steps=100,
        eval_steps=None,
    )
    hp = tiny_settings(batch_size=3)
    inputs = trainer_module.training_inputs(fn_args, TransformOutputStandIn(SIZE), hp, replicas=2)
    x, _ = next(iter(inputs.fit_kwargs["x"]))
    assert x[features.TRANSFORMED_IMAGE_KEY].shape[0] == 6
    assert inputs.fit_kwargs["steps_per_epoch"] == math.ceil(12 / 6)
    assert inputs.fit_kwargs["validation_steps"] == 1
    assert inputs.train_counts == [8, 4] and inputs.eval_counts == [3, 3]
    assert inputs.fit_kwargs["class_weight"] == pytest.approx({0: 0.75, 1: 1.5})


def test_training_inputs_keep_all_epochs_within_train_steps(splits):
    fn_args = types.SimpleNamespace(
        train_files=splits["train_files"],
        eval_files=splits["eval_files"],
        train_steps=6,
        eval_steps=1,
    )
    hp = tiny_settings(batch_size=1, epochs_head=2, epochs_fine_tune=1)
    inputs = trainer_module.training_inputs(fn_args, TransformOutputStandIn(SIZE), hp, replicas=1)
    assert inputs.fit_kwargs["steps_per_epoch"] == 2  # 6 steps over 3 epochs, not 12 per epoch
    assert inputs.fit_kwargs["validation_steps"] == 1


# --------------------------------------------------------------------------- devices


def test_cpu_gets_the_default_strategy_and_float32(restore_policy):
    assert not tf.config.list_physical_devices("GPU")
    strategy = trainer_module.distribution_strategy()
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
    strategy = trainer_module.distribution_strategy()
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert tf.keras.mixed_precision.global_policy().name == "mixed_float16"
    # The head still answers in float32: a float16 sigmoid saturates.
    with strategy.scope():
        model, _ = trainer_module.build_model(tiny_settings())
    assert model.output.dtype == tf.float32
