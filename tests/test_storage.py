"""preprocessing.storage on this machine: a file is written whole under a temporary name and
renamed, or not at all, whichever writer (our own bytes, NumPy, TFDV, Keras) fills it."""

import os

import numpy as np
import pytest

from preprocessing import storage


def test_a_writer_that_fails_leaves_the_earlier_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("earlier")
    with pytest.raises(RuntimeError, match="disk full"):
        with storage.replaced_when_done(str(target)) as temporary:
            with open(temporary, "w") as f:
                f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "earlier"
    assert os.listdir(tmp_path) == ["report.json"]


def test_a_writer_that_chooses_its_format_by_the_name_keeps_its_ending(tmp_path):
    target = tmp_path / "features" / "tiles.npz"  # the folder does not exist yet
    with storage.replaced_when_done(str(target), suffix=".npz") as temporary:
        assert temporary.endswith(".npz") and not os.path.exists(target)
        np.savez(temporary, values=np.arange(3))  # would append .npz to any other name
    assert np.load(target)["values"].tolist() == [0, 1, 2]
    assert os.listdir(target.parent) == ["tiles.npz"]


def test_write_bytes_replaces_a_file_whole(tmp_path):
    target = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(target, b"first")
    storage.write_text(target, "second")
    assert storage.read_bytes(target) == b"second"
    assert os.listdir(tmp_path / "a") == ["b.bin"]
