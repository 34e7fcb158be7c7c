"""Keras classifier -> TFLite flatbuffer with dynamic-range quantisation.

Dynamic range stores weights as int8 and keeps activations float: about 4x smaller, no
representative dataset needed, and accuracy close to float, which the parity gate checks.
Only the Keras part is converted (float RGB in [0, 1] at the training size): decoding and
resizing stay on the client, because the Transform graph's image ops do not convert.

A model trained on a GPU carries the mixed_float16 policy, whose float16 ops TFLite's
builtins reject; it is rebuilt in float32 with the same weights before converting.
"""

from collections.abc import Callable
from typing import Any

import tensorflow as tf

QUANTIZATION = "dynamic_range"

Converter = Callable[[tf.keras.Model], bytes]


def _float32_config(config: Any) -> Any:
    """A Keras config with every layer's dtype policy replaced by plain float32."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            is_policy = isinstance(value, dict) and value.get("class_name") in (
                "Policy",
                "DTypePolicy",
            )
            if key == "dtype" and (is_policy or value == "mixed_float16"):
                out[key] = "float32"
            else:
                out[key] = _float32_config(value)
        return out
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def graph_model(model: tf.keras.Model) -> tf.keras.Model:
    """Only the layers on the input->output path (drops the tracked Transform layer that a
    loaded Trainer model carries, which has no Keras config)."""
    return tf.keras.Model(model.inputs, model.outputs, name=model.name)


def float32_model(model: tf.keras.Model) -> tf.keras.Model:
    """``model`` itself if it computes in float32, else a float32 rebuild with its weights."""
    import modules.trainer.backbones  # noqa: F401  (custom layers for from_config)

    core = graph_model(model)

    def policies(network: tf.keras.Model) -> set:
        names = set()
        for layer in network.layers:
            names.add(layer.dtype_policy.name)
            if isinstance(layer, tf.keras.Model):
                names |= policies(layer)
        return names

    if policies(core) <= {"float32"}:
        return core
    clone = tf.keras.Model.from_config(_float32_config(core.get_config()))
    clone.set_weights(core.get_weights())
    return clone


def convert_dynamic_range(model: tf.keras.Model) -> bytes:
    """From the model's frozen inference function: ``from_keras_model`` first saves the
    whole Keras object graph as a SavedModel, which took most of the component's time."""
    core = float32_model(model)
    spec = tf.TensorSpec([None, *core.inputs[0].shape[1:]], tf.float32)
    function = tf.function(lambda images: core(images, training=False))
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function(spec)], core
    )
    # Freeze the function's graph; lowering through a SavedModel would save it all again.
    converter.experimental_lower_to_saved_model = False
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()
