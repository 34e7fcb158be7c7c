"""Hand-crafted texture features per image, for the quality benchmark's external arms.

BreakHis's own paper (Spanhol et al., IEEE TBME 2016) classified these images with texture
descriptors before any CNN: local binary patterns (LBP), grey-level co-occurrence (GLCM,
Haralick) statistics and parameter-free threshold adjacency statistics (PFTAS). This writes
them per image so that the benchmark judges them on its own patient-disjoint folds:

    .venv/bin/python benchmarks/texture_features.py           # -> outputs/benchmarks/
    .venv/bin/python benchmarks/breakhis_quality.py --arms probe-tiles-refit probe-external \\
        probe-tiles-external --external-features outputs/benchmarks/texture_features.npz

LBP (uniform; 8, 16 and 24 neighbours at radius 1, 2 and 3) and GLCM (contrast,
dissimilarity, homogeneity, energy, correlation, ASM at distances 1, 2 and 4 averaged over
four directions, 64 grey levels) on the grey image and on the haematoxylin channel (colour
deconvolution); PFTAS on each RGB channel.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

from benchmarks import feature_files

LBP_SETTINGS = ((8, 1), (16, 2), (24, 3))  # (neighbours, radius)
GLCM_DISTANCES = (1, 2, 4)
GLCM_ANGLES = (0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_LEVELS = 64
GLCM_PROPERTIES = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")
NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.uint8)


def lbp_histograms(channel: np.ndarray) -> np.ndarray:
    """Uniform LBP code frequencies at each (neighbours, radius)."""
    histograms = []
    for points, radius in LBP_SETTINGS:
        codes = local_binary_pattern(channel, points, radius, "uniform")
        counts, _ = np.histogram(codes, bins=points + 2, range=(0, points + 2), density=True)
        histograms.append(counts)
    return np.concatenate(histograms)


def glcm_statistics(channel: np.ndarray) -> np.ndarray:
    """Haralick-style statistics per distance, averaged over the four directions."""
    levels = (channel.astype(np.uint16) * GLCM_LEVELS // 256).astype(np.uint8)
    matrix = graycomatrix(
        levels, GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS, symmetric=True, normed=True
    )
    return np.concatenate([graycoprops(matrix, p).mean(axis=1) for p in GLCM_PROPERTIES])


def adjacency_statistics(mask: np.ndarray) -> np.ndarray:
    """How many of its 8 neighbours each masked pixel has in the mask, as frequencies."""
    counts = ndimage.convolve(mask.astype(np.uint8), NEIGHBOURS, mode="constant")[mask]
    histogram = np.bincount(counts, minlength=9).astype(np.float64)
    return histogram / max(histogram.sum(), 1.0)


def pftas(rgb: np.ndarray) -> np.ndarray:
    """Threshold adjacency statistics with thresholds from each channel's mean and sd."""
    parts = []
    for channel in np.moveaxis(rgb.astype(np.float64), -1, 0):
        mean, sd = channel.mean(), channel.std()
        for low, high in ((mean - sd, mean + sd), (mean - sd, 255.0), (mean, 255.0)):
            mask = (channel >= low) & (channel <= high)
            parts += [adjacency_statistics(mask), adjacency_statistics(~mask)]
    return np.concatenate(parts)


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin density by colour deconvolution, stretched to 0..255."""
    density = rgb2hed(rgb)[..., 0]
    span = max(float(np.ptp(density)), 1e-8)
    return ((density - density.min()) / span * 255).astype(np.uint8)


def texture_features(rgb: np.ndarray) -> np.ndarray:
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    stain = haematoxylin(rgb)
    return np.concatenate(
        [
            lbp_histograms(grey),
            lbp_histograms(stain),
            glcm_statistics(grey),
            glcm_statistics(stain),
            pftas(rgb),
        ]
    )


def main() -> None:
    args = feature_files.parser(__doc__.split("\n\n")[0], "texture_features.npz").parse_args()
    feature_files.write(feature_files.image_paths(args.data), texture_features, args.output)


if __name__ == "__main__":
    main()
