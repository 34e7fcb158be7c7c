"""TFLite export: the parity gate passes a faithful conversion and blocks a broken one; only
a blessed model at parity is shipped beside the pushed SavedModel."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

import local_runner
from components.tflite_export import component, convert, parity
from histo_testlib import node_states
from modules.metrics import roc_auc

SIZE = 16


def _images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Label 1 = a bright square somewhere; label 0 = plain noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.uniform(0.0, 0.5, (n, SIZE, SIZE, 3)).astype(np.float32)
    for image, label in zip(images, labels, strict=True):
        if label:
            r, c = rng.integers(0, SIZE - 5, 2)
            image[r : r + 5, c : c + 5] = 0.95
    return images, labels


def _build() -> tf.keras.Model:
    inputs = tf.keras.Input((SIZE, SIZE, 3))
    x = tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = tf.keras.layers.GlobalMaxPooling2D()(x)
    outputs = tf.keras.layers.Dense(1, activation="sigmoid", dtype="float32")(x)
    return tf.keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def trained() -> tuple[tf.keras.Model, np.ndarray, np.ndarray]:
    tf.keras.utils.set_random_seed(0)
    model = _build()
    model.compile(tf.keras.optimizers.Adam(2e-2), "binary_crossentropy")
    train_x, train_y = _images(256, 0)
    model.fit(train_x, train_y, batch_size=32, epochs=8, verbose=0)
    test_x, test_y = _images(80, 1)
    return model, test_x, test_y


def _perturbed(model: tf.keras.Model) -> tf.keras.Model:
    """The same architecture with its head's weights negated and noise everywhere: what a
    conversion that mangled the weights would produce."""
    broken = tf.keras.models.clone_model(model)
    rng = np.random.default_rng(3)
    weights = [w + rng.normal(0, 0.1, w.shape) for w in model.get_weights()]
    weights[-2:] = [-w for w in weights[-2:]]  # final Dense kernel and bias
    broken.set_weights(weights)
    return broken


def test_faithful_conversion_passes_the_gate(trained):
    model, images, labels = trained
    content, report = component.run_gate(
        model, [images[:40], images[40:]], labels, max_auc_loss=0.01
    )
    gate = report["parity"]
    assert gate["auc_savedmodel"] > 0.9, gate
    assert gate["parity_ok"] is True, gate
    assert abs(gate["auc_tflite"] - gate["auc_savedmodel"]) <= 0.01
    assert report["size_bytes"]["tflite"] == len(content) > 0
    latency = report["latency_ms_per_image"]
    assert latency["images"] == 20 and latency["tflite"] > 0 and latency["savedmodel"] > 0


def test_broken_conversion_is_blocked(trained):
    model, images, labels = trained

    def broken_converter(keras_model: tf.keras.Model) -> bytes:
        return convert.convert_dynamic_range(_perturbed(keras_model))

    _, report = component.run_gate(
        model, [images], labels, max_auc_loss=0.01, converter=broken_converter
    )
    gate = report["parity"]
    assert gate["parity_ok"] is False, gate
    assert gate["auc_loss"] > 0.01 and "below" in gate["reason"]


def test_a_failing_conversion_fails_the_gate_not_the_run(trained):
    model, images, labels = trained

    def crashing_converter(keras_model: tf.keras.Model) -> bytes:
        raise RuntimeError("op not supported")

    content, report = component.run_gate(
        model, [images], labels, max_auc_loss=0.01, converter=crashing_converter
    )
    assert content == b""
    assert report["parity"]["parity_ok"] is False
    assert "conversion failed: RuntimeError: op not supported" in report["parity"]["reason"]


def test_a_mixed_precision_model_is_converted_in_float32(trained):
    """GPU training leaves the mixed_float16 policy in the model; TFLite needs float32."""
    model, images, labels = trained
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        mixed = _build()
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    mixed.set_weights(model.get_weights())
    assert mixed.layers[1].compute_dtype == "float16"
    rebuilt = convert.float32_model(mixed)
    assert {layer.compute_dtype for layer in rebuilt.layers} == {"float32"}
    _, report = component.run_gate(mixed, [images], labels, max_auc_loss=0.01)
    assert report["parity"]["parity_ok"] is True, report["parity"]


def test_auc_handles_ties_and_single_class():
    scores = np.array([0.1, 0.4, 0.4, 0.8, 0.4])
    labels = np.array([0, 0, 1, 1, 1])
    pairs = [(p, n) for p in scores[labels == 1] for n in scores[labels == 0]]
    expected = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs])
    assert roc_auc(labels, scores) == pytest.approx(expected)
    one_class = parity.check(scores, scores, np.ones(5), max_auc_loss=0.01)
    assert one_class.parity_ok is False and "both classes" in one_class.reason


def _tflite_artifact(tmp_path, parity_ok: bool) -> str:
    uri = tmp_path / "tflite"
    uri.mkdir()
    (uri / component.MODEL_FILE).write_bytes(b"tflite-bytes")
    report = {"parity": {"parity_ok": parity_ok, "reason": "test"}}
    (uri / component.REPORT_FILE).write_text(json.dumps(report))
    return str(uri)


def _pushed(tmp_path, pushed: bool) -> standard_artifacts.PushedModel:
    artifact = standard_artifacts.PushedModel()
    artifact.set_int_custom_property("pushed", int(pushed))
    destination = tmp_path / "serving" / "123"
    destination.mkdir(parents=True)
    artifact.set_string_custom_property("pushed_destination", str(destination))
    return artifact


@pytest.mark.parametrize(
    "parity_ok, pushed, shipped",
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_only_a_blessed_model_at_parity_is_shipped(tmp_path, parity_ok, pushed, shipped):
    pushed_model = _pushed(tmp_path, pushed)
    out = tmp_path / "result"
    out.mkdir()
    result = component.push_tflite(_tflite_artifact(tmp_path, parity_ok), pushed_model, str(out))
    target = os.path.join(
        pushed_model.get_string_custom_property("pushed_destination"),
        "assets.extra",
        component.MODEL_FILE,
    )
    assert result["pushed"] is shipped
    assert os.path.exists(target) is shipped
    assert json.loads((out / component.PUSH_FILE).read_text())["reason"] == result["reason"]


def test_tflite_components_ran_and_the_model_ships_beside_the_saved_model(first_run):
    output, summary = first_run["output"], first_run["summary"]
    states = node_states(local_runner.metadata_path(output))
    assert states["TFLiteExport"][0] == "COMPLETE" and states["TFLitePusher"][0] == "COMPLETE"
    root = os.path.join(output, "tfx", "pipelines", local_runner.configs.PIPELINE_NAME)
    export_dir = os.path.join(root, "TFLiteExport", "tflite")
    report_path = os.path.join(export_dir, sorted(os.listdir(export_dir))[0], "tflite_report.json")
    with open(report_path) as f:
        report = json.load(f)
    assert report["parity"]["parity_ok"] is True, report["parity"]
    assert report["size_bytes"]["tflite"] < report["size_bytes"]["savedmodel"]
    assert report["input"]["shape"][1] == 96
    shipped = os.path.join(summary["pushed_to"], "assets.extra", "model.tflite")
    assert os.path.getsize(shipped) == report["size_bytes"]["tflite"]
