"""The Kubeflow UI viewers our executors and the viewers resolver write (no pod, no TFX run)."""

import json

from tfx.types import standard_artifacts

from components import kfp_ui, kfp_viewers
from components.drift_gate import REPORT_FILE as DRIFT_FILE
from components.eval_report.component import HTML_FILE
from components.patient_leakage_gate import REPORT_FILE as PATIENTS_FILE


def pod_argv(path) -> list[str]:
    """The entrypoint's command line as a KFP pod runs it."""
    return ["container_entrypoint", "--pipeline_root", "/p", kfp_ui.UI_PATH_FLAG, str(path)]


def test_outside_a_pod_nothing_is_written(tmp_path):
    assert kfp_ui.ui_metadata_path(["container_entrypoint", "--pipeline_root", "/p"]) is None
    assert kfp_ui.emit([kfp_ui.markdown("x")], argv=["container_entrypoint"]) is None
    # The flag as the last word has no value: not a pod's command line either.
    assert kfp_ui.ui_metadata_path(["container_entrypoint", kfp_ui.UI_PATH_FLAG]) is None
    assert list(tmp_path.iterdir()) == []


def test_viewers_are_appended_to_what_the_step_already_wrote(tmp_path):
    path = tmp_path / "ui" / "mlpipeline-ui-metadata.json"
    kfp_ui.emit([kfp_ui.markdown("first")], argv=pod_argv(path))
    written = kfp_ui.emit([kfp_ui.web_app("<html>page</html>")], argv=pod_argv(path))
    assert written == str(path)
    outputs = json.loads(path.read_text())["outputs"]
    assert [(o["type"], o["source"]) for o in outputs] == [
        ("markdown", "first"),
        ("web-app", "<html>page</html>"),
    ]
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def test_a_broken_metadata_file_is_replaced_not_fatal(tmp_path):
    path = tmp_path / "mlpipeline-ui-metadata.json"
    path.write_text("{not json")
    kfp_ui.emit([kfp_ui.markdown("after")], argv=pod_argv(path))
    assert json.loads(path.read_text())["outputs"] == [kfp_ui.markdown("after")]


def test_long_markdown_is_cut_below_kfps_inline_limit():
    viewer = kfp_ui.markdown("x" * 100_000)
    assert len(viewer["source"].encode()) < 50_000
    assert viewer["source"].endswith("(truncated)")
    assert kfp_ui.markdown("short")["source"] == "short"


def test_table_is_markdown_with_one_row_per_item():
    text = kfp_ui.table([("train", 19), ("test", 6)], ("split", "patients"))
    assert text.splitlines() == [
        "| split | patients |",
        "| --- | --- |",
        "| train | 19 |",
        "| test | 6 |",
    ]


def _artifact(tmp_path, name: str, files: dict[str, str]):
    artifact = standard_artifacts.Examples()  # the type does not matter to the viewers
    artifact.uri = str(tmp_path / name)
    (tmp_path / name).mkdir()
    for file_name, content in files.items():
        (tmp_path / name / file_name).write_text(content)
    return artifact


def test_the_viewers_step_shows_where_outputs_are_the_gates_figures_and_the_report(tmp_path):
    drift = {
        "split": "train",
        "baseline": "/p/StatisticsGen/statistics/3",
        "features": [
            {
                "feature": "stain_eosin",
                "measure": "jensen_shannon_divergence",
                "distance": 0.031,
                "threshold": 0.1,
                "accepted": False,
            }
        ],
    }
    latest = {
        "patients": _artifact(
            tmp_path, "patients", {PATIENTS_FILE: json.dumps({"train": ["a", "b"], "test": ["c"]})}
        ),
        "drift": _artifact(tmp_path, "drift", {DRIFT_FILE: json.dumps(drift)}),
        "report": _artifact(tmp_path, "report", {HTML_FILE: "<html>the report</html>"}),
    }
    shown = kfp_viewers.viewers(latest)
    assert [v["type"] for v in shown] == ["markdown", "markdown", "markdown", "web-app"]
    outputs, patients, drift_md, page = (v["source"] for v in shown)
    for key, artifact in latest.items():
        assert f"- {key}: `{artifact.uri}`" in outputs
    assert "| train | 2 |" in patients and "| test | 1 |" in patients
    assert "| stain_eosin | jensen_shannon_divergence | 0.0310 | 0.1 |" in drift_md
    assert "/p/StatisticsGen/statistics/3" in drift_md
    assert page == "<html>the report</html>"


def test_the_viewers_step_passes_its_inputs_on_unchanged_outside_a_pod(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["container_entrypoint"])
    inputs = {"report": [_artifact(tmp_path, "r", {})], "gallery": []}
    strategy = kfp_viewers.KfpViewersStrategy()
    assert strategy.resolve_artifacts(None, inputs) is inputs
