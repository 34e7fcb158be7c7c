"""Patient-disjoint split assignment by a stable hash of the patient id.

The hash depends on the patient id alone (and a salt), so a patient keeps its split from
one span to the next as new patients arrive: a model is never tested on a patient that an
earlier model of the same salt trained on.
"""

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from modules import features


def parse_ratios(text: str) -> tuple[float, ...]:
    """ "0.7,0.15,0.15" -> normalised ratios for train, eval, test."""
    values = tuple(float(v) for v in text.split(","))
    if len(values) != len(features.SPLITS) or any(v < 0 for v in values) or sum(values) <= 0:
        raise ValueError(
            f"split ratios {text!r}: need {len(features.SPLITS)} non-negative numbers "
            f"for {','.join(features.SPLITS)}"
        )
    total = sum(values)
    return tuple(v / total for v in values)


def patient_bucket(patient_id: str, salt: str = "") -> float:
    """A number in [0, 1) fixed by the patient id (and salt) alone."""
    digest = hashlib.sha256(f"{salt}{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_for_patient(patient_id: str, ratios: Sequence[float], salt: str = "") -> str:
    bucket = patient_bucket(patient_id, salt)
    cumulative = 0.0
    for split, ratio in zip(features.SPLITS, ratios, strict=True):
        cumulative += ratio
        if bucket < cumulative:
            return split
    return features.SPLITS[-1]


def summarize(rows: Iterable[tuple[str, str, int]]) -> dict[str, dict]:
    """Per split: images, patients and images per class, from (split, patient, label) rows."""
    images: Counter = Counter()
    per_class: dict[str, Counter] = defaultdict(Counter)
    patients: dict[str, set] = defaultdict(set)
    for split, patient, label in rows:
        images[split] += 1
        per_class[split][features.LABEL_NAMES[label]] += 1
        patients[split].add(patient)
    return {
        split: {
            "images": images[split],
            "patients": len(patients[split]),
            "per_class": {name: per_class[split][name] for name in features.LABEL_NAMES},
        }
        for split in features.SPLITS
    }


def class_warnings(summary: Mapping[str, dict]) -> list[str]:
    """One line per split that lacks a class (or is empty): such a split cannot measure AUC."""
    warnings = []
    for split, info in summary.items():
        missing = [name for name, count in info["per_class"].items() if count == 0]
        if missing:
            warnings.append(
                f"split '{split}' has no {' and no '.join(missing)} images "
                f"({info['patients']} patients): adjust --split-ratios/--split-salt or add patients"
            )
    return warnings
