"""Backbones build, train, normalise their input as their weights expect, and serialise.

All with random weights at 64 px so the whole file runs in seconds; the ImageNet weight
sources are tested in test_weights.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from modules.trainer import backbones
from modules.trainer.weights import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

SIZE = 64


@pytest.fixture(scope="module")
def random_backbones() -> dict[str, backbones.Backbone]:
    tf.keras.utils.set_random_seed(0)
    return {name: backbones.build_backbone(name, SIZE, "random") for name in backbones.BACKBONES}


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)


def _output_of(model: tf.keras.Model, layer: str, x: np.ndarray) -> np.ndarray:
    return tf.keras.Model(model.input, model.get_layer(layer).output)(x).numpy()


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match="mobilenet_v2, efficientnet_b0, densenet121"):
        backbones.build_backbone("alexnet", SIZE, "random")


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_backbone_outputs_its_last_conv_map(random_backbones, images, name):
    backbone = random_backbones[name]
    assert backbone.name == name
    assert backbone.weights_source.startswith("random")
    assert backbone.model.get_layer(backbone.last_conv_layer).output is backbone.model.output
    features = backbone.model(images, training=False)
    assert features.shape.rank == 4 and features.shape[0] == 2
    assert np.isfinite(features.numpy()).all()


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_one_training_step_changes_the_backbone(random_backbones, images, name):
    model = random_backbones[name].model
    head = tf.keras.layers.Dense(1)
    labels = tf.constant([[0.0], [1.0]])
    optimizer = tf.keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        pooled = tf.reduce_mean(model(images, training=True), axis=[1, 2])
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(labels, head(pooled), True))
    variables = model.trainable_variables + head.trainable_variables
    before = [v.numpy() for v in model.trainable_variables]
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    changed = sum(
        not np.array_equal(b, v.numpy())
        for b, v in zip(before, model.trainable_variables, strict=True)
    )
    assert changed > len(before) // 2


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_preprocessing_has_no_weights(random_backbones, name):
    # Unfreezing the backbone (model.trainable = True) must never train the normalisation.
    for layer in random_backbones[name].model.layers:
        if layer.name.startswith("preprocess_"):
            assert not layer.weights, layer.name


@pytest.mark.parametrize(
    "name, layer, reference",
    [
        ("mobilenet_v2", "preprocess_scale", tf.keras.applications.mobilenet_v2.preprocess_input),
        ("densenet121", "preprocess_normalize", tf.keras.applications.densenet.preprocess_input),
        ("resnet50", "preprocess_center", tf.keras.applications.resnet50.preprocess_input),
        ("vgg16", "preprocess_center", tf.keras.applications.vgg16.preprocess_input),
    ],
)
def test_keras_preprocessing_matches_preprocess_input(
    random_backbones, images, name, layer, reference
):
    ours = _output_of(random_backbones[name].model, layer, images)
    np.testing.assert_allclose(ours, reference(images * 255.0), rtol=1e-5, atol=1e-4)


def test_efficientnet_normalises_with_imagenet_statistics(random_backbones, images):
    model = random_backbones["efficientnet_b0"].model
    normalization = next(
        layer
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.Normalization) and layer.weights
    )
    ours = _output_of(model, normalization.name, images)
    expected = (images - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_torchvision_mobilenet_v2_matches_torchvision_geometry(images):
    model = backbones.build_torchvision_mobilenet_v2(SIZE)
    normalised = _output_of(model, "torchvision_normalize", images)
    expected = (images - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)
    np.testing.assert_allclose(normalised, expected, rtol=1e-5, atol=1e-5)
    # torchvision: 3x3 stride-2 convs pad one pixel on every side.
    assert model.get_layer("features_0_0_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("features_0_1").epsilon == pytest.approx(1e-5)
    assert model.output.shape[1:] == (SIZE // 32, SIZE // 32, 1280)
    assert len([layer for layer in model.layers if isinstance(layer, tf.keras.layers.Add)]) == 10


def test_caffe_preprocessing_survives_saving(random_backbones, images, tmp_path):
    # The channel flip is a custom (registered) layer: it must round-trip both formats.
    model = random_backbones["resnet50"].model
    head = tf.keras.Model(model.input, model.get_layer("preprocess_center").output)
    expected = head(images).numpy()
    for path in (tmp_path / "pre.keras", tmp_path / "pre_savedmodel"):
        head.save(path)
        restored = tf.keras.models.load_model(path)
        np.testing.assert_allclose(restored(images).numpy(), expected, rtol=1e-6)
