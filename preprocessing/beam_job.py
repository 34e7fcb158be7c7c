"""The Beam pipeline that turns discovered image records into one new span.

Layout of the output root (what ImportExampleGen reads with ``span-{SPAN}/<split>/*``)::

    span-1/train/data-00000-of-00002.tfrecord.gz
    span-1/eval/...   span-1/test/...
    span-1/rejects.csv  span-1/summary.json  span-1/ingested.csv (preprocessing.ledger)

A span is written under a temporary name and renamed only when complete and accepted, so
an interrupted or rejected run never leaves a half-written span behind.
"""

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import (
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from modules import features
from pipeline import settings
from preprocessing import beam_runner, image_content, ledger, patients, splits, storage
from preprocessing.examples import to_example
from preprocessing.image_io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, BadImageError, load_image
from preprocessing.layouts import ImageRecord, Reject
from preprocessing.progress import ProgressPrinter, WorkerCounter

REJECTS_TAG = "rejects"
REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "summary.json"
DEFAULT_MAX_REJECT_FRACTION: float = settings.default("HISTO_MAX_REJECT_FRACTION")
ASSIGNMENTS_FILE = "split_assignments.json"  # {patient: split}, published with the span


class PreprocessingError(RuntimeError):
    """The run produced no acceptable span; the message says why and where the report is."""


def csv_line(*values: str) -> str:
    """One CSV row without its line end; a field with a line break in it is quoted.

    (csv quotes only the characters of its lineterminator: with ``""`` a file name or reason
    holding a newline would split into two rows of the rejects shard.)
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()[:-2]


class EncodeExample(beam.DoFn):
    """Reads and validates one image; emits (split, serialized Example) or a reject line."""

    def __init__(self, min_side: int, max_pixels: int, progress_dir: str | None = None):
        self._min_side = min_side
        self._max_pixels = max_pixels
        self._done = beam.metrics.Metrics.counter("preprocessing", "images_written")
        self._rejected = beam.metrics.Metrics.counter("preprocessing", "images_rejected")
        self._progress_dir = progress_dir
        self._progress: WorkerCounter | None = None

    def setup(self) -> None:
        self._progress = WorkerCounter(self._progress_dir)

    def finish_bundle(self) -> None:
        self._progress.flush()

    def process(self, element) -> Iterator:
        split, record = element
        self._progress.add()
        try:
            with FileSystems.open(record.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                data = f.read()
            image = load_image(data, self._min_side, self._max_pixels)
            content = image_content.describe(image.pixels, image.source_format)
        except (BadImageError, OSError) as err:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(REJECTS_TAG, csv_line(record.source, str(err)))
            return
        self._done.inc()
        yield split, to_example(record, image, content).SerializeToString()


def next_span(output_root: str) -> int:
    return max(storage.span_numbers(output_root), default=0) + 1


# This project's setup.py, beside the packages (a source checkout or the pipeline image).
SETUP_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def runs_locally(beam_args: Sequence[str]) -> bool:
    """Whether the runner executes in this machine's processes (direct, FnApi, Prism)."""
    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner or "DirectRunner"
    return any(name in runner for name in ("Direct", "Prism"))


def worker_code_args(beam_args: Sequence[str]) -> list[str]:
    """Remote workers import ``preprocessing`` and ``modules`` in their DoFns: unless the
    caller ships code already (a setup file, or an SDK container such as the pipeline
    image), they get this project's package through ``--setup_file``."""
    options = PipelineOptions(list(beam_args))
    setup = options.view_as(SetupOptions)
    worker = options.view_as(WorkerOptions)
    if runs_locally(beam_args) or setup.setup_file or worker.sdk_container_image:
        return []
    if any(a.startswith("--environment_config") for a in beam_args):
        return []
    if not os.path.isfile(SETUP_FILE):
        raise PreprocessingError(
            f"runner {options.view_as(StandardOptions).runner} needs this project's code on "
            f"its workers, and {SETUP_FILE} does not exist (installed from a wheel?): pass "
            "--setup_file=<checkout>/setup.py or --sdk_container_image=<the pipeline image>"
        )
    logging.info("remote workers get this project's code: --setup_file=%s", SETUP_FILE)
    return [f"--setup_file={SETUP_FILE}"]


def default_beam_args(beam_args: Sequence[str]) -> list[str]:
    """The local engine on all cores unless the caller chose a runner or worker count;
    on a remote runner, the project's code for the workers (``worker_code_args``)."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        if not any(a.startswith("--direct_num_workers") for a in args):
            args += ["--direct_running_mode=multi_processing", "--direct_num_workers=0"]
        args.append(beam_runner.RUNNER_ARG)
    return args + worker_code_args(args)


def run_beam(
    assigned: list[tuple],
    workdir: str,
    beam_args: Sequence[str],
    min_side: int,
    max_pixels: int,
) -> dict[str, int]:
    """Writes every split's shards and the rejects CSV under workdir; returns Beam counters."""
    args = default_beam_args(beam_args)
    # Workers on this machine count their images in a local folder the printer reads.
    progress_dir = tempfile.mkdtemp(prefix="histo-progress-") if runs_locally(args) else None
    if progress_dir:
        printer = ProgressPrinter(progress_dir, len(assigned))
        printer.start()
    try:
        counters = _run_pipeline(assigned, workdir, args, min_side, max_pixels, progress_dir)
    finally:
        if progress_dir:
            printer.stop()
            shutil.rmtree(progress_dir, ignore_errors=True)
    return counters


def _run_pipeline(
    assigned: list[tuple],
    workdir: str,
    args: list[str],
    min_side: int,
    max_pixels: int,
    progress_dir: str | None,
) -> dict[str, int]:
    with beam.Pipeline(options=PipelineOptions(args)) as pipeline:
        results = (
            pipeline
            | "ListImages" >> beam.Create(assigned, reshuffle=True)
            | "ReadValidateEncode"
            >> beam.ParDo(EncodeExample(min_side, max_pixels, progress_dir)).with_outputs(
                REJECTS_TAG, main="examples"
            )
        )
        for split in features.SPLITS:
            _ = (
                results.examples
                | f"Keep_{split}" >> beam.Filter(lambda kv, s=split: kv[0] == s)
                | f"Values_{split}" >> beam.Values()
                | f"Write_{split}"
                >> beam.io.WriteToTFRecord(
                    storage.join(workdir, split, "data"),
                    file_name_suffix=".tfrecord.gz",
                    compression_type=CompressionTypes.GZIP,
                )
            )
        _ = results[REJECTS_TAG] | "WriteRejects" >> beam.io.WriteToText(
            storage.join(workdir, "beam-rejects"), file_name_suffix=".csv"
        )
    counters = pipeline.result.metrics().query()["counters"]
    return {c.key.metric.name: c.committed or c.attempted or 0 for c in counters}


def read_beam_rejects(workdir: str) -> list[Reject]:
    """The reject lines of every ``beam-rejects-*`` shard (one per worker bundle); deletes them."""
    pattern = FileSystems.join(workdir, "beam-rejects*")
    paths = sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    rejects = []
    for path in paths:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            text = f.read().decode("utf-8")
        rows = csv.reader(io.StringIO(text, newline=""))
        rejects.extend(Reject(row[0], row[1]) for row in rows if row)
    if paths:
        FileSystems.delete(paths)
    return rejects


def write_reports(folder: str, rejects: list[Reject], summary: dict) -> None:
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(["source", "reason"])
    writer.writerows((r.source, r.reason) for r in sorted(rejects, key=lambda r: r.source))
    storage.write_text(storage.join(folder, REJECTS_FILE), table.getvalue())
    summary_text = json.dumps(summary, indent=2, sort_keys=True)
    storage.write_text(storage.join(folder, SUMMARY_FILE), summary_text)


def published_assignments(output_root: str) -> dict[str, str]:
    """{patient: split} of every span already published under output_root.

    A patient keeps the split it was first given; two spans that disagree (hand-made
    spans) are an error, not something to guess about.
    """
    merged: dict[str, str] = {}
    for span in storage.span_numbers(output_root):
        span_dir = storage.join(output_root, f"span-{span}")
        path = storage.join(span_dir, ASSIGNMENTS_FILE)
        if not storage.committed(span_dir) or not storage.exists(path):
            continue  # on an object store: a span still being copied, or one that failed
        for patient, split in json.loads(storage.read_bytes(path)).items():
            if merged.setdefault(patient, split) != split:
                raise PreprocessingError(
                    f"{path}: patient {patient} is in '{split}' here but in "
                    f"'{merged[patient]}' in an earlier span"
                )
    return merged


def preprocess(
    records: list[ImageRecord],
    discovery_rejects: list[Reject],
    output_root: str,
    ratios: Sequence[float],
    salt: str = "",
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    beam_args: Sequence[str] = (),
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    span: int | None = None,
    patient_rule: str = patients.DEFAULT_RULE,
    hashes: dict[str, str] | None = None,
) -> dict:
    """Runs the job and publishes ``span-N`` atomically; returns the summary written with it.

    ``hashes`` ({source: ledger key}) are the files' content hashes when the caller has
    them already (ingestion); otherwise the records' are computed here for the ledger.
    """
    if storage.is_local(output_root):
        os.makedirs(output_root, exist_ok=True)
    span = span or next_span(output_root)
    final_dir = storage.join(output_root, f"span-{span}")
    if span in storage.span_numbers(output_root):
        raise PreprocessingError(f"{final_dir} exists already; spans are never overwritten")
    workdir = storage.join(output_root, f".tmp-span-{span}-{uuid.uuid4().hex[:8]}")
    records = [
        dataclasses.replace(
            r,
            patient_id=patients.patient_of(r.patient_id, patient_rule),
            slide_id=r.slide_id or r.patient_id,
        )
        for r in records
    ]
    previous = published_assignments(output_root)
    assignment = splits.assign_splits(
        splits.patient_classes((r.patient_id, r.label) for r in records), ratios, previous, salt
    )
    assigned = [(assignment[r.patient_id], r) for r in records]
    started = time.time()
    try:
        if storage.is_local(workdir):
            os.makedirs(workdir)
        counters = run_beam(assigned, workdir, beam_args, min_side, max_pixels) if assigned else {}
        rejects = discovery_rejects + read_beam_rejects(workdir)
        rejected = {r.source for r in rejects}
        kept = [(s, r.patient_id, r.label) for s, r in assigned if r.source not in rejected]
        total = len(records) + len(discovery_rejects)
        summary = {
            "span": span,
            "seconds": round(time.time() - started, 2),
            "images_found": total,
            "images_written": len(kept),
            "images_rejected": len(rejects),
            "beam_counters": counters,
            "patient_rule": patient_rule,
            "split_ratios": list(ratios),
            "split_salt": salt,
            "patients_kept_from_earlier_spans": len({p for _, p, _ in kept} & set(previous)),
            "splits": splits.summarize(kept),
        }
        summary["warnings"] = splits.class_warnings(summary["splits"])
        assignments = {p: s for s, p, _ in sorted(kept)}
        assignments_text = json.dumps(assignments, indent=2, sort_keys=True)
        storage.write_text(storage.join(workdir, ASSIGNMENTS_FILE), assignments_text)
        fraction = len(rejects) / total if total else 1.0
        problem = None
        if not kept:
            problem = f"no valid images left ({len(rejects)} rejected of {total} found)"
        elif fraction > max_reject_fraction:
            problem = (
                f"{len(rejects)} of {total} images rejected ({fraction:.1%}), above the "
                f"threshold of {max_reject_fraction:.1%}"
            )
        if problem:
            failed_dir = storage.join(output_root, "failed", f"span-{span}-{int(time.time())}")
            write_reports(failed_dir, rejects, summary)
            raise PreprocessingError(
                f"{problem}; no span written. Rejects report: {failed_dir}/{REJECTS_FILE}"
            )
        write_reports(workdir, rejects, summary)
        if hashes is None:
            by_path = ledger.content_hashes([r.path for r in records])
            hashes = {r.source: by_path[r.path] for r in records if r.path in by_path}
        reasons = {r.source: r.reason for r in rejects}
        sources = [r.source for r in records] + [r.source for r in discovery_rejects]
        entries = [
            ledger.Entry(
                hashes[source],
                source,
                ledger.REJECTED if source in reasons else ledger.WRITTEN,
                reasons.get(source, ""),
            )
            for source in sources
            if source in hashes
        ]
        storage.write_text(storage.join(workdir, ledger.LEDGER_FILE), ledger.to_csv(entries))
        storage.commit_span(workdir, final_dir)
        summary["span_dir"] = final_dir
        summary["rejects_report"] = storage.join(final_dir, REJECTS_FILE)
        return summary
    finally:
        storage.delete_tree(workdir)
