"""Lays the report content out as one self-contained HTML page (inline CSS and images):
sections built here as HTML fragments, the page itself from ``templates/report.html``."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from typing import Any

import jinja2
import markupsafe

from components.eval_report import charts, model_card
from components.eval_report.content import OVERALL_METRICS, SLICE_METRICS
from modules import features

NAMES = features.LABEL_NAMES
_TEMPLATES = jinja2.Environment(
    loader=jinja2.FileSystemLoader(os.path.join(os.path.dirname(__file__), "templates")),
    autoescape=True,
)


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers as the report prints them (tests look for exactly these strings)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _e(value: Any) -> str:
    return html.escape(fmt(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="{charts.data_uri(png)}" alt="{html.escape(alt)}">'


def _blessing(b: dict[str, Any]) -> str:
    verdict = "BLESSED" if b["blessed"] else "NOT BLESSED"
    css = "good" if b["blessed"] else "bad"
    rules = "".join(
        f"<li>{html.escape('; '.join(r['rules']))} <small>(slices: {html.escape(r['slices'])})"
        "</small></li>"
        for r in b["rules"]
    )
    seen = [f"candidate auc = {_e(b['candidate_auc'])}"]
    if b["has_baseline"]:
        seen.append(f"baseline (last blessed) auc = {_e(b['baseline_auc'])}")
        seen.append(f"difference = {_e(b['auc_diff'])}")
    else:
        seen.append("no baseline: first blessed model, change rules not applied")
    failures = _table(
        ["slice", "metric", "value", "rule", "message"],
        [[f["slice"], f["metric"], f["value"], f["rule"], f["message"]] for f in b["failures"]],
    )
    why = (
        "Every rule passed on every slice it applies to."
        if b["validation_ok"]
        else f"Failed checks:{failures}"
    )
    return (
        f'<p class="verdict {css}">{verdict}</p><p>Rules (TFMA EvalConfig):</p><ul>{rules}</ul>'
        f"<p>{' &middot; '.join(seen)}</p><p>{why}</p>"
    )


def _operating_point(op: dict[str, Any]) -> str:
    matrix = _table(
        ["", f"predicted {NAMES[0]}", f"predicted {NAMES[1]}"],
        [
            [f"true {NAMES[0]}", op.get("tn"), op.get("fp")],
            [f"true {NAMES[1]}", op.get("fn"), op.get("tp")],
        ],
    )
    return (
        f"<p>Operating threshold {_e(op['threshold'])}, the model's own (set by the Trainer's "
        "threshold rule, stored with the model): P(malignant) at or above it means "
        "malignant.</p>"
        f"{matrix}<p>sensitivity (malignant found) = <b>{_e(op['sensitivity'])}</b> &middot; "
        f"specificity (benign cleared) = <b>{_e(op['specificity'])}</b></p>"
    )


def _curves(report: dict[str, Any]) -> str:
    overall = report["overall"]
    roc = charts.unit_chart(
        "ROC",
        "false positive rate (1 - specificity)",
        "true positive rate (sensitivity)",
        [charts.Series(f"AUC {fmt(overall['auc'])}", report["curves"]["roc"])],
        diagonal="chance",
    )
    pr = charts.unit_chart(
        "Precision-recall",
        "recall (sensitivity)",
        "precision",
        [charts.Series(f"AUC-PR {fmt(overall['auc_pr'])}", report["curves"]["pr"], "#bf5f1f")],
    )
    return (
        f'<div class="charts">{_img(roc, "ROC curve")}{_img(pr, "precision-recall curve")}</div>'
        f"<p>ROC AUC = <b>{_e(overall['auc'])}</b> &middot; PR AUC = "
        f"<b>{_e(overall['auc_pr'])}</b> (TFMA, from 1000 thresholds)</p>"
    )


def _calibration(cal: dict[str, Any]) -> str:
    used = [b for b in cal["bins"] if b["count"] > 0]
    total = sum(b["count"] for b in used) or 1.0
    chart = charts.unit_chart(
        "Reliability",
        "mean predicted P(malignant)",
        "fraction malignant",
        [
            charts.Series(
                "bins (dot size ~ images)",
                [(b["mean_prediction"], b["fraction_positive"]) for b in used],
                "#2a8a3a",
                markers=True,
                sizes=[3 + 9 * math.sqrt(b["count"] / total) for b in used],
            )
        ],
        diagonal="perfectly calibrated",
    )
    rows = [
        [
            f"[{b['lower']:.1f}, {b['upper']:.1f})",
            b["count"],
            b["mean_prediction"],
            b["fraction_positive"],
        ]
        for b in cal["bins"]
    ]
    return (
        f'<div class="charts">{_img(chart, "reliability curve")}</div>'
        f"<p>Expected calibration error (ECE, 10 bins) = "
        f"<b>{_e(cal['expected_calibration_error'])}</b></p>"
        + _table(["P(malignant) bin", "images", "mean prediction", "fraction malignant"], rows)
    )


def _single_class(row: dict[str, Any]) -> bool:
    return row.get("mean_label") in (0.0, 1.0)


def _slices(slices: dict[str, list[dict[str, Any]]], names: tuple[str, ...]) -> str:
    """Per-slice tables; AUC shows n/a where the slice holds one class (TFMA writes 0 there)."""
    parts = []
    for column, rows in slices.items():
        cells = [
            [
                r["value"] or "(none)",
                *(None if n == "auc" and _single_class(r) else r[n] for n in names),
            ]
            for r in rows
        ]
        parts.append(f"<h3>per {html.escape(column)}</h3>{_table([column, *names], cells)}")
    parts.append(
        "<p><small>AUC is n/a on a slice that holds one class only (every BreakHis subtype "
        "does): TFMA reports 0 there, which means undefined, not worst.</small></p>"
    )
    return "".join(parts)


def _patients(p: dict[str, Any], threshold: float) -> str:
    a = p["aggregate"]
    summary = _table(
        ["patients", "TP", "FP", "TN", "FN", "sensitivity", "specificity", "accuracy", "AUC"],
        [
            [
                a["patients"],
                a["tp"],
                a["fp"],
                a["tn"],
                a["fn"],
                a["sensitivity"],
                a["specificity"],
                a["accuracy"],
                a["auc"],
            ]
        ],
    )
    rows = [
        [
            r["patient_id"],
            r["images"],
            NAMES[r["label"]] if r["label"] in (0, 1) else "?",
            r["score"],
            NAMES[r["called"]] if r["called"] in (0, 1) else "?",
            r["image_accuracy"],
        ]
        for r in p["rows"]
    ]
    mixed = [r["patient_id"] for r in p["rows"] if r["mixed_labels"]]
    note = f"<p>Patients with mixed labels: {html.escape(', '.join(mixed))}</p>" if mixed else ""
    return (
        f"<p>A patient's score is the mean P(malignant) of its images (TFMA mean_prediction on "
        f"the patient_id slice); called malignant at score &ge; {_e(threshold)}.</p>{summary}"
        + _table(["patient", "images", "truth", "score", "called", "image accuracy"], rows)
        + note
    )


def _data(report: dict[str, Any]) -> str:
    facts = report["data"]
    rows = []
    for split, counts in report["class_balance"].items():
        total = counts["total"] or 1
        share = counts[NAMES[1]] / total
        bar = (
            f'<span class="bar"><span style="width:{100 * share:.0f}%"></span></span> '
            f"{100 * share:.0f}% {NAMES[1]}"
        )
        rows.append(
            f"<tr><td>{html.escape(split)}</td><td>{counts[NAMES[0]]}</td>"
            f"<td>{counts[NAMES[1]]}</td><td>{counts['total']}</td><td>{bar}</td></tr>"
        )
    table = (
        f"<table><tr><th>split</th><th>{NAMES[0]}</th><th>{NAMES[1]}</th><th>total</th>"
        f"<th>balance</th></tr>{''.join(rows)}</table>"
    )
    return (
        f"<p>Span <b>{_e(facts['span'])}</b> (version {_e(facts['version'])}) &middot; "
        f"evaluated split: <b>{html.escape(str(facts['evaluated_split']))}</b> &middot; "
        f"<small>{html.escape(facts['examples_uri'])}</small></p>{table}"
        "<p><small>Counts from StatisticsGen (label statistics per split).</small></p>"
    )


def _lineage(model: dict[str, Any]) -> str:
    hp = _table(
        ["hyperparameter", "value"],
        [[k, str(v)] for k, v in sorted(model["hyperparameters"].items())],  # as configured
    )
    last = "".join(
        f"<li>{html.escape(phase)}: {html.escape(json.dumps(values, sort_keys=True))}</li>"
        for phase, values in model["last_epoch"].items()
    )
    return (
        f"<p>Backbone <b>{html.escape(model['backbone'])}</b>, weights: "
        f"<b>{html.escape(str(model['weights_source']))}</b></p>"
        f"<p>Model artifact {_e(model['model_artifact_id'])}: "
        f"<small>{html.escape(model['model_uri'])}</small></p>{hp}"
        f"<p>Last epoch of each training phase:</p><ul>{last}</ul>"
    )


def render(
    report: dict[str, Any],
    threshold: float,
    thumbnails: Sequence[dict[str, Any]] = (),
    gallery: dict[str, str] | None = None,
) -> str:
    """The page, from ``templates/report.html``: the sections below, a row of Grad-CAM
    thumbnails (``thumbnails``: the gallery's entries with a ``src`` data URI) and the
    model card (``model_card``)."""
    overall = _table(["metric", "value"], [[n, report["overall"][n]] for n in OVERALL_METRICS])
    sections = [
        ("blessing", "Blessing", _blessing(report["blessing"])),
        ("overall", "Overall metrics", overall),
        (
            "operating-point",
            "Confusion matrix at the operating threshold",
            _operating_point(report["operating_point"]),
        ),
        ("curves", "ROC and precision-recall", _curves(report)),
        ("calibration", "Calibration", _calibration(report["calibration"])),
        ("slices", "Metrics per slice", _slices(report["slices"], SLICE_METRICS)),
        ("patients", "Per patient", _patients(report["patients"], threshold)),
        ("data", "Data: span and class balance", _data(report)),
        ("lineage", "Model lineage", _lineage(report["model"])),
    ]
    gallery = gallery or {}
    return _TEMPLATES.get_template("report.html").render(
        backbone=report["model"]["backbone"],
        positive_class=report["positive_class"],
        evaluation_uri=report["evaluation_uri"],
        sections=[{"anchor": a, "title": t, "body": markupsafe.Markup(b)} for a, t, b in sections],
        thumbnails=list(thumbnails),
        gallery_split=gallery.get("split", ""),
        gallery_uri=gallery.get("uri", ""),
        gallery_note=gallery.get("note", ""),
        card=model_card.build(report),
        fmt=fmt,
    )
