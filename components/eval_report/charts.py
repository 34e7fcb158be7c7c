"""Unit-square charts (ROC, precision-recall, reliability) drawn with matplotlib as PNGs.

Every chart of the report lives in [0, 1] x [0, 1]. matplotlib's Agg backend renders
without a display (pipeline pods, CI); the PNG is embedded in the report's one file.
"""

from __future__ import annotations

import base64
import dataclasses
import io

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in a pod

import matplotlib.pyplot as plt  # noqa: E402

SIZE_INCHES, DPI = (4.2, 4.0), 100  # 420 x 400 px, the report's layout


@dataclasses.dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str = "#1f5fbf"
    markers: bool = False
    sizes: list[float] | None = None  # marker radius in px per point (reliability: bin share)


def unit_chart(
    title: str, x_label: str, y_label: str, series: list[Series], diagonal: str | None = None
) -> bytes:
    """PNG bytes of a chart over [0, 1]^2; ``diagonal`` labels the y = x reference line."""
    figure, axes = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    try:
        if diagonal:
            axes.plot([0, 1], [0, 1], color="#999999", linewidth=1, label=diagonal)
        for s in series:
            xs, ys = [p[0] for p in s.points], [p[1] for p in s.points]
            if s.markers:
                axes.plot(xs, ys, color=s.color, linewidth=1)
                # scatter sizes are areas in points^2; the radii are in pixels at DPI.
                radii = s.sizes or [4.0] * len(xs)
                areas = [(r * 72.0 / DPI * 2) ** 2 for r in radii]
                axes.scatter(xs, ys, s=areas, color=s.color, label=s.label, zorder=3)
            else:
                axes.plot(xs, ys, color=s.color, linewidth=2, label=s.label)
        axes.set(xlim=(0, 1), ylim=(0, 1), title=title, xlabel=x_label, ylabel=y_label)
        axes.set_aspect("equal")
        axes.grid(color="#e4e4e4")
        axes.legend(loc="lower right", fontsize="small", frameon=False)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)


def data_uri(png: bytes) -> str:
    """Inline image source, so the report is one file that opens anywhere."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
