"""The real pipeline, end to end, on small demo data (minutes, not seconds).

One session-scoped output directory (``first_run`` in conftest) carries the runs in order,
like a user's machine does: a first run that blesses and pushes, an identical rerun served
from the cache, and a run with a worse model that must not be pushed.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import local_runner
from components.shared import model_io
from histo_testlib import ALL_NODES, REPO, RESOLVERS, node_states, pushed_versions, run_pipeline
from modules import features
from modules.trainer import export, grad_cam, recipe

pytestmark = pytest.mark.e2e

CONSTANT_TRAINER = os.path.join(
    REPO, "tests", "fixtures", "constant_trainer", "constant_trainer_module.py"
)


def first_model_uri(first_run) -> str:
    """The Trainer's Model artifact of the first run (the one that was pushed)."""
    root = os.path.join(first_run["output"], "tfx", "pipelines", local_runner.configs.PIPELINE_NAME)
    models = tf.io.gfile.glob(os.path.join(root, "Trainer", "model", "*"))
    return min(models, key=lambda p: int(os.path.basename(p)))


def scales_heatmap(classifier, image: bytes, metadata: dict) -> np.ndarray:
    """What ``explain_image`` should serve for ``image``: each scale the metadata names,
    through the Grad-CAM component's math, the scales' maps averaged."""
    network = grad_cam.cam_network(classifier, metadata["last_conv_layer"])
    side = features.HEATMAP_SIDE
    scales = model_io.tile_scales(image, metadata["tile_size"], metadata["max_tiles"], metadata)
    assert len(scales) == len(recipe.scales_of(metadata))
    maps = [
        grad_cam.image_heatmaps(network, tf.constant(t.tiles), t.rows, t.cols, side)[0]
        for t in scales
    ]
    return np.mean(maps, axis=0)


def test_every_component_runs_and_a_blessed_model_is_pushed(first_run):
    summary, output = first_run["summary"], first_run["output"]
    states = node_states(local_runner.metadata_path(output))
    assert set(states) == ALL_NODES
    assert all(s[-1] == "COMPLETE" for s in states.values()), states
    assert summary["blessed"] is True, summary
    assert summary["metrics"]["auc"] >= 0.6
    assert summary["pushed"] is True
    assert len(pushed_versions(output)) == 1
    assert summary["pushed_to"].endswith(pushed_versions(output)[0])


def test_component_times_reads_the_first_run_from_ml_metadata(first_run):
    from benchmarks import component_times

    first = component_times.run_times(local_runner.metadata_path(first_run["output"]))[0]
    by_node = {n.node: n for n in first.nodes}
    assert set(by_node) == ALL_NODES
    assert by_node["Trainer"].state == "COMPLETE" and by_node["Trainer"].seconds > 1
    assert max(n.seconds for n in first.nodes) <= first.wall_seconds
    # The nodes ran one after another (LocalDagRunner): their seconds add up to the wall.
    assert sum(n.seconds for n in first.nodes) == pytest.approx(first.wall_seconds, rel=0.2)
    table = component_times.format_run(first)
    assert table.splitlines()[2].startswith(max(first.nodes, key=lambda n: n.seconds).node)


def test_pushed_model_predicts_raw_images_through_its_signatures(first_run, demo_data):
    model_dir = first_run["summary"]["pushed_to"]
    loaded = tf.saved_model.load(model_dir)
    signatures = {"serving_default", "predict_image", "explain_image", "transform_features"}
    assert signatures <= set(loaded.signatures)
    metadata = export.read_metadata(model_dir)
    assert metadata["backbone"] == "mobilenet_v2" and metadata["weights_source"]

    files = tf.io.gfile.glob(os.path.join(demo_data, "span-1", "test", "*.gz"))
    records = list(tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator())
    examples = [tf.train.Example.FromString(r) for r in records]
    images = [e.features.feature[features.IMAGE_KEY].bytes_list.value[0] for e in examples]
    labels = np.array(
        [e.features.feature[features.LABEL_KEY].int64_list.value[0] for e in examples]
    )
    by_bytes = loaded.signatures["predict_image"](image_bytes=tf.constant(images))
    # A client's tf.Example holds only the image: no label, no patient.
    only_image = [
        tf.train.Example(
            features=tf.train.Features(
                feature={
                    features.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b]))
                }
            )
        ).SerializeToString()
        for b in images
    ]
    by_example = loaded.signatures["serving_default"](examples=tf.constant(only_image))
    p_bytes = by_bytes[features.PROBABILITY_OUTPUT].numpy()
    np.testing.assert_allclose(p_bytes, by_example[features.PROBABILITY_OUTPUT].numpy(), atol=1e-6)
    assert ((p_bytes >= 0) & (p_bytes <= 1)).all()
    names = [n.decode() for n in by_bytes[features.CLASS_NAME_OUTPUT].numpy()]
    assert names == [features.LABEL_NAMES[int(p >= 0.5)] for p in p_bytes]
    # The demo classes are learnable: malignant tiles score higher on average.
    assert p_bytes[labels == 1].mean() > p_bytes[labels == 0].mean()

    # explain_image: the same answer, plus the Grad-CAM maps of the component's math.
    explained = loaded.signatures["explain_image"](image_bytes=tf.constant(images[:3]))
    np.testing.assert_allclose(
        explained[features.PROBABILITY_OUTPUT].numpy(), p_bytes[:3], atol=1e-6
    )
    side = features.HEATMAP_SIDE
    for key in (features.HEATMAP_OUTPUT, features.BENIGN_HEATMAP_OUTPUT):
        maps = explained[key].numpy()
        assert maps.shape == (3, side, side) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    classifier = model_io.load_classifier(first_model_uri(first_run))
    expected = scales_heatmap(classifier, images[0], metadata)  # both scales, by default
    np.testing.assert_allclose(explained[features.HEATMAP_OUTPUT][0], expected, atol=1e-4)


def test_the_trainers_keras_file_gives_the_saved_models_answers(first_run, demo_data):
    # The SavedModel holds no Keras object graph (export.serving_module): components and
    # users get Keras from the .keras file, which must be the same classifier.
    model_uri = first_model_uri(first_run)
    assert os.path.isfile(export.keras_path(model_io.serving_dir(model_uri)))
    assert not os.path.exists(os.path.join(model_io.serving_dir(model_uri), "keras_metadata.pb"))
    classifier = model_io.load_classifier(model_uri)
    metadata = model_io.read_training_metadata(model_uri)
    files = tf.io.gfile.glob(os.path.join(demo_data, "span-1", "test", "*.gz"))
    records = tf.data.TFRecordDataset(files, compression_type="GZIP").take(4)
    images = [
        tf.train.Example.FromString(r).features.feature[features.IMAGE_KEY].bytes_list.value[0]
        for r in records.as_numpy_iterator()
    ]
    tile_logit = recipe.logit_model(classifier)
    logits = [
        recipe.image_logit(tile_logit, tf.constant(b), metadata["tile_size"], metadata["max_tiles"])
        for b in images
    ]
    by_keras = recipe.probability(tf.stack(logits), recipe.calibration_of(metadata)).numpy()
    loaded = tf.saved_model.load(model_io.serving_dir(model_uri))
    served = loaded.signatures["predict_image"](image_bytes=tf.constant(images))
    np.testing.assert_allclose(by_keras, served[features.PROBABILITY_OUTPUT].numpy(), atol=1e-5)


def test_the_trainer_calibrates_on_out_of_fold_logits_of_its_training_patients(first_run):
    # Transform passes each example's patient through; run_fn deals the training patients
    # into calibration folds (the eval split one more) and says so in the metadata.
    metadata = model_io.read_training_metadata(first_model_uri(first_run))
    fitted_on = metadata["calibration"]["fitted_on"]
    folds = metadata["hyperparameters"]["calibration_folds"]
    assert fitted_on.startswith(f"out-of-fold logits ({folds} patient folds, the eval split one): ")
    counts = [
        *metadata["train_images_per_class"].values(),
        *metadata["eval_images_per_class"].values(),
    ]
    assert f": {sum(counts)} images, " in fitted_on  # every train + eval image scored once
    assert " patients, each weighing the same; " in fitted_on  # the eval split's known too


def test_identical_rerun_is_served_from_the_cache(first_run, demo_data):
    # The model just pushed is now a baseline: a new input of the Evaluator (and of what
    # follows it) and of the drift gate (the statistics behind that model).
    with_new_baseline = {"DriftGate", "Evaluator", "EvalReport", "Pusher", "TFLitePusher"}
    run_pipeline(demo_data, first_run["output"])
    states = node_states(local_runner.metadata_path(first_run["output"]))
    ran = {n: states[n] for n in ALL_NODES - RESOLVERS - with_new_baseline}
    assert all(s[-1] == "CACHED" for s in ran.values()), ran
    assert states["Transform"] == ["COMPLETE", "CACHED"], states
    # The identical model is recognised and not pushed as a second version.
    assert len(pushed_versions(first_run["output"])) == 1
    run_pipeline(demo_data, first_run["output"])
    states = node_states(local_runner.metadata_path(first_run["output"]))
    cached = {node for node, s in states.items() if s[-1] == "CACHED"}
    assert ALL_NODES - RESOLVERS <= cached, states
    assert len(pushed_versions(first_run["output"])) == 1


def test_worse_model_than_the_blessed_one_is_not_pushed(first_run, demo_data):
    before = pushed_versions(first_run["output"])
    summary = run_pipeline(
        demo_data, first_run["output"], trainer_module=CONSTANT_TRAINER, min_auc=0.0
    )
    assert summary["blessed"] is False
    assert summary["pushed"] is False
    assert any("auc" in check for check in summary["failed_checks"]), summary
    assert pushed_versions(first_run["output"]) == before


def test_leaking_split_stops_the_run_before_transform(demo_data, tmp_path):
    leaky = str(tmp_path / "data")
    shutil.copytree(os.path.join(demo_data, "span-1"), os.path.join(leaky, "span-1"))
    train_file = sorted(os.listdir(os.path.join(leaky, "span-1", "train")))[0]
    shutil.copy(
        os.path.join(leaky, "span-1", "train", train_file),
        os.path.join(leaky, "span-1", "test", "leak-" + train_file),
    )
    output = str(tmp_path / "out")
    with pytest.raises(RuntimeError, match=r"Patient leakage: \d+ patient\(s\) .*demo-[BM]\d+ in"):
        run_pipeline(leaky, output)
    states = node_states(local_runner.metadata_path(output))
    assert states["PatientLeakageGate"][-1] == "FAILED"
    assert "Transform" not in states and "Trainer" not in states


def test_a_model_read_at_two_scales_serves_explains_and_audits_as_it_trained(first_run, tmp_path):
    """tile_scales 1.0,1.5 in the metadata (HISTO_TILE_SCALES, the default): the exported
    signatures, Grad-CAM's gallery and TFLite's tiles all read the image at both scales."""
    import tensorflow_transform as tft
    from tfx.types import standard_artifacts
    from tfx.utils import path_utils

    from components.grad_cam.component import build_gallery
    from components.shared import audit_set
    from components.tflite_export import runtime

    model_uri = first_model_uri(first_run)
    classifier = model_io.load_classifier(model_uri)
    trained = model_io.read_training_metadata(model_uri)
    assert recipe.scales_of(trained) == (1.0, 1.5)  # the default reads both scales
    native = {**trained, "tile_scales": [1.0]}  # the same model read at one scale
    # A large temperature keeps the demo model's confident answers off 0 and 1, so the
    # probabilities show the logits' differences.
    calibration = {**native["calibration"], "temperature": 1000.0}
    native = {**native, "calibration": calibration}
    metadata = {**native, "tile_scales": [1.0, 1.5]}
    root = os.path.dirname(os.path.dirname(os.path.dirname(model_uri)))
    transform_graph = tf.io.gfile.glob(os.path.join(root, "Transform", "transform_graph", "*"))
    two_scale_uri = str(tmp_path / "model")
    export.export_model(
        classifier,
        tft.TFTransformOutput(transform_graph[0]),
        path_utils.serving_model_path(two_scale_uri),
        metadata,
        recipe.calibration_of(metadata),
    )
    examples = standard_artifacts.Examples()
    examples.uri = tf.io.gfile.glob(os.path.join(root, "ImportExampleGen", "examples", "*"))[0]
    examples.split_names = '["train", "eval", "test"]'
    images = [image for _, image in audit_set.load_audit_set(examples, "test", 2)]

    loaded = tf.saved_model.load(model_io.serving_dir(two_scale_uri))
    served = loaded.signatures["explain_image"](image_bytes=tf.constant(images))
    expected = model_io.image_probabilities(classifier, images, metadata)
    np.testing.assert_allclose(served[features.PROBABILITY_OUTPUT], expected, atol=1e-5)
    one_scale = model_io.image_probabilities(classifier, images, native)
    assert np.abs(np.array(expected) - np.array(one_scale)).max() > 1e-4
    # Its heatmap: each scale's maps (the component's math), averaged.
    np.testing.assert_allclose(
        served[features.HEATMAP_OUTPUT][0],
        scales_heatmap(classifier, images[0], metadata),
        atol=1e-4,
    )
    summary = build_gallery(two_scale_uri, examples, "test", 1, str(tmp_path))
    assert summary["status"] == "ok" and len(summary["tiles"]) == 2
    for tile in summary["tiles"]:
        assert os.path.getsize(tmp_path / tile["png"]) > 0
    size, cap = native["tile_size"], native["max_tiles"]
    _, counts = runtime.preprocess(images[:1], size, cap, recipe.scales_of(metadata))
    (_, native_counts), (_, zoomed_counts) = (
        runtime.preprocess(images[:1], size, cap, (z,)) for z in (1.0, 1.5)
    )
    assert counts == [native_counts[0] + zoomed_counts[0]] and zoomed_counts[0] > native_counts[0]
