"""The real pipeline on the real BreakHis crops (skipped where ../shared is absent).

78 images of 13 patients are far too few to judge a classifier, so this checks that real
slides with BreakHis metadata (subtypes, patient ids, no magnification) pass every gate,
train, evaluate per slice and serve; quality is measured by benchmarks/breakhis_quality.py.
"""

import os

import pytest
import tensorflow as tf

from histo_testlib import ALL_NODES, FAST_BEAM_ARGS, node_states, run_pipeline
from modules import features
from preprocessing import layouts
from preprocessing.beam_job import preprocess

pytestmark = pytest.mark.e2e

# With 13 patients a pure hash split can leave a split without a class; this salt gives
# every split both classes (train 7 patients, eval 2, test 4).
RATIOS, SALT = (0.5, 0.25, 0.25), "a"


def test_pipeline_runs_on_real_breakhis_crops(breakhis_crops, tmp_path):
    records, rejects = layouts.discover(breakhis_crops)
    data = str(tmp_path / "data")
    summary = preprocess(records, rejects, data, RATIOS, salt=SALT, beam_args=FAST_BEAM_ARGS)
    assert summary["warnings"] == []
    output = str(tmp_path / "out")
    result = run_pipeline(data, output, min_auc=0.0)
    states = node_states(
        os.path.join(output, "tfx", "metadata", "histopath-classifier", "metadata.db")
    )
    assert set(states) == ALL_NODES
    assert all(s[-1] == "COMPLETE" for s in states.values()), states
    assert result["pushed"] is True
    assert result["metrics"]["example_count"] == summary["splits"]["test"]["images"]

    crop = next(r for r in records if r.label == 1)
    with open(crop.path, "rb") as f:
        image = f.read()
    loaded = tf.saved_model.load(result["pushed_to"])
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([image]))
    probability = float(out[features.PROBABILITY_OUTPUT].numpy()[0])
    assert 0.0 <= probability <= 1.0
