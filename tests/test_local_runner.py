"""local_runner's own choices: Beam in one process for small data, every core above."""

import shutil

import pytest

import local_runner
from pipeline import configs
from pipeline import pipeline as pipeline_module


def _span(root, size: int) -> str:
    folder = root / "span-1" / "Split-train"
    folder.mkdir(parents=True)
    (folder / "data_tfrecord-00000-of-00001.gz").write_bytes(b"x" * size)
    return str(root)


def test_small_data_runs_beam_in_one_process(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "SMALL_DATA_BYTES", 1000)
    args = local_runner.local_beam_args(_span(tmp_path, 999), "auto")
    assert "--direct_running_mode=in_memory" in args


def test_big_data_runs_beam_on_every_core(tmp_path, monkeypatch):
    monkeypatch.setattr(configs, "SMALL_DATA_BYTES", 1000)
    args = local_runner.local_beam_args(_span(tmp_path, 1000), "auto")
    assert args == configs.LOCAL_BEAM_PIPELINE_ARGS
    assert "--direct_num_workers=0" in args  # 0 = one worker per core


def test_the_mode_can_be_forced_and_a_typo_is_named(tmp_path):
    root = _span(tmp_path, 10)
    assert local_runner.local_beam_args(root, "multi_processing") == (
        configs.LOCAL_BEAM_PIPELINE_ARGS
    )
    with pytest.raises(ValueError, match="HISTO_BEAM_MODE='multiprocess'"):
        local_runner.local_beam_args(root, "multiprocess")


def test_an_edit_to_a_shared_module_changes_the_transform_and_trainer_cache_keys(tmp_path):
    # TFX's user-code wheel hashes only the module file's folder; the code version covers
    # every module, so editing features.py cannot leave Transform or the Trainer cached.
    copy = tmp_path / "modules"
    shutil.copytree(pipeline_module.MODULES_DIR, copy)
    before = pipeline_module.code_version(str(copy))
    assert before == pipeline_module.code_version(str(copy))  # deterministic
    with open(copy / "features.py", "a") as f:
        f.write("\n# an edit\n")
    assert pipeline_module.code_version(str(copy)) != before
    built = local_runner.build("/data", str(tmp_path / "out"))
    nodes = {c.id: c for c in built.components}
    version = pipeline_module.code_version()
    for node in ("Transform", "Trainer"):
        assert version in nodes[node].exec_properties["custom_config"], node
