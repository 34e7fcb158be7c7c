"""The optional Tuner: its search space, one real trial on tiny data, the hand-over of the best
values to the Trainer (TFX's own writer and reader format), and the pipeline wiring.
"""

from __future__ import annotations

import json
import os
import types

import keras_tuner
import pytest
import tensorflow as tf
from test_trainer import SIZE, TransformOutputStandIn, tiny_splits
from tfx.components.tuner.executor import write_best_hyperparameters
from tfx.dsl.compiler import compiler
from tfx.types import standard_artifacts, standard_component_specs

import local_runner
from histo_testlib import trainer_config
from modules.trainer import hyperparameters, recipe
from modules.tuner import tuner_module


def _fn_args(root: str, monkeypatch, **config) -> types.SimpleNamespace:
    """FnArgs as TFX's Tuner executor fills them, over tiny transformed records."""
    splits = tiny_splits(os.path.join(root, "examples"))
    monkeypatch.setattr(
        tuner_module.tft, "TFTransformOutput", lambda path: TransformOutputStandIn()
    )
    custom_config = {
        **trainer_config(image_size=SIZE, weights="random", batch_size=4, epochs_head=3),
        "max_trials": 1,
        **config,
    }
    return types.SimpleNamespace(
        working_dir=os.path.join(root, "work"),
        train_files=splits["train_files"],
        eval_files=splits["eval_files"],
        train_steps=2,
        eval_steps=1,
        transform_graph_path=os.path.join(root, "transform_graph"),
        custom_config=custom_config,
    )


def test_tuner_fn_searches_the_head_regularisation(tmp_path, monkeypatch):
    fn_args = _fn_args(str(tmp_path), monkeypatch, max_trials=3)
    result = tuner_module.tuner_fn(fn_args)
    tuner = result.tuner
    assert isinstance(tuner, keras_tuner.RandomSearch)
    assert tuner.oracle.max_trials == 3
    assert tuner.oracle.objective.name == "val_auc" and tuner.oracle.objective.direction == "max"
    space = {hp.name: hp for hp in tuner.oracle.hyperparameters.space}
    assert set(space) == {"head_l2", "dropout"}
    assert set(space) <= set(recipe.HYPERPARAMETERS)  # best values map 1:1 onto settings
    assert tuple(space["head_l2"].values) == tuner_module.HEAD_L2_CHOICES
    assert tuple(space["dropout"].values) == tuner_module.DROPOUT_CHOICES
    fit = result.fit_kwargs
    assert set(fit) == {"train_images", "eval_images"}
    labels = [int(y) for _, y in fit["eval_images"]()]
    assert labels == [i % 2 for i in range(6)]  # the Trainer's own eval split


def test_trials_never_refit_the_head_on_the_eval_split_they_are_scored_on():
    settings = hyperparameters.hyperparameters(trainer_config(head_refit=True))
    model = tuner_module.RecipeHyperModel(settings, tf.distribute.get_strategy())
    space = tuner_module.search_space()
    trial = model.trial_settings(space)
    assert trial["head_refit"] is False
    assert {k: trial[k] for k in tuner_module.SEARCHED} == space.values


def test_tuner_fn_rejects_unknown_settings(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"unknown \[.max_trails.\]"):
        tuner_module.tuner_fn(_fn_args(str(tmp_path), monkeypatch, max_trails=2))


def test_one_trial_hands_its_values_to_the_trainer(tmp_path, monkeypatch):
    fn_args = _fn_args(str(tmp_path), monkeypatch, head_batch_size=8)
    result = tuner_module.tuner_fn(fn_args)
    result.tuner.search(**result.fit_kwargs)

    trials = result.tuner.oracle.get_best_trials(1)
    assert len(trials) == 1 and trials[0].score is not None
    # What the TFX Tuner executor writes, and what the Trainer executor then reads.
    best = standard_artifacts.HyperParameters()
    best.uri = str(tmp_path / "best")
    results = standard_artifacts.TunerResults()
    results.uri = str(tmp_path / "results")
    write_best_hyperparameters(
        result.tuner,
        {
            standard_component_specs.BEST_HYPERPARAMETERS_KEY: [best],
            standard_component_specs.TUNER_RESULTS_KEY: [results],
        },
    )
    (written,) = os.listdir(best.uri)
    with open(os.path.join(best.uri, written)) as f:
        config = json.load(f)

    tuned = hyperparameters.tuned_values(config)
    assert tuned == trials[0].hyperparameters.values
    custom = {k: v for k, v in fn_args.custom_config.items() if k != "max_trials"}
    hp = hyperparameters.hyperparameters({**custom, **tuned})
    assert {k: hp[k] for k in tuned} == tuned


def test_tuned_values_drop_keras_tuner_bookkeeping_and_keep_names_checked():
    hp = keras_tuner.HyperParameters()
    hp.Fixed("dropout", 0.4)
    hp.Fixed("tuner/epochs", 3)
    assert hyperparameters.tuned_values(hp.get_config()) == {"dropout": 0.4}
    assert hyperparameters.tuned_values(None) == {}
    odd = keras_tuner.HyperParameters()
    odd.Fixed("drop_out", 0.4)
    with pytest.raises(ValueError, match=r"unknown \['drop_out'\]"):
        hyperparameters.hyperparameters(
            {**trainer_config(), **hyperparameters.tuned_values(odd.get_config())}
        )


# --------------------------------------------------------------------------- pipeline


def _compiled_nodes(tmp_path, **overrides) -> dict:
    """{node id: PipelineNode} of the pipeline compiled to TFX IR."""
    pipeline = local_runner.build(str(tmp_path / "data"), str(tmp_path / "out"), **overrides)
    ir = compiler.Compiler().compile(pipeline)
    return {node.pipeline_node.node_info.id: node.pipeline_node for node in ir.nodes}


def test_pipeline_with_tuner_feeds_the_trainer_its_best_hyperparameters(tmp_path):
    pipeline = local_runner.build(
        str(tmp_path / "data"), str(tmp_path / "out"), enable_tuner=True, tuner_trials=2
    )
    ids = [component.id for component in pipeline.components]
    assert ids.index("Transform") < ids.index("Tuner") < ids.index("Trainer")

    nodes = _compiled_nodes(tmp_path, enable_tuner=True, tuner_trials=2)
    channel = nodes["Trainer"].inputs.inputs["hyperparameters"].channels[0]
    assert channel.producer_node_query.id == "Tuner"
    assert channel.output_key == "best_hyperparameters"
    tuner = nodes["Tuner"]
    assert {"examples", "transform_graph"} <= set(tuner.inputs.inputs)
    assert tuner.inputs.inputs["examples"].channels[0].producer_node_query.id == "Transform"
    parameters = tuner.parameters.parameters
    assert parameters["module_file"].field_value.string_value.endswith(
        os.path.join("modules", "tuner", "tuner_module.py")
    )
    custom_config = json.loads(parameters["custom_config"].field_value.string_value)
    assert custom_config["max_trials"] == 2 and custom_config["backbone"] == "mobilenet_v2"


def test_pipeline_without_tuner_is_unchanged(tmp_path):
    nodes = _compiled_nodes(tmp_path, enable_tuner=False)
    assert "Tuner" not in nodes
    assert "hyperparameters" not in nodes["Trainer"].inputs.inputs


def test_enable_tuner_needs_a_module(tmp_path):
    with pytest.raises(ValueError, match="tuner_module"):
        local_runner.build(
            str(tmp_path / "data"), str(tmp_path / "out"), enable_tuner=True, tuner_module=None
        )


def test_tuner_is_switched_on_from_the_environment(monkeypatch):
    import importlib

    from pipeline import configs

    try:
        monkeypatch.setenv("HISTO_ENABLE_TUNER", "true")
        monkeypatch.setenv("HISTO_TUNER_TRIALS", "7")
        importlib.reload(configs)
        assert configs.ENABLE_TUNER is True and configs.TUNER_TRIALS == 7
        monkeypatch.setenv("HISTO_ENABLE_TUNER", "0")
        importlib.reload(configs)
        assert configs.ENABLE_TUNER is False
    finally:
        monkeypatch.undo()  # the caller's environment, then configs as it reads it
        importlib.reload(configs)
