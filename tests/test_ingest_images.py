"""Ingestion without a pipeline: what is new under the image root becomes the next span.

The ledger (each span's ``ingested.csv``) decides what is new by content hash; the tree
fingerprint (names, sizes, times) decides whether the step runs at all. The pipeline-level
story (cache hits, retraining on the window) is in test_retraining_story.py.
"""

import json
import logging
import os
import shutil

import pytest

from components import ingest_images
from demo.generate import generate
from histo_testlib import FAST_BEAM_ARGS
from modules import progress
from preprocessing import beam_job, ledger, storage


def ingest(images: str, data: str, out: str, **kwargs) -> dict:
    os.makedirs(out, exist_ok=True)
    return ingest_images.ingest(images, data, out, beam_args=FAST_BEAM_ARGS, **kwargs)


@pytest.fixture()
def roots(tmp_path) -> dict:
    paths = {name: str(tmp_path / name) for name in ("images", "data", "out")}
    generate(paths["images"], images_per_patient=2, patients_per_class=2, size=48)
    return paths


def assignments(data: str, span: int) -> dict:
    path = os.path.join(data, f"span-{span}", beam_job.ASSIGNMENTS_FILE)
    with open(path) as f:
        return json.load(f)


def test_first_ingestion_writes_a_span_with_its_ledger_and_report(roots):
    summary = ingest(roots["images"], roots["data"], os.path.join(roots["out"], "1"))
    assert summary["span"] == 1 and summary["new_images"] == 8
    entries = ledger.read(roots["data"])
    assert len(entries) == 8 and {e.outcome for e in entries.values()} == {ledger.WRITTEN}
    with open(os.path.join(roots["out"], "1", ingest_images.SUMMARY_FILE)) as f:
        assert json.load(f)["span_dir"].endswith("span-1")
    assert os.path.isfile(os.path.join(roots["out"], "1", ingest_images.REJECTS_FILE))


def test_nothing_new_writes_no_span_and_a_moved_file_is_not_new(roots):
    ingest(roots["images"], roots["data"], os.path.join(roots["out"], "1"))
    first = sorted(os.listdir(os.path.join(roots["images"], "benign")))[0]
    src = os.path.join(roots["images"], "benign", first)
    moved = os.path.join(roots["images"], "benign", first, "..", first + "-moved")
    os.makedirs(moved)
    for name in os.listdir(src):
        shutil.move(os.path.join(src, name), os.path.join(moved, name))
    summary = ingest(roots["images"], roots["data"], os.path.join(roots["out"], "2"))
    assert summary["span"] is None and summary["new_images"] == 0
    assert summary["already_converted"] == 8
    assert storage.span_numbers(roots["data"]) == [1]


def test_new_and_changed_files_become_the_next_span_and_old_patients_keep_their_split(roots):
    ingest(roots["images"], roots["data"], os.path.join(roots["out"], "1"))
    generate(roots["images"], images_per_patient=2, patients_per_class=1, size=48, first_patient=2)
    # Same name, different bytes: new content of an old patient.
    patient_dir = os.path.join(
        roots["images"], "benign", sorted(os.listdir(os.path.join(roots["images"], "benign")))[0]
    )
    changed = os.path.join(patient_dir, sorted(os.listdir(patient_dir))[0])
    generate(
        os.path.join(roots["out"], "other"),
        images_per_patient=1,
        patients_per_class=1,
        size=48,
        seed=7,
    )
    other = next(
        os.path.join(folder, name)
        for folder, _, names in os.walk(os.path.join(roots["out"], "other"))
        for name in names
    )
    shutil.copyfile(other, changed)
    # A copy of an arriving file under another name: converted once.
    new_dir = os.path.join(roots["images"], "malignant")
    newest = sorted(os.listdir(new_dir))[-1]
    newest_file = sorted(os.listdir(os.path.join(new_dir, newest)))[0]
    shutil.copyfile(
        os.path.join(new_dir, newest, newest_file),
        os.path.join(new_dir, newest, "copy-" + newest_file),
    )
    summary = ingest(roots["images"], roots["data"], os.path.join(roots["out"], "2"))
    assert summary["span"] == 2
    assert summary["new_images"] == 2 + 2 + 1  # two new patients' four images, one changed
    [duplicate] = summary["duplicates_skipped"]
    assert {duplicate["source"], duplicate["same_as"]} == {
        f"malignant/{newest}/{newest_file}",
        f"malignant/{newest}/copy-{newest_file}",
    }
    first, second = assignments(roots["data"], 1), assignments(roots["data"], 2)
    for patient, split in second.items():
        assert first.get(patient, split) == split
    assert len(ledger.read(roots["data"])) == 8 + 5


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == progress.LOGGER_NAME]


def test_a_rejected_file_is_recorded_and_not_retried(roots, caplog):
    caplog.set_level(logging.INFO, logger=progress.LOGGER_NAME)
    patient = sorted(os.listdir(os.path.join(roots["images"], "benign")))[0]
    bad = os.path.join(roots["images"], "benign", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG not really")
    # The class-folder layout needs a patient folder: a file right under the class folder
    # is a discovery reject (name), the truncated image under a patient a Beam reject.
    truncated = os.path.join(roots["images"], "benign", patient, "truncated.png")
    with open(truncated, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    summary = ingest(
        roots["images"], roots["data"], os.path.join(roots["out"], "1"), max_reject_fraction=0.5
    )
    assert summary["span"] == 1 and summary["new_rejects"] == 1
    rejected = {e.source for e in ledger.read(roots["data"]).values() if e.outcome == "rejected"}
    assert rejected == {"benign/broken.png", f"benign/{patient}/truncated.png"}
    # What the console shows: the counts, where the reasons are, each split's patients.
    shown = progress_lines(caplog)
    assert shown[0].startswith("span 1: 8 images written, 2 rejected of 10 ")
    assert f"rejected files and why: {summary['span_dir']}/rejects.csv" in shown[1]
    split_lines = [line.split() for line in shown if line.split()[0] in ("train", "eval", "test")]
    assert sum(int(words[1]) for words in split_lines) == 8
    assert sum(int(words[3]) for words in split_lines) == 4
    caplog.clear()
    again = ingest(roots["images"], roots["data"], os.path.join(roots["out"], "2"))
    assert again["span"] is None and again["new_rejects"] == 0 and again["new_images"] == 0
    assert progress_lines(caplog) == [
        f"nothing new under {roots['images']} (10 files converted before): no span written"
    ]


def test_too_many_rejects_fail_and_name_the_report_without_writing_a_span(roots):
    ingest(roots["images"], roots["data"], os.path.join(roots["out"], "1"))
    patient = sorted(os.listdir(os.path.join(roots["images"], "benign")))[0]
    for k in range(2):
        with open(os.path.join(roots["images"], "benign", patient, f"bad{k}.png"), "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(beam_job.PreprocessingError, match="rejects.csv"):
        ingest(roots["images"], roots["data"], os.path.join(roots["out"], "2"))
    assert storage.span_numbers(roots["data"]) == [1]


def test_fingerprint_follows_names_sizes_times_and_the_manifest(roots, tmp_path):
    before = ingest_images.tree_fingerprint(roots["images"])
    assert ingest_images.tree_fingerprint(roots["images"]) == before
    patient_dir = os.path.join(
        roots["images"], "benign", sorted(os.listdir(os.path.join(roots["images"], "benign")))[0]
    )
    path = os.path.join(patient_dir, sorted(os.listdir(patient_dir))[0])
    os.utime(path, (1_000_000, 1_000_000))
    touched = ingest_images.tree_fingerprint(roots["images"])
    assert touched != before
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,patient_id\n")
    with_manifest = ingest_images.tree_fingerprint(roots["images"], str(manifest))
    manifest.write_text("path,label,patient_id\nx.png,benign,p1\n")
    assert ingest_images.tree_fingerprint(roots["images"], str(manifest)) != with_manifest


def test_arrivals_wait_for_enough_new_patients_after_the_first_span(roots):
    # The first span is written whatever its size (4 patients here).
    first = ingest(
        roots["images"], roots["data"], os.path.join(roots["out"], "1"), min_new_patients=5
    )
    assert first["span"] == 1
    generate(roots["images"], images_per_patient=2, patients_per_class=1, size=48, first_patient=2)
    waiting = ingest(
        roots["images"], roots["data"], os.path.join(roots["out"], "2"), min_new_patients=3
    )
    assert waiting["span"] is None and waiting["new_patients"] == 2
    assert "wait for at least 3 new patients" in waiting["waiting"]
    generate(roots["images"], images_per_patient=2, patients_per_class=1, size=48, first_patient=3)
    written = ingest(
        roots["images"], roots["data"], os.path.join(roots["out"], "3"), min_new_patients=3
    )
    assert written["span"] == 2 and written["new_patients"] == 4
