"""Tuner module file: random search over the few settings that matter for transfer learning.

Learning rate, head dropout and how much of the backbone to fine-tune are searched; each
trial builds, trains (both phases, same callbacks, class weights and augmentation) and
scores its model with the Trainer's own code, so the best values carry over unchanged:
the Trainer reads them from ``fn_args.hyperparameters``
(``trainer_module.tuned_values``). The objective is the best validation AUC of the last
phase, because that phase's model is the one the Trainer exports.
"""

from typing import Any

import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx

from modules.trainer import trainer_module

OBJECTIVE = keras_tuner.Objective("val_auc", direction="max")
PROJECT_NAME = "histopath_tuning"
DEFAULT_MAX_TRIALS = 4
# Tuner-only keys in custom_config; everything else is a Trainer setting.
TUNER_SETTINGS = ("max_trials",)

# Names are Trainer settings (trainer_module.DEFAULTS), so best values override them 1:1.
LEARNING_RATE_RANGE = (1e-4, 3e-3)  # head phase; Adam on a frozen ImageNet backbone
DROPOUT_CHOICES = (0.1, 0.2, 0.3, 0.4, 0.5)
FINE_TUNE_FRACTION_CHOICES = (0.0, 0.1, 0.2, 0.3, 0.5)  # 0: head only, no fine-tuning
SEARCHED = ("learning_rate", "dropout", "fine_tune_fraction")


def search_space() -> keras_tuner.HyperParameters:
    """The search space, declared up front so the Tuner never invents entries."""
    hp = keras_tuner.HyperParameters()
    hp.Float("learning_rate", *LEARNING_RATE_RANGE, sampling="log")
    hp.Choice("dropout", list(DROPOUT_CHOICES))
    hp.Choice("fine_tune_fraction", list(FINE_TUNE_FRACTION_CHOICES))
    return hp


def _backbone_of(model: tf.keras.Model) -> tf.keras.Model:
    """The nested backbone model inside ``build_classifier``'s model."""
    return next(layer for layer in model.layers if isinstance(layer, tf.keras.Model))


class TwoPhaseHyperModel(keras_tuner.HyperModel):
    """Builds and fits a trial's model exactly as ``trainer_module.run_fn`` would."""

    def __init__(self, settings: dict[str, Any], strategy: tf.distribute.Strategy):
        super().__init__(name="two_phase_transfer")
        self.settings = settings
        self.strategy = strategy

    def trial_settings(self, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
        return trainer_module.hyperparameters({**self.settings, **{k: hp.get(k) for k in SEARCHED}})

    def build(self, hp: keras_tuner.HyperParameters) -> tf.keras.Model:
        model, _ = trainer_module.build_model(self.trial_settings(hp))
        return model

    def fit(
        self,
        hp: keras_tuner.HyperParameters,
        model: tf.keras.Model,
        callbacks: list[tf.keras.callbacks.Callback] | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Both phases; keras_tuner's own callbacks (reporting, best epoch) watch both."""
        settings = self.trial_settings(hp)
        patience = int(settings["early_stopping_patience"])
        history = trainer_module.fit_two_phases(
            model,
            _backbone_of(model),
            settings,
            self.strategy,
            lambda phase: list(callbacks or []) + trainer_module.schedule_callbacks(patience),
            **kwargs,
        )
        last_phase = list(history.values())[-1]
        return {OBJECTIVE.name: max(last_phase[OBJECTIVE.name])}


def tuner_fn(fn_args: tfx.components.FnArgs) -> tfx.components.TunerFnResult:
    """TFX Tuner entry point: a RandomSearch over ``search_space`` and the Trainer's inputs."""
    config = dict(fn_args.custom_config or {})
    max_trials = int(config.pop("max_trials", DEFAULT_MAX_TRIALS))
    settings = trainer_module.hyperparameters(config)
    tf.keras.utils.set_random_seed(int(settings["seed"]))
    strategy = trainer_module.distribution_strategy()
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
    inputs = trainer_module.training_inputs(
        fn_args, tf_transform_output, settings, strategy.num_replicas_in_sync
    )
    tuner = keras_tuner.RandomSearch(
        TwoPhaseHyperModel(settings, strategy),
        objective=OBJECTIVE,
        max_trials=max_trials,
        seed=int(settings["seed"]),
        hyperparameters=search_space(),
        tune_new_entries=False,
        allow_new_entries=False,
        distribution_strategy=strategy if strategy.num_replicas_in_sync > 1 else None,
        directory=fn_args.working_dir,
        project_name=PROJECT_NAME,
        overwrite=True,
    )
    return tfx.components.TunerFnResult(tuner=tuner, fit_kwargs=inputs.fit_kwargs)
