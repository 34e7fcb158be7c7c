"""Grad-CAM: heatmaps follow the evidence, the last conv layer is found for every backbone,
the audit set is deterministic, and the component ran in the pipeline."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import local_runner
from components.shared import audit_set, model_io
from histo_testlib import node_states, trainer_config
from modules.trainer import backbones
from modules.trainer import grad_cam as cam
from modules.trainer.model import build_classifier

SIZE = 32


def _blob_image(rng: np.random.Generator, centre: tuple[int, int] | None) -> np.ndarray:
    """Pink noisy 'stroma'; a dark round 'lesion' at ``centre`` (row, col) when given."""
    image = np.array([0.9, 0.65, 0.8]) + rng.normal(0, 0.05, (SIZE, SIZE, 3))
    if centre is not None:
        rows, cols = np.indices((SIZE, SIZE))
        inside = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= 4**2
        image[inside] = [0.3, 0.15, 0.45]
    return np.clip(image, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def blob_model() -> tf.keras.Model:
    """A tiny classifier, built like the real one, trained to say 'malignant' iff a blob."""
    tf.keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Rescaling(2.0, offset=-1.0)(inputs)  # like the real backbones
    x = tf.keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    x = tf.keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    backbone = backbones.Backbone(tf.keras.Model(inputs, x, name="tiny"), "tiny", "random", "c2")
    model = build_classifier(backbone, SIZE, dropout=0.0)
    labels = rng.integers(0, 2, 512)
    images = np.stack(
        [_blob_image(rng, tuple(rng.integers(5, SIZE - 5, 2)) if y else None) for y in labels]
    )
    model.compile(tf.keras.optimizers.Adam(1e-2), "binary_crossentropy", metrics=["accuracy"])
    history = model.fit(images, labels, batch_size=32, epochs=5, verbose=0)
    assert history.history["accuracy"][-1] > 0.95
    return model


def test_heatmap_mass_follows_the_lesion(blob_model):
    rng = np.random.default_rng(1)
    left = [_blob_image(rng, (int(r), 7)) for r in (8, 16, 24)]
    right = [_blob_image(rng, (int(r), 24)) for r in (8, 16, 24)]
    result = cam.grad_cam(blob_model, np.stack(left + right), conv_hint="c2")
    assert result.heatmaps.shape == (6, SIZE, SIZE)
    assert result.conv_layer == "c2" and result.conv_layer_source == "metadata"
    assert (result.probabilities > 0.5).all()
    columns = [cam.centre_of_mass(h)[1] for h in result.heatmaps]
    assert all(c < SIZE / 2 - 2 for c in columns[:3]), columns
    assert all(c > SIZE / 2 + 2 for c in columns[3:]), columns
    # The row follows too: the lesion at the top has its mass higher than the one at the bottom.
    rows = [cam.centre_of_mass(h)[0] for h in result.heatmaps]
    assert rows[0] < rows[2] and rows[3] < rows[5], rows


def test_the_served_image_heatmap_is_the_components_tiles_stitched(blob_model):
    """``explain_image``'s map (modules/trainer/grad_cam.image_heatmaps, plain TF ops) is the
    component's per-tile Grad-CAM put back in place, and it points at the lesion's tile."""
    rng = np.random.default_rng(2)
    tiles = np.stack([_blob_image(rng, (16, 16) if i == 5 else None) for i in range(6)])
    network = cam.cam_network(blob_model, "c2")
    served, benign = cam.image_heatmaps(network, tf.constant(tiles), 2, 3, 64)
    assert served.shape == benign.shape == (64, 64)
    component = model_io.TiledImage(tiles, 2, 3).stitch(
        cam.grad_cam(blob_model, tiles, conv_hint="c2", joint=True).heatmaps
    )
    expected = tf.image.resize(component[..., np.newaxis], (64, 64))[..., 0].numpy()
    assert np.corrcoef(served.numpy().ravel(), expected.ravel())[0, 1] > 0.95
    row, col = cam.centre_of_mass(served.numpy())
    assert row > 32 and col > 2 * 64 / 3 - 4  # tile 5: bottom row, right column
    assert float(tf.reduce_max(served)) == pytest.approx(1.0)


def test_unknown_layer_hint_falls_back_to_the_last_feature_map(blob_model):
    result = cam.grad_cam(blob_model, np.stack([_blob_image(np.random.default_rng(2), (16, 16))]))
    assert (result.conv_layer, result.conv_layer_source) == ("c2", "search")
    stale = cam.grad_cam(
        blob_model, np.stack([_blob_image(np.random.default_rng(2), (16, 16))]), "gone"
    )
    assert stale.conv_layer == "c2"
    np.testing.assert_allclose(stale.heatmaps, result.heatmaps)


@pytest.mark.parametrize("name", backbones.BACKBONES)
def test_last_conv_layer_is_found_for_every_backbone(name):
    size = 32
    backbone = backbones.build_backbone(name, size, weights="random")
    model = build_classifier(backbone, size, dropout=0.1)
    found, source = cam.find_last_conv(cam.find_backbone(model), None)
    assert found == backbone.last_conv_layer
    image = np.random.default_rng(0).random((1, size, size, 3)).astype(np.float32)
    result = cam.grad_cam(model, image, backbone.last_conv_layer)
    assert result.conv_layer_source == "metadata"
    assert result.heatmaps.shape == (1, size, size)
    np.testing.assert_allclose(result.probabilities, model(image).numpy().ravel(), rtol=1e-5)


def test_torchvision_mobilenet_layout_is_found_too():
    model = build_classifier(
        backbones.Backbone(
            backbones.build_torchvision_mobilenet_v2(32), "mobilenet_v2", "t", "out_relu"
        ),
        32,
        0.1,
    )
    assert cam.find_last_conv(cam.find_backbone(model))[0] == backbones.TORCHVISION_LAST_CONV


def test_audit_set_is_stratified_spread_over_patients_and_order_independent():
    tiles = [
        audit_set.Tile(f"{'bm'[label]}/{patient}/{i}.png", patient, label, 40, "")
        for label, patients in ((0, ["B1", "B2", "B3"]), (1, ["M1", "M2"]))
        for patient in patients
        for i in range(5)
    ]
    chosen = audit_set.select(tiles, per_class=3)
    assert [t.label for t in chosen] == [0, 0, 0, 1, 1, 1]
    assert len({t.patient_id for t in chosen[:3]}) == 3
    assert {t.patient_id for t in chosen[3:]} == {"M1", "M2"}
    assert audit_set.select(list(reversed(tiles)), per_class=3) == chosen


def test_grad_cam_ran_in_the_pipeline_and_wrote_its_gallery(first_run, demo_data):
    output = first_run["output"]
    states = node_states(local_runner.metadata_path(output))
    assert states["GradCam"][0] == "COMPLETE", states
    root = os.path.join(output, "tfx", "pipelines", local_runner.configs.PIPELINE_NAME)
    gallery_dir = sorted(
        os.path.join(root, "GradCam", "gallery", d)
        for d in os.listdir(os.path.join(root, "GradCam", "gallery"))
    )[0]
    with open(os.path.join(gallery_dir, "audit_set.json")) as f:
        summary = json.load(f)
    assert summary["status"] == "ok"
    assert summary["conv_layer"] == "out_relu" and summary["conv_layer_source"] == "metadata"
    labels = [t["label_name"] for t in summary["tiles"]]
    assert "benign" in labels and "malignant" in labels
    # Spread over the held-out test split's patients: all of them, up to three.
    with open(os.path.join(demo_data, "span-1", "split_assignments.json")) as f:
        test_patients = {p for p, split in json.load(f).items() if split == "test"}
    shown = {t["patient_id"] for t in summary["tiles"]}
    assert shown <= test_patients and len(shown) >= min(3, len(test_patients))
    html = open(os.path.join(gallery_dir, "index.html")).read()
    for tile in summary["tiles"]:
        assert os.path.getsize(os.path.join(gallery_dir, tile["png"])) > 0
        assert tile["png"] in html


def test_grad_cam_works_on_the_recipes_classifier_whose_head_is_shared():
    """The recipe trains the head as a model of its own (shared layers); Grad-CAM must still
    find the head chain of the tile classifier."""
    from modules.trainer import recipe
    from modules.trainer.hyperparameters import hyperparameters

    tf.keras.utils.set_random_seed(0)
    model, backbone = recipe.build(
        hyperparameters(trainer_config(image_size=SIZE, weights="random"))
    )
    recipe.head_logits(model, np.zeros((1, model.get_layer("pool").output_shape[-1]), "float32"))
    result = cam.grad_cam(model, np.random.default_rng(0).random((2, SIZE, SIZE, 3)), "out_relu")
    assert result.heatmaps.shape == (2, SIZE, SIZE)
    expected = model(np.random.default_rng(0).random((2, SIZE, SIZE, 3)), training=False)
    np.testing.assert_allclose(result.probabilities, np.reshape(expected, [-1]), rtol=1e-5)
