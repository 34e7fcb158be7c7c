import csv
import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from histo_testlib import FAST_BEAM_ARGS, REPO, png_bytes, write
from modules import features
from preprocessing import layouts
from preprocessing.beam_job import PreprocessingError, preprocess

RATIOS = (0.5, 0.25, 0.25)


def make_tree(root: str, patients: int = 8, per_patient: int = 3) -> None:
    for p in range(patients):
        cls = "malignant" if p % 2 else "benign"
        for k in range(per_patient):
            write(os.path.join(root, cls, f"p{p}", f"{k}.png"), png_bytes(seed=p * 10 + k))


def read_split(span_dir: str, split: str) -> list:
    files = tf.io.gfile.glob(os.path.join(span_dir, split, "*.tfrecord.gz"))
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(r) for r in dataset.as_numpy_iterator()]


def feature(example, key):
    value = example.features.feature[key]
    return (value.bytes_list.value or value.int64_list.value)[0]


def run(root, out, **kwargs):
    records, rejects = layouts.discover(root)
    return preprocess(records, rejects, out, RATIOS, beam_args=FAST_BEAM_ARGS, **kwargs)


def test_span_holds_every_image_once_with_metadata(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root)
    summary = run(root, out)
    span = os.path.join(out, "span-1")
    assert summary["span_dir"] == span and summary["images_written"] == 24
    examples = {split: read_split(span, split) for split in features.SPLITS}
    assert sum(len(v) for v in examples.values()) == 24
    patients = {s: {feature(e, features.PATIENT_ID_KEY) for e in v} for s, v in examples.items()}
    assert not (patients["train"] & patients["eval"]) and not (patients["train"] & patients["test"])
    example = examples["train"][0]
    source = feature(example, features.SOURCE_KEY).decode()
    with open(os.path.join(root, source), "rb") as f:
        assert feature(example, features.IMAGE_KEY) == f.read()  # bytes as found
    assert feature(example, features.LABEL_KEY) == (1 if source.startswith("malignant") else 0)
    assert (feature(example, features.HEIGHT_KEY), feature(example, features.WIDTH_KEY)) == (64, 64)
    on_disk = json.load(open(os.path.join(span, "summary.json")))
    assert sum(s["images"] for s in on_disk["splits"].values()) == 24


def test_each_run_adds_a_span_and_leaves_earlier_ones(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=4, per_patient=2)
    run(root, out)
    before = sorted(os.listdir(os.path.join(out, "span-1", "train")))
    mtime = os.path.getmtime(os.path.join(out, "span-1", "train", before[0]))
    assert run(root, out)["span"] == 2
    assert sorted(os.listdir(os.path.join(out, "span-1", "train"))) == before
    assert os.path.getmtime(os.path.join(out, "span-1", "train", before[0])) == mtime
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["span-1", "span-2"]


def test_corrupt_files_go_to_the_rejects_report(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=10, per_patient=10)
    write(os.path.join(root, "benign", "p0", "zero.png"), b"")
    write(os.path.join(root, "benign", "p0", "cut.png"), png_bytes(seed=99)[:200])
    write(os.path.join(root, "loose.png"), png_bytes())
    summary = run(root, out, max_reject_fraction=0.05)
    assert summary["images_written"] == 100 and summary["images_rejected"] == 3
    with open(os.path.join(out, "span-1", "rejects.csv")) as f:
        rows = {row["source"]: row["reason"] for row in csv.DictReader(f)}
    assert "zero-byte" in rows["benign/p0/zero.png"]
    assert "truncated" in rows["benign/p0/cut.png"]
    assert "label/patient unknown" in rows["loose.png"]


def test_too_many_rejects_fail_without_writing_a_span(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=2, per_patient=2)
    for i in range(2):
        write(os.path.join(root, "benign", "p0", f"bad{i}.png"), b"junk")
    with pytest.raises(PreprocessingError, match=r"2 of 6 images rejected .* threshold of 5\.0%"):
        run(root, out)
    assert [n for n in os.listdir(out) if n.startswith("span-") or n.startswith(".tmp")] == []
    reports = os.listdir(os.path.join(out, "failed"))
    assert len(reports) == 1
    assert "junk" not in open(os.path.join(out, "failed", reports[0], "rejects.csv")).read()
    assert "bad0.png" in open(os.path.join(out, "failed", reports[0], "rejects.csv")).read()


def test_nothing_valid_left_is_an_error(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    write(os.path.join(root, "benign", "p0", "bad.png"), b"junk")
    with pytest.raises(PreprocessingError, match="no valid images left"):
        run(root, out, max_reject_fraction=1.0)


def test_interrupted_run_leaves_no_half_written_span(tmp_path, monkeypatch):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=2, per_patient=2)
    from preprocessing import beam_job

    def interrupted(assigned, workdir, *args):
        os.makedirs(os.path.join(workdir, "train"))
        write(os.path.join(workdir, "train", "data-00000-of-00001.tfrecord.gz"), b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(beam_job, "run_beam", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(root, out)
    assert os.listdir(out) == []


def test_cli_on_real_breakhis_crops_with_default_multiprocess_runner(breakhis_crops, tmp_path):
    out = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "preprocessing", "--input", breakhis_crops, "--output", out],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "span 1: 78 images written, 0 rejected of 78" in result.stdout
    summary = json.load(open(os.path.join(out, "span-1", "summary.json")))
    # 13 slide ids of 12 patients (BreakHis slides of one patient share the numeric part).
    assert sum(s["patients"] for s in summary["splits"].values()) == 12
    assert summary["warnings"] == []  # stratified: every split holds both classes
    seen = {}
    for split in features.SPLITS:
        for example in read_split(os.path.join(out, "span-1"), split):
            patient = feature(example, features.PATIENT_ID_KEY)
            assert seen.setdefault(patient, split) == split
            assert feature(example, features.SUBTYPE_KEY) in {
                b"A",
                b"F",
                b"PT",
                b"TA",
                b"DC",
                b"LC",
                b"MC",
                b"PC",
            }


def test_cli_fails_clearly_on_a_missing_folder(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "preprocessing",
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 1
    assert "no valid images left (0 rejected of 0 found)" in result.stderr


def breakhis_name(cls: str, slide: str, seq: int) -> str:
    return f"{'malignant' if cls == 'M' else 'benign'}/SOB_{cls}_DC-{slide}-100-{seq:03d}.png"


def test_slides_of_one_patient_share_a_split_and_keep_their_slide_id(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    slides = [("B", f"14-{n}{s}") for n in (100, 101, 102) for s in ("AB", "CD")]
    slides += [("M", f"15-{n}{s}") for n in (200, 201, 202, 203) for s in ("AB", "EF")]
    for i, (cls, slide) in enumerate(slides):
        for k in range(2):
            write(os.path.join(root, breakhis_name(cls, slide, k)), png_bytes(seed=i * 7 + k))
    summary = run(root, out)
    assert summary["patient_rule"] == "breakhis" and summary["warnings"] == []
    split_of, slides_seen = {}, set()
    for split in features.SPLITS:
        for example in read_split(os.path.join(out, "span-1"), split):
            patient = feature(example, features.PATIENT_ID_KEY).decode()
            slide = feature(example, features.SLIDE_ID_KEY).decode()
            assert slide.startswith(patient) and slide != patient
            assert split_of.setdefault(patient, split) == split, patient
            slides_seen.add(slide)
    assert len(split_of) == 7 and len(slides_seen) == 14


def test_a_patient_keeps_its_split_when_new_patients_arrive(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=8)
    run(root, out)
    with open(os.path.join(out, "span-1", "split_assignments.json")) as f:
        first = json.load(f)
    for p in range(8, 30):  # many more patients than the first span held
        cls = "malignant" if p % 2 else "benign"
        write(os.path.join(root, cls, f"p{p}", "0.png"), png_bytes(seed=p * 10))
    summary = run(root, out)
    with open(os.path.join(out, "span-2", "split_assignments.json")) as f:
        second = json.load(f)
    assert {p: second[p] for p in first} == first
    assert summary["patients_kept_from_earlier_spans"] == 8 and len(second) == 30


def test_spans_that_disagree_on_a_patient_are_an_error(tmp_path):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    make_tree(root, patients=6)
    run(root, out)
    path = os.path.join(out, "span-1", "split_assignments.json")
    assignments = json.load(open(path))
    os.makedirs(os.path.join(out, "span-2"))
    moved = {p: ("test" if s != "test" else "train") for p, s in assignments.items()}
    json.dump(moved, open(os.path.join(out, "span-2", "split_assignments.json"), "w"))
    with pytest.raises(PreprocessingError, match=r"patient p\d is in '\w+' here but in"):
        run(root, out)
