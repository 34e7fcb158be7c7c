"""Malignant probability per image file, from a SavedModel directory or TF Serving.

    python -m serving.predict a.png b.jpg --model-dir outputs/serving_model/NAME/VERSION
    python -m serving.predict a.png --url http://localhost:8501/v1/models/NAME

Prints one JSON document: per file either the probability, class and notes, or an error;
then per patient the mean probability of its answered images, called at the model's own
threshold. A file's patient is ``--patient`` if given, else the one its name carries
(BreakHis, IDC; grouped by ``--patient-rule``), else its folder's name.
Bad files never stop the others. Both modes build the same TF Serving REST body and check
it against the model's ``predict_image`` signature; the local mode then feeds it to the
SavedModel the way TF Serving would. Exit status: 0 all answered, 1 some files failed,
2 the model could not be used.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol

from modules import features
from preprocessing import layouts, patients, storage
from serving import images, overlays, rest

BATCH = 16
EXPLAIN = "explain_image"  # the signature that adds Grad-CAM maps (modules/trainer/export.py)


class Backend(Protocol):
    target: str

    def signature(self) -> rest.SignatureInfo: ...

    def predict(self, body: dict[str, Any]) -> dict[str, Any]: ...


class LocalBackend:
    """A SavedModel on disk, answered exactly like TF Serving's row-format REST API."""

    def __init__(self, model_dir: str, signature: str = rest.SIGNATURE) -> None:
        import tensorflow as tf

        self.target = model_dir
        self._tf = tf
        self._loaded = tf.saved_model.load(model_dir)
        self._name = signature

    def signature(self) -> rest.SignatureInfo:
        return rest.from_saved_model(self._loaded, self._name)

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        function = self._loaded.signatures[body["signature_name"]]
        (input_name,) = function.structured_input_signature[1]
        try:
            outputs = function(**{input_name: self._tf.constant(rest.decode_instances(body))})
        except (self._tf.errors.InvalidArgumentError, ValueError) as error:
            return {"error": str(error).strip().splitlines()[0]}
        columns = {k: v.numpy().tolist() for k, v in outputs.items()}
        rows = [
            dict(zip(columns, values, strict=True))
            for values in zip(*columns.values(), strict=True)
        ]
        for row in rows:
            row.update({k: v.decode("utf-8") for k, v in row.items() if isinstance(v, bytes)})
        return {"predictions": rows}


class RestBackend:
    def __init__(self, url: str, signature: str = rest.SIGNATURE, timeout: float = 30.0):
        self.target = url
        self._client = rest.RestClient(url, timeout)
        self._name = signature

    def signature(self) -> rest.SignatureInfo:
        return self._client.signature(self._name)

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._client.predict(body)


HEATMAPS = (features.HEATMAP_OUTPUT, features.BENIGN_HEATMAP_OUTPUT)


def _answer(prediction: dict[str, Any]) -> dict[str, Any]:
    answer = {
        "probability_malignant": float(prediction["probability"]),
        "class_id": prediction.get("class_id"),
        "class_name": prediction.get("class_name"),
    }
    if prediction.get(features.THRESHOLD_OUTPUT) is not None:
        answer["threshold"] = float(prediction[features.THRESHOLD_OUTPUT])
    for key in HEATMAPS:  # explain_image: [side][side] lists in [0, 1]
        if key in prediction:
            answer[key] = prediction[key]
    return answer


def patient_of_name(name: str, rule: str = patients.DEFAULT_RULE) -> str | None:
    """The patient a file name carries (BreakHis, IDC), or None."""
    try:
        slide = layouts.parse_path(os.path.basename(name))["patient_id"]
    except (layouts.LayoutError, KeyError, ValueError):
        return None
    return patients.patient_of(slide, rule)


def patient_of_file(path: str, rule: str = patients.DEFAULT_RULE) -> str:
    """The patient a file's name carries, else the name of its folder."""
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return patient_of_name(path, rule) or folder or os.path.basename(path)


def patient_answers(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One answer per patient: the mean probability of its answered images, called at the
    model's threshold (the report's patient-level rule)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        grouped.setdefault(result["patient_id"], []).append(result)
    answers = []
    for patient, members in sorted(grouped.items()):
        answered = [m for m in members if "probability_malignant" in m]
        row: dict[str, Any] = {"patient_id": patient, "images": len(members)}
        row["answered"] = len(answered)
        if answered:
            mean = sum(m["probability_malignant"] for m in answered) / len(answered)
            row["probability_malignant"] = mean
            threshold = answered[0].get("threshold")
            if threshold is not None:
                row["threshold"] = threshold
                row["class_name"] = features.LABEL_NAMES[int(mean >= threshold)]
        answers.append(row)
    return answers


def _ask(backend: Backend, info: rest.SignatureInfo, batch: list[images.Prepared]) -> list[dict]:
    """Answers for a batch; if the server refuses the batch, asks file by file so that one
    file the model cannot decode does not cost the others their answer."""
    body = rest.request_body([p.data for p in batch], info.name)
    rest.check_request(body, info)
    try:
        predictions = rest.parse_predictions(backend.predict(body), len(batch))
        return [_answer(p) for p in predictions]
    except RuntimeError as error:
        if len(batch) == 1:
            return [{"error": f"model refused the image: {error}"}]
    return [_ask(backend, info, [p])[0] for p in batch]


def predict_files(
    paths: list[str],
    backend: Backend,
    min_side: int = images.MIN_SIDE,
    patient: str | None = None,
    patient_rule: str = patients.DEFAULT_RULE,
) -> dict:
    """The JSON document the CLI prints, for any backend."""
    items = [
        (path, patient or patient_of_file(path, patient_rule), _reader(path, min_side))
        for path in paths
    ]
    return answer_images(items, backend)


def _reader(path: str, min_side: int) -> Callable[[], images.Prepared]:
    return lambda: images.prepare(path, min_side)


def answer_images(
    items: list[tuple[str, str, Callable[[], images.Prepared]]], backend: Backend
) -> dict:
    """(name, patient, prepare) per image -> per image the answer or the reason it has none,
    and per patient the aggregate. ``prepare`` raises BadImageError for a bad file."""
    info = backend.signature()
    rest.check_signature(info)
    results: list[dict[str, Any]] = [
        {"file": name, "patient_id": patient} for name, patient, _ in items
    ]
    ready: list[tuple[int, images.Prepared]] = []
    for index, (_, _, prepare) in enumerate(items):
        try:
            prepared = prepare()
        except images.BadImageError as error:
            results[index]["error"] = str(error)
            continue
        results[index]["notes"] = prepared.notes
        ready.append((index, prepared))
    for start in range(0, len(ready), BATCH):
        chunk = ready[start : start + BATCH]
        for (index, _), answer in zip(
            chunk, _ask(backend, info, [p for _, p in chunk]), strict=True
        ):
            results[index].update(answer)
    return {
        "model": backend.target,
        "signature": info.name,
        "results": results,
        "patients": patient_answers(results),
    }


def write_overlays(document: dict, folder: str) -> None:
    """``--explain``: each answered image's Grad-CAM overlay as a PNG in ``folder``; the
    document then names the file instead of carrying the map."""
    for index, result in enumerate(document["results"]):
        heat = result.pop(features.HEATMAP_OUTPUT, None)
        result.pop(features.BENIGN_HEATMAP_OUTPUT, None)
        if heat is None:
            continue
        png = overlays.overlay_png(images.prepare(result["file"], min_side=1).data, heat)
        stem = os.path.splitext(os.path.basename(result["file"]))[0]
        target = os.path.join(folder, f"{index:03d}_{stem}_gradcam.png")
        storage.write_bytes(target, png)
        result["overlay"] = target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, or any PIL format)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", help="a pushed SavedModel version directory")
    where.add_argument("--url", help="TF Serving model URL: http://HOST:8501/v1/models/NAME")
    parser.add_argument("--signature", help=f"default {rest.SIGNATURE} ({EXPLAIN} with --explain)")
    parser.add_argument(
        "--explain", metavar="DIR", help="also write each image's Grad-CAM overlay into DIR"
    )
    parser.add_argument("--min-side", type=int, default=images.MIN_SIDE, help="pixels")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--patient", help="all images are of this one patient")
    parser.add_argument(
        "--patient-rule",
        default=patients.configured_rule(),
        help="how slide ids in file names group into patients (preprocessing/patients.py)",
    )
    args = parser.parse_args(argv)
    args.signature = args.signature or (EXPLAIN if args.explain else rest.SIGNATURE)
    try:
        backend: Backend = (
            LocalBackend(args.model_dir, args.signature)
            if args.model_dir
            else RestBackend(args.url, args.signature, args.timeout)
        )
        document = predict_files(
            args.images,
            backend,
            args.min_side,
            args.patient,
            patients.validate_rule(args.patient_rule),
        )
    except (rest.SignatureMismatchError, OSError) as error:
        print(json.dumps({"error": f"cannot use the model: {error}"}), file=sys.stderr)
        return 2
    if args.explain:
        write_overlays(document, args.explain)
    print(json.dumps(document, indent=2))
    return 1 if any("error" in r for r in document["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
