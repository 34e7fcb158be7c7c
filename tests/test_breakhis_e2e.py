"""The real pipeline, default recipe, on the real BreakHis images (skipped without ../shared).

Both shared sets merged (about 500 images of 30 patients), preprocessed with the default
patient rule and stratified split, then the pipeline with the Trainer's default recipe
(``modules/trainer/recipe``): it must pass every gate and be judged by the Evaluator on
patients it never saw; its held-out test AUC should clear a floor taken from the benchmark
and be blessed and pushed. That last part is not met yet (strict xfail below, with the
measured figure).

The floor: ``benchmarks/breakhis_quality.py`` measured the recipe's per-fold image AUC at
0.823 mean, 0.164 sd over 15 patient-disjoint folds of about 6 patients (README, "Model
quality"; 13 of the 15 folds at or above 0.63); this run's test split is one such split of
6 patients, so the floor is the mean minus one sd, minus a 0.025 margin: 0.63. That is a
floor against a broken recipe (the first one scored 0.52 pooled), not a quality claim; the
benchmark is where quality is measured. It was fixed for the previous defaults and stays:
the current ones measure 0.850 ± 0.148 there, which would put it at 0.68.
"""

import glob
import os

import pytest
import tensorflow as tf

from histo_testlib import ALL_NODES, FAST_BEAM_ARGS, node_states, run_pipeline
from modules import features
from pipeline import configs
from preprocessing import layouts
from preprocessing.beam_job import preprocess

pytestmark = pytest.mark.e2e

HELD_OUT_AUC_FLOOR = 0.63
RATIOS = (0.7, 0.15, 0.15)


@pytest.fixture(scope="module")
def breakhis_run(breakhis_sets, tmp_path_factory) -> dict:
    records, rejects = [], []
    for root in breakhis_sets:
        found, skipped = layouts.discover(root)
        records += found
        rejects += skipped
    root = tmp_path_factory.mktemp("breakhis")
    data, output = str(root / "data"), str(root / "out")
    summary = preprocess(records, rejects, data, RATIOS, beam_args=FAST_BEAM_ARGS)
    # The Trainer's and the blessing's defaults exactly (the test helpers' small budget is
    # for the demo runs); only Beam runs in-process.
    result = run_pipeline(
        data,
        output,
        trainer_config=configs.trainer_config(),
        min_auc=configs.MIN_AUC,
    )
    return {"records": records, "summary": summary, "output": output, "result": result}


def test_default_recipe_on_real_breakhis_passes_every_gate_and_is_judged(breakhis_run):
    """Real slides pass every data gate; the Evaluator judges the default recipe's model on
    patients it never saw, and blessing and pushing follow TFMA's verdict exactly."""
    summary, result = breakhis_run["summary"], breakhis_run["result"]
    assert summary["warnings"] == []
    for split in features.SPLITS:  # both classes in every split (stratified by patient)
        assert summary["splits"][split]["per_class"]["benign"] > 0, summary["splits"]
        assert summary["splits"][split]["per_class"]["malignant"] > 0, summary["splits"]
    states = node_states(
        os.path.join(
            breakhis_run["output"], "tfx", "metadata", "histopath-classifier", "metadata.db"
        )
    )
    assert set(states) == ALL_NODES
    assert all(s[-1] == "COMPLETE" for s in states.values()), states
    assert result["metrics"]["example_count"] == summary["splits"]["test"]["images"]
    assert result["blessed"] is (result["metrics"]["auc"] >= configs.MIN_AUC), result
    assert result["pushed"] is result["blessed"]


@pytest.mark.xfail(
    strict=True,
    reason="goal not met: on this split (test = 6 patients, 79 images) the default recipe "
    "(two scales, head at 3e-4 for every epoch) scored test AUC 0.592, under the 0.63 floor "
    "fixed before the run and the Evaluator's 0.6, so it is not blessed (the previous "
    "defaults: 0.602, blessed); see README 'Demo data'. "
    "Strict: passing means the recipe improved and this mark must go.",
)
def test_default_recipe_on_real_breakhis_is_blessed_above_the_floor(breakhis_run):
    result = breakhis_run["result"]
    assert result["metrics"]["auc"] >= HELD_OUT_AUC_FLOOR, result["metrics"]
    assert result["blessed"] is True and result["pushed"] is True


def test_the_trained_model_answers_a_native_700x460_image(breakhis_run):
    (model_dir,) = glob.glob(
        os.path.join(
            breakhis_run["output"],
            "tfx",
            "pipelines",
            "*",
            "Trainer",
            "model",
            "*",
            "Format-Serving",
        )
    )
    record = next(r for r in breakhis_run["records"] if r.path.endswith(".jpg"))
    with open(record.path, "rb") as f:
        image = f.read()
    loaded = tf.saved_model.load(model_dir)
    out = loaded.signatures["predict_image"](image_bytes=tf.constant([image]))
    probability = float(out[features.PROBABILITY_OUTPUT].numpy()[0])
    threshold = float(out[features.THRESHOLD_OUTPUT].numpy()[0])
    assert 0.0 <= probability <= 1.0 and 0.0 < threshold < 1.0
    assert int(out[features.CLASS_OUTPUT].numpy()[0]) == int(probability >= threshold)
