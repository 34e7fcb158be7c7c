"""Tuner module file: random search over the head's regularisation.

The recipe (``modules/trainer/recipe``) trains a linear head on cached frozen features, so
what is worth searching is how strongly it is regularised: the L2 weight and the dropout.
Each trial trains with the Trainer's own ``recipe.train`` on the Trainer's own datasets and
is scored by the eval split's best image-level AUC, so the best values carry over unchanged:
the Trainer reads them from ``fn_args.hyperparameters`` (``hyperparameters.tuned_values``).
"""

from typing import Any

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules.trainer import data, devices, recipe
from modules.trainer.hyperparameters import hyperparameters

OBJECTIVE = keras_tuner.Objective("val_auc", direction="max")
PROJECT_NAME = "histopath_tuning"
# Tuner-only keys in custom_config; everything else is a Trainer setting.
TUNER_SETTINGS = ("max_trials",)

# Names are Trainer settings (recipe.HYPERPARAMETERS), so best values override them 1:1.
HEAD_L2_CHOICES = (0.005, 0.01, 0.02, 0.05, 0.1)
DROPOUT_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.5)
SEARCHED = ("head_l2", "dropout")


def search_space() -> keras_tuner.HyperParameters:
    """The search space, declared up front so the Tuner never invents entries."""
    hp = keras_tuner.HyperParameters()
    hp.Choice("head_l2", list(HEAD_L2_CHOICES))
    hp.Choice("dropout", list(DROPOUT_CHOICES))
    return hp


class RecipeHyperModel(keras_tuner.HyperModel):
    """Builds and trains a trial's model exactly as ``trainer_module.run_fn`` would."""

    def __init__(self, settings: dict[str, Any], strategy: tf.distribute.Strategy):
        super().__init__(name="tile_head")
        self.settings = settings
        self.strategy = strategy
        self._built: dict[int, Any] = {}

    def trial_settings(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        """The Trainer's settings with the trial's values; never a head refit, which would
        train on the eval split the trial is scored on (and only cost time)."""
        searched = {k: hp.get(k) for k in SEARCHED}
        return hyperparameters({**self.settings, **searched, "head_refit": False})

    def build(self, hp: keras_tuner.HyperParameters) -> tf.keras.Model:
        with self.strategy.scope():
            model, backbone = recipe.build(self.trial_settings(hp))
        self._built[id(model)] = backbone
        return model

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: tf.keras.Model,
        train_images: recipe.Images,
        eval_images: recipe.Images,
        callbacks: list[tf.keras.callbacks.Callback] | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """The recipe; the objective is the best eval AUC of the head's epochs."""
        del kwargs  # keras_tuner's own fit arguments do not apply to the recipe
        trained = recipe.train(
            train_images,
            eval_images,
            self.trial_settings(hp),
            lambda phase: [],
            strategy=self.strategy,
            built=(model, self._built.pop(id(model))),
        )
        last_phase = list(trained.history.values())[-1]
        return {OBJECTIVE.name: max(last_phase[OBJECTIVE.name])}


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    """TFX Tuner entry point: a RandomSearch over ``search_space`` and the Trainer's inputs."""
    config = dict(fn_args.custom_config or {})
    max_trials = int(config.pop("max_trials"))  # HISTO_TUNER_TRIALS
    settings = hyperparameters(config)
    tf.keras.utils.set_random_seed(int(settings["seed"]))
    strategy = devices.distribution_strategy()
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    tuner = keras_tuner.RandomSearch(
        RecipeHyperModel(settings, strategy),
        objective=OBJECTIVE,
        max_trials=max_trials,
        seed=int(settings["seed"]),
        hyperparameters=search_space(),
        tune_new_entries=False,
        allow_new_entries=False,
        directory=fn_args.working_dir,
        project_name=PROJECT_NAME,
        overwrite=True,
    )
    fit_kwargs = {
        "train_images": lambda: data.image_dataset(fn_args.train_files, tf_transform_output),
        "eval_images": lambda: data.image_dataset(fn_args.eval_files, tf_transform_output),
    }
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs=fit_kwargs)
