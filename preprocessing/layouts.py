"""Where labels, patients and magnifications come from: file names, folders or a manifest.

Three layouts are understood, each from its public dataset:
- class folders: ``benign/`` and ``malignant/`` (or ``0/`` and ``1/``), patient from a
  BreakHis-style file name or from a sub-folder ``<class>/<patient>/<image>``;
- BreakHis file names: ``SOB_<B|M>_<subtype>-<patient>-<magnification>-<seq>.png`` and the
  crop form ``SOB_<B|M>_<subtype>_<patient>_<k>.png``;
- Kaggle IDC patches: ``<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<0|1>.png``.
A CSV manifest (``path,label,patient_id`` and optional ``magnification,subtype``) overrides
whatever was inferred for the files it lists.
"""

import csv
import dataclasses
import io
import os
import re

from modules import features
from preprocessing import storage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LAYOUTS = ("auto", "class-folders", "breakhis", "idc")

_BREAKHIS_ORIGINAL = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]+)-(?P<patient>\d+-\w+?)-(?P<mag>\d+)-(?P<seq>\d+)$"
)
_BREAKHIS_CROP = re.compile(
    r"^SOB_(?P<cls>[BM])_(?P<subtype>[A-Z]+)_(?P<patient>[^_]+)_(?P<k>\d+)$"
)
_IDC = re.compile(r"^(?P<patient>[^_]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<cls>[01])$")
_CLASS_FOLDERS = {"benign", "malignant", "0", "1"}


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One image and everything known about it before it is opened."""

    path: str  # absolute
    source: str  # relative to the input root, with forward slashes
    label: int
    patient_id: str
    magnification: int = 0
    subtype: str = ""
    slide_id: str = ""  # the id as found; patient_id is the patient it belongs to


@dataclasses.dataclass(frozen=True)
class Reject:
    """A file that will not become an example, and why."""

    source: str
    reason: str


class LayoutError(ValueError):
    """The file cannot be read under the requested layout."""


def _inside(path: str, root_real: str) -> bool:
    return os.path.commonpath([path, root_real]) == root_real


def scan_images(root: str) -> tuple[list[str], list[Reject]]:
    """Image files under root (relative paths, sorted) and the entries that cannot be read.

    Symlinks are followed only while they stay inside root: a link (file or folder) that
    leads outside it, a broken link, a folder that cannot be listed and an image name that
    is not a regular file (a FIFO would block the reader) each become a reject. Hidden
    entries are skipped; a link back to a folder being walked (a loop) is skipped too, the
    images in it are listed under their real path.
    """
    if not storage.is_local(root):
        return _scan_store(root), []
    root_real = os.path.realpath(root)
    found: list[str] = []
    rejects: list[Reject] = []
    stack = [(root, "", frozenset([root_real]))]
    while stack:
        directory, rel_dir, walking = stack.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except OSError as err:
            if rel_dir:  # a missing root is the caller's "no images found"
                rejects.append(Reject(rel_dir, f"folder cannot be read: {err.strerror or err}"))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            image_name = entry.name.lower().endswith(IMAGE_EXTENSIONS)
            try:
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if not os.path.exists(entry.path):
                        if image_name or not os.path.splitext(entry.name)[1]:
                            rejects.append(Reject(rel, "broken symlink"))
                        continue
                    if not _inside(target, root_real):
                        if image_name or entry.is_dir():
                            reason = f"symlink points outside the input root: {target}"
                            rejects.append(Reject(rel, reason))
                        continue
                if entry.is_dir():
                    real = os.path.realpath(entry.path)
                    if real not in walking:
                        stack.append((entry.path, rel, walking | {real}))
                elif image_name:
                    if entry.is_file():
                        found.append(rel)
                    else:
                        rejects.append(Reject(rel, "not a regular file"))
            except OSError as err:
                rejects.append(Reject(rel, f"cannot be read: {err.strerror or err}"))
    return sorted(found), sorted(rejects, key=lambda r: r.source)


def _scan_store(root: str) -> list[str]:
    """Image objects under an object-store prefix (no links or folders to check there);
    hidden names (any path segment starting with a dot) are skipped, as locally."""
    found = []
    for path in storage.files_under(root):
        rel = storage.relative(path, root)
        hidden = any(part.startswith(".") for part in rel.split("/"))
        if not hidden and rel.lower().endswith(IMAGE_EXTENSIONS):
            found.append(rel)
    return sorted(found)


def list_images(root: str) -> list[str]:
    """All readable image files under root (relative paths, sorted for reproducible runs)."""
    return scan_images(root)[0]


def _stem(rel: str) -> str:
    return os.path.splitext(os.path.basename(rel))[0]


def _class_folder_label(rel: str) -> tuple[int, int] | None:
    """(label, index of the class folder in the path parts) of the nearest class folder."""
    parts = rel.split("/")[:-1]
    for index in range(len(parts) - 1, -1, -1):
        if parts[index].lower() in _CLASS_FOLDERS:
            return features.label_from_name(parts[index]), index
    return None


def parse_idc(rel: str) -> dict:
    match = _IDC.match(_stem(rel))
    parts = rel.split("/")
    if not match:
        raise LayoutError("not an IDC patch name <patient>_idx5_x<X>_y<Y>_class<0|1>")
    if len(parts) >= 3 and parts[-2] in ("0", "1") and parts[-2] != match["cls"]:
        raise LayoutError(f"class folder {parts[-2]} disagrees with file name class{match['cls']}")
    return {"label": int(match["cls"]), "patient_id": match["patient"]}


def parse_breakhis(rel: str) -> dict:
    stem = _stem(rel)
    match = _BREAKHIS_ORIGINAL.match(stem)
    magnification = int(match["mag"]) if match else 0
    match = match or _BREAKHIS_CROP.match(stem)
    if not match:
        raise LayoutError("not a BreakHis name SOB_<B|M>_<subtype>-<patient>-<mag>-<seq>")
    label = features.label_from_name(match["cls"])
    folder = _class_folder_label(rel)
    if folder is not None and folder[0] != label:
        raise LayoutError(
            f"folder says {features.LABEL_NAMES[folder[0]]}, file name says "
            f"{features.LABEL_NAMES[label]}"
        )
    return {
        "label": label,
        "patient_id": match["patient"],
        "magnification": magnification,
        "subtype": match["subtype"],
    }


def parse_class_folders(rel: str) -> dict:
    folder = _class_folder_label(rel)
    if folder is None:
        raise LayoutError("no class folder (benign/, malignant/, 0/ or 1/) in its path")
    label, index = folder
    parts = rel.split("/")
    if _stem(rel).startswith("SOB_"):  # a BreakHis-style name carries the patient
        return parse_breakhis(rel)
    if index + 2 < len(parts):  # <class>/<patient>/.../<image>
        return {"label": label, "patient_id": parts[index + 1]}
    raise LayoutError(
        "patient cannot be determined: use <class>/<patient>/<image>, a BreakHis file name "
        "or a manifest"
    )


_PARSERS = {"idc": parse_idc, "breakhis": parse_breakhis, "class-folders": parse_class_folders}


def parse_path(rel: str, layout: str = "auto") -> dict:
    """Label, patient and metadata of one relative path under the given layout."""
    if layout != "auto":
        return _PARSERS[layout](rel)
    stem = _stem(rel)
    if _IDC.match(stem):
        return parse_idc(rel)
    if stem.startswith("SOB_"):
        return parse_breakhis(rel)
    return parse_class_folders(rel)


def read_manifest(path: str, root: str) -> dict[str, dict]:
    """{relative source: overrides} from a CSV with at least path,label,patient_id columns."""
    overrides: dict[str, dict] = {}
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: manifest not found")
    text = storage.read_bytes(path).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = {"path", "label", "patient_id"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    for line_no, row in enumerate(reader, start=2):
        raw = row["path"].strip()
        if not storage.is_local(raw):
            rel = storage.relative(raw, root)
        else:
            rel = os.path.relpath(raw, root) if os.path.isabs(raw) else raw
        rel = rel.replace(os.sep, "/")
        try:
            entry = {
                "label": features.label_from_name(row["label"]),
                "patient_id": row["patient_id"].strip(),
            }
        except ValueError as err:
            raise ValueError(f"{path}:{line_no}: {err}") from None
        if not entry["patient_id"]:
            raise ValueError(f"{path}:{line_no}: empty patient_id for {raw}")
        if row.get("magnification"):
            entry["magnification"] = int(row["magnification"])
        if row.get("subtype"):
            entry["subtype"] = row["subtype"].strip()
        overrides[rel] = entry
    return overrides


def discover(
    root: str, layout: str = "auto", manifest: str | None = None
) -> tuple[list[ImageRecord], list[Reject]]:
    """Every image under root as a record, or as a reject when its label/patient is unknown."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    overrides = read_manifest(manifest, root) if manifest else {}
    sources, unreadable = scan_images(root)
    records: list[ImageRecord] = []
    rejects: list[Reject] = list(unreadable)
    for rel in sources:
        try:
            info = parse_path(rel, layout)
        except (LayoutError, ValueError) as err:
            if rel not in overrides:
                rejects.append(Reject(rel, f"label/patient unknown: {err}"))
                continue
            info = {}
        info.update(overrides.get(rel, {}))
        records.append(ImageRecord(path=storage.join(root, rel), source=rel, **info))
    known = set(sources) | {r.source for r in unreadable}
    rejects.extend(
        Reject(rel, "listed in the manifest but not found") for rel in overrides if rel not in known
    )
    return records, rejects
