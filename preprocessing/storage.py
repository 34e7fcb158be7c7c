"""Files on this machine or on an object store (``gs://``; ``s3://`` with Beam's aws extra),
through Beam's FileSystems, so the job reads and writes what Dataflow workers can see.

Local paths keep the local guarantees: symlink checks in ``layouts``, the atomic rename of a
finished span, every file written under a temporary name and then renamed
(``replaced_when_done``). An object store publishes an object whole when its upload ends,
but it has neither folders nor an atomic rename of many objects: a span is written under a
staging prefix, copied into place, and marked complete by ``COMMIT_MARKER`` written last
(``commit_span``); readers of earlier spans count only those with the marker (``committed``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator

COMMIT_MARKER = "_SUCCESS"  # the last object of a span; its presence is the commit
SPAN_DIR = re.compile(r"^span-(\d+)$")  # what ImportExampleGen's {SPAN} pattern reads
_SCHEME = re.compile(r"^(?P<scheme>[a-zA-Z][-a-zA-Z0-9+.]*)://")  # as Beam's FileSystems


def _beam():
    """Beam's FileSystems, imported for object-store paths only: local callers (layouts,
    the web page's image in url mode) do not need Apache Beam."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def is_local(path: str) -> bool:
    """A path of this machine's file system (no scheme, or ``file://``)."""
    match = _SCHEME.match(path)
    return match is None or match.group("scheme") == "file"


def join(base: str, *parts: str) -> str:
    return os.path.join(base, *parts) if is_local(base) else _beam().join(base, *parts)


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _beam().exists(path)


def read_bytes(path: str) -> bytes:
    if is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with _beam().open(path, compression_type="uncompressed") as f:
        return f.read()


@contextlib.contextmanager
def replaced_when_done(target: str, suffix: str = "") -> Iterator[str]:
    """A temporary name beside a local ``target`` for a writer that takes a file name (NumPy,
    TFDV, Keras); renamed to ``target`` when the block ends, removed if it raises. Readers see
    the earlier file or the new one whole, never half of one. ``suffix`` keeps the ending a
    writer chooses its format by (``.npz``, ``.h5``); the process id keeps two writers apart."""
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    temporary = f"{target}.partial-{os.getpid()}{suffix}"
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """One whole object: locally one file (its folder created first) under a temporary name,
    then renamed; on a store one upload, which the store publishes when it ends."""
    if is_local(path):
        with replaced_when_done(path) as temporary, open(temporary, "wb") as f:
            f.write(data)
        return
    with _beam().create(path, compression_type="uncompressed") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def files_under(root: str) -> list[str]:
    """Every file (object) below root, full paths, sorted; [] when there is none."""
    filesystems = _beam()
    pattern = filesystems.join(root.rstrip("/"), "**")
    try:
        [result] = filesystems.match([pattern])
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix with no objects
        return []
    return sorted(m.path for m in result.metadata_list)


def file_stats(root: str, sources: list[str]) -> list[tuple[str, int, float]]:
    """(source, size, modification time) of each file below root; -1 where it cannot be
    read. Cheap (no content read): what tells a scheduled run whether anything changed."""
    if is_local(root):
        stats = []
        for source in sources:
            try:
                st = os.stat(os.path.join(root, source))
                stats.append((source, st.st_size, st.st_mtime))
            except OSError:
                stats.append((source, -1, -1.0))
        return stats
    filesystems = _beam()
    try:
        [result] = filesystems.match([filesystems.join(root.rstrip("/"), "**")])
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix with no objects
        return [(source, -1, -1.0) for source in sources]
    found = {
        relative(m.path, root): (m.size_in_bytes, m.last_updated_in_seconds)
        for m in result.metadata_list
    }
    return [(s, *found.get(s, (-1, -1.0))) for s in sources]


def relative(path: str, root: str) -> str:
    """path below root, with forward slashes."""
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path} is not below {root}")
    return path[len(prefix) :]


def child_names(root: str) -> set[str]:
    """Names of the entries right below root (objects' first path segment on a store)."""
    if is_local(root):
        return set(os.listdir(root)) if os.path.isdir(root) else set()
    return {relative(p, root).split("/", 1)[0] for p in files_under(root)}


def span_numbers(root: str) -> list[int]:
    """Every span-N under root, committed or not (N is never reused), sorted."""
    return sorted(int(m.group(1)) for name in child_names(root) if (m := SPAN_DIR.match(name)))


def latest_committed_span(root: str) -> int | None:
    """The highest committed span-N under root; None when there is none."""
    for span in reversed(span_numbers(root)):
        if committed(join(root, f"span-{span}")):
            return span
    return None


def delete_tree(path: str) -> None:
    """Everything below path; nothing when it does not exist."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    files = files_under(path)
    if files:
        _beam().delete(files)


def committed(span_dir: str) -> bool:
    """Whether the span is complete. A local span that exists is (it was renamed into place
    when finished; spans written before the marker existed have none)."""
    return exists(join(span_dir, COMMIT_MARKER)) or (is_local(span_dir) and os.path.isdir(span_dir))


def commit_span(staging: str, final: str) -> None:
    """Publishes a finished span. Locally one atomic rename; on an object store every
    object is copied under ``final`` and ``COMMIT_MARKER`` is written last, then the
    staging objects are deleted."""
    if is_local(staging):
        write_bytes(os.path.join(staging, COMMIT_MARKER), b"")
        os.rename(staging, final)
        return
    sources = files_under(staging)
    targets = [join(final, relative(p, staging)) for p in sources]
    _beam().copy(sources, targets)
    write_bytes(join(final, COMMIT_MARKER), b"")
    _beam().delete(sources)
