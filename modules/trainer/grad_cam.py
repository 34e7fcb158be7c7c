"""Grad-CAM (Selvaraju et al.) for the classifier built in ``modules/trainer/model.py``.

The classifier nests its backbone as a Keras Model, so the backbone's last conv map is not
a tensor of the classifier's graph. We therefore run the backbone as a two-output model
(last conv map, backbone output) and then the head layers that follow it in the
classifier, under one GradientTape. Flat models without a nested backbone are handled too.
The score differentiated is the malignant logit (the sigmoid's input): the probability's
gradient vanishes when a confident model saturates. Negating it gives the benign map for
free (same gradients, opposite sign before the ReLU): on a confidently benign tile the
malignant map is empty by design, and the benign map is what a reader wants to see.

``cam_network`` + ``raw_cam`` are plain TensorFlow ops, so the exported model's
``explain_image`` signature (``modules/trainer/export.py``) serves the same computation as
the GradCam component, which calls ``grad_cam``.
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
    """The nested Model inside the classifier (the backbone), or None for a flat model.
    Models only tracked as attributes (the export's Transform layer) are not in its graph."""
    nested = [
        layer for layer in model.layers if isinstance(layer, tf.keras.Model) and layer.inbound_nodes
    ]
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


@dataclasses.dataclass
class CamNetwork:
    """What Grad-CAM needs of a classifier, built once (the exported model tracks it)."""

    two_outputs: tf.keras.Model  # tiles -> (last conv map, backbone or model output)
    head: list  # the classifier's layers after the backbone; [] for a flat model
    conv_layer: str
    conv_layer_source: str  # "metadata" or "search"


def cam_network(model: tf.keras.Model, conv_hint: str | None = None) -> CamNetwork:
    backbone = find_backbone(model)
    network = backbone if backbone is not None else model
    conv_name, source = find_last_conv(network, conv_hint)
    outputs = [network.get_layer(conv_name).output, network.outputs[0]]
    two_outputs = tf.keras.Model(network.inputs, outputs, name="grad_cam_outputs")
    head = _head_layers(model, backbone) if backbone is not None else []
    return CamNetwork(two_outputs, head, conv_name, source)


def raw_cam(network: CamNetwork, tiles: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(class-activation maps [N, h, w] before the ReLU, malignant probability [N])."""
    with tf.GradientTape() as tape:
        conv_map, output = network.two_outputs(tiles, training=False)
        tape.watch(conv_map)
        if network.head:
            logit, probability = _logit_and_probability(network.head, output)
        else:
            logit = probability = tf.reshape(output, [-1])
    gradients = tape.gradient(logit, conv_map)
    if gradients is None:
        raise ValueError(
            f"the score does not depend on {network.conv_layer}; cannot compute Grad-CAM"
        )
    conv_map = tf.cast(conv_map, tf.float32)
    channel_weights = tf.reduce_mean(tf.cast(gradients, tf.float32), axis=[1, 2], keepdims=True)
    return tf.reduce_sum(channel_weights * conv_map, axis=-1), tf.cast(probability, tf.float32)


def normalised(cam: tf.Tensor, size: tuple[int, int], joint: bool) -> tf.Tensor:
    """ReLU, upsample [N, h, w] to ``size``, scale to [0, 1] (all-zero stays zero): each map
    on its own, or all maps together (``joint``: the tiles of one image stay comparable)."""
    cam = tf.nn.relu(cam)[..., tf.newaxis]
    cam = tf.image.resize(cam, size, method="bilinear")[..., 0]
    axes = [0, 1, 2] if joint else [1, 2]
    peak = tf.reduce_max(cam, axis=axes, keepdims=True)
    return tf.math.divide_no_nan(cam, peak)


def image_heatmaps(
    network: CamNetwork, tiles: tf.Tensor, rows: tf.Tensor, cols: tf.Tensor, side: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """(malignant, benign) maps [side, side] over one image cut into ``rows`` x ``cols``
    tiles (row-major): the tiles' maps stitched in place, scaled together."""
    cam, _ = raw_cam(network, tiles)
    h, w = tf.shape(cam)[1], tf.shape(cam)[2]
    grid = tf.transpose(tf.reshape(cam, [rows, cols, h, w]), [0, 2, 1, 3])
    stitched = tf.reshape(grid, [1, rows * h, cols * w])
    size = (side, side)
    return normalised(stitched, size, True)[0], normalised(-stitched, size, True)[0]


def grad_cam(
    model: tf.keras.Model, images: np.ndarray, conv_hint: str | None = None, joint: bool = False
) -> CamResult:
    """Heatmaps of the malignant score for float images [N, H, W, 3] in [0, 1]; ``joint``
    scales all N maps together (the tiles of one image)."""
    network = cam_network(model, conv_hint)
    x = tf.convert_to_tensor(images, tf.float32)
    cam, probability = raw_cam(network, x)
    size = (int(x.shape[1]), int(x.shape[2]))
    return CamResult(
        heatmaps=normalised(cam, size, joint).numpy().astype(np.float32),
        benign_heatmaps=normalised(-cam, size, joint).numpy().astype(np.float32),
        probabilities=probability.numpy().astype(np.float32),
        conv_layer=network.conv_layer,
        conv_layer_source=network.conv_layer_source,
    )


def centre_of_mass(heatmap: np.ndarray) -> tuple[float, float]:
    """(row, column) of the heatmap's mass, in pixels; the image centre for an empty map."""
    total = float(heatmap.sum())
    rows, cols = np.indices(heatmap.shape)
    if total <= 0:
        return (heatmap.shape[0] - 1) / 2, (heatmap.shape[1] - 1) / 2
    return float((rows * heatmap).sum() / total), float((cols * heatmap).sum() / total)
