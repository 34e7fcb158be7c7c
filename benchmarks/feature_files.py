"""Per-image feature files for the quality benchmark's ``--external-features`` arms.

Pure NumPy and Pillow, so that extractors running in another environment (one whose
framework clashes with TensorFlow 2.15) can use it too: the image list is the benchmark's own
(``preprocessing.layouts``), and the file appears only once every image has its row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script from another venv: the repo is not installed there
    sys.path.insert(0, REPO)
from preprocessing import layouts, storage  # noqa: E402  (pure Python: no TensorFlow)

SHARED = os.path.join(os.path.dirname(REPO), "shared", "data")
DEFAULT_DATA = [os.path.join(SHARED, "breakhis-100x"), os.path.join(SHARED, "breakhis-crops")]
OUTPUT_DIR = os.path.join(REPO, "outputs", "benchmarks")


def parser(description: str, file_name: str) -> argparse.ArgumentParser:
    """The options every extractor takes: ``--data`` image roots, ``--output`` .npz file."""
    arguments = argparse.ArgumentParser(description=description)
    arguments.add_argument("--data", nargs="+", default=DEFAULT_DATA)
    arguments.add_argument("--output", default=os.path.join(OUTPUT_DIR, file_name))
    return arguments


def image_paths(roots: list[str]) -> list[str]:
    """The labelled images under the roots, as the benchmark finds them."""
    missing = [root for root in roots if not os.path.isdir(root)]
    if missing:
        raise SystemExit(f"no image folder at {missing}: pass --data")
    return [record.path for root in roots for record in layouts.discover(root)[0]]


def write(paths: list[str], compute: Callable[[np.ndarray], np.ndarray], output: str) -> None:
    """``compute(rgb uint8 [H, W, 3])`` for every image, saved as ``paths`` + ``features``."""
    started, rows = time.perf_counter(), []
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
            rows.append(compute(rgb))
        except Exception as error:
            raise SystemExit(f"{path}: could not compute features ({error})") from error
        if index % 100 == 0:
            print(
                f"{index}/{len(paths)} images ({time.perf_counter() - started:.0f} s)", flush=True
            )
    with storage.replaced_when_done(output, suffix=".npz") as partial:
        np.savez(partial, paths=np.array(paths), features=np.stack(rows).astype(np.float32))
    print(f"{len(paths)} images, {rows[0].size} features each: {output}")
