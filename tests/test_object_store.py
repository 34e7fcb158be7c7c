"""The preprocessing job on an object store: ``histo-preprocess --input gs://... --output
gs://...`` against a GCS emulator on 127.0.0.1 (started and stopped here), through Beam's
FileSystems as on Dataflow. TensorFlow's own gs:// ignores the emulator, so the records
are read back through Beam too."""

import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from apache_beam.io.filesystems import FileSystems

from histo_testlib import png_bytes
from preprocessing import beam_job, cli, storage

BUCKET = "histo"
IN_PROCESS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gcs():
    """A GCS emulator with one bucket; Beam's GCS client pointed at it, anonymously."""
    emulator = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(emulator):
        pytest.skip("gcp-storage-emulator is not installed (pip install -e .[dev])")
    port = _free_port()
    process = subprocess.Popen(
        [emulator, "start", "--host=127.0.0.1", f"--port={port}", "--in-memory"]
        + [f"--default-bucket={BUCKET}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.skip("the GCS emulator did not start on 127.0.0.1")
            time.sleep(0.2)
    from apache_beam.internal.gcp import auth

    saved = dict(os.environ), auth._Credentials._credentials_init, auth._Credentials._credentials
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    # No credentials here: skip google.auth's ~20 s of retries and connect anonymously,
    # which is what Beam does after them.
    auth._Credentials._credentials_init, auth._Credentials._credentials = True, None
    yield f"gs://{BUCKET}"
    process.terminate()
    process.wait(timeout=10)
    os.environ.clear()
    os.environ.update(saved[0])
    auth._Credentials._credentials_init, auth._Credentials._credentials = saved[1:]


def upload_tree(root: str, patients: range, per_patient: int = 3, seed: int = 0) -> None:
    for p in patients:
        cls = "malignant" if p % 2 else "benign"
        for k in range(per_patient):
            data = png_bytes(seed=seed + p * 10 + k)
            storage.write_bytes(f"{root}/{cls}/p{p}/{k}.png", data)


def records_in(prefix: str) -> int:
    """Examples in the gzipped TFRecord shards under prefix, read through Beam."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    count = 0
    for path in storage.files_under(prefix):
        if path.endswith(".tfrecord.gz"):
            with FileSystems.open(path) as f:  # compression from the name: gzip
                stream = io.BytesIO(f.read())
            while _TFRecordUtil.read_record(stream) is not None:
                count += 1
    return count


def test_preprocessing_reads_and_writes_an_object_store(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may land in a local folder named "gs:"
    images, data = f"{gcs}/run1/images", f"{gcs}/run1/data"
    upload_tree(images, range(8))
    storage.write_bytes(f"{images}/.hidden/9.png", png_bytes(seed=99))
    args = ["--input", images, "--output", data, "--split-ratios", "0.5,0.25,0.25"]
    assert cli.main([*args, *IN_PROCESS]) == 0

    span = f"{data}/span-1"
    names = {storage.relative(p, span) for p in storage.files_under(span)}
    assert {storage.COMMIT_MARKER, "rejects.csv", "summary.json", "split_assignments.json"} <= names
    assert records_in(span) == 24  # 8 patients x 3 images, the hidden one skipped
    summary = json.loads(storage.read_bytes(f"{span}/summary.json"))
    assert summary["images_written"] == 24 and summary["images_rejected"] == 0
    assert not [p for p in storage.files_under(data) if "/.tmp-span-" in p]  # staging gone
    assert os.listdir(tmp_path) == []

    # New patients and more of the old ones: span 2, and every old patient keeps its split.
    upload_tree(images, range(4, 12), seed=500)
    assert cli.main(["--input", images, "--output", data, *IN_PROCESS]) == 0
    first = json.loads(storage.read_bytes(f"{span}/split_assignments.json"))
    second = json.loads(storage.read_bytes(f"{data}/span-2/split_assignments.json"))
    assert all(second[p] == first[p] for p in first if p in second)
    assert storage.exists(f"{data}/span-2/{storage.COMMIT_MARKER}")


def test_a_rejected_run_leaves_its_report_on_the_store_and_no_span(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images, data = f"{gcs}/run2/images", f"{gcs}/run2/data"
    upload_tree(images, range(4))
    for k in range(4):
        storage.write_bytes(f"{images}/benign/p9/bad{k}.png", b"\x89PNG\r\n\x1a\nnot really")
    assert cli.main(["--input", images, "--output", data, *IN_PROCESS]) == 1
    files = storage.files_under(data)
    assert not [p for p in files if "/span-" in p and "/failed/" not in p]
    reports = [p for p in files if p.endswith("/rejects.csv")]
    assert len(reports) == 1 and "/failed/span-1-" in reports[0]
    assert b"bad0.png" in storage.read_bytes(reports[0])
    assert os.listdir(tmp_path) == []


def test_a_span_without_its_commit_marker_is_never_read_nor_reused(gcs):
    data = f"{gcs}/run3/data"
    storage.write_text(f"{data}/span-1/split_assignments.json", json.dumps({"p1": "train"}))
    storage.write_bytes(f"{data}/span-1/{storage.COMMIT_MARKER}", b"")
    # A copy cut short: objects of span-2 are there, its marker is not.
    storage.write_text(f"{data}/span-2/split_assignments.json", json.dumps({"p1": "test"}))
    assert beam_job.published_assignments(data) == {"p1": "train"}
    assert beam_job.next_span(data) == 3
    assert storage.latest_committed_span(data) == 1  # what ExampleGen's driver reads


def test_ingestion_converts_only_what_arrived_on_the_store(gcs, tmp_path, monkeypatch):
    """IngestImages' work on gs:// at both ends: the tree fingerprint from object metadata,
    the ledger read from committed spans, the next span holding only new images."""
    from components import ingest_images

    monkeypatch.chdir(tmp_path)
    images, data = f"{gcs}/ingest/images", f"{gcs}/ingest/data"
    upload_tree(images, range(6))
    fingerprint = ingest_images.tree_fingerprint(images)
    report = f"{gcs}/ingest/report-1"
    first = ingest_images.ingest(images, data, report, beam_args=IN_PROCESS)
    assert first["span"] == 1 and first["new_images"] == 18
    assert storage.exists(f"{report}/{ingest_images.SUMMARY_FILE}")
    assert ingest_images.tree_fingerprint(images) == fingerprint  # nothing changed

    again = ingest_images.ingest(images, data, f"{gcs}/ingest/report-2", beam_args=IN_PROCESS)
    assert again["span"] is None and again["already_converted"] == 18

    upload_tree(images, range(6, 9), seed=700)
    assert ingest_images.tree_fingerprint(images) != fingerprint
    third = ingest_images.ingest(images, data, f"{gcs}/ingest/report-3", beam_args=IN_PROCESS)
    assert third["span"] == 2 and third["new_images"] == 9
    assert records_in(f"{data}/span-2") == 9
    assert os.listdir(tmp_path) == []


def test_validate_scores_a_tree_on_the_store_as_it_scores_the_same_tree_on_disk(
    gcs, first_run, tmp_path, tmp_path_factory, monkeypatch
):
    """``histo-validate gs://...``: the tree and the JSON on the store, the same answers as
    for a local copy, a cut file named with its reason; nothing lands in a local folder."""
    from demo.generate import generate
    from serving import predict, validate

    local = str(tmp_path_factory.mktemp("validate-local"))
    generate(
        local, images_per_patient=2, patients_per_class=2, size=128, seed=13, first_patient=700
    )
    sources = sorted(
        os.path.relpath(os.path.join(d, n), local) for d, _, names in os.walk(local) for n in names
    )
    with open(os.path.join(local, sources[0]), "rb") as f:
        cut = f.read()[:200]
    with open(os.path.join(os.path.dirname(os.path.join(local, sources[0])), "cut.png"), "wb") as f:
        f.write(cut)
    monkeypatch.chdir(tmp_path)
    root = f"{gcs}/validate/images"
    for source in [*sources, os.path.join(os.path.dirname(sources[0]), "cut.png")]:
        with open(os.path.join(local, source), "rb") as f:
            storage.write_bytes(f"{root}/{source}", f.read())
    model_dir = first_run["summary"]["pushed_to"]
    output = f"{gcs}/validate/report.json"

    assert validate.main([root, "--model-dir", model_dir, "--output", output]) == 1
    remote = json.loads(storage.read_bytes(output))
    on_disk = str(tmp_path_factory.mktemp("validate-json") / "report.json")
    assert validate.main([local, "--model-dir", model_dir, "--output", on_disk]) == 1
    with open(on_disk) as f:
        here = json.load(f)
    assert remote["image_root"] == root and here["image_root"] == local
    assert remote["images"]["count"] == len(sources) == 8
    assert remote["images"] == here["images"] and remote["patients"] == here["patients"]
    answers = {r["file"]: r.get("probability_malignant") for r in here["results"]}
    assert {r["file"]: r.get("probability_malignant") for r in remote["results"]} == answers
    [left_out] = remote["left_out"]
    assert left_out["file"].endswith("/cut.png") and "truncated" in left_out["error"]

    # predict reads a single image off the store the same way
    backend = predict.LocalBackend(model_dir)
    document = predict.predict_files([f"{root}/{sources[0]}"], backend)
    [answer] = document["results"]
    assert answer["probability_malignant"] == pytest.approx(answers[sources[0]], abs=1e-6)
    assert os.listdir(tmp_path) == []
