"""Synthetic H&E-like tiles with a learnable, pathology-inspired class difference.

What the labels mean: "malignant" tiles are drawn with more, larger, darker and more
variable nuclei in disorganised sheets; "benign" tiles with fewer, small, uniform nuclei
arranged around gland-like lumens. These mimic textbook criteria (cellularity,
pleomorphism, hyperchromasia, loss of architecture) so the pipeline has something real to
learn, but they are drawings: a model trained on them says nothing about diagnostic
accuracy on real tissue. Each patient gets its own stain colours, as slides from different
labs do; the stratified patient split gives every split both classes.
"""

import argparse
import os
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from modules import features

EOSIN = np.array([232.0, 170.0, 200.0])
HEMATOXYLIN = np.array([70.0, 40.0, 120.0])


def _stroma(rng: np.random.Generator, size: int, stain: np.ndarray) -> Image.Image:
    noise = rng.random((size // 8, size // 8))
    texture = Image.fromarray((noise * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    t = np.asarray(texture, dtype=np.float64)[..., None] / 255.0
    rgb = EOSIN * stain * (0.85 + 0.2 * t) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _nucleus_boxes(
    rng: np.random.Generator, size: int, malignant: bool
) -> list[tuple[float, float, float, float]]:
    """(x, y, rx, ry) of each nucleus: gland rings for benign, crowded sheets for malignant."""
    boxes = []
    if malignant:
        for _ in range(int(rng.integers(55, 90) * (size / 224) ** 2)):
            r = rng.uniform(4.5, 11.0) * size / 224
            boxes.append((rng.uniform(0, size), rng.uniform(0, size), r, r * rng.uniform(0.6, 1.0)))
        return boxes
    for _ in range(int(rng.integers(2, 4))):
        cx, cy = rng.uniform(0.2, 0.8, 2) * size
        radius = rng.uniform(0.12, 0.2) * size
        for angle in np.linspace(0, 2 * np.pi, int(rng.integers(10, 16)), endpoint=False):
            r = rng.uniform(3.0, 4.0) * size / 224
            boxes.append((cx + radius * np.cos(angle), cy + radius * np.sin(angle), r, r * 0.8))
    return boxes


def draw_tile(
    rng: np.random.Generator, size: int, malignant: bool, stain: np.ndarray
) -> Image.Image:
    """One tile; ``stain`` scales the H&E colours per patient."""
    image = _stroma(rng, size, stain)
    draw = ImageDraw.Draw(image)
    if not malignant:  # lumens: white gland spaces
        for _ in range(int(rng.integers(1, 3))):
            cx, cy, r = *(rng.uniform(0.2, 0.8, 2) * size), rng.uniform(0.05, 0.1) * size
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(245, 240, 245))
    darkness = 0.65 if malignant else 1.0
    for x, y, rx, ry in _nucleus_boxes(rng, size, malignant):
        shade = HEMATOXYLIN * stain * darkness * rng.uniform(0.85, 1.15)
        color = tuple(int(c) for c in np.clip(shade, 0, 255))
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=color)
    return image.filter(ImageFilter.GaussianBlur(0.8))


def generate(
    output: str,
    images_per_patient: int = 8,
    patients_per_class: int = 10,
    size: int = 224,
    seed: int = 0,
    first_patient: int = 0,
) -> int:
    """Writes ``<class>/<patient>/tile_<k>.png`` under output; returns the number of images.

    ``first_patient`` numbers the patients, so a later call adds new patients beside
    earlier ones (a new span's arrivals).
    """
    count = 0
    chosen = [
        (f"demo-{name[0].upper()}{index:03d}", label)
        for label, name in enumerate(features.LABEL_NAMES)
        for index in range(first_patient, first_patient + patients_per_class)
    ]
    for patient, label in chosen:
        # Seeded by the whole id (a byte sum would give B004 and B040 the same tiles).
        rng = np.random.default_rng([seed, zlib.crc32(patient.encode())])
        # A patient's stain varies a little around the lab's, and each tile around the
        # patient's (as in real slides: two draws of patients look alike to the drift gate).
        patient_stain = rng.uniform(0.96, 1.02, 3)
        folder = os.path.join(output, features.LABEL_NAMES[label], patient)
        os.makedirs(folder, exist_ok=True)
        for k in range(images_per_patient):
            path = os.path.join(folder, f"tile_{k:03d}.png")
            tmp = path + ".tmp"
            stain = patient_stain * rng.normal(1.0, 0.04, 3)
            draw_tile(rng, size, bool(label), stain).save(tmp, format="PNG")
            os.replace(tmp, path)
            count += 1
    return count


def shift_stain_and_focus(src: str, dst: str, od_gain: float = 1.6, blur: float = 2.0) -> None:
    """Copies an image tree as another lab and scanner would see it: denser stain (optical
    density times ``od_gain``), out of focus (a Gaussian blur of ``blur`` px). What the
    drift gate must stop (tests/test_continuous_training.py, benchmarks/drift_batches.py)."""
    for folder, _, names in os.walk(src):
        for name in names:
            out = os.path.join(dst, os.path.relpath(os.path.join(folder, name), src))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            rgb = np.asarray(Image.open(os.path.join(folder, name)).convert("RGB"), np.float64)
            od = -np.log(np.maximum(rgb, 1.0) / 255.0) * od_gain
            shifted = np.clip(255.0 * np.exp(-od), 0, 255).astype(np.uint8)
            Image.fromarray(shifted).filter(ImageFilter.GaussianBlur(blur)).save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="histo-demo-data", description=__doc__)
    parser.add_argument("--output", required=True)
    parser.add_argument("--images-per-patient", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = generate(args.output, args.images_per_patient, size=args.size, seed=args.seed)
    print(f"wrote {n} synthetic demo tiles under {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
