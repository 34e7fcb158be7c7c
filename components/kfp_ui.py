"""Viewers for the Kubeflow Pipelines UI, added by our executors when they run in a KFP pod.

TFX's Kubeflow entrypoint (``python -m tfx.orchestration.kubeflow.container_entrypoint ...
--metadata_ui_path PATH``) runs the executor in-process, then writes its own markdown entry
to PATH and appends the entries already there. So an executor that writes entries to PATH
first gets them shown: ``web-app`` (a self-contained HTML page in a sandboxed iframe) and
short ``markdown`` (KFP truncates inline markdown at 50 KB). Outside a KFP pod (no
``--metadata_ui_path`` on the command line) nothing is written.

On a cache hit the executor does not run, and TFX's own entry then names the output URI
the step would have written, not the cached artifact's: ``components/kfp_viewers.py`` (a
resolver step, never cached) shows the run's report, gallery and gate reports every run.
"""

import json
import os
import sys

from preprocessing import storage

UI_PATH_FLAG = "--metadata_ui_path"
MAX_MARKDOWN = 45_000  # below KFP's 50 KB inline limit


def ui_metadata_path(argv: list[str] | None = None) -> str | None:
    """The path the entrypoint reads back, or None when not running under it."""
    argv = sys.argv if argv is None else argv
    if UI_PATH_FLAG in argv[:-1]:
        return argv[argv.index(UI_PATH_FLAG) + 1]
    return None


def markdown(text: str) -> dict:
    if len(text) > MAX_MARKDOWN:
        text = text[:MAX_MARKDOWN] + "\n\n(truncated)"
    return {"type": "markdown", "storage": "inline", "source": text}


def web_app(html: str) -> dict:
    return {"type": "web-app", "storage": "inline", "source": html}


def emit(viewers: list[dict], argv: list[str] | None = None) -> str | None:
    """Adds viewers to the step's UI metadata file (atomically); returns its path or None."""
    path = ui_metadata_path(argv)
    if path is None:
        return None
    outputs: list[dict] = []
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                outputs = list(json.load(f).get("outputs", []))
        except (OSError, ValueError, AttributeError):
            outputs = []  # a broken file would also be ignored by the entrypoint
    storage.write_text(path, json.dumps({"outputs": outputs + viewers}))
    return path


def table(rows: list[tuple], header: tuple) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
