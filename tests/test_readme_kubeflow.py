"""The README's Kubeflow commands, run as written, from a shell whose PATH lacks the venv.

The block is taken from README.md itself, so the documented commands cannot drift from
what works; the fake KFP API server (tests/fake_kfp_server.py) stands in for the cluster.
"""

import os
import re
import subprocess

import pytest
from fake_kfp_server import FakeKfpServer

from histo_testlib import REPO


def kubeflow_block() -> str:
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme.split("\n## Kubeflow\n", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_kubeflow_commands_work_as_written(tmp_path):
    block = kubeflow_block()
    assert "tfx pipeline create" in block and "tfx run create" in block
    (tmp_path / "home").mkdir()
    with FakeKfpServer() as server:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",  # no venv: as a new shell has it
            "HOME": str(tmp_path / "home"),
            "KFP_ENDPOINT": server.endpoint,
            "HISTO_KFP_OUTPUT_DIR": str(tmp_path),  # the compiled package lands here
            "PYTHONWARNINGS": "ignore",
        }
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Kubeflow not found" not in result.stdout + result.stderr
        state = server.state
        [pipeline] = state.pipelines.values()
        assert pipeline["name"] == "histopath-classifier"
        assert len(state.versions) >= 2  # create + update
        assert len(state.runs) == 1 and len(state.jobs) == 1
    assert not [p for p in os.listdir(REPO) if p.startswith("temp_") or p.endswith(".tar.gz")]
