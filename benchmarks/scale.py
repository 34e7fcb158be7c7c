"""Cost against data size: the main job on 1k and 10k images, per image.

For each size, in fresh subprocesses as a user runs them: ``python -m preprocessing`` on N
generated images (the demo's tiles, 200 distinct ones copied under other patients' names),
then ``local_runner.py`` with one training epoch (the frozen-feature pass and one head
epoch, then one fine-tuning pass over the training images) and Beam on every core for
every size, so both sizes run the same way. The memory of the whole process tree (Beam's
workers included) is sampled every 0.2 s; each component gets its seconds from ML Metadata
and the peak memory inside its own interval. Storage: bytes Transform wrote against the
encoded source images.

    .venv/bin/python benchmarks/scale.py --sizes 1000 10000 [--json scale.json]

Prints one table per size, then the largest size against the smallest: seconds per image
(1.0 = linear) and peak memory (1.0 = flat; 10 would be memory growing with the data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchmarks import component_times  # noqa: E402
from benchmarks.preprocessing_throughput import make_images  # noqa: E402
from benchmarks.tree_memory import TreeMemory  # noqa: E402
from modules import quiet  # noqa: E402
from preprocessing import storage  # noqa: E402

# Components whose cost should follow the data; the rest are capped by their own settings
# (TFLiteExport and GradCam look at a fixed number of images).
SCALED = ("ImportExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator")


def run_measured(command: list[str], env: dict[str, str], log: str) -> tuple[float, TreeMemory]:
    """Runs a command to completion; its wall seconds and its memory samples."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=out)
        memory = TreeMemory(process.pid)
        process.wait()
    memory.stop()
    if process.returncode:
        with open(log) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return time.perf_counter() - started, memory


def folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )


def job_env(images: int, args: argparse.Namespace) -> dict[str, str]:
    """The local run's settings: one epoch of each phase, same Beam mode at every size."""
    train_images = math.ceil(0.7 * images)
    return {
        **os.environ,
        "PYTHONWARNINGS": "ignore",
        "HISTO_BEAM_MODE": "multi_processing",
        "HISTO_IMAGE_SIZE": str(args.tile_size),
        "HISTO_EPOCHS_HEAD": "1",
        "HISTO_EPOCHS_FINE_TUNE": "1",
        "HISTO_TRAIN_STEPS": str(math.ceil(train_images / args.batch_size)),
        "HISTO_BATCH_SIZE": str(args.batch_size),
        "HISTO_MIN_AUC": "0",
    }


def measure_size(images: int, work: str, args: argparse.Namespace) -> dict:
    make_images(work, images, args.image_side, args.image_side)
    source, data, output = (os.path.join(work, n) for n in ("images", "data", "outputs"))
    env = job_env(images, args)
    prep_seconds, prep_memory = run_measured(
        [sys.executable, "-m", "preprocessing", "--input", source, "--output", data],
        env,
        os.path.join(work, "preprocessing.log"),
    )
    run_seconds, run_memory = run_measured(
        [sys.executable, "local_runner.py", "--data-root", data, "--output-dir", output],
        env,
        os.path.join(work, "local_runner.log"),
    )
    import local_runner  # TensorFlow, in this process only from here on

    [run] = component_times.run_times(local_runner.metadata_path(output))
    rows = {
        "preprocessing": {"seconds": prep_seconds, "peak_mb": prep_memory.peak() / 2**20},
    }
    for node in run.nodes:
        start = node.start_ms / 1000
        rows[node.node] = {
            "seconds": node.seconds,
            "peak_mb": run_memory.peak(start, start + node.seconds) / 2**20,
        }
    transformed = os.path.join(
        output, "tfx", "pipelines", local_runner.configs.PIPELINE_NAME, "Transform"
    )
    return {
        "images": images,
        "cores": os.cpu_count(),
        "tile_size": args.tile_size,
        "image_side": args.image_side,
        "preprocessing_seconds": prep_seconds,
        "local_runner_seconds": run_seconds,
        "pipeline_wall_seconds": run.wall_seconds,
        "peak_mb": max(prep_memory.peak(), run_memory.peak()) / 2**20,
        "source_bytes": folder_bytes(source),
        "transformed_bytes": folder_bytes(os.path.join(transformed, "transformed_examples")),
        "components": rows,
    }


def format_size(result: dict) -> str:
    n = result["images"]
    lines = [
        f"{n} images ({result['image_side']} px, {result['tile_size']}-px tiles, "
        f"{result['cores']} cores): preprocessing + pipeline "
        f"{result['preprocessing_seconds'] + result['local_runner_seconds']:.0f} s, "
        f"peak {result['peak_mb']:.0f} MB, Transform wrote "
        f"{result['transformed_bytes'] / result['source_bytes']:.2f}x the source",
        f"{'step':<26} | {'seconds':>8} | {'ms/image':>8} | {'peak MB':>8}",
    ]
    for name, row in result["components"].items():
        if row["seconds"] >= 0.5:
            lines.append(
                f"{name:<26} | {row['seconds']:>8.1f} | {1000 * row['seconds'] / n:>8.2f} | "
                f"{row['peak_mb']:>8.0f}"
            )
    return "\n".join(lines)


def format_ratios(small: dict, large: dict) -> str:
    """Largest against smallest: per-image seconds and peak memory."""
    scale = large["images"] / small["images"]
    lines = [
        f"{large['images']} vs {small['images']} images ({scale:.0f}x the data)",
        f"{'step':<26} | {'s/image ratio':>13} | {'peak MB ratio':>13}",
    ]
    for name in ("preprocessing", *SCALED):
        a, b = small["components"][name], large["components"][name]
        per_image = (b["seconds"] / large["images"]) / (a["seconds"] / small["images"])
        memory = b["peak_mb"] / a["peak_mb"] if a["peak_mb"] else float("nan")
        lines.append(f"{name:<26} | {per_image:>13.2f} | {memory:>13.2f}")
    storage = [r["transformed_bytes"] / r["source_bytes"] for r in (small, large)]
    lines.append(f"Transform output / source: {storage[0]:.2f}x and {storage[1]:.2f}x")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--image-side", type=int, default=128, help="generated image, px")
    parser.add_argument("--tile-size", type=int, default=96, help="the model's tile, px")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--keep", help="keep each size's files under this folder")
    args = parser.parse_args()
    quiet.dependency_warnings()
    results = []
    for size in sorted(args.sizes):
        if args.keep:
            work = os.path.join(args.keep, str(size))
            os.makedirs(work, exist_ok=False)
            results.append(measure_size(size, work, args))
        else:
            with tempfile.TemporaryDirectory() as work:
                results.append(measure_size(size, work, args))
        print(format_size(results[-1]) + "\n", flush=True)
    if len(results) > 1:
        print(format_ratios(results[0], results[-1]))
    if args.json:
        storage.write_text(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
