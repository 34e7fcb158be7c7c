"""Is ImageNet transfer worth it on real BreakHis crops? ImageNet MobileNetV2 (offline
weights) vs the same network from random initialisation, same recipe, same budget.

Data: the BreakHis crops in ``../shared/data/breakhis-crops`` (labels and patients from
``preprocessing.layouts.discover``), decoded and resized by Transform's own
``decode_and_resize`` and written as Transform-format records, one file per patient.

Split: grouped k-fold by patient, stratified by the patients' class, so every image is
scored exactly once by a model that never saw its patient. Patient ids that differ only by
a trailing letter (``14-14134`` / ``14-14134E``) are kept in one group to be safe.
``--splits patient image`` adds a control with the same folds count but split by image
(every patient in every fold): the leaky protocol, to show what patient leakage is worth.

Recipe: the Trainer's own code, for both arms: ``trainer_module.build_model`` (backbone +
head), ``data.make_dataset`` (augmentation on training only), ``class_weights``, and
``fit_two_phases`` (frozen-backbone head phase, then the top of the backbone fine-tuned,
BatchNorm frozen). The only difference from the pipeline: no validation split inside a
fold (13 patients are too few), so no early stopping / LR decay; every arm trains for the
same fixed epochs (the Trainer's defaults unless overridden).

Reported: AUC and accuracy (threshold 0.5) of the pooled out-of-fold predictions, and the
mean / sd over folds.

Reading it: the recipe runs the backbone in inference mode, so a randomly initialised
backbone (whose BatchNorm statistics are the init's 0 / 1) yields near-zero, constant
features, and the random arm predicts one value for every image (AUC 0.5). That is the
point of the comparison (this recipe needs ImageNet weights), not a from-scratch baseline.

    .venv/bin/python benchmarks/breakhis_quality.py --image-size 224 --folds 4 \
        --splits patient image
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from modules import features
from modules.metrics import roc_auc
from modules.trainer import data, trainer_module
from modules.transform.transform_module import decode_and_resize
from preprocessing import layouts, patients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO, "..", "shared", "data", "breakhis-crops")
ARMS = {"imagenet": "offline", "random": "random"}  # arm -> backbones weights mode
SPLITS = {"patient": "patient-disjoint", "image": "image-level (leaky)"}


class SpecOf:
    """The transformed feature spec, which is all ``data`` needs from a TFTransformOutput."""

    def __init__(self, image_size: int):
        self.image_size = image_size

    def transformed_feature_spec(self) -> dict:
        return {
            features.TRANSFORMED_IMAGE_KEY: tf.io.FixedLenFeature(
                [self.image_size, self.image_size, 3], tf.float32
            ),
            features.TRANSFORMED_LABEL_KEY: tf.io.FixedLenFeature([], tf.int64),
        }


def patient_group(patient_id: str) -> str:
    """The pipeline's own patient rule: slides of one patient must not straddle a split."""
    return patients.patient_of(patient_id)


def patient_key(record: layouts.ImageRecord, position: int) -> str:
    """The honest split: all images of a patient (group) fall in one fold."""
    return patient_group(record.patient_id)


def image_key(folds: int) -> Callable[[layouts.ImageRecord, int], str]:
    """The leaky control: a patient's images are dealt over all folds."""
    return lambda record, position: f"{patient_group(record.patient_id)}#{position % folds}"


def write_group_records(
    root: str, output: str, image_size: int, key: Callable[[layouts.ImageRecord, int], str]
) -> dict[str, tuple]:
    """{group: (records path, label, images)}: Transform-decoded images, one file per group.

    ``key(record, position)`` names a record's group; position counts the patient's images.
    """
    records, rejects = layouts.discover(root)
    if rejects:
        print(f"skipped {len(rejects)} files: {rejects[:3]}")
    by_group: dict[str, list] = {}
    seen: dict[str, int] = {}
    for record in records:
        position = seen.get(record.patient_id, 0)
        seen[record.patient_id] = position + 1
        by_group.setdefault(key(record, position), []).append(record)
    os.makedirs(output, exist_ok=True)
    groups = {}
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for group, members in sorted(by_group.items()):
        labels = {m.label for m in members}
        assert len(labels) == 1, f"patient group {group} has both classes"
        encoded = []
        for member in members:
            with open(member.path, "rb") as f:
                encoded.append(f.read())
        images = decode_and_resize(tf.constant(encoded), image_size).numpy()
        path = os.path.join(output, f"{group.replace('#', '_')}.tfrecord.gz")
        with tf.io.TFRecordWriter(path, options) as writer:
            for image in images:
                writer.write(_example(image, members[0].label))
        groups[group] = (path, members[0].label, len(members))
    return groups


def _example(image: np.ndarray, label: int) -> bytes:
    feature = {
        features.TRANSFORMED_IMAGE_KEY: tf.train.Feature(
            float_list=tf.train.FloatList(value=image.reshape(-1))
        ),
        features.TRANSFORMED_LABEL_KEY: tf.train.Feature(
            int64_list=tf.train.Int64List(value=[int(label)])
        ),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def grouped_folds(groups: dict[str, tuple], k: int) -> list[list[str]]:
    """Patient groups dealt round-robin per class (largest first): class-stratified folds."""
    folds: list[list[str]] = [[] for _ in range(k)]
    slot = 0
    for label in sorted({label for _, label, _ in groups.values()}):
        members = sorted(
            (g for g, (_, lab, _) in groups.items() if lab == label),
            key=lambda g: (-groups[g][2], g),
        )
        for group in members:
            folds[slot % k].append(group)
            slot += 1
    return folds


def image_folds(groups: dict[str, tuple], k: int) -> list[list[str]]:
    """Folds of the leaky control: fold j holds every patient's j-th share of images."""
    return [[g for g in groups if g.endswith(f"#{j}")] for j in range(k)]


def accuracy(labels: Sequence[int], scores: Sequence[float]) -> float:
    return float(np.mean((np.asarray(scores) >= 0.5) == np.asarray(labels)))


def train_and_score(
    train_files: list[str], test_files: list[str], hp: dict, image_size: int
) -> tuple[list[int], list[float], str]:
    """One arm on one fold, exactly the Trainer's recipe minus validation-driven callbacks."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(int(hp["seed"]))
    spec = SpecOf(image_size)
    counts = data.count_labels(train_files, spec)
    n_train, batch_size, seed = sum(counts), int(hp["batch_size"]), int(hp["seed"])
    train_ds = data.make_dataset(train_files, spec, batch_size, True, n_train, seed)
    model, backbone = trainer_module.build_model(hp)
    trainer_module.fit_two_phases(
        model,
        backbone.model,
        hp,
        tf.distribute.get_strategy(),
        lambda phase: [],
        x=train_ds,
        steps_per_epoch=math.ceil(n_train / batch_size),
        class_weight=trainer_module.class_weights(counts),
        verbose=0,
    )
    labels, scores = [], []
    for x, y in data.make_dataset(test_files, spec, batch_size, False, 1, seed):
        scores.extend(model(x, training=False).numpy().reshape(-1).tolist())
        labels.extend(y.numpy().astype(int).tolist())
    return labels, scores, backbone.weights_source


def summarize(per_fold: list[tuple[list[int], list[float]]]) -> dict:
    labels = [v for fold_labels, _ in per_fold for v in fold_labels]
    scores = [v for _, fold_scores in per_fold for v in fold_scores]
    fold_auc = [roc_auc(lab, sco) for lab, sco in per_fold]
    fold_acc = [accuracy(lab, sco) for lab, sco in per_fold]
    defined = [a for a in fold_auc if not math.isnan(a)]
    return {
        "pooled_auc": roc_auc(labels, scores),
        "pooled_acc": accuracy(labels, scores),
        "fold_auc": fold_auc,
        "fold_acc": fold_acc,
        "fold_auc_mean": statistics.mean(defined) if defined else float("nan"),
        "fold_auc_sd": statistics.stdev(defined) if len(defined) > 1 else float("nan"),
        "fold_acc_mean": statistics.mean(fold_acc),
        "fold_acc_sd": statistics.stdev(fold_acc) if len(fold_acc) > 1 else float("nan"),
        "images": len(labels),
    }


def run_arm(arm: str, hp: dict, groups: dict, folds: list[list[str]], image_size: int):
    """Every fold of one arm: (per-fold (labels, scores), the backbone's weights source)."""
    per_fold, source = [], ""
    for index, fold in enumerate(folds):
        train = [groups[g][0] for g in groups if g not in fold]
        test = [groups[g][0] for g in fold]
        fold_started = time.perf_counter()
        labels, scores, source = train_and_score(train, test, hp, image_size)
        per_fold.append((labels, scores))
        seconds = time.perf_counter() - fold_started
        print(
            f"{arm} fold {index}: n={len(labels)} auc={roc_auc(labels, scores):.3f} "
            f"acc={accuracy(labels, scores):.3f} ({seconds:.0f} s)",
            flush=True,
        )
    return per_fold, source


def print_report(args: argparse.Namespace, results: dict, sources: dict, seconds: float) -> None:
    hp = trainer_module.DEFAULTS
    print(
        f"\nBreakHis crops, {args.image_size} px, {args.folds}-fold CV; MobileNetV2, epochs "
        f"head {args.epochs_head} + fine-tune {args.epochs_fine_tune} (top "
        f"{hp['fine_tune_fraction']:.0%} of layers, BatchNorm frozen), batch {args.batch_size}, "
        f"lr {hp['learning_rate']} / {hp['fine_tune_learning_rate']}, augmentation + class "
        f"weights on, no early stopping; {seconds:.0f} s on {os.cpu_count()} CPUs"
    )
    print(
        "split                 | arm      | pooled AUC | pooled acc | fold AUC mean (sd) "
        "| fold acc mean (sd)"
    )
    for (split, arm), r in results.items():
        print(
            f"{SPLITS[split]:<21} | {arm:<8} | {r['pooled_auc']:>10.3f} | "
            f"{r['pooled_acc']:>10.3f} | {r['fold_auc_mean']:>6.3f} ({r['fold_auc_sd']:.3f})    "
            f" | {r['fold_acc_mean']:>6.3f} ({r['fold_acc_sd']:.3f})"
        )
    for (split, arm), r in results.items():
        print(
            f"{split}/{arm} per fold AUC {[round(a, 3) for a in r['fold_auc']]} "
            f"acc {[round(a, 3) for a in r['fold_acc']]}"
        )
    for arm, source in sources.items():
        print(f"{arm} weights: {source}")


def split_data(split: str, work: str, args: argparse.Namespace) -> tuple[dict, list[list[str]]]:
    """(groups, folds) of one split, records written under work/split."""
    output = os.path.join(work, split)
    if split == "patient":
        groups = write_group_records(args.data, output, args.image_size, patient_key)
        return groups, grouped_folds(groups, args.folds)
    groups = write_group_records(args.data, output, args.image_size, image_key(args.folds))
    return groups, image_folds(groups, args.folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs-head", type=int, default=trainer_module.DEFAULTS["epochs_head"])
    parser.add_argument(
        "--epochs-fine-tune", type=int, default=trainer_module.DEFAULTS["epochs_fine_tune"]
    )
    parser.add_argument("--batch-size", type=int, default=trainer_module.DEFAULTS["batch_size"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument(
        "--splits",
        nargs="+",
        default=["patient"],
        choices=list(SPLITS),
        help="'image' adds the patient-leaky control",
    )
    args = parser.parse_args()

    started = time.perf_counter()
    results, sources = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for split in args.splits:
            groups, folds = split_data(split, work, args)
            images = sum(n for *_, n in groups.values())
            print(f"{SPLITS[split]}: {images} images, {len(groups)} groups")
            for index, fold in enumerate(folds):
                named = ", ".join(f"{g}({features.LABEL_NAMES[groups[g][1]][0]})" for g in fold)
                print(f"  fold {index}: {named}")
            for arm in args.arms:
                hp = trainer_module.hyperparameters(
                    {
                        "image_size": args.image_size,
                        "weights": ARMS[arm],
                        "batch_size": args.batch_size,
                        "epochs_head": args.epochs_head,
                        "epochs_fine_tune": args.epochs_fine_tune,
                    }
                )
                per_fold, sources[arm] = run_arm(arm, hp, groups, folds, args.image_size)
                results[(split, arm)] = summarize(per_fold)
    print_report(args, results, sources, time.perf_counter() - started)


if __name__ == "__main__":
    main()
