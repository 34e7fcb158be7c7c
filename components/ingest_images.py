"""IngestImages: the images that arrived under the image root since the last span -> the
next span of the data root, inside the pipeline, so a scheduled run retrains on new slides
without anyone running ``histo-preprocess`` first.

- The driver fingerprints the image tree (names, sizes, modification times, the manifest's
  content) without reading any image; the fingerprint is an execution property, so an
  unchanged tree is a cache hit and the run costs nothing here.
- The executor hashes every image's content and leaves out those in the data root's ledger
  (``preprocessing.ledger``: the files each committed span was made from): a file renamed
  or moved is not converted again, a file whose bytes changed is.
- Fewer new patients than ``min_new_patients`` (after the first span): the images wait
  for the next run, so a span is a batch the drift gate can compare with the data behind
  the serving model without reading chance as drift, and each split gets patients
  (README, "Scheduled retraining": 10 new demo patients were stopped, 20 passed).
- Nothing new: no span is written (the report says so); ExampleGen then reads the same
  span and the rest of the run is served from the cache. New files: the same Beam job as
  ``histo-preprocess`` (patients keep their split, rejects report, atomic commit) writes
  span N+1. Too many rejects fail the step, naming the report under ``failed/``.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.dsl.components.base import base_driver as dsl_driver
from tfx.orchestration import metadata
from tfx.orchestration.portable import base_driver, data_types
from tfx.proto.orchestration import driver_output_pb2
from tfx.types.artifact import Artifact
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from modules.progress import logger as progress
from pipeline import settings
from preprocessing import layouts, ledger, patients, splits, storage
from preprocessing.image_io import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from preprocessing.layouts import ImageRecord, Reject
from preprocessing.span_summary import format_summary

FINGERPRINT_KEY = "image_fingerprint"
SUMMARY_FILE = "ingest.json"
REJECTS_FILE = "rejects.csv"
# Parameter defaults: the declared settings (pipeline/settings.py).
DEFAULT_LAYOUT: str = settings.default("HISTO_LAYOUT")
DEFAULT_SPLIT_RATIOS: str = settings.default("HISTO_SPLIT_RATIOS")
DEFAULT_MAX_REJECT_FRACTION: float = settings.default("HISTO_MAX_REJECT_FRACTION")


class IngestReport(Artifact):
    """What one ingestion found and wrote: ``ingest.json`` and the new span's rejects."""

    TYPE_NAME = "histopath.IngestReport"


class IngestImagesSpec(ComponentSpec):
    PARAMETERS = {
        "image_root": ExecutionParameter(type=str),
        "data_root": ExecutionParameter(type=str),
        "layout": ExecutionParameter(type=str),
        "manifest": ExecutionParameter(type=str),  # "" for none
        "split_ratios": ExecutionParameter(type=str),  # "train,eval,test"
        "split_salt": ExecutionParameter(type=str),
        "patient_rule": ExecutionParameter(type=str),
        "max_reject_fraction": ExecutionParameter(type=float),
        "min_side": ExecutionParameter(type=int),
        "max_pixels": ExecutionParameter(type=int),
        "min_new_patients": ExecutionParameter(type=int),
        FINGERPRINT_KEY: ExecutionParameter(type=str, optional=True),  # set by the driver
    }
    INPUTS: dict[str, ChannelParameter] = {}
    OUTPUTS = {"report": ChannelParameter(type=IngestReport)}


# The parameters that ``ingest`` takes as keywords (the roots are positional, the
# fingerprint is the driver's).
SETTINGS = tuple(
    k for k in IngestImagesSpec.PARAMETERS if k not in ("image_root", "data_root", FINGERPRINT_KEY)
)


def tree_fingerprint(image_root: str, manifest: str = "") -> str:
    """SHA-256 over every file's name, size and modification time below image_root, and
    the manifest's content: changes when an image is added, removed, replaced or touched."""
    sources, rejects = layouts.scan_images(image_root)
    names = sorted(set(sources) | {r.source for r in rejects})
    digest = hashlib.sha256(image_root.encode())
    for source, size, mtime in storage.file_stats(image_root, names):
        digest.update(f"{source}\0{size}\0{mtime!r}\n".encode())
    if manifest:
        digest.update(storage.read_bytes(manifest) if storage.exists(manifest) else b"missing")
    return digest.hexdigest()


class TreeFingerprintDriver(dsl_driver.BaseDriver, base_driver.BaseDriver):
    """Adds the image tree's fingerprint to the execution properties before TFX looks up
    its cache: the same tree is a cache hit, a changed one runs the executor. (Both base
    classes, as TFX's ExampleGen driver: the component checks the first, IR runners call
    the second's ``run``.)"""

    def __init__(self, metadata_handle: metadata.Metadata):
        dsl_driver.BaseDriver.__init__(self, metadata_handle)
        base_driver.BaseDriver.__init__(self, metadata_handle)

    def run(self, execution_info: data_types.ExecutionInfo) -> driver_output_pb2.DriverOutput:
        props = execution_info.exec_properties
        fingerprint = tree_fingerprint(props["image_root"], props.get("manifest") or "")
        result = driver_output_pb2.DriverOutput()
        result.exec_properties[FINGERPRINT_KEY].string_value = fingerprint
        return result


def _key(source: str, sha256: str | None) -> str:
    """The ledger key of a file: its content hash, or its name when it cannot be read
    (a broken link is then reported once, not with every later span)."""
    return sha256 or f"unreadable:{source}"


def select_new(
    image_root: str,
    records: list[ImageRecord],
    rejects: list[Reject],
    known: dict[str, ledger.Entry],
) -> dict[str, Any]:
    """Splits what discovery found into new records, new rejects and files already
    converted; a file with the same content as another new file is left out (one copy)."""
    hashes = ledger.content_hashes([r.path for r in records])
    reject_paths = {r.source: storage.join(image_root, r.source) for r in rejects}
    reject_hashes = ledger.content_hashes(list(reject_paths.values()))
    keys: dict[str, str] = {}
    new_records, duplicates, seen = [], [], {}
    for r in records:
        key = keys[r.source] = _key(r.source, hashes.get(r.path))
        if key in known:
            continue
        if key in seen:
            duplicates.append({"source": r.source, "same_as": seen[key]})
            continue
        seen[key] = r.source
        new_records.append(r)
    new_rejects = []
    for r in rejects:
        key = keys[r.source] = _key(r.source, reject_hashes.get(reject_paths[r.source]))
        if key not in known:
            new_rejects.append(r)
    return {
        "records": new_records,
        "rejects": new_rejects,
        "duplicates": duplicates,
        "already_converted": len(records) + len(rejects) - len(new_records) - len(new_rejects),
        "keys": keys,
    }


def ingest(
    image_root: str,
    data_root: str,
    out_dir: str,
    *,
    layout: str = DEFAULT_LAYOUT,
    manifest: str = "",
    split_ratios: str = DEFAULT_SPLIT_RATIOS,
    split_salt: str = "",
    patient_rule: str = patients.DEFAULT_RULE,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_new_patients: int = 1,
    beam_args: list[str] | None = None,
) -> dict[str, Any]:
    """Converts what is new under image_root into the next span of data_root (or nothing);
    writes ``ingest.json`` (and the span's ``rejects.csv``) into out_dir; returns the summary."""
    from preprocessing import beam_job  # Beam only where the job runs

    ratios = splits.parse_ratios(split_ratios)
    records, rejects = layouts.discover(image_root, layout, manifest or None)
    known = ledger.read(data_root)
    found = select_new(image_root, records, rejects, known)
    summary: dict[str, Any] = {
        "image_root": image_root,
        "data_root": data_root,
        "files_found": len(records) + len(rejects),
        "already_converted": found["already_converted"],
        "new_images": len(found["records"]),
        "new_rejects": len(found["rejects"]),
        "duplicates_skipped": found["duplicates"],
        "span": None,
    }
    new_patients = {patients.patient_of(r.patient_id, patient_rule) for r in found["records"]}
    summary["new_patients"] = len(new_patients)
    first_span = storage.latest_committed_span(data_root) is None
    if found["records"] and not first_span and len(new_patients) < min_new_patients:
        summary["waiting"] = (
            f"{len(found['records'])} new images of {len(new_patients)} new patients wait "
            f"for at least {min_new_patients} new patients (HISTO_MIN_NEW_PATIENTS)"
        )
        progress.info("no span written: %s", summary["waiting"])
    elif found["records"]:
        span = beam_job.preprocess(
            found["records"],
            found["rejects"],
            data_root,
            ratios,
            salt=split_salt,
            max_reject_fraction=max_reject_fraction,
            beam_args=beam_args or [],
            patient_rule=patient_rule,
            hashes=found["keys"],
            min_side=min_side,
            max_pixels=max_pixels,
        )
        summary["span"] = span["span"]
        summary["span_dir"] = span["span_dir"]
        summary["preprocessing"] = span
        rejects_csv = span["rejects_report"]
        storage.write_bytes(storage.join(out_dir, REJECTS_FILE), storage.read_bytes(rejects_csv))
        for line in format_summary(span).splitlines():
            progress.info(line)
    else:
        progress.info(
            "nothing new under %s (%d files converted before): no span written",
            image_root,
            summary["already_converted"],
        )
    storage.write_text(
        storage.join(out_dir, SUMMARY_FILE), json.dumps(summary, indent=2, sort_keys=True)
    )
    return summary


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(
        self,
        input_dict: dict[str, list[types.Artifact]],
        output_dict: dict[str, list[types.Artifact]],
        exec_properties: dict[str, Any],
    ) -> None:
        [report] = output_dict["report"]
        settings = {k: exec_properties[k] for k in SETTINGS}
        summary = ingest(
            exec_properties["image_root"],
            exec_properties["data_root"],
            report.uri,
            **settings,
            beam_args=list(self._beam_pipeline_args or []),
        )
        report.set_int_custom_property("span", summary["span"] or 0)
        report.set_int_custom_property("new_images", summary["new_images"])


class IngestImages(base_beam_component.BaseBeamComponent):
    """New images under ``image_root`` -> the next ``span-N`` under ``data_root``."""

    SPEC_CLASS = IngestImagesSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = TreeFingerprintDriver

    def __init__(
        self,
        *,
        image_root: str,
        data_root: str,
        layout: str = DEFAULT_LAYOUT,
        manifest: str = "",
        split_ratios: str = DEFAULT_SPLIT_RATIOS,
        split_salt: str = "",
        patient_rule: str = patients.DEFAULT_RULE,
        max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
        min_side: int = DEFAULT_MIN_SIDE,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        min_new_patients: int = 1,
    ):
        spec = IngestImagesSpec(
            image_root=image_root,
            data_root=data_root,
            layout=layout,
            manifest=manifest,
            split_ratios=split_ratios,
            split_salt=split_salt,
            patient_rule=patient_rule,
            max_reject_fraction=max_reject_fraction,
            min_side=min_side,
            max_pixels=max_pixels,
            min_new_patients=min_new_patients,
            report=types.Channel(type=IngestReport),
        )
        super().__init__(spec=spec)
