"""Heatmap overlays as PNGs and the HTML gallery that shows them (no plotting library)."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

PANEL_SIDE = 224  # small training sizes (96 px) are upscaled so a reader can see detail


@dataclasses.dataclass
class GalleryEntry:
    png: str  # file name relative to the gallery
    source: str
    patient_id: str
    label_name: str
    probability: float
    predicted_name: str
    magnification: int
    subtype: str


def colormap(heat: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> float [H, W, 3] in [0, 1], blue (cold) to red (hot), jet-like."""
    x = np.clip(heat, 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peaks along 4x
    return np.clip(1.5 - np.abs(4.0 * x - centres), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """Blend the coloured heatmap over the image, more where the map is hot (tissue stays
    visible where the model saw nothing)."""
    alpha = strength * np.clip(heat, 0.0, 1.0)[..., None]
    return image * (1.0 - alpha) + colormap(heat) * alpha


def _panel(rgb: np.ndarray) -> Image.Image:
    image = Image.fromarray((np.clip(rgb, 0.0, 1.0) * 255).round().astype(np.uint8))
    width = max(PANEL_SIDE, image.width)
    height = round(image.height * width / image.width)  # the image's own aspect ratio
    return image.resize((width, height), Image.BILINEAR)


def triptych_png(image: np.ndarray, malignant: np.ndarray, benign: np.ndarray) -> bytes:
    """One PNG: the tile, the malignant-evidence overlay, the benign-evidence overlay."""
    panels = [_panel(image), _panel(overlay(image, malignant)), _panel(overlay(image, benign))]
    width, height, gap = panels[0].width, panels[0].height, 4
    canvas = Image.new("RGB", (3 * width + 2 * gap, height), "white")
    for index, panel in enumerate(panels):
        canvas.paste(panel, (index * (width + gap), 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail_data_uri(png_path: str, width: int = 480) -> str:
    """A small JPEG of a triptych as a data URI: a page that must be one file stays light."""
    with Image.open(png_path) as image:
        image = image.convert("RGB")
        image.thumbnail((width, width))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_html(
    entries: list[GalleryEntry],
    facts: dict[str, str],
    src: Callable[[GalleryEntry], str] | None = None,
) -> str:
    """A static page: one card per audit tile, model facts on top.

    ``src`` gives each image's address: the PNG beside the page by default, or e.g. an
    inline thumbnail for a self-contained copy (the Kubeflow UI's web-app viewer).
    """
    esc = html.escape
    src = src or (lambda e: e.png)
    fact_rows = "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts.items()
    )
    cards = []
    for e in entries:
        verdict = "ok" if e.label_name == e.predicted_name else "miss"
        cards.append(
            f'<figure class="{verdict}"><img src="{esc(src(e))}" alt="{esc(e.source)}">'
            f"<figcaption><b>{esc(e.label_name)}</b> (truth) &middot; P(malignant) = "
            f"{e.probability:.3f} &rarr; {esc(e.predicted_name)}<br>patient "
            f"{esc(e.patient_id)} &middot; {e.magnification}X &middot; subtype "
            f"{esc(e.subtype or '-')}<br><small>{esc(e.source)}</small></figcaption></figure>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Grad-CAM audit set</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 2px 8px; }}
figure {{ display: inline-block; margin: 8px; padding: 6px; border: 3px solid #8c8; }}
figure.miss {{ border-color: #d66; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Grad-CAM audit set</h1>
<p>Each picture, left to right: the tile as the model sees it, where the evidence for
<b>malignant</b> lies, where the evidence for <b>benign</b> lies (red = strongest).
Green frame: correct at the decision threshold; red frame: wrong.
Heatmaps show what the model used, not what is diagnostic.</p>
<table>{fact_rows}</table>
{"".join(cards)}
</body></html>
"""
