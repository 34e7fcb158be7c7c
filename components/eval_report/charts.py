"""Unit-square charts (ROC, precision-recall, reliability) drawn with PIL as base64 PNGs.

matplotlib is not a dependency of the pipeline image; every chart of the report lives in
[0, 1] x [0, 1], which a few lines of PIL draw well enough.
"""

from __future__ import annotations

import base64
import dataclasses
import io

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 420, 400
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 34, 52


@dataclasses.dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = "#1f5fbf"
    markers: bool = False
    sizes: list[float] | None = None  # marker radius per point (reliability: bin share)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _to_pixel(x: float, y: float) -> tuple[float, float]:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    return LEFT + x * plot_w, TOP + (1.0 - y) * plot_h


def unit_chart(
    title: str, x_label: str, y_label: str, series: list[Series], diagonal: str | None = None
) -> bytes:
    """PNG bytes of a chart over [0, 1]^2; ``diagonal`` labels the y = x reference line."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    small, medium = _font(12), _font(14)
    for tick in range(6):
        v = tick / 5
        x0, y0 = _to_pixel(v, 0.0)
        x1, y1 = _to_pixel(v, 1.0)
        draw.line([(x0, y0), (x1, y1)], fill="#e4e4e4")
        draw.text((x0, y0 + 6), f"{v:.1f}", fill="black", font=small, anchor="mt")
        gx0, gy0 = _to_pixel(0.0, v)
        gx1, gy1 = _to_pixel(1.0, v)
        draw.line([(gx0, gy0), (gx1, gy1)], fill="#e4e4e4")
        draw.text((gx0 - 6, gy0), f"{v:.1f}", fill="black", font=small, anchor="rm")
    draw.rectangle([_to_pixel(0.0, 1.0), _to_pixel(1.0, 0.0)], outline="black")
    if diagonal:
        draw.line([_to_pixel(0, 0), _to_pixel(1, 1)], fill="#999999", width=1)
    entries = len(series) + (1 if diagonal else 0)
    legend_y = _to_pixel(0.0, 0.0)[1] - 8 - 16 * entries  # bottom right: curves rarely go there
    for s in series:
        pixels = [_to_pixel(x, y) for x, y in s.points]
        if len(pixels) > 1 and not s.markers:
            draw.line(pixels, fill=s.color, width=2)
        if s.markers:
            if len(pixels) > 1:
                draw.line(pixels, fill=s.color, width=1)
            for index, (px, py) in enumerate(pixels):
                r = s.sizes[index] if s.sizes else 4
                draw.ellipse([px - r, py - r, px + r, py + r], fill=s.color)
        x_legend = _to_pixel(1.0, 0.0)[0] - 8
        draw.text((x_legend, legend_y), s.label, fill=s.color, font=small, anchor="ra")
        legend_y += 16
    if diagonal:
        draw.text(
            (_to_pixel(1.0, 0.0)[0] - 8, legend_y),
            diagonal,
            fill="#777777",
            font=small,
            anchor="ra",
        )
    draw.text((WIDTH / 2, 10), title, fill="black", font=medium, anchor="mt")
    draw.text(
        (LEFT + (WIDTH - LEFT - RIGHT) / 2, HEIGHT - 8),
        x_label,
        fill="black",
        font=small,
        anchor="mb",
    )
    label = Image.new("RGB", (HEIGHT - TOP - BOTTOM, 18), "white")
    ImageDraw.Draw(label).text((label.width / 2, 9), y_label, fill="black", font=small, anchor="mm")
    image.paste(label.rotate(90, expand=True), (2, TOP))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """Inline image source, so the report is one file that opens anywhere."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
