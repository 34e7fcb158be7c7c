"""What an image looks like, in a few numbers: the features that reveal drift between spans.

A span from another lab (other stain), another scanner (blur, size) or another format
looks different in these numbers long before the model's AUC says so. They are written
into every example and compared by the drift gate (components/drift_gate) against the
span behind the last blessed model.

- stain densities: mean hematoxylin and eosin concentrations over tissue pixels, by colour
  deconvolution in optical-density space (Ruifrok & Johnston 2001, the stain vectors
  scikit-image's ``rgb2hed`` uses);
- tissue fraction: share of pixels that are not bright slide background;
- sharpness: variance of the Laplacian of the grey image at native resolution (centre
  crop), which drops when a scanner is out of focus;
- source format: the file's own encoding (JPEG, PNG, TIFF, ...).
"""

import dataclasses

import numpy as np
from PIL import Image

# Rows: hematoxylin, eosin, DAB stain vectors in RGB optical density (scikit-image's).
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_RGB_FROM_HED = _RGB_FROM_HED / np.linalg.norm(_RGB_FROM_HED, axis=1, keepdims=True)
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)
TISSUE_MIN_OD = 0.15  # optical density of the darkest channel; slide background is ~0.05
_STAIN_SIDE = 256  # stain and tissue figures are read at this size (they are averages)
_SHARPNESS_CROP = 512  # sharpness is read on a native-resolution centre crop of this side


@dataclasses.dataclass(frozen=True)
class ImageContent:
    stain_hematoxylin: float
    stain_eosin: float
    tissue_fraction: float
    sharpness: float
    source_format: str


def _stains(rgb: np.ndarray) -> tuple[float, float, float]:
    od = -np.log10(np.maximum(rgb, 1.0) / 255.0).reshape(-1, 3)
    tissue = od.max(axis=1) > TISSUE_MIN_OD
    if not tissue.any():
        return 0.0, 0.0, 0.0
    hed = od[tissue] @ _HED_FROM_RGB
    return float(hed[:, 0].mean()), float(hed[:, 1].mean()), float(tissue.mean())


def _sharpness(grey: np.ndarray) -> float:
    h, w = grey.shape
    top, left = max((h - _SHARPNESS_CROP) // 2, 0), max((w - _SHARPNESS_CROP) // 2, 0)
    g = grey[top : top + _SHARPNESS_CROP, left : left + _SHARPNESS_CROP]
    if min(g.shape) < 3:
        return 0.0
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(laplacian.var())


def describe(rgb_image: Image.Image, source_format: str) -> ImageContent:
    """The content figures of the 8-bit RGB pixels ``image_io.load_image`` decoded (the
    pixels the example stores), and the file's own format."""
    grey = np.asarray(rgb_image.convert("L"), dtype=np.float64) / 255.0
    small = rgb_image.copy()
    small.thumbnail((_STAIN_SIDE, _STAIN_SIDE), Image.BILINEAR)
    h, e, tissue = _stains(np.asarray(small, dtype=np.float64))
    return ImageContent(
        stain_hematoxylin=h,
        stain_eosin=e,
        tissue_fraction=tissue,
        sharpness=_sharpness(grey),
        source_format=source_format,
    )
