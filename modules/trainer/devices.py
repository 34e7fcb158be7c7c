"""How training spreads over the machine: the distribution strategy, the global batch, and
the steps of a fine-tuning epoch. The same code runs on a laptop's CPU and a GPU node.
"""

import math
from typing import Any

import tensorflow as tf


def global_batch_size(per_replica: int, replicas: int) -> int:
    """Each replica keeps the configured batch, so the global batch grows with replicas."""
    return int(per_replica) * max(1, int(replicas))


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across local GPUs (mixed precision on), the default strategy on CPU."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def fine_tune_steps(
    n_train: int, hp: dict[str, Any], replicas: int, train_steps: int | None
) -> int:
    """Steps per fine-tuning epoch: one pass over the training tiles, capped so that all
    epochs stay within ``train_steps`` (TFX passes None when num_steps is unset)."""
    tiles_per_image = 6  # BreakHis-sized images; the cap below is what matters
    steps = math.ceil(n_train * tiles_per_image / global_batch_size(hp["batch_size"], replicas))
    if train_steps and int(hp["epochs_fine_tune"]) > 0:
        steps = min(steps, train_steps // int(hp["epochs_fine_tune"]))
    return max(1, steps)
