"""The recipe's settings as the Trainer and the Tuner receive them (custom_config, tuned values).

Kept apart from the Trainer's entry point so that the Tuner, the benchmarks and the tests
read settings without importing ``run_fn``'s module.
"""

from typing import Any

import keras_tuner

from modules.trainer import recipe

# custom_config keys that are not training settings: the pipeline's fingerprint of the
# module code (a cache key only, see pipeline.code_version).
NOT_SETTINGS = ("code_version",)


def hyperparameters(custom_config: dict[str, Any]) -> dict[str, Any]:
    """The recipe's settings from custom_config: every one of ``recipe.HYPERPARAMETERS``.

    The values (and their defaults) come from the pipeline's settings table
    (pipeline/settings.py); this module declares none, so nothing here can disagree.
    """
    config = {k: v for k, v in (custom_config or {}).items() if k not in NOT_SETTINGS}
    unknown = set(config) - set(recipe.HYPERPARAMETERS)
    missing = set(recipe.HYPERPARAMETERS) - set(config)
    if unknown or missing:
        raise ValueError(
            f"trainer custom_config: unknown {sorted(unknown)}, missing {sorted(missing)}; "
            f"expected {sorted(recipe.HYPERPARAMETERS)} (pipeline/settings.py)"
        )
    return config


def tuned_values(tuned_config: dict[str, Any] | None) -> dict[str, Any]:
    """The Tuner's best values from its ``HyperParameters`` config (``fn_args.hyperparameters``).

    They override custom_config; keras_tuner's own bookkeeping entries ("tuner/...") are
    dropped, anything else must be a trainer setting (``hyperparameters`` checks).
    """
    if not tuned_config:
        return {}
    values = keras_tuner.HyperParameters.from_config(tuned_config).values
    return {k: v for k, v in values.items() if not k.startswith("tuner/")}
