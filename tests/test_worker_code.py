"""Remote Beam workers get this project's code: the preprocessing job ships setup.py's
package on any runner that does not run here, and that package holds every module the
job's DoFns import (Beam's own stager builds it, as it would for Dataflow)."""

import json
import os
import tarfile

import pytest

from histo_testlib import run_python
from preprocessing import beam_job

PROJECT_PACKAGES = ("preprocessing", "modules", "components", "pipeline", "serving", "demo")


def test_a_remote_runner_gets_the_projects_setup_file():
    for runner in (["--runner=DataflowRunner"], ["--runner", "DataflowRunner"]):
        args = beam_job.default_beam_args([*runner, "--project=p", "--region=r"])
        assert f"--setup_file={beam_job.SETUP_FILE}" in args
    assert os.path.isfile(beam_job.SETUP_FILE)


def test_local_runners_and_callers_who_ship_code_get_nothing_added():
    local = beam_job.default_beam_args([])
    assert not any(a.startswith("--setup_file") for a in local)
    for own in (
        ["--setup_file=/elsewhere/setup.py"],
        ["--sdk_container_image=europe-docker.pkg.dev/p/r/histopath:1"],
        ["--environment_config=histopath:1"],
    ):
        args = beam_job.default_beam_args(["--runner=DataflowRunner", *own])
        assert args == ["--runner=DataflowRunner", *own]
    direct = ["--runner=DirectRunner", "--direct_num_workers=1"]
    assert beam_job.default_beam_args(direct) == direct


def test_without_a_setup_file_a_remote_run_says_what_to_pass(monkeypatch, tmp_path):
    monkeypatch.setattr(beam_job, "SETUP_FILE", str(tmp_path / "setup.py"))
    with pytest.raises(beam_job.PreprocessingError, match="--sdk_container_image"):
        beam_job.default_beam_args(["--runner=DataflowRunner"])


def test_the_package_beam_ships_holds_every_module_the_job_imports(tmp_path):
    # What a worker imports to run the DoFns: beam_job and everything it pulls in.
    imported = run_python(
        "import json, sys\n"
        "import preprocessing.beam_job\n"
        f"roots = {PROJECT_PACKAGES!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in roots)))\n"
    )
    modules = json.loads(imported.stdout.strip().splitlines()[-1])
    assert "preprocessing.image_io" in modules and "modules.features" in modules

    from apache_beam.runners.portability.stager import Stager

    sdist = Stager._build_setup_package(beam_job.SETUP_FILE, str(tmp_path))
    with tarfile.open(sdist) as archive:
        shipped = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for module in modules:
        path = module.replace(".", "/")
        assert f"{path}.py" in shipped or f"{path}/__init__.py" in shipped, module
