"""The settings table (pipeline/settings.py) is the one place each setting is declared."""

import os
import re
import subprocess
import sys

import pytest

from pipeline import configs, kubeflow_settings, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_DIRS = ("pipeline", "components", "modules", "preprocessing", "serving", "kfp_tools")
MENTION = re.compile(r"\bHISTO_[A-Z0-9_]*[A-Z0-9]\b")


def _files(suffixes: tuple[str, ...], roots: tuple[str, ...]) -> list[str]:
    found = []
    for root in roots:
        path = os.path.join(REPO, root)
        if os.path.isfile(path):
            found.append(path)
            continue
        for folder, _, names in os.walk(path):
            found += [os.path.join(folder, n) for n in names if n.endswith(suffixes)]
    return found


def test_docs_settings_page_is_generated_from_the_table():
    with open(os.path.join(REPO, "docs", "settings.md")) as f:
        page = f.read()
    assert page == settings.markdown(), "run: python -m pipeline.settings > docs/settings.md"


def test_every_histo_variable_named_anywhere_is_declared():
    """A name in code or docs that the table lacks is a setting read or documented beside it
    (or a stale name after a rename)."""
    roots = (*SOURCE_DIRS, "local_runner.py", "kubeflow_runner.py", "kubeflow_v2_runner.py")
    roots += ("README.md", "docs", "scripts", "Dockerfile", "benchmarks", "k8s")
    unknown = {}
    for path in _files((".py", ".md", ".sh", ".yaml", "Dockerfile", ".html"), roots):
        with open(path, errors="replace") as f:
            names = set(MENTION.findall(f.read())) - set(settings.BY_NAME)
        if names:
            unknown[os.path.relpath(path, REPO)] = sorted(names)
    assert not unknown


def test_only_the_table_reads_histo_variables_from_the_environment():
    """Code reads settings through the table (typed, with its default), not os.environ."""
    direct = re.compile(r"environ(?:\.get)?\(?\[?\s*\"HISTO_")
    readers = [
        os.path.relpath(path, REPO)
        for path in _files((".py",), (*SOURCE_DIRS, "kubeflow_runner.py", "kubeflow_v2_runner.py"))
        if direct.search(open(path).read())
    ]
    assert readers == []


def test_module_files_never_import_the_pipeline_package():
    """Module files get their values through custom_config (they run inside TFX's
    user-code wheel, which holds only their own folder)."""
    importers = [
        os.path.relpath(path, REPO)
        for path in _files((".py",), ("modules",))
        if re.search(r"^\s*(from|import) pipeline\b", open(path).read(), re.M)
    ]
    assert importers == []


def test_each_setting_is_declared_once_with_a_group_and_a_meaning():
    names = [s.name for s in settings.SETTINGS]
    assert len(names) == len(set(names))
    for s in settings.SETTINGS:
        assert s.name.startswith("HISTO_") and s.group in settings.GROUPS and s.meaning
        assert s.default is None or isinstance(s.default, s.kind), s.name


def test_values_are_typed_and_a_malformed_one_names_its_variable():
    assert settings.read("HISTO_MIN_AUC", {"HISTO_MIN_AUC": " 0.75 "}) == 0.75
    assert settings.read("HISTO_MIN_AUC", {"HISTO_MIN_AUC": "  "}) == 0.6  # blank: default
    assert settings.read("HISTO_ENABLE_TUNER", {"HISTO_ENABLE_TUNER": "Yes"}) is True
    with pytest.raises(settings.SettingError, match=r"HISTO_MIN_AUC='high': not a float"):
        settings.read("HISTO_MIN_AUC", {"HISTO_MIN_AUC": "high"})
    with pytest.raises(settings.SettingError, match="HISTO_ENABLE_TUNER='maybe'"):
        settings.read("HISTO_ENABLE_TUNER", {"HISTO_ENABLE_TUNER": "maybe"})
    with pytest.raises(settings.SettingError, match="HISTO_NOPE: not a declared setting"):
        settings.read("HISTO_NOPE", {})


def test_configs_and_deployment_take_their_defaults_from_the_table():
    assert configs.MIN_AUC == settings.default("HISTO_MIN_AUC") or "HISTO_MIN_AUC" in os.environ
    deployed = kubeflow_settings.from_env({"HISTO_BUCKET": "gs://b"})
    assert deployed.data_root == "gs://b/data"  # "$HISTO_BUCKET/data", expanded
    assert deployed.serving_model_dir == (
        f"gs://b/tfx_pipeline_output/{settings.default('HISTO_PIPELINE_NAME')}/serving_model"
    )
    assert deployed.trainer_memory_request == settings.default("HISTO_TRAINER_MEMORY_REQUEST")
    with pytest.raises(kubeflow_settings.SettingsError, match="HISTO_TRAINER_GPUS"):
        kubeflow_settings.from_env({"HISTO_TRAINER_GPUS": "two"})


def test_one_environment_variable_changes_the_setting_everywhere():
    """HISTO_MIN_SIDE: the pipeline's ingestion and histo-preprocess's default alike."""
    code = (
        "from pipeline import configs; from preprocessing import cli; "
        "print(configs.ingest_settings()['min_side'], "
        "cli.build_parser().parse_args(['--input', 'i', '--output', 'o']).min_side)"
    )
    env = {**os.environ, "HISTO_MIN_SIDE": "77"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["77", "77"]
