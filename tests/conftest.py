"""Shared fixtures: the real BreakHis crops from ../shared when present."""

import os

import pytest

from histo_testlib import BREAKHIS_CROPS, FAST_BEAM_ARGS, run_pipeline

BREAKHIS_SETS = ("breakhis-100x", "breakhis-crops")


@pytest.fixture(scope="session")
def breakhis_crops() -> str:
    if not os.path.isdir(BREAKHIS_CROPS):
        pytest.skip(f"real BreakHis crops not found at {os.path.abspath(BREAKHIS_CROPS)}")
    return os.path.abspath(BREAKHIS_CROPS)


@pytest.fixture(scope="session")
def breakhis_sets() -> list[str]:
    """Both shared BreakHis folders (originals at 100X and crops), merged by the tests."""
    roots = [os.path.abspath(os.path.join(BREAKHIS_CROPS, "..", name)) for name in BREAKHIS_SETS]
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        pytest.skip(f"real BreakHis images not found at {missing}")
    return roots


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> str:
    """A preprocessed span of synthetic demo tiles (20 patients, 100 images)."""
    from demo.generate import generate
    from preprocessing import layouts
    from preprocessing.beam_job import preprocess

    root = tmp_path_factory.mktemp("demo")
    images, data = str(root / "images"), str(root / "data")
    generate(images, images_per_patient=5, size=128)
    records, rejects = layouts.discover(images)
    preprocess(records, rejects, data, (0.7, 0.15, 0.15), beam_args=FAST_BEAM_ARGS)
    return data


@pytest.fixture(scope="session")
def first_run(demo_data, tmp_path_factory) -> dict:
    """The real pipeline run once on demo data: {"output": dir, "summary": run summary}.

    Session-scoped so every end-to-end test file reads the same trained, pushed model
    instead of training its own. Tests that run the pipeline again in this output
    directory add executions; they never remove what the first run produced.
    """
    output = str(tmp_path_factory.mktemp("run"))
    return {"output": output, "summary": run_pipeline(demo_data, output)}


# Fixtures that run the real ``tfx`` CLI in a subprocess (tens of seconds each).
CLI_FIXTURES = {"compiled", "scenario", "vertex_job"}


def pytest_collection_modifyitems(items) -> None:
    """Every test that needs a real pipeline run is ``e2e``; one that needs a CLI run, ``slow``.

    ``-m "not e2e and not slow"`` is the fast tier.
    """
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if {"first_run", "demo_data"} & used:
            item.add_marker(pytest.mark.e2e)
        if CLI_FIXTURES & used:
            item.add_marker(pytest.mark.slow)
