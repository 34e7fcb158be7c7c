"""Grad-CAM (Selvaraju et al.) for the classifier built in ``modules/trainer/model.py``.

The classifier nests its backbone as a Keras Model, so the backbone's last conv map is not
a tensor of the classifier's graph. We therefore run the backbone as a two-output model
(last conv map, backbone output) and then the head layers that follow it in the
classifier, under one GradientTape. Flat models without a nested backbone are handled too.
The score differentiated is the malignant logit (the sigmoid's input): the probability's
gradient vanishes when a confident model saturates. Negating it gives the benign map for
free (same gradients, opposite sign before the ReLU): on a confidently benign tile the
malignant map is empty by design, and the benign map is what a reader wants to see.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass
class CamResult:
    heatmaps: np.ndarray  # float32 [N, H, W] in [0, 1]: evidence for malignant, input size
    benign_heatmaps: np.ndarray  # same for the benign score (the negated logit)
    probabilities: np.ndarray  # float32 [N]: the model's malignant probability
    conv_layer: str  # the layer whose feature map was used
    conv_layer_source: str  # "metadata" or "search"


def find_backbone(model: tf.keras.Model) -> tf.keras.Model | None:
    """The nested Model inside the classifier (the backbone), or None for a flat model."""
    nested = [layer for layer in model.layers if isinstance(layer, tf.keras.Model)]
    return nested[0] if nested else None


def _is_feature_map(layer: tf.keras.layers.Layer) -> bool:
    if isinstance(layer, tf.keras.layers.InputLayer):
        return False
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):  # layers used more than once have no single output
        return False
    return len(shape) == 4


def find_last_conv(network: tf.keras.Model, hint: str | None = None) -> tuple[str, str]:
    """(layer name, "metadata" | "search"): ``hint`` if the layer exists and is 4-D,
    else the last layer with a 4-D output. Raises ValueError when there is none."""
    if hint:
        try:
            if _is_feature_map(network.get_layer(hint)):
                return hint, "metadata"
        except ValueError:
            pass
    for layer in reversed(network.layers):
        if _is_feature_map(layer):
            return layer.name, "search"
    raise ValueError(f"no layer with a 4-D output in {network.name}: Grad-CAM needs a conv map")


def _head_layers(model: tf.keras.Model, backbone: tf.keras.layers.Layer) -> list:
    """The chain of layers after the backbone up to the model output (GAP, Dropout, Dense)."""
    members = {id(layer) for layer in model.layers}
    chain, layer = [], backbone
    while True:
        # One layer may be called again outside this model (the Trainer's head-only model
        # shares the head's layers): each distinct following layer counts once.
        following = list(
            {
                id(node.outbound_layer): node.outbound_layer
                for node in layer.outbound_nodes
                if id(node.outbound_layer) in members
            }.values()
        )
        if not following:
            return chain
        if len(following) > 1:
            raise ValueError(f"{layer.name} feeds several layers; the head must be a chain")
        layer = following[0]
        chain.append(layer)


def _logit_and_probability(head: list, features: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs the head; for a final sigmoid (Dense or Activation) the score is its input, the
    logit."""
    if not head:
        return tf.reshape(features, [-1]), tf.reshape(features, [-1])
    x = features
    for layer in head[:-1]:
        x = layer(x, training=False)
    last = head[-1]
    probability = last(x, training=False)
    if (
        isinstance(last, tf.keras.layers.Activation)
        and last.activation is tf.keras.activations.sigmoid
    ):
        return tf.reshape(x, [-1]), tf.reshape(probability, [-1])  # x: the logit layer's output
    if isinstance(last, tf.keras.layers.Dense) and last.activation is tf.keras.activations.sigmoid:
        logit = tf.matmul(tf.cast(x, last.kernel.dtype), last.kernel)
        if last.use_bias:
            logit = logit + last.bias
        return logit[:, 0], tf.reshape(probability, [-1])
    return tf.reshape(probability, [-1]), tf.reshape(probability, [-1])


def _normalise(cam: tf.Tensor, size: tuple[int, int], joint: bool) -> np.ndarray:
    """ReLU, upsample to the image size, scale to [0, 1] (all-zero stays zero): each map on
    its own, or all maps together (``joint``: the tiles of one image stay comparable)."""
    cam = tf.nn.relu(cam)[..., tf.newaxis]
    cam = tf.image.resize(cam, size, method="bilinear")[..., 0]
    axes = [0, 1, 2] if joint else [1, 2]
    peak = tf.reduce_max(cam, axis=axes, keepdims=True)
    return tf.math.divide_no_nan(cam, peak).numpy().astype(np.float32)


def grad_cam(
    model: tf.keras.Model, images: np.ndarray, conv_hint: str | None = None, joint: bool = False
) -> CamResult:
    """Heatmaps of the malignant score for float images [N, H, W, 3] in [0, 1]; ``joint``
    scales all N maps together (the tiles of one image)."""
    backbone = find_backbone(model)
    network = backbone if backbone is not None else model
    conv_name, source = find_last_conv(network, conv_hint)
    x = tf.convert_to_tensor(images, tf.float32)
    if backbone is not None:
        two_outputs = tf.keras.Model(
            backbone.inputs, [backbone.get_layer(conv_name).output, backbone.outputs[0]]
        )
        head = _head_layers(model, backbone)
        with tf.GradientTape() as tape:
            conv_map, features = two_outputs(x, training=False)
            tape.watch(conv_map)
            logit, probability = _logit_and_probability(head, features)
    else:
        two_outputs = tf.keras.Model(
            model.inputs, [model.get_layer(conv_name).output, model.outputs[0]]
        )
        with tf.GradientTape() as tape:
            conv_map, output = two_outputs(x, training=False)
            tape.watch(conv_map)
            logit = probability = tf.reshape(output, [-1])
    gradients = tape.gradient(logit, conv_map)
    if gradients is None:
        raise ValueError(f"the score does not depend on {conv_name}; cannot compute Grad-CAM")
    channel_weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
    cam = tf.reduce_sum(channel_weights * conv_map, axis=-1)
    size = (int(x.shape[1]), int(x.shape[2]))
    return CamResult(
        heatmaps=_normalise(cam, size, joint),
        benign_heatmaps=_normalise(-cam, size, joint),
        probabilities=probability.numpy().astype(np.float32),
        conv_layer=conv_name,
        conv_layer_source=source,
    )


def centre_of_mass(heatmap: np.ndarray) -> tuple[float, float]:
    """(row, column) of the heatmap's mass, in pixels; the image centre for an empty map."""
    total = float(heatmap.sum())
    rows, cols = np.indices(heatmap.shape)
    if total <= 0:
        return (heatmap.shape[0] - 1) / 2, (heatmap.shape[1] - 1) / 2
    return float((rows * heatmap).sum() / total), float((cols * heatmap).sum() / total)
