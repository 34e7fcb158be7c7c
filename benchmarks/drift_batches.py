"""How different a batch of new demo patients looks to the drift gate, by batch size.

The drift gate compares each new span (the images that arrived) with the data behind the
serving model. Its JSD reads per-patient variation as drift when a batch holds only a few
patients; this measures by how much, to size ``HISTO_MIN_NEW_PATIENTS``. A baseline of
``--baseline`` patients per class; disjoint new draws of each size in ``--sizes``; and one
draw as another lab and scanner would see it (demo.generate.shift_stain_and_focus), which
the gate must stop. Every draw: ``--images`` tiles per patient, all in the train split,
TFDV statistics, the gate's own comparators and thresholds (pipeline/configs.py).

    .venv/bin/python benchmarks/drift_batches.py [--sizes 2 4 8 10] [--output drift.json]

Prints the largest distance per draw with its feature, and each thresholded feature's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from modules import quiet  # noqa: E402

quiet.dependency_warnings()

import tensorflow_data_validation as tfdv  # noqa: E402

from components.drift_gate import measure_drift  # noqa: E402
from demo.generate import generate, shift_stain_and_focus  # noqa: E402
from pipeline import configs  # noqa: E402
from preprocessing import beam_runner, layouts  # noqa: E402
from preprocessing.beam_job import preprocess  # noqa: E402

BEAM_ARGS = [beam_runner.RUNNER_ARG, "--direct_running_mode=in_memory", "--direct_num_workers=1"]


def train_statistics(images: str, work: str):
    records, rejects = layouts.discover(images)
    data = os.path.join(work, "data")
    preprocess(records, rejects, data, (1.0, 0.0, 0.0), beam_args=BEAM_ARGS)
    return tfdv.generate_statistics_from_tfrecord(
        data_location=os.path.join(data, "span-1", "train", "*")
    )


def draw(
    root: str, name: str, per_class: int, first: int, images: int, size: int, shifted: bool = False
):
    work = os.path.join(root, name)
    source = os.path.join(work, "generated")
    generate(source, images, per_class, size=size, first_patient=first)
    if shifted:
        shift_stain_and_focus(source, os.path.join(work, "shifted"))
        source = os.path.join(work, "shifted")
    return train_statistics(source, work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=int, default=10, help="patients per class")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 10])
    parser.add_argument("--images", type=int, default=8, help="tiles per patient")
    parser.add_argument("--size", type=int, default=224, help="tile side in pixels")
    parser.add_argument("--output", help="JSON file for the figures")
    args = parser.parse_args()
    schema = tfdv.load_schema_text(configs.SCHEMA_FILE)
    thresholds = json.loads(configs.drift_thresholds())
    rows = []
    with tempfile.TemporaryDirectory(prefix="drift-batches-") as root:
        baseline = draw(root, "baseline", args.baseline, 0, args.images, args.size)
        draws = [(f"new {n}/class", n, False) for n in args.sizes]
        draws.append((f"other lab {args.sizes[-1]}/class", args.sizes[-1], True))
        for k, (label, per_class, shifted) in enumerate(draws):
            first = 1000 * (k + 1)  # disjoint patients
            stats = draw(root, f"draw{k}", per_class, first, args.images, args.size, shifted)
            drifts = measure_drift(stats, baseline, schema, thresholds)
            worst = max(drifts, key=lambda d: d.distance - d.threshold)
            rows.append(
                {
                    "draw": label,
                    "patients_per_class": per_class,
                    "shifted": shifted,
                    "distances": {d.feature: round(d.distance, 3) for d in drifts},
                    "worst": worst.feature,
                    "worst_distance": round(worst.distance, 3),
                    "stopped": any(d.exceeded for d in drifts),
                }
            )
            print(
                f"{label:<22} worst {worst.feature:<18} {worst.distance:6.3f}  "
                f"stopped: {rows[-1]['stopped']}  "
                + " ".join(f"{f}={v}" for f, v in rows[-1]["distances"].items() if v),
                flush=True,
            )
    if args.output:
        with open(args.output, "w") as f:
            settings = {
                "baseline_per_class": args.baseline,
                "images": args.images,
                "size": args.size,
            }
            json.dump({**settings, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
