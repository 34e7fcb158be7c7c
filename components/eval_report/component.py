"""TFX component: the evaluation report of a run, as ``report.html`` and ``report.json``.

Runs after the Evaluator on every run, blessed or not: a rejected model needs its report
most. It reads TFMA's output, StatisticsGen's label counts and the model's training
metadata; it computes no metric of its own beyond what ``derive`` documents.
"""

import json
import os

from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types.artifact import Artifact

from components import kfp_ui
from components.eval_report import content, html_report, sources, tfma_reader
from components.grad_cam import component as grad_cam
from components.grad_cam import render
from components.shared import model_io
from modules import features
from modules.trainer import export

HTML_FILE = "report.html"
JSON_FILE = "report.json"


class EvaluationReport(Artifact):
    """A self-contained HTML evaluation report and the same numbers as JSON."""

    TYPE_NAME = "histopath.EvaluationReport"


THUMBNAILS_PER_CLASS = 2  # Grad-CAM thumbnails of each class in the report


def gallery_thumbnails(gallery: Artifact | None) -> tuple[list[dict], dict[str, str]]:
    """A few of the GradCam gallery's entries (each class) with inline thumbnails, and the
    gallery's facts; none when the gallery has no images."""
    if gallery is None:
        return [], {"note": "no Grad-CAM gallery in this run"}
    with fileio.open(os.path.join(gallery.uri, grad_cam.SUMMARY_FILE)) as f:
        summary = json.loads(f.read())
    facts = {"split": summary.get("split", ""), "uri": gallery.uri}
    if summary.get("status") != "ok":
        return [], {**facts, "note": summary.get("reason", "unavailable")}
    chosen = []
    for name in features.LABEL_NAMES:
        tiles = [t for t in summary["tiles"] if t["label_name"] == name]
        chosen += tiles[:THUMBNAILS_PER_CLASS]
    thumbs = [
        {**t, "src": render.thumbnail_data_uri(os.path.join(gallery.uri, t["png"]), width=240)}
        for t in chosen
    ]
    return thumbs, facts


def write_report(
    evaluation: Artifact,
    blessing: Artifact,
    model: Artifact,
    statistics: Artifact,
    examples: Artifact,
    blessing_split: str,
    out: str,
    gallery: Artifact | None = None,
) -> dict:
    """Builds the report from the artifacts into ``out``; returns its content."""
    data = tfma_reader.load(evaluation.uri)
    blessed = bool(blessing.get_int_custom_property("blessed"))
    metadata = model_io.read_training_metadata(model.uri)
    threshold = export.operating_threshold(metadata)
    report = content.build(
        data,
        threshold=threshold,
        blessing=sources.blessing_facts(data, blessed),
        class_balance=sources.class_balance(statistics),
        data_facts=sources.data_facts(examples, blessing_split),
        model_facts=sources.model_facts(model, metadata),
        evaluation_uri=evaluation.uri,
    )
    with fileio.open(os.path.join(out, HTML_FILE), "w") as f:
        f.write(html_report.render(report, threshold, *gallery_thumbnails(gallery)))
    with fileio.open(os.path.join(out, JSON_FILE), "w") as f:
        f.write(json.dumps(content.json_safe(report), indent=2, sort_keys=True))
    return report


@component
def EvalReport(
    evaluation: InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    model: InputArtifact[tfx.types.standard_artifacts.Model],
    statistics: InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    examples: InputArtifact[tfx.types.standard_artifacts.Examples],
    gallery: InputArtifact[grad_cam.GradCamGallery],
    report: OutputArtifact[EvaluationReport],
    blessing_split: Parameter[str] = features.TEST_SPLIT,
) -> None:
    """Writes report.html (open it in a browser) and report.json next to it."""
    built = write_report(
        evaluation, blessing, model, statistics, examples, blessing_split, report.uri, gallery
    )
    report.set_int_custom_property("blessed", int(built["blessing"]["blessed"]))
    report.set_string_custom_property("html", os.path.join(report.uri, HTML_FILE))
    if kfp_ui.ui_metadata_path():
        with fileio.open(os.path.join(report.uri, HTML_FILE)) as f:
            page = f.read()
        kfp_ui.emit([kfp_ui.markdown(ui_summary(built, report.uri)), kfp_ui.web_app(page)])


def ui_summary(built: dict, uri: str) -> str:
    """Markdown for the KFP UI: the blessing, the AUCs it compared, failures, the metrics."""
    blessing = built["blessing"]
    verdict = "blessed" if blessing["blessed"] else "NOT blessed"
    lines = [f"## Evaluation: model {verdict}", ""]
    interval = built.get("auc_interval_over_patients")
    lines.append(
        f"- candidate AUC: {blessing['candidate_auc']}"
        + (f" (95% interval over patients {interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
    )
    if blessing["has_baseline"]:
        lines.append(f"- last blessed model's AUC: {blessing['baseline_auc']}")
    lines += [
        f"- failed: {f['metric']} on {f['slice']}: {f['message']}" for f in blessing["failures"]
    ]
    rows = [
        (name, f"{value:.4f}")
        for name, value in sorted(built.get("overall", {}).items())
        if isinstance(value, (int, float))
    ]
    if rows:
        lines += ["", kfp_ui.table(rows, ("metric (overall)", "value"))]
    lines += ["", f"Full report: `{os.path.join(uri, HTML_FILE)}`"]
    return "\n".join(lines)
