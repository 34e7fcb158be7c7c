"""The audit set: the same few held-out tiles every run, both classes, many patients.

A pathologist compares heatmaps across model versions, so the choice must not depend on
file order, sharding or randomness: images are ordered by a hash of their source path,
patients by a hash of their id, and each class takes one tile per patient in turn
(round robin) until it has ``per_class`` tiles.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator

import tensorflow as tf
from tfx import types

from components.example_io import split_files
from modules import features


@dataclasses.dataclass(frozen=True)
class Tile:
    source: str
    patient_id: str
    label: int
    magnification: int
    subtype: str


def stable_key(text: str) -> str:
    """Order that is the same on every machine and Python run (unlike ``hash``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _first(example: tf.train.Example, key: str, kind: str):
    values = getattr(example.features.feature[key], kind).value
    return values[0] if values else (b"" if kind == "bytes_list" else 0)


def _tile(example: tf.train.Example) -> Tile:
    return Tile(
        source=_first(example, features.SOURCE_KEY, "bytes_list").decode("utf-8"),
        patient_id=_first(example, features.PATIENT_ID_KEY, "bytes_list").decode("utf-8"),
        label=int(_first(example, features.LABEL_KEY, "int64_list")),
        magnification=int(_first(example, features.MAGNIFICATION_KEY, "int64_list")),
        subtype=_first(example, features.SUBTYPE_KEY, "bytes_list").decode("utf-8"),
    )


def iter_split(examples: types.Artifact, split: str) -> Iterator[tuple[Tile, bytes]]:
    """(tile facts, encoded image) for every tf.Example of one split."""
    files = split_files(examples).get(split)
    if files is None:
        raise ValueError(f"split {split!r} not in the Examples artifact")
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        yield _tile(example), _first(example, features.IMAGE_KEY, "bytes_list")


def select(tiles: Iterable[Tile], per_class: int) -> list[Tile]:
    """Up to ``per_class`` tiles of each label, spread over patients, benign first."""
    tiles = list(tiles)
    chosen: list[Tile] = []
    for label in range(len(features.LABEL_NAMES)):
        by_patient: dict[str, list[Tile]] = defaultdict(list)
        for tile in tiles:
            if tile.label == label:
                by_patient[tile.patient_id].append(tile)
        queues = [
            sorted(by_patient[p], key=lambda t: stable_key(t.source))
            for p in sorted(by_patient, key=stable_key)
        ]
        picked: list[Tile] = []
        depth = 0
        while len(picked) < per_class and any(depth < len(q) for q in queues):
            picked.extend(q[depth] for q in queues if depth < len(q))
            depth += 1
        chosen.extend(picked[:per_class])
    return chosen


def load_audit_set(
    examples: types.Artifact, split: str, per_class: int
) -> list[tuple[Tile, bytes]]:
    """Selects the audit tiles (one pass for facts) and reads their images (a second pass)."""
    tiles = [tile for tile, _ in iter_split(examples, split)]
    wanted = {tile.source: index for index, tile in enumerate(select(tiles, per_class))}
    found: dict[int, tuple[Tile, bytes]] = {}
    for tile, image in iter_split(examples, split):
        if tile.source in wanted:
            found[wanted[tile.source]] = (tile, image)
    return [found[i] for i in sorted(found)]
