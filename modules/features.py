"""The one place for feature keys, label names and the transformed-feature contract.

Everything that writes or reads a ``tf.train.Example`` of this project (the Beam
preprocessing, the Transform and Trainer modules, the leakage gate, the serving
signatures and the tests) takes its names from here.
"""

# Raw features written by ``preprocessing`` into every tf.Example.
IMAGE_KEY = "image"  # encoded PNG/JPEG bytes, as found on disk
LABEL_KEY = "label"  # int64: index into LABEL_NAMES
PATIENT_ID_KEY = "patient_id"  # bytes: the patient (preprocessing.patients' rule)
SLIDE_ID_KEY = "slide_id"  # bytes: the slide (or image-level id) as the source names it
MAGNIFICATION_KEY = "magnification"  # int64: 40/100/200/400 for BreakHis, 0 if unknown
HEIGHT_KEY = "height"  # int64: pixels of the stored image
WIDTH_KEY = "width"  # int64
SOURCE_KEY = "source"  # bytes: path relative to the input root
SUBTYPE_KEY = "subtype"  # bytes: tumour subtype from the file name, "" if none
# Image-content features (preprocessing/image_content.py), compared between spans for drift.
STAIN_HEMATOXYLIN_KEY = "stain_hematoxylin"  # float: mean H density over tissue (OD)
STAIN_EOSIN_KEY = "stain_eosin"  # float: mean E density over tissue (OD)
TISSUE_FRACTION_KEY = "tissue_fraction"  # float: share of non-background pixels
SHARPNESS_KEY = "sharpness"  # float: variance of the Laplacian, native resolution
SOURCE_FORMAT_KEY = "source_format"  # bytes: the file's own encoding (JPEG, PNG, TIFF...)

LABEL_NAMES: tuple[str, ...] = ("benign", "malignant")
POSITIVE_LABEL = 1  # "malignant" is the positive class for every metric

# Splits written by preprocessing and read by ImportExampleGen, in this order.
TRAIN_SPLIT = "train"
EVAL_SPLIT = "eval"
TEST_SPLIT = "test"
SPLITS: tuple[str, ...] = (TRAIN_SPLIT, EVAL_SPLIT, TEST_SPLIT)

# Features produced by the Transform module file.
TRANSFORMED_IMAGE_KEY = "image_xf"  # encoded image bytes (the model decodes and tiles)
TRANSFORMED_LABEL_KEY = "label_xf"  # int64 0/1
# The patient, so the Trainer can deal its training patients into calibration folds.
TRANSFORMED_PATIENT_KEY = "patient_xf"  # bytes

# Serving outputs.
PROBABILITY_OUTPUT = "probability"  # malignant probability
CLASS_OUTPUT = "class_id"
CLASS_NAME_OUTPUT = "class_name"
THRESHOLD_OUTPUT = "threshold"  # the model's operating threshold, so clients can aggregate
# ``explain_image`` also returns Grad-CAM maps over the whole image, [HEATMAP_SIDE]^2 each,
# in [0, 1] (stretch to the image's own size to overlay): evidence for each class.
HEATMAP_OUTPUT = "heatmap"
BENIGN_HEATMAP_OUTPUT = "benign_heatmap"
HEATMAP_SIDE = 64

INT_FEATURES: tuple[str, ...] = (LABEL_KEY, MAGNIFICATION_KEY, HEIGHT_KEY, WIDTH_KEY)
BYTES_FEATURES: tuple[str, ...] = (
    IMAGE_KEY,
    PATIENT_ID_KEY,
    SLIDE_ID_KEY,
    SOURCE_KEY,
    SUBTYPE_KEY,
    SOURCE_FORMAT_KEY,
)
FLOAT_FEATURES: tuple[str, ...] = (
    STAIN_HEMATOXYLIN_KEY,
    STAIN_EOSIN_KEY,
    TISSUE_FRACTION_KEY,
    SHARPNESS_KEY,
)


def label_from_name(name: str) -> int:
    """Map a class folder or class word ("benign", "malignant", "0", "1", "B", "M") to 0/1."""
    key = name.strip().lower()
    aliases: dict[str, int] = {
        "benign": 0,
        "b": 0,
        "0": 0,
        "malignant": 1,
        "m": 1,
        "1": 1,
    }
    if key not in aliases:
        raise ValueError(f"unknown label {name!r}: expected one of {sorted(aliases)}")
    return aliases[key]
