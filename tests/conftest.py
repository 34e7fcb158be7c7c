"""Shared fixtures: the real BreakHis crops from ../shared when present."""

import os

import pytest

from histo_testlib import BREAKHIS_CROPS


@pytest.fixture(scope="session")
def breakhis_crops() -> str:
    if not os.path.isdir(BREAKHIS_CROPS):
        pytest.skip(f"real BreakHis crops not found at {os.path.abspath(BREAKHIS_CROPS)}")
    return os.path.abspath(BREAKHIS_CROPS)
