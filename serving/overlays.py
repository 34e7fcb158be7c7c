"""Grad-CAM maps drawn over the image they explain (the gallery's colours and blending)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from components.grad_cam import render


def overlay_png(image_data: bytes, heatmap: object, max_side: int | None = None) -> bytes:
    """PNG of the image with ``heatmap`` ([h, w] in [0, 1], covering the whole image, any
    resolution) stretched over it; its longer side scaled to ``max_side`` pixels if given."""
    with Image.open(io.BytesIO(image_data)) as opened:
        image = opened.convert("RGB")
    if max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.LANCZOS if scale < 1 else Image.BICUBIC)
    heat = Image.fromarray(np.asarray(heatmap, np.float32)).resize(image.size, Image.BILINEAR)
    blended = render.overlay(np.asarray(image, np.float32) / 255.0, np.asarray(heat))
    out = Image.fromarray((np.clip(blended, 0, 1) * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG")
    return buffer.getvalue()
