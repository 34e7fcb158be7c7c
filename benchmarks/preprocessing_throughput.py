"""Preprocessing throughput and peak memory: the Beam job vs a naive single-process loop.

Both write the same gzipped tf.Example TFRecords (same validation, same encoder) from the
same BreakHis-sized PNGs (700x460). Each variant runs in a fresh subprocess; the peak is
the largest summed RSS of that subprocess and all its children (Beam's workers), sampled
every 100 ms. A third variant is the ceiling: a loop that only reads and decodes the same
files, one process per core. Prints images/s, the speed-up over the naive loop, the share
of the decode-only rate and peak memory at each size.

    .venv/bin/python benchmarks/preprocessing_throughput.py --sizes 1000 10000
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from benchmarks.tree_memory import TreeMemory  # noqa: E402

DISTINCT = 200  # distinct images; the rest are copies under other patients' names


def make_images(root: str, count: int, width: int, height: int) -> None:
    import numpy as np

    from demo.generate import draw_tile

    pool = os.path.join(root, "_pool")
    os.makedirs(pool, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(DISTINCT):
        tile = draw_tile(rng, max(width, height), bool(i % 2), np.ones(3)).crop(
            (0, 0, width, height)
        )
        tile.save(os.path.join(pool, f"{i}.png"))
    for i in range(count):
        cls = "malignant" if i % 2 else "benign"
        folder = os.path.join(root, "images", cls, f"p{i // 20}")
        os.makedirs(folder, exist_ok=True)
        shutil.copyfile(os.path.join(pool, f"{i % DISTINCT}.png"), os.path.join(folder, f"{i}.png"))
    shutil.rmtree(pool)


def naive(images: str, output: str) -> int:
    """The baseline: one process, PIL + tf.io.TFRecordWriter, no Beam."""
    import tensorflow as tf

    from preprocessing import layouts, splits
    from preprocessing.examples import to_example
    from preprocessing.image_content import describe
    from preprocessing.image_io import BadImageError, load_image

    records, _ = layouts.discover(images)
    ratios = (0.7, 0.15, 0.15)
    assignment = splits.assign_splits(
        splits.patient_classes((r.patient_id, r.label) for r in records), ratios
    )
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = {}
    written = 0
    for record in records:
        split = assignment[record.patient_id]
        try:
            with open(record.path, "rb") as f:
                data = f.read()
            image = load_image(data)
            content = describe(image.pixels, image.source_format)
        except BadImageError:
            continue
        if split not in writers:
            os.makedirs(os.path.join(output, split), exist_ok=True)
            path = os.path.join(output, split, "data.tfrecord.gz")
            writers[split] = tf.io.TFRecordWriter(path, options)
        writers[split].write(to_example(record, image, content).SerializeToString())
        written += 1
    for writer in writers.values():
        writer.close()
    return written


def _decode(path: str) -> int:
    from PIL import Image

    with open(path, "rb") as f, Image.open(f) as image:
        image.load()
    return 1


def decode_only(images: str, output: str) -> int:
    """The ceiling: every file read and decoded, nothing else, one process per core."""
    import multiprocessing

    from preprocessing import layouts

    del output
    records, _ = layouts.discover(images)
    with multiprocessing.Pool(os.cpu_count()) as pool:
        return sum(pool.imap_unordered(_decode, [r.path for r in records], chunksize=32))


def beam(images: str, output: str) -> int:
    from preprocessing import layouts
    from preprocessing.beam_job import preprocess

    records, rejects = layouts.discover(images)
    return preprocess(records, rejects, output, (0.7, 0.15, 0.15))["images_written"]


def measure(variant: str, images: str, output: str) -> dict:
    """Runs one variant in a subprocess; returns seconds, images and peak tree RSS."""
    command = [sys.executable, __file__, "--run", variant, images, output]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=REPO)
    memory = TreeMemory(process.pid, every=0.1)
    out = process.stdout.read().decode()
    process.wait()
    memory.stop()
    seconds = time.perf_counter() - started
    peak = memory.peak()
    if process.returncode:
        raise RuntimeError(f"{variant} failed: {out}")
    return {
        "seconds": seconds,
        "images": int(out.strip().splitlines()[-1]),
        "peak_mb": peak / 2**20,
    }


VARIANTS = {"naive": naive, "beam": beam, "decode_only": decode_only}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--width", type=int, default=700)
    parser.add_argument("--height", type=int, default=460)
    parser.add_argument("--run", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        variant, images, output = args.run
        print(VARIANTS[variant](images, output))
        return
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            make_images(tmp, size, args.width, args.height)
            images = os.path.join(tmp, "images")
            result = {"images": size, "cores": os.cpu_count()}
            for variant in VARIANTS:
                m = measure(variant, images, os.path.join(tmp, f"out-{variant}"))
                assert m["images"] == size, m
                result[variant] = {
                    "images_per_s": round(size / m["seconds"], 1),
                    "seconds": round(m["seconds"], 1),
                    "peak_mb": round(m["peak_mb"]),
                }
            beam_rate = result["beam"]["images_per_s"]
            result["speedup"] = round(beam_rate / result["naive"]["images_per_s"], 2)
            result["of_decode_only"] = round(beam_rate / result["decode_only"]["images_per_s"], 2)
            rows.append(result)
            print(json.dumps(result), flush=True)
    print(
        "\nimages | naive img/s | beam img/s | speed-up | decode-only img/s | beam/decode-only"
        " | naive peak MB | beam peak MB"
    )
    for r in rows:
        print(
            f"{r['images']:>6} | {r['naive']['images_per_s']:>11} | {r['beam']['images_per_s']:>10}"
            f" | {r['speedup']:>7}x | {r['decode_only']['images_per_s']:>17}"
            f" | {r['of_decode_only']:>15}x | {r['naive']['peak_mb']:>13}"
            f" | {r['beam']['peak_mb']:>12}"
        )


if __name__ == "__main__":
    main()
