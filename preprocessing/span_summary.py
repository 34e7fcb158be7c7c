"""What a person reads after a span is written: images, rejects, patients per split.

One text for both ways a span is made, ``histo-preprocess`` (printed) and the pipeline's
IngestImages step (on the local runner's console), so a split that lacks a class or a
pile of rejects is seen where the run is watched, not only in ``summary.json``.
"""

from typing import Any


def format_summary(summary: dict[str, Any]) -> str:
    """The span's summary (``beam_job.preprocess``'s return value) as console lines."""
    lines = [
        f"span {summary['span']}: {summary['images_written']} images written, "
        f"{summary['images_rejected']} rejected of {summary['images_found']} "
        f"in {summary['seconds']}s -> {summary['span_dir']}"
    ]
    if summary["images_rejected"]:
        lines.append(f"  rejected files and why: {summary['rejects_report']}")
    lines.append(
        f"  patients by rule '{summary['patient_rule']}'; "
        f"{summary['patients_kept_from_earlier_spans']} kept their split from earlier spans"
    )
    for split, info in summary["splits"].items():
        per_class = ", ".join(f"{name} {count}" for name, count in info["per_class"].items())
        lines.append(
            f"  {split:<5} {info['images']:>6} images {info['patients']:>4} patients ({per_class})"
        )
    for warning in summary["warnings"]:
        lines.append(f"WARNING: {warning}")
    return "\n".join(lines)
