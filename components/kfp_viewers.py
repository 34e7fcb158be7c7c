"""The run's report, gallery and gate verdicts in the Kubeflow UI, on cached runs too.

A cached step runs no executor, so the viewers EvalReport, GradCam and the gates add when
they run are missing from a rerun served by the cache (and TFX's own entry then names the
output URI the step would have written, not the cached artifact's). Resolver steps are
never cached: this one runs last in every run, receives the run's (new or cached) report,
gallery and gate reports, passes them on unchanged and shows them. Outside a KFP pod it
only passes them on.
"""

import json
import os

import ml_metadata as mlmd
from tfx import types
from tfx.dsl.components.common import resolver
from tfx.dsl.io import fileio

from components import kfp_ui
from components.drift_gate import REPORT_FILE as DRIFT_FILE
from components.drift_gate import ui_summary as drift_summary
from components.eval_report.component import HTML_FILE
from components.grad_cam.component import SUMMARY_FILE, inline_gallery
from components.patient_leakage_gate import REPORT_FILE as PATIENTS_FILE
from components.patient_leakage_gate import ui_summary as leakage_summary


def _read(uri: str, name: str) -> str:
    with fileio.open(os.path.join(uri, name)) as f:
        return f.read()


def viewers(latest: dict[str, types.Artifact]) -> list[dict]:
    """Markdown first (where everything lies, the gates' figures), then the two pages."""
    lines = ["## This run's outputs", ""]
    lines += [f"- {key}: `{artifact.uri}`" for key, artifact in sorted(latest.items())]
    out = [kfp_ui.markdown("\n".join(lines))]
    if "patients" in latest:
        per_split = json.loads(_read(latest["patients"].uri, PATIENTS_FILE))
        out.append(kfp_ui.markdown(leakage_summary(per_split)))
    if "drift" in latest:
        out.append(
            kfp_ui.markdown(drift_summary(json.loads(_read(latest["drift"].uri, DRIFT_FILE))))
        )
    if "report" in latest:
        out.append(kfp_ui.web_app(_read(latest["report"].uri, HTML_FILE)))
    if "gallery" in latest:
        summary = json.loads(_read(latest["gallery"].uri, SUMMARY_FILE))
        out.append(kfp_ui.web_app(inline_gallery(summary, latest["gallery"].uri)))
    return out


class KfpViewersStrategy(resolver.ResolverStrategy):
    """Returns its inputs unchanged; in a KFP pod, shows the newest of each as viewers."""

    def resolve_artifacts(
        self, store: mlmd.MetadataStore, input_dict: dict[str, list[types.Artifact]]
    ) -> dict[str, list[types.Artifact]] | None:
        if kfp_ui.ui_metadata_path():
            latest = {k: max(v, key=lambda a: a.id) for k, v in input_dict.items() if v}
            kfp_ui.emit(viewers(latest))
        return input_dict
