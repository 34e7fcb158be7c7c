"""Which image files a data root has converted already, by content hash.

Every span carries ``ingested.csv`` (``sha256,source,outcome,reason``): each file the span
was made from, written or rejected. The ledger of a data root is the union over its
committed spans, so it is published by the same commit as the span itself (no second file
to keep consistent, nothing to lose on an object store without an atomic rename). A file
that is renamed or moved keeps its hash and is not converted again; a file whose bytes
change is new. Spans written before the ledger existed have none: their files count as new.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

from preprocessing import storage

LEDGER_FILE = "ingested.csv"
WRITTEN = "written"
REJECTED = "rejected"
_COLUMNS = ("sha256", "source", "outcome", "reason")
_READERS = 8  # files are read for their hash only: I/O-bound, threads are enough


@dataclasses.dataclass(frozen=True)
class Entry:
    sha256: str
    source: str
    outcome: str  # WRITTEN or REJECTED
    reason: str = ""


def content_hash(path: str) -> str:
    return hashlib.sha256(storage.read_bytes(path)).hexdigest()


def content_hashes(paths: Sequence[str]) -> dict[str, str]:
    """{path: sha256}; a file that cannot be read is left out (its reader reports it)."""

    def one(path: str) -> tuple[str, str | None]:
        try:
            return path, content_hash(path)
        except OSError:
            return path, None

    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        return {p: h for p, h in pool.map(one, paths) if h is not None}


def to_csv(entries: Iterable[Entry]) -> str:
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(_COLUMNS)
    for e in sorted(entries, key=lambda e: (e.source, e.sha256)):
        writer.writerow((e.sha256, e.source, e.outcome, e.reason))
    return table.getvalue()


def parse_csv(text: str, where: str) -> list[Entry]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise ValueError(f"{where}: expected columns {','.join(_COLUMNS)}")
    return [Entry(r["sha256"], r["source"], r["outcome"], r["reason"]) for r in reader]


def read(data_root: str) -> dict[str, Entry]:
    """{sha256: entry} over every committed span of data_root (the earliest span wins)."""
    known: dict[str, Entry] = {}
    for span in storage.span_numbers(data_root):
        span_dir = storage.join(data_root, f"span-{span}")
        path = storage.join(span_dir, LEDGER_FILE)
        if not storage.committed(span_dir) or not storage.exists(path):
            continue
        for entry in parse_csv(storage.read_bytes(path).decode("utf-8"), path):
            known.setdefault(entry.sha256, entry)
    return known
