"""The pathologist's page: upload tissue images, read the model's answer and where it looked.

    histo-web --model-dir outputs/serving_model/histopath-classifier/VERSION
    histo-web --url http://histopath-classifier:8501/v1/models/histopath-classifier

A Flask app in front of the model's ``explain_image`` signature, through TF Serving's REST
API (``--url``) or a pushed SavedModel loaded in-process (``--model-dir``): the same request
body either way (``serving/predict.py``). Per image: the malignant probability, the class at
the model's own threshold and the Grad-CAM overlay; per patient (given on the form, else
read from the file names) the mean probability called at that threshold; a clear message
per bad file. Uploads stay in memory and are gone with the answer; sizes and counts are
capped; nothing is fetched from a URL. Research use only.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import io
import json
import os
from typing import Any

import waitress
from flask import Flask, Request, render_template, request

from pipeline import settings
from preprocessing import patients
from serving import images, overlays, predict, rest

MAX_FILES = 40
MAX_FILE_BYTES = 20 * 2**20
MAX_REQUEST_BYTES = 200 * 2**20
OVERLAY_SIDE = 480  # pixels of the longer side of the overlay shown on the page
NOTICE = "Research use only. Not a diagnostic device: every answer needs a pathologist."


@dataclasses.dataclass
class ModelFacts:
    """What the page says about the model (its training metadata, when it can be read)."""

    target: str
    version: str
    metadata: dict[str, Any]

    @property
    def rows(self) -> list[tuple[str, str]]:
        m = self.metadata
        calibration = m.get("calibration", {})
        refit = (
            " (the head then refitted on it too)" if "head_refit" in m.get("history", {}) else ""
        )
        rows = [("model", self.target), ("version", self.version)]
        if m:
            rows += [
                ("backbone", f"{m.get('backbone')} ({m.get('weights_source', '?')})"),
                (
                    "tiles",
                    f"{m.get('tile_size')} px, at most {m.get('max_tiles')} per image, "
                    f"read at {', '.join(f'{z:g}x' for z in m.get('tile_scales', [1.0]))}",
                ),
                ("threshold", f"{calibration.get('threshold')} ({calibration.get('fitted_on')})"),
                ("trained on", json.dumps(m.get("train_images_per_class", {}))),
                ("eval split", json.dumps(m.get("eval_images_per_class", {})) + refit),
            ]
        history = m.get("history", {})
        phase = history.get("head_after_fine_tune") or history.get("head") or {}
        if phase.get("val_auc"):
            rows.append(("eval split image AUC (training)", f"{max(phase['val_auc']):.3f}"))
        return rows


def model_facts(model_dir: str | None, url: str | None, metadata_file: str | None) -> ModelFacts:
    metadata: dict[str, Any] = {}
    path = metadata_file
    if model_dir and not path:
        from modules.trainer import export

        path = os.path.join(model_dir, export.METADATA_DIR, export.METADATA_FILE)
    if path and os.path.isfile(path):
        with open(path) as f:
            metadata.update(json.load(f))
    if model_dir:
        version = os.path.basename(os.path.normpath(model_dir))
    else:
        status = rest.RestClient(str(url)).status()
        versions = [s.get("version") for s in status.get("model_version_status", [])]
        version = ", ".join(str(v) for v in versions if v) or "unknown"
    return ModelFacts(str(model_dir or url), version, metadata)


def _result_view(result: dict[str, Any], data: bytes | None) -> dict[str, Any]:
    view = {k: v for k, v in result.items() if k not in predict.HEATMAPS}
    malignant = result.get("class_name") == "malignant"
    heat = result.get(predict.HEATMAPS[0] if malignant else predict.HEATMAPS[1])
    if heat is not None and data is not None:
        png = overlays.overlay_png(data, heat, OVERLAY_SIDE)
        view["overlay"] = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        view["overlay_of"] = "malignant" if malignant else "benign"
    return view


class InMemoryRequest(Request):
    """Uploads are parsed into memory (Werkzeug spools big ones to temporary files)."""

    def _get_file_stream(self, *args: Any, **kwargs: Any) -> io.BytesIO:
        return io.BytesIO()


def create_app(backend: predict.Backend, facts: ModelFacts) -> Flask:
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    page = {"facts": facts, "notice": NOTICE, "max_files": MAX_FILES}

    @app.get("/")
    def index() -> str:
        return render_template("page.html", **page, document=None, error=None)

    @app.post("/")
    def answer() -> tuple[str, int] | str:
        uploads = [f for f in request.files.getlist("images") if f.filename]
        if not uploads:
            return render_template("page.html", **page, document=None, error="no files"), 400
        if len(uploads) > MAX_FILES:
            error = f"{len(uploads)} files: at most {MAX_FILES} per request"
            return render_template("page.html", **page, document=None, error=error), 413
        patient = request.form.get("patient", "").strip()
        items, data_of = [], {}
        for index, upload in enumerate(uploads):
            name = os.path.basename(upload.filename or f"image-{index}")
            data = upload.read(MAX_FILE_BYTES + 1)
            data_of[index] = data
            items.append((name, patient or _patient_of(name, index), _checked(name, data)))
        document = predict.answer_images(items, backend)
        document["results"] = [
            _result_view(r, _sent(data_of[i], r)) for i, r in enumerate(document["results"])
        ]
        return render_template("page.html", **page, document=document, error=None)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _checked(name: str, data: bytes):
    def prepare() -> images.Prepared:
        if len(data) > MAX_FILE_BYTES:
            raise images.BadImageError(f"file too large: over {MAX_FILE_BYTES // 2**20} MB")
        return images.prepare_bytes(name, data)

    return prepare


def _sent(data: bytes, result: dict[str, Any]) -> bytes | None:
    """The bytes to draw the overlay on: only for answered images."""
    return data if "probability_malignant" in result else None


def _patient_of(name: str, index: int) -> str:
    """The patient a BreakHis/IDC file name carries; otherwise each upload stands alone."""
    return predict.patient_of_name(name, patients.configured_rule()) or f"#{index + 1} {name}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", help="a pushed SavedModel version directory")
    where.add_argument("--url", help="TF Serving model URL: http://HOST:8501/v1/models/NAME")
    parser.add_argument("--metadata", help="training_metadata.json to show (with --url)")
    parser.add_argument("--host", default=settings.read("HISTO_WEB_HOST"))
    parser.add_argument("--port", type=int, default=settings.read("HISTO_WEB_PORT"))
    args = parser.parse_args(argv)
    backend: predict.Backend = (
        predict.LocalBackend(args.model_dir, predict.EXPLAIN)
        if args.model_dir
        else predict.RestBackend(args.url, predict.EXPLAIN)
    )
    rest.check_signature(backend.signature())  # fail at start, not at the first upload
    app = create_app(backend, model_facts(args.model_dir, args.url, args.metadata))
    print(f"histo-web: serving {backend.target} on http://{args.host}:{args.port}/", flush=True)
    waitress.serve(
        app, host=args.host, port=args.port, threads=4, max_request_body_size=MAX_REQUEST_BYTES
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
