"""TFX component: Grad-CAM overlays of the audit set for the model the Trainer just made.

Runs on the candidate whether or not it gets blessed, because a reviewer wants to see why
a model failed as much as why it passed. A model without any conv feature map (possible
only for hand-made test models) gets a gallery that says so instead of failing the run.
"""

import dataclasses
import json
import logging
import os

from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types.artifact import Artifact

from components import kfp_ui
from components.grad_cam import render
from components.shared import audit_set, model_io
from modules import features
from modules.trainer import export
from modules.trainer import grad_cam as cam
from pipeline import settings

GALLERY_FILE = "index.html"
SUMMARY_FILE = "audit_set.json"
DEFAULT_PER_CLASS: int = settings.default("HISTO_GRAD_CAM_PER_CLASS")


class GradCamGallery(Artifact):
    """PNG overlays of a fixed audit set and ``index.html`` showing them."""

    TYPE_NAME = "histopath.GradCamGallery"


def _write(uri: str, name: str, data: bytes | str) -> None:
    with fileio.open(os.path.join(uri, name), "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def build_gallery(model_uri: str, examples: Artifact, split: str, per_class: int, out: str) -> dict:
    """Writes PNGs, index.html and audit_set.json under ``out``; returns the summary."""
    model = model_io.load_classifier(model_uri)
    metadata = model_io.read_training_metadata(model_uri)
    tiles = audit_set.load_audit_set(examples, split, per_class)
    size, max_tiles = model_io.tile_size(model), int(metadata.get("max_tiles", 1))
    tiled = [model_io.tile_scales(image, size, max_tiles, metadata) for _, image in tiles]
    probabilities = model_io.image_probabilities(model, [image for _, image in tiles], metadata)
    threshold = export.operating_threshold(metadata)
    facts = {
        "backbone": metadata.get("backbone", "unknown"),
        "weights": metadata.get("weights_source", "unknown"),
        "split": split,
        "model": model_uri,
    }
    summary = {"split": split, "per_class": per_class, "tiles": [], **facts}
    try:
        # One Grad-CAM per tile (what the model scores) of every scale, stitched back over
        # the image; the scales' maps are averaged as their logits are.
        hint = metadata.get("last_conv_layer")
        results = [[cam.grad_cam(model, t.tiles, hint, joint=True) for t in ts] for ts in tiled]
    except ValueError as error:
        logging.warning("Grad-CAM unavailable: %s", error)
        summary.update(status="unavailable", reason=str(error))
        body = f"<p>Grad-CAM unavailable for this model: {error}</p>"
        _write(out, GALLERY_FILE, f"<!DOCTYPE html><html><body>{body}</body></html>")
        _write(out, SUMMARY_FILE, json.dumps(summary, indent=2))
        return summary
    result = results[0][0] if results else None
    if result is not None:
        facts.update(conv_layer=f"{result.conv_layer} (from {result.conv_layer_source})")
    entries = []
    for index, (tile, _) in enumerate(tiles):
        png = f"{index:02d}_{features.LABEL_NAMES[tile.label]}.png"
        scales = list(zip(tiled[index], results[index], strict=True))
        image = scales[0][0].stitch(scales[0][0].tiles)
        shape = image.shape[:2]
        heat = model_io.mean_map([t.stitch(r.heatmaps) for t, r in scales], shape)
        benign = model_io.mean_map([t.stitch(r.benign_heatmaps) for t, r in scales], shape)
        _write(out, png, render.triptych_png(image, heat, benign))
        probability = probabilities[index]
        entry = render.GalleryEntry(
            png=png,
            source=tile.source,
            patient_id=tile.patient_id,
            label_name=features.LABEL_NAMES[tile.label],
            probability=probability,
            predicted_name=features.LABEL_NAMES[int(probability >= threshold)],
            magnification=tile.magnification,
            subtype=tile.subtype,
        )
        entries.append(entry)
        centre = cam.centre_of_mass(heat)
        summary["tiles"].append({**dataclasses.asdict(entry), "malignant_centre_of_mass": centre})
    _write(out, GALLERY_FILE, render.gallery_html(entries, facts))
    summary.update(
        status="ok",
        conv_layer=result.conv_layer if result else "",
        conv_layer_source=result.conv_layer_source if result else "",
    )
    _write(out, SUMMARY_FILE, json.dumps(summary, indent=2))
    return summary


def inline_gallery(summary: dict, folder: str) -> str:
    """The gallery as one self-contained page with small thumbnails (Kubeflow's web-app)."""
    if summary["status"] != "ok":
        with fileio.open(os.path.join(folder, GALLERY_FILE)) as f:
            return f.read()
    fields = {f.name for f in dataclasses.fields(render.GalleryEntry)}
    entries = [render.GalleryEntry(**{k: t[k] for k in fields}) for t in summary["tiles"]]
    facts = {k: summary[k] for k in ("backbone", "weights", "split", "model", "conv_layer")}
    return render.gallery_html(
        entries, facts, src=lambda e: render.thumbnail_data_uri(os.path.join(folder, e.png))
    )


@component
def GradCam(
    model: InputArtifact[tfx.types.standard_artifacts.Model],
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    gallery: OutputArtifact[GradCamGallery],
    split: Parameter[str] = features.TEST_SPLIT,
    per_class: Parameter[int] = DEFAULT_PER_CLASS,
) -> None:
    """Heatmaps for ``per_class`` tiles of each class of ``split``, spread over patients."""
    summary = build_gallery(model.uri, examples, split, per_class, gallery.uri)
    if kfp_ui.ui_metadata_path():
        kfp_ui.emit([kfp_ui.web_app(inline_gallery(summary, gallery.uri))])
    gallery.set_string_custom_property("status", summary["status"])
    gallery.set_int_custom_property("num_images", len(summary["tiles"]))
