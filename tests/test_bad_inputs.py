"""Broken, exotic and hostile files: every bad one is reported with a reason, none crashes.

Each case goes through ``load_image`` on its own and, all together in one tree, through
the whole job (``discover`` + ``preprocess``). Exotic-but-valid files must become
examples; broken ones must each be a row of rejects.csv with a sentence a person can
read (no Python object reprs or memory addresses).
"""

import csv
import glob
import gzip
import io
import os
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from histo_testlib import FAST_BEAM_ARGS, png_bytes, write
from modules import features
from preprocessing import beam_job, layouts
from preprocessing.beam_job import PreprocessingError, csv_line, preprocess, read_beam_rejects
from preprocessing.example_proto import Example
from preprocessing.image_io import BadImageError, load_image

RATIOS = (0.7, 0.15, 0.15)
TWO_WORKERS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _png_with_header_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (CRC fixed) claims width x height pixels."""
    data = bytearray(png_bytes("RGB", (64, 64)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _palette_with_transparency() -> bytes:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def _corrupt_png() -> bytes:
    data = bytearray(png_bytes(seed=5))
    data[100:110] = bytes(10)  # inside IDAT: the chunk CRC no longer matches
    return bytes(data)


def _half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (file name, bytes, None if it must become an example else a keyword of its reason)
VALID = {
    "grey16": ("grey16.png", png_bytes("I;16"), None),
    "cmyk_jpeg": ("cmyk.jpg", png_bytes("CMYK", fmt="JPEG"), None),
    "palette_transparent": ("palette.png", _palette_with_transparency(), None),
    "rgba": ("rgba.png", png_bytes("RGBA"), None),
    "tiff": ("scan.tif", png_bytes("RGB", fmt="TIFF"), None),
    "png_named_jpg": ("really-a-png.jpg", png_bytes(seed=7), None),
    "comma_quote_name": ('slide "a", b.jpg', png_bytes(seed=8, fmt="JPEG"), None),
}
BROKEN = {
    "truncated_png": ("cut.png", _half(png_bytes(seed=1)), "truncated image"),
    "truncated_jpeg": ("cut.jpg", _half(png_bytes(seed=2, fmt="JPEG")), "truncated image"),
    "jpeg_header_only": ("stub.jpg", png_bytes(fmt="JPEG")[:20], "truncated or corrupt JPEG"),
    "corrupt_png": ("crc.png", _corrupt_png(), "corrupt image"),
    "zero_bytes": ("empty.png", b"", "zero-byte"),
    "html_as_jpg": (
        "page.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head></html>",
        "not an image: content starts like HTML",
    ),
    "pdf": ("report.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
    "zip": ("slides.tif", b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), "ZIP"),
    "postscript": (
        "drawing.jpg",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n",
        "PostScript",
    ),
    "plain_text": ("notes.png", b"patient 12, slide 3: re-scan tomorrow\n", "plain text"),
    "random_bytes": (
        "noise.png",
        bytes([0x00, 0x13]) + np.random.default_rng(11).bytes(4000),
        "not a recognised image format (first bytes: 00 13",
    ),
    "bomb_pil_limit": (
        "bomb.png",
        _png_with_header_size(30000, 30000),
        "decompression bomb: 30000x30000 = 900000000 pixels > limit 50000000",
    ),
    "bomb_own_limit": (
        "bomb64mp.png",
        _png_with_header_size(8000, 8000),
        "decompression bomb: 8000x8000 = 64000000 pixels > limit 50000000",
    ),
    "too_small": ("tiny.png", png_bytes(size=(20, 64)), "too small: 20x64"),
    "newline_name": (
        "two\nlines.png",
        b"<html><body>moved</body></html>",
        "content starts like HTML",
    ),
}
CASES = {**VALID, **BROKEN}


def assert_readable(reason: str) -> None:
    assert reason and "\n" not in reason
    assert not re.search(r"\b0x[0-9a-fA-F]{4,}", reason), reason  # a memory address
    for bad in ("<_io", "object at", "Traceback", "Error:", "Error("):
        assert bad not in reason, reason


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_image_accepts_exotic_and_explains_broken(case):
    _, data, keyword = CASES[case]
    if keyword is None:
        loaded = load_image(data, 32, 50_000_000)
        with Image.open(io.BytesIO(loaded.encoded)) as image:
            assert image.mode == "RGB" and image.format in ("PNG", "JPEG")
            assert image.size == (loaded.width, loaded.height) == (64, 64)
        return
    with pytest.raises(BadImageError) as caught:
        load_image(data, 32, 50_000_000)
    assert keyword in str(caught.value)
    assert_readable(str(caught.value))


def test_bomb_dimensions_are_given_when_pillows_own_check_fires():
    data = _png_with_header_size(30000, 30000)
    with pytest.raises(BadImageError, match=r"30000x30000 = 900000000 pixels > limit 1000\b"):
        load_image(data, 32, 1000)


# --- the whole job on one tree holding every case --------------------------------------

# Layout-level cases: (entry in the tree, keyword of its reject or None if it is an example).
LINKS = {
    "link_outside_file": ("benign/p0/outside.png", "symlink points outside the input root"),
    "link_outside_folder": ("benign/linked", "symlink points outside the input root"),
    "link_broken": ("malignant/p3/gone.png", "broken symlink"),
    "link_inside": ("malignant/p3/alias.png", None),
    "fifo": ("malignant/p5/pipe.png", "not a regular file"),
}


def build_tree(base: str, good: int = 12) -> tuple[str, dict[str, str | None]]:
    """The input root and {source: expected reason keyword or None} for every entry."""
    root, outside = os.path.join(base, "images"), os.path.join(base, "elsewhere")
    expected: dict[str, str | None] = {}
    for i in range(good):
        source = f"{'malignant' if i % 2 else 'benign'}/p{i % 6}/good{i}.png"
        write(os.path.join(root, source), png_bytes(seed=100 + i))
        expected[source] = None
    for i, case in enumerate(sorted(CASES)):
        name, data, keyword = CASES[case]
        source = f"{'malignant' if i % 2 else 'benign'}/p{i % 6}/{name}"
        write(os.path.join(root, source), data)
        expected[source] = keyword
    secret = write(os.path.join(outside, "secret.png"), png_bytes(seed=9))
    write(os.path.join(outside, "patient", "x.png"), png_bytes(seed=10))
    os.symlink(secret, os.path.join(root, "benign", "p0", "outside.png"))
    os.symlink(os.path.join(outside, "patient"), os.path.join(root, "benign", "linked"))
    os.symlink(os.path.join(root, "nope.png"), os.path.join(root, "malignant", "p3", "gone.png"))
    os.symlink("good3.png", os.path.join(root, "malignant", "p3", "alias.png"))
    os.mkfifo(os.path.join(root, "malignant", "p5", "pipe.png"))
    expected.update(dict(LINKS.values()))
    return root, expected


def test_discover_follows_links_inside_the_root_and_skips_loops(tmp_path):
    root = str(tmp_path / "images")
    write(os.path.join(root, "raw", "p1", "a.png"), png_bytes())
    os.makedirs(os.path.join(root, "benign"))
    os.symlink(os.path.join(root, "raw", "p1"), os.path.join(root, "benign", "p1"))
    os.symlink(root, os.path.join(root, "raw", "p1", "loop"))  # back to an ancestor
    os.symlink(os.path.join(tmp_path, "nowhere"), os.path.join(root, "benign", "p2"))
    os.symlink(os.path.join(tmp_path, "nowhere"), os.path.join(root, "benign", "notes.txt"))
    records, rejects = layouts.discover(root)
    assert [r.source for r in records] == ["benign/p1/a.png"]
    assert [r.source for r in rejects] == ["benign/p2", "raw/p1/a.png"]
    assert rejects[0].reason == "broken symlink"  # it could have been a patient folder
    assert "no class folder" in rejects[1].reason  # listed under its real path too


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_a_reject(tmp_path):
    root = str(tmp_path / "images")
    write(os.path.join(root, "benign", "p1", "a.png"), png_bytes())
    locked = os.path.join(root, "benign", "p2")
    write(os.path.join(locked, "b.png"), png_bytes())
    os.chmod(locked, 0)
    try:
        records, rejects = layouts.discover(root)
    finally:
        os.chmod(locked, 0o755)
    assert [r.source for r in records] == ["benign/p1/a.png"]
    assert [(r.source, r.reason) for r in rejects] == [
        ("benign/p2", "folder cannot be read: Permission denied")
    ]


def read_rejects(path: str) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["source"]: row["reason"] for row in csv.DictReader(f)}


def read_sources(span_dir: str) -> set[str]:
    """Sources of every example in the span, read without TensorFlow."""
    sources = set()
    for path in glob.glob(os.path.join(span_dir, "*", "*.tfrecord.gz")):
        with gzip.open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            example = Example.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            sources.add(example.features.feature[features.SOURCE_KEY].bytes_list.value[0].decode())
    return sources


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """The tree run twice: once under the default reject threshold, once accepting all."""
    base = str(tmp_path_factory.mktemp("bad-inputs"))
    root, expected = build_tree(base)
    records, rejects = layouts.discover(root)
    failed_out, out = os.path.join(base, "strict"), os.path.join(base, "lenient")
    with pytest.raises(PreprocessingError, match="above the threshold") as caught:
        preprocess(records, rejects, failed_out, RATIOS, beam_args=FAST_BEAM_ARGS)
    summary = preprocess(
        records, rejects, out, RATIOS, max_reject_fraction=1.0, beam_args=FAST_BEAM_ARGS
    )
    return {
        "expected": expected,
        "summary": summary,
        "rejects": read_rejects(os.path.join(summary["span_dir"], "rejects.csv")),
        "written": read_sources(summary["span_dir"]),
        "failed_out": failed_out,
        "error": str(caught.value),
    }


@pytest.mark.parametrize("case", sorted(CASES) + sorted(LINKS))
def test_job_turns_each_file_into_an_example_or_a_readable_reject(job, case):
    if case in LINKS:
        source, keyword = LINKS[case]
    else:
        source = next(s for s in job["expected"] if s.endswith("/" + CASES[case][0]))
        keyword = CASES[case][2]
    if keyword is None:
        assert source not in job["rejects"]
        assert source in job["written"]
    else:
        assert source in job["rejects"], sorted(job["rejects"])
        assert keyword in job["rejects"][source]
        assert_readable(job["rejects"][source])
        assert source not in job["written"]


def test_job_accounts_for_every_file_exactly_once(job):
    expected = job["expected"]
    bad = {s for s, keyword in expected.items() if keyword}
    assert set(job["rejects"]) == bad
    assert job["written"] == set(expected) - bad
    assert job["summary"]["images_rejected"] == len(bad)
    assert job["summary"]["beam_counters"]["images_written"] == len(job["written"])
    assert not any(s.startswith("benign/linked/") for s in job["written"])  # not followed
    assert job["rejects"]["benign/p0/outside.png"].endswith(os.path.join("elsewhere", "secret.png"))


def test_too_many_rejects_leave_only_the_failed_report(job):
    out = job["failed_out"]
    assert os.listdir(out) == ["failed"]
    (report,) = os.listdir(os.path.join(out, "failed"))
    assert sorted(os.listdir(os.path.join(out, "failed", report))) == [
        "rejects.csv",
        "summary.json",
    ]
    rejects = read_rejects(os.path.join(out, "failed", report, "rejects.csv"))
    assert set(rejects) == {s for s, keyword in job["expected"].items() if keyword}
    assert f"{report}/rejects.csv" in job["error"]


# --- rejects spread over several Beam shards --------------------------------------------


def test_read_beam_rejects_merges_every_shard_and_deletes_them(tmp_path):
    workdir = str(tmp_path)
    rows = [
        [("a/1.png", "zero-byte file"), ("a/2.png", 'reason with "quotes", commas')],
        [("b/3.png", "two\nlines"), ("b/4.png", "ünïcode")],
        [],
        [("c/5.png", "truncated image: the PNG data ends early")],
    ]
    for shard, lines in enumerate(rows):
        path = os.path.join(workdir, f"beam-rejects-{shard:05d}-of-{len(rows):05d}.csv")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.writelines(csv_line(*line) + "\n" for line in lines)
    write(os.path.join(workdir, "train", "data-00000-of-00001.tfrecord.gz"), b"kept")
    rejects = read_beam_rejects(workdir)
    assert [(r.source, r.reason) for r in rejects] == [line for lines in rows for line in lines]
    assert os.listdir(workdir) == ["train"]
    assert read_beam_rejects(workdir) == []


def test_two_workers_each_report_their_bad_files(tmp_path, monkeypatch, capfd):
    root, out = str(tmp_path / "images"), str(tmp_path / "data")
    expected = {}
    for i in range(24):
        source = f"{'malignant' if i % 2 else 'benign'}/p{i % 4}/{i}.png"
        bad = i % 2 == 0
        write(os.path.join(root, source), b"<html>%d</html>" % i if bad else png_bytes(seed=i))
        expected[source] = bad
    shards = []

    def counting(workdir):
        shards.extend(glob.glob(os.path.join(workdir, "beam-rejects*")))
        return read_beam_rejects(workdir)

    monkeypatch.setattr(beam_job, "read_beam_rejects", counting)
    records, rejects = layouts.discover(root)
    summary = preprocess(
        records, rejects, out, RATIOS, max_reject_fraction=1.0, beam_args=TWO_WORKERS
    )
    assert len(shards) >= 2, shards
    reported = read_rejects(os.path.join(summary["span_dir"], "rejects.csv"))
    assert set(reported) == {s for s, bad in expected.items() if bad}
    assert all(r.startswith("not an image: content starts like HTML") for r in reported.values())
    assert summary["images_written"] == 12
    captured = capfd.readouterr()
    assert "Traceback" not in captured.out + captured.err
