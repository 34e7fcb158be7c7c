"""A pushed model scored on a labelled image tree: unseen patients, another cohort.

    python -m serving.validate IMAGE_ROOT --model-dir outputs/serving_model/NAME/VERSION
    python -m serving.validate IMAGE_ROOT --url http://HOST:8501/v1/models/NAME

The pipeline's Evaluator judges a model on its own test split; before a lab relies on it,
it scores it on its own slides. The tree is read as the preprocessing reads it (class
folders, BreakHis or IDC file names, or ``--manifest``; ``preprocessing/layouts.py``), its
slides grouped into patients by ``--patient-rule``, and every image is answered through the
REST body ``serving.predict`` sends, so the figures are those of the served model. Printed:
image-level AUC with a 95% interval that resamples patients, sensitivity, specificity and
balanced accuracy at the model's own threshold and ECE (``modules/metrics.py``, as the
benchmark and the report compute them); the same per patient (the mean probability of its
images, as ``predict`` and the report call a patient); per subtype where the names carry
one. ``--output`` writes all of it, every image's answer and every file left out with its
reason, as JSON (a temporary name, then renamed; on an object store, one upload). The tree,
the manifest and the JSON may sit on an object store (``gs://``, ``s3://``), read and
written as the preprocessing does (``preprocessing/storage.py``): a lab scores the slides
its pipeline will train on where they already are.
Exit status: 0 every image scored, 1 scored but some files were left out, 2 the model
could not be used or there was nothing to score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from typing import Any

import numpy as np

from modules import features
from modules.metrics import (
    expected_calibration_error,
    operating_point,
    patient_bootstrap_interval,
    roc_auc,
)
from preprocessing import layouts, patients, storage
from serving import images, predict, rest

DEFAULT_THRESHOLD = 0.5  # a model without a stored threshold (older exports) is called at 0.5
MAX_LISTED = 20  # patients called wrong named on the console (all of them in the JSON)


class NothingToScoreError(ValueError):
    """The tree holds no labelled image the model answered."""


def labelled_images(
    root: str, layout: str = "auto", manifest: str | None = None, rule: str = patients.DEFAULT_RULE
) -> tuple[list[layouts.ImageRecord], list[dict[str, str]]]:
    """The tree's images with label and patient (slides grouped by ``rule``), and the files
    left out with the reason (unreadable, label or patient unknown)."""
    records, rejects = layouts.discover(root, layout, manifest)
    grouped = [
        dataclasses.replace(r, patient_id=patients.patient_of(r.patient_id, rule)) for r in records
    ]
    return grouped, [{"file": r.source, "error": r.reason} for r in rejects]


def _figures(
    labels: list[int], probabilities: list[float], threshold: float, patient_ids: list[str]
) -> dict[str, Any]:
    """AUC with its interval over patients, operating point and ECE; a figure the labels
    cannot give (one class; for the interval, fewer than two patients of a class) is None."""
    interval = patient_bootstrap_interval(labels, probabilities, patient_ids)
    values = {
        "auc": roc_auc(labels, probabilities),
        **operating_point(labels, probabilities, threshold),
        "ece": expected_calibration_error(labels, probabilities),
    }
    figures: dict[str, Any] = {"count": len(labels), "malignant": int(sum(labels))}
    figures.update({k: None if math.isnan(v) else v for k, v in values.items()})
    figures["auc_interval"] = list(interval) if interval else None
    if len(set(labels)) == 1:
        figures["note"] = f"one class only ({features.LABEL_NAMES[labels[0]]}): no AUC"
    return figures


def patient_rows(scored: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """One row per patient: ``predict.patient_answers``' mean probability of its images
    (the one patient-level rule), with its label, subtypes and whether the mean, called at
    the threshold, is right. A patient whose images disagree on the label is left out of
    the patient figures (``mixed_labels``)."""
    labels: dict[str, set[int]] = {}
    subtypes: dict[str, set[str]] = {}
    for row in scored:
        patient = row["patient_id"]
        labels.setdefault(patient, set()).add(row["label"])
        subtypes.setdefault(patient, set()).update({row.get("subtype")} - {None, ""})
    rows = []
    for answer in predict.patient_answers(scored):
        patient, mean = answer["patient_id"], answer["probability_malignant"]
        row: dict[str, Any] = {"patient_id": patient, "images": answer["images"]}
        row["subtypes"] = sorted(subtypes[patient])
        row["probability_malignant"] = mean
        if len(labels[patient]) > 1:
            row["mixed_labels"] = True
        else:
            (label,) = labels[patient]
            row["label"] = features.LABEL_NAMES[label]
            row["called_right"] = bool((mean >= threshold) == bool(label))
        rows.append(row)
    return rows


def _subtype_rows(scored: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Per subtype: images, patients, mean image probability, share of images called right."""
    by_subtype: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in scored:
        if row.get("subtype"):
            by_subtype.setdefault((row["label"], row["subtype"]), []).append(row)
    return [
        {
            "label": features.LABEL_NAMES[label],
            "subtype": subtype,
            "images": len(members),
            "patients": len({m["patient_id"] for m in members}),
            "mean_probability": float(np.mean([m["probability_malignant"] for m in members])),
            "images_called_right": float(
                np.mean([(m["probability_malignant"] >= threshold) == bool(label) for m in members])
            ),
        }
        for (label, subtype), members in sorted(by_subtype.items())
    ]


def validate(
    records: list[layouts.ImageRecord],
    backend: predict.Backend,
    min_side: int = images.MIN_SIDE,
) -> dict[str, Any]:
    """Every record answered by the model, then the figures per image, patient and subtype.
    Raises NothingToScoreError when no image could be answered."""
    items = [
        (r.path, r.patient_id, lambda path=r.path: images.prepare(path, min_side)) for r in records
    ]
    document = predict.answer_images(items, backend)
    results = document["results"]
    for record, result in zip(records, results, strict=True):
        result.update(file=record.source, label=record.label, subtype=record.subtype)
    scored = [r for r in results if "probability_malignant" in r]
    if not scored:
        raise NothingToScoreError(f"none of the {len(records)} images could be scored")
    stored = scored[0].get("threshold")  # the model's, the same in every answer
    threshold = float(stored) if stored is not None else DEFAULT_THRESHOLD
    labels = [int(r["label"]) for r in scored]
    probabilities = [float(r["probability_malignant"]) for r in scored]
    per_patient = patient_rows(scored, threshold)
    judged = [p for p in per_patient if not p.get("mixed_labels")]
    return {
        "model": document["model"],
        "signature": document["signature"],
        "threshold": threshold,
        "threshold_source": "the model's" if stored is not None else "default (none stored)",
        "images": _figures(labels, probabilities, threshold, [r["patient_id"] for r in scored]),
        "patients": _figures(
            [features.LABEL_NAMES.index(p["label"]) for p in judged],
            [p["probability_malignant"] for p in judged],
            threshold,
            [p["patient_id"] for p in judged],
        ),
        "per_patient": per_patient,
        "per_subtype": _subtype_rows(scored, threshold),
        "results": results,
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def summary_lines(report: dict[str, Any], left_out: int) -> list[str]:
    """The console summary: the figures, the patients called wrong, what was left out."""
    lines = [
        f"model {report['model']}, threshold {report['threshold']:.2f} "
        f"({report['threshold_source']})"
    ]
    for level in ("images", "patients"):
        f = report[level]
        interval = f.get("auc_interval")
        lines.append(
            f"{level}: {f['count']} ({f['malignant']} malignant)  AUC {_number(f['auc'])}"
            + (f" (95% CI {interval[0]:.3f}-{interval[1]:.3f} over patients)" if interval else "")
            + f"  sensitivity {_number(f['sensitivity'])}  specificity {_number(f['specificity'])}"
            f"  balanced accuracy {_number(f['balanced_accuracy'])}  ECE {_number(f['ece'])}"
            + (f"  [{f['note']}]" if "note" in f else "")
        )
    wrong = [p for p in report["per_patient"] if p.get("called_right") is False]
    for p in wrong[:MAX_LISTED]:
        lines.append(
            f"  called wrong: patient {p['patient_id']} ({p['label']}"
            + (f", {'/'.join(p['subtypes'])}" if p["subtypes"] else "")
            + f", {p['images']} images): mean probability {p['probability_malignant']:.2f}"
        )
    if len(wrong) > MAX_LISTED:
        lines.append(f"  ... {len(wrong) - MAX_LISTED} more patients called wrong (in the JSON)")
    for row in report["per_subtype"]:
        lines.append(
            f"  {row['label']} {row['subtype']}: {row['patients']} patients, {row['images']} "
            f"images, mean probability {row['mean_probability']:.2f}, "
            f"images called right {row['images_called_right']:.2f}"
        )
    if left_out:
        lines.append(f"{left_out} files left out, each named with its reason below")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image_root", help="labelled images (class folders, BreakHis, IDC)")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-dir", help="a pushed SavedModel version directory")
    where.add_argument("--url", help="TF Serving model URL: http://HOST:8501/v1/models/NAME")
    parser.add_argument("--layout", default="auto", choices=layouts.LAYOUTS)
    parser.add_argument("--manifest", help="CSV path,label,patient_id[,magnification,subtype]")
    parser.add_argument(
        "--patient-rule",
        default=patients.configured_rule(),
        help="how slide ids group into patients (preprocessing/patients.py)",
    )
    parser.add_argument("--output", help="write the whole report as JSON here")
    parser.add_argument("--min-side", type=int, default=images.MIN_SIDE, help="pixels")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        if storage.is_local(args.image_root) and not os.path.isdir(args.image_root):
            raise NothingToScoreError(f"{args.image_root}: not a folder")
        records, rejected = labelled_images(
            args.image_root, args.layout, args.manifest, patients.validate_rule(args.patient_rule)
        )
        if not records:
            why = f"; e.g. {rejected[0]['file']}: {rejected[0]['error']}" if rejected else ""
            raise NothingToScoreError(
                f"{args.image_root}: no labelled image found ({len(rejected)} files left out{why})"
            )
        backend: predict.Backend = (
            predict.LocalBackend(args.model_dir)
            if args.model_dir
            else predict.RestBackend(args.url, timeout=args.timeout)
        )
        report = validate(records, backend, args.min_side)
    except (rest.SignatureMismatchError, OSError, NothingToScoreError, ValueError) as error:
        print(f"validate: {error}", file=sys.stderr)
        return 2
    failed = [{"file": r["file"], "error": r["error"]} for r in report["results"] if "error" in r]
    root = (
        os.path.abspath(args.image_root) if storage.is_local(args.image_root) else args.image_root
    )
    report.update(image_root=root, left_out=rejected + failed)
    if args.output:  # whole or not at all: an earlier report survives a failed run
        storage.write_text(args.output, json.dumps(report, indent=2))
    print("\n".join(summary_lines(report, len(report["left_out"]))))
    for item in report["left_out"]:
        print(f"  left out: {item['file']}: {item['error']}", file=sys.stderr)
    return 1 if report["left_out"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
