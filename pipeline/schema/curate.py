"""The curated raw-data schema: inferred once from statistics, then held to what matters.

ImportSchemaGen reads ``schema.pbtxt`` beside this file, so ExampleValidator checks each
new span against fixed expectations instead of a schema re-inferred from that same span
(which can never object). Regenerate after changing the features preprocessing writes:

    .venv/bin/python -m pipeline.schema.curate --statistics \\
        outputs/tfx/pipelines/histopath-classifier/StatisticsGen/statistics/<id>/Split-train/FeatureStats.pb

The constraints (``curate``): labels are 0/1; every feature is present once per example;
magnification in [0, 400]; height and width between the minimum side preprocessing accepts
and 50,000 px; tissue fraction in [0, 1], sharpness >= 0; the source format one that
preprocessing can read; patient, slide, source path and subtype without a value domain
(they grow with the data).
"""

import argparse
import os

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2

from modules import features
from preprocessing import storage
from preprocessing.image_io import DEFAULT_MIN_SIDE, SOURCE_FORMATS

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.pbtxt")
MAX_SIDE = 50_000
_FREE_TEXT = (
    features.PATIENT_ID_KEY,
    features.SLIDE_ID_KEY,
    features.SOURCE_KEY,
    features.SUBTYPE_KEY,
)
_INT_RANGES = {
    features.LABEL_KEY: (0, len(features.LABEL_NAMES) - 1),
    features.MAGNIFICATION_KEY: (0, 400),
    features.HEIGHT_KEY: (DEFAULT_MIN_SIDE, MAX_SIDE),
    features.WIDTH_KEY: (DEFAULT_MIN_SIDE, MAX_SIDE),
}
_FLOAT_RANGES = {
    features.TISSUE_FRACTION_KEY: (0.0, 1.0),
    features.SHARPNESS_KEY: (0.0, None),
}


def curate(schema: schema_pb2.Schema) -> schema_pb2.Schema:
    """Replaces inferred domains with the project's constraints; returns a new schema."""
    curated = schema_pb2.Schema()
    curated.CopyFrom(schema)
    del curated.string_domain[:]
    expected = set(features.INT_FEATURES + features.BYTES_FEATURES + features.FLOAT_FEATURES)
    found = {f.name for f in curated.feature}
    if expected - found:
        raise ValueError(f"statistics lack feature(s) {sorted(expected - found)}")
    for feature in curated.feature:
        if feature.name not in expected:
            raise ValueError(f"statistics hold feature {feature.name!r} that features.py lacks")
        feature.ClearField("domain_info")
        feature.presence.min_fraction = 1.0
        feature.presence.min_count = 1
        feature.shape.Clear()
        feature.shape.dim.add().size = 1
        if feature.name in _INT_RANGES:
            low, high = _INT_RANGES[feature.name]
            feature.int_domain.min, feature.int_domain.max = low, high
        elif feature.name in _FLOAT_RANGES:
            low, high = _FLOAT_RANGES[feature.name]
            feature.float_domain.min = low
            if high is not None:
                feature.float_domain.max = high
        elif feature.name == features.SOURCE_FORMAT_KEY:
            feature.string_domain.value.extend(SOURCE_FORMATS)
        elif feature.name in _FREE_TEXT or feature.name == features.IMAGE_KEY:
            pass  # no domain: ids and paths grow with the data, images are bytes
    ordered = sorted(curated.feature, key=lambda f: f.name)  # one file, whatever the source
    del curated.feature[:]
    curated.feature.extend(ordered)
    return curated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--statistics", required=True, help="a FeatureStats.pb of one split")
    parser.add_argument("--output", default=SCHEMA_FILE)
    args = parser.parse_args(argv)
    schema = curate(tfdv.infer_schema(tfdv.load_stats_binary(args.statistics)))
    with storage.replaced_when_done(args.output) as partial:
        tfdv.write_schema_text(schema, partial)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
