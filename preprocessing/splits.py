"""Patient-disjoint, class-stratified, stable split assignment.

- Patient-disjoint: a patient (see ``preprocessing.patients``) is the unit that is assigned.
- Stratified: patients are placed class by class (a patient's class is the label of most
  of its images), each where that class's images are furthest below the split's target
  share; then a split left without the class (train first, then test, then eval) gets the
  smallest patient of a split that holds several, so each split receives both classes
  whenever the data allows it.
- Stable: assignments already published with an earlier span are kept as they are, so a
  patient never changes split when new patients arrive; only new patients are placed.
The order within a class is a hash of salt + patient id: the salt draws another split.
"""

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence

from modules import features

# Which split gets a class's first patients: training needs the class, then the split the
# Evaluator judges on, then the early-stopping split.
_FILL_ORDER = (features.TRAIN_SPLIT, features.TEST_SPLIT, features.EVAL_SPLIT)


def parse_ratios(text: str) -> tuple[float, ...]:
    """ "0.7,0.15,0.15" -> normalised ratios for train, eval, test."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
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


def patient_classes(rows: Iterable[tuple[str, int]]) -> dict[str, Counter]:
    """{patient: Counter(label -> images)} from (patient, label) rows."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for patient, label in rows:
        counts[patient][label] += 1
    return dict(counts)


def _majority(counts: Counter) -> int:
    return max(counts, key=lambda label: (counts[label], label))


def assign_splits(
    patients: Mapping[str, Counter],
    ratios: Sequence[float],
    previous: Mapping[str, str] | None = None,
    salt: str = "",
) -> dict[str, str]:
    """{patient: split} for every patient; ``previous`` assignments are never changed."""
    previous = dict(previous or {})
    target = dict(zip(features.SPLITS, ratios, strict=True))
    open_splits = [s for s in _FILL_ORDER if target[s] > 0]
    assignment = {p: previous[p] for p in patients if p in previous}
    for label in sorted({_majority(c) for c in patients.values()}):
        of_class = [p for p, c in patients.items() if _majority(c) == label]
        images = {p: sum(patients[p].values()) for p in of_class}
        total = sum(images.values())
        held: Counter = Counter()
        for patient in of_class:
            if patient in assignment:
                held[assignment[patient]] += images[patient]
        new = sorted(
            (p for p in of_class if p not in assignment), key=lambda p: (patient_bucket(p, salt), p)
        )
        placed: dict[str, list[str]] = defaultdict(list)
        for patient in new:  # where the class is furthest below its share
            split = max(
                open_splits,
                key=lambda s: (target[s] * total - held[s], -open_splits.index(s)),
            )
            placed[split].append(patient)
            held[split] += images[patient]
        for split in open_splits:  # a split without the class gets the smallest spare one
            if held[split]:
                continue
            donors = [s for s in open_splits if len(placed[s]) > 1]
            if not donors:
                break
            donor = max(donors, key=lambda s: (len(placed[s]), -open_splits.index(s)))
            patient = min(placed[donor], key=lambda p: (images[p], p))
            placed[donor].remove(patient)
            placed[split].append(patient)
            held[donor] -= images[patient]
            held[split] += images[patient]
        for split, members in placed.items():
            assignment.update(dict.fromkeys(members, split))
    return assignment


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
                f"({info['patients']} patients): too few patients of that class for "
                "every split; add patients or change --split-ratios"
            )
    return warnings
