"""TFX components: TFLiteExport (convert + parity gate) and TFLitePusher (ship if both pass).

TFLiteExport converts every candidate and records ``parity_ok``; it never fails the run,
because a TFLite problem must not block the SavedModel. TFLitePusher copies the TFLite
model into the pushed SavedModel's ``assets.extra/`` only when the Pusher pushed (the
Evaluator blessed) and the parity gate passed; otherwise it records why not.
"""

import dataclasses
import json
import logging
import os
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types.artifact import Artifact

from components.shared import audit_set, model_io
from components.tflite_export import convert, parity, runtime
from modules import features
from modules.trainer import export, recipe
from pipeline import settings

MODEL_FILE = "model.tflite"
REPORT_FILE = "tflite_report.json"
PUSH_FILE = "tflite_push.json"
LATENCY_IMAGES = 20
CHUNK = 32  # images decoded at a time, to bound memory at 224 px
DEFAULT_MAX_IMAGES: int = settings.default("HISTO_TFLITE_MAX_IMAGES")
DEFAULT_MAX_AUC_LOSS: float = settings.default("HISTO_TFLITE_MAX_AUC_LOSS")


class TFLiteModel(Artifact):
    """model.tflite and tflite_report.json (parity, size, latency)."""

    TYPE_NAME = "histopath.TFLiteModel"


class TFLitePushResult(Artifact):
    """Whether the TFLite model was shipped beside the pushed SavedModel, and why."""

    TYPE_NAME = "histopath.TFLitePushResult"


def _dir_bytes(path: str) -> int:
    return sum(
        fileio.stat(os.path.join(root, name)).length
        for root, _, files in fileio.walk(path)
        for name in files
    )


def run_gate(
    model: tf.keras.Model,
    batches: Iterable[np.ndarray],
    labels: np.ndarray,
    *,
    max_auc_loss: float,
    converter: convert.Converter = convert.convert_dynamic_range,
) -> tuple[bytes, dict]:
    """Converts ``model`` and compares it with the Keras model on the same float images.

    A conversion that raises yields empty content and a failed gate with the reason: the
    TFLite model is optional, the SavedModel must still ship.
    """
    try:
        content = converter(model)
        lite = runtime.TFLiteClassifier(content, num_threads=os.cpu_count())
    except Exception as error:  # noqa: BLE001 - any converter failure is a gate failure
        logging.exception("TFLite conversion failed")
        reason = f"conversion failed: {type(error).__name__}: {str(error).strip()[:300]}"
        labels = np.asarray(labels).astype(int)
        failed = parity.Parity(
            images=int(len(labels)),
            positives=int(labels.sum()),
            auc_savedmodel=float("nan"),
            auc_tflite=float("nan"),
            auc_loss=float("nan"),
            max_auc_loss=float(max_auc_loss),
            max_abs_probability_diff=float("nan"),
            parity_ok=False,
            reason=reason,
        )
        report = {
            "quantization": convert.QUANTIZATION,
            "parity": dataclasses.asdict(failed),
            "size_bytes": {"tflite": 0},
            "latency_ms_per_image": {},
        }
        return b"", report
    keras_one = tf.function(lambda x: model(x, training=False))
    reference, tflite, sample = [], [], []
    for batch in batches:
        reference.append(np.asarray(model(batch, training=False)).reshape(-1))
        tflite.append(lite.predict(batch))
        sample.extend(batch[: LATENCY_IMAGES - len(sample)])
    reference_p = np.concatenate(reference) if reference else np.zeros(0)
    tflite_p = np.concatenate(tflite) if tflite else np.zeros(0)
    gate = parity.check(reference_p, tflite_p, labels, max_auc_loss)
    sample_array = np.stack(sample) if sample else np.zeros((0, 1, 1, 3), np.float32)
    report = {
        "quantization": convert.QUANTIZATION,
        "input": {
            "shape": [1, lite.input_size, lite.input_size, 3],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "preprocessing": "one tile: decode to RGB, /255, antialiased bilinear resize to a "
            "grid of input-size tiles, cut; average the tiles' logits (modules/image_tiles.py)",
        },
        "parity": dataclasses.asdict(gate),
        "size_bytes": {"tflite": len(content)},
        "latency_ms_per_image": {
            "savedmodel": parity.latency_ms(lambda x: keras_one(x[np.newaxis]), sample_array),
            "tflite": parity.latency_ms(lite.predict_one, sample_array),
            "images": len(sample_array),
            "note": "batch 1, float input at the training size, decoding excluded, "
            f"{os.cpu_count()} CPU threads",
        },
    }
    return content, report


def export_tflite(
    model_uri: str,
    examples: Artifact,
    splits: list[str],
    max_images: int,
    max_auc_loss: float,
    out: str,
    converter: convert.Converter = convert.convert_dynamic_range,
) -> dict:
    """Writes model.tflite and tflite_report.json under ``out``; returns the report."""
    model = model_io.load_classifier(model_uri)
    size = model_io.tile_size(model)
    per_class = max(1, max_images // (2 * len(splits)))
    selected = [
        item for split in splits for item in audit_set.load_audit_set(examples, split, per_class)
    ]
    metadata = model_io.read_training_metadata(model_uri)
    max_tiles, scales = int(metadata.get("max_tiles", 1)), recipe.scales_of(metadata)
    encoded = [image for _, image in selected]
    tiled = [
        runtime.preprocess(encoded[i : i + CHUNK], size, max_tiles, scales)
        for i in range(0, len(encoded), CHUNK)
    ]
    # Parity is judged per tile: the TFLite model is the tile classifier.
    counts = [n for _, per_image in tiled for n in per_image]
    labels = np.repeat(np.array([tile.label for tile, _ in selected], dtype=int), counts)
    batches = (tiles for tiles, _ in tiled)
    content, report = run_gate(
        model, batches, labels, max_auc_loss=max_auc_loss, converter=converter
    )
    report["splits"] = splits
    report["size_bytes"]["savedmodel"] = _dir_bytes(model_io.serving_dir(model_uri))
    if content:
        with fileio.open(os.path.join(out, MODEL_FILE), "wb") as f:
            f.write(content)
    with fileio.open(os.path.join(out, REPORT_FILE), "w") as f:
        f.write(json.dumps(report, indent=2, sort_keys=True))
    return report


def push_decision(tflite_report: dict, pushed: bool) -> tuple[bool, str]:
    if not pushed:
        return False, "the SavedModel was not pushed (not blessed)"
    if not tflite_report["parity"]["parity_ok"]:
        return False, f"parity gate failed: {tflite_report['parity']['reason']}"
    return True, "blessed and parity gate passed"


def push_tflite(tflite_uri: str, pushed_model: Artifact, out: str) -> dict:
    """Copies the TFLite files into <pushed SavedModel>/assets.extra when allowed."""
    with fileio.open(os.path.join(tflite_uri, REPORT_FILE)) as f:
        report = json.loads(f.read())
    pushed = bool(pushed_model.get_int_custom_property("pushed"))
    ok, reason = push_decision(report, pushed)
    result = {"pushed": ok, "reason": reason, "destination": None}
    if ok:
        target = os.path.join(
            pushed_model.get_string_custom_property("pushed_destination"), export.METADATA_DIR
        )
        fileio.makedirs(target)
        for name in (MODEL_FILE, REPORT_FILE):
            fileio.copy(os.path.join(tflite_uri, name), os.path.join(target, name), True)
        result["destination"] = os.path.join(target, MODEL_FILE)
    with fileio.open(os.path.join(out, PUSH_FILE), "w") as f:
        f.write(json.dumps(result, indent=2))
    return result


@component
def TFLiteExport(
    model: InputArtifact[tfx.types.standard_artifacts.Model],
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    tflite: OutputArtifact[TFLiteModel],
    splits: Parameter[str] = f"{features.EVAL_SPLIT},{features.TEST_SPLIT}",
    max_images: Parameter[int] = DEFAULT_MAX_IMAGES,
    max_auc_loss: Parameter[float] = DEFAULT_MAX_AUC_LOSS,
) -> None:
    """Converts the candidate and records parity_ok, sizes and latencies.

    ``splits``: comma-separated held-out splits for the parity check. Both held-out splits
    by default: on small data one swapped pair of images moves AUC by 1/(positives x
    negatives), so more images make the parity gate less noisy.
    """
    names = [name.strip() for name in splits.split(",") if name.strip()]
    report = export_tflite(model.uri, examples, names, max_images, max_auc_loss, tflite.uri)
    tflite.set_int_custom_property("parity_ok", int(report["parity"]["parity_ok"]))
    tflite.set_string_custom_property("parity_reason", report["parity"]["reason"])


@component
def TFLitePusher(
    tflite: InputArtifact[TFLiteModel],
    pushed_model: InputArtifact[tfx.types.standard_artifacts.PushedModel],
    result: OutputArtifact[TFLitePushResult],
) -> None:
    """Ships model.tflite beside the pushed SavedModel when blessed and at parity."""
    outcome = push_tflite(tflite.uri, pushed_model, result.uri)
    result.set_int_custom_property("pushed", int(outcome["pushed"]))
    result.set_string_custom_property("reason", outcome["reason"])
    if outcome["destination"]:
        result.set_string_custom_property("pushed_destination", outcome["destination"])
