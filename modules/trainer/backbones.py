"""ImageNet backbones for the classifier: architecture, input normalisation and weights.

Every backbone takes float32 RGB in [0, 1] and normalises it itself, with the convention its
weights were trained with, so the Transform graph and the serving path never need to know
which backbone is inside. The model's output is the last convolutional feature map (the
output of ``last_conv_layer``), unpooled, for the head and for Grad-CAM.

Weights are resolved in this order (``weights="auto"``), and the outcome is recorded in
``Backbone.weights_source``:

1. an explicit local file (``weights=<path>``);
2. Keras' ImageNet weights: already in ``~/.keras/models`` or the host answers a 2 s probe;
3. ImageNet weights shipped inside registry packages (MobileNetV2 from torchvision,
   DenseNet121 from Keras), converted once and cached;
4. random initialisation, with a loud warning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf

from modules.trainer import weights as weights_lib

logger = logging.getLogger(__name__)

BACKBONES: tuple = ("mobilenet_v2", "efficientnet_b0", "densenet121", "resnet50", "vgg16")
WEIGHT_MODES: tuple = ("auto", "imagenet", "offline", "random")

# caffe-style preprocessing (ResNet50, VGG16): BGR, [0, 255], these means subtracted.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

_APPLICATIONS: dict[str, Callable[..., tf.keras.Model]] = {
    "mobilenet_v2": tf.keras.applications.MobileNetV2,
    "efficientnet_b0": tf.keras.applications.EfficientNetB0,
    "densenet121": tf.keras.applications.DenseNet121,
    "resnet50": tf.keras.applications.ResNet50,
    "vgg16": tf.keras.applications.VGG16,
}

# Layer whose output is the last conv feature map; the model is cut there (VGG16 drops its
# final max-pool so that Grad-CAM and the head see the same map).
_KERAS_LAST_CONV = {
    "mobilenet_v2": "out_relu",
    "efficientnet_b0": "top_activation",
    "densenet121": "relu",
    "resnet50": "conv5_block3_out",
    "vgg16": "block5_conv3",
}
TORCHVISION_LAST_CONV = "out_relu"

# torchvision MobileNetV2: (expansion t, output channels c, repeats n, first stride s).
_TORCHVISION_MOBILENET_V2_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
_TORCH_BN_EPSILON = 1e-5


@dataclasses.dataclass
class Backbone:
    """A feature extractor plus the facts the Trainer records about it."""

    model: tf.keras.Model  # [batch, H, W, 3] RGB in [0, 1] -> last 4-D conv feature map
    name: str
    weights_source: str  # where the weights came from, for the model card / metadata
    last_conv_layer: str  # layer in ``model`` whose output is the last conv map (Grad-CAM)

    @property
    def pretrained(self) -> bool:
        """False for random initialisation, which must be trained whole, BatchNorm included."""
        return not self.weights_source.startswith("random")


@tf.keras.utils.register_keras_serializable(package="histopath_tfx")
class ReverseChannels(tf.keras.layers.Layer):
    """RGB <-> BGR. A weightless layer (not a Lambda) so the model stays serializable and
    unfreezing the backbone can never make the preprocessing trainable."""

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.reverse(inputs, axis=[-1])


# --------------------------------------------------------------------------- preprocessing


def _torch_normalize(x: tf.Tensor, name: str) -> tf.Tensor:
    """[0, 1] RGB -> (x - ImageNet mean) / std: torchvision's and Keras' 'torch' mode."""
    variance = [s * s for s in weights_lib.IMAGENET_STD_RGB]
    return tf.keras.layers.Normalization(
        mean=list(weights_lib.IMAGENET_MEAN_RGB), variance=variance, name=name
    )(x)


def _keras_preprocess(name: str, x: tf.Tensor) -> tf.Tensor:
    """[0, 1] RGB -> what ``keras.applications.<name>.preprocess_input`` would produce."""
    if name == "mobilenet_v2":  # 'tf' mode: [-1, 1]
        return tf.keras.layers.Rescaling(2.0, offset=-1.0, name="preprocess_scale")(x)
    if name == "efficientnet_b0":  # the application rescales/normalises [0, 255] itself
        return tf.keras.layers.Rescaling(255.0, name="preprocess_scale")(x)
    if name == "densenet121":
        return _torch_normalize(x, "preprocess_normalize")
    # resnet50, vgg16: 'caffe' mode.
    x = tf.keras.layers.Rescaling(255.0, name="preprocess_scale")(x)
    x = ReverseChannels(name="preprocess_rgb_to_bgr")(x)
    return tf.keras.layers.Normalization(
        mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="preprocess_center"
    )(x)


# --------------------------------------------------------------------------- architectures


def _input(name: str, image_size: int) -> tf.Tensor:
    return tf.keras.Input((image_size, image_size, 3), dtype=tf.float32, name=f"{name}_input")


def build_keras_architecture(name: str, image_size: int) -> tf.keras.Model:
    """``keras.applications`` backbone (random weights) with its preprocessing folded in."""
    inputs = _input(name, image_size)
    application = _APPLICATIONS[name](
        include_top=False, weights=None, input_tensor=_keras_preprocess(name, inputs)
    )
    features = application.get_layer(_KERAS_LAST_CONV[name]).output
    model = tf.keras.Model(inputs, features, name=f"{name}_backbone")
    if name == "efficientnet_b0":
        set_efficientnet_normalization(model)
    return model


def set_efficientnet_normalization(model: tf.keras.Model) -> None:
    """Give EfficientNet's built-in Normalization ImageNet's mean and variance (std**2).

    Keras' own ImageNet build stores std where the variance belongs and patches it with an
    extra Rescaling layer that only exists for weights="imagenet"; our weights=None build
    lacks that layer, so the statistics are set correctly instead (random init included, to
    keep the Keras input convention).
    """
    layer = next(
        layer
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.Normalization) and layer.weights
    )
    _mean, _variance, count = layer.get_weights()
    mean = np.asarray(weights_lib.IMAGENET_MEAN_RGB, dtype=np.float32)
    std = np.asarray(weights_lib.IMAGENET_STD_RGB, dtype=np.float32)
    layer.set_weights([mean, std * std, count])


def _torch_conv_bn(
    x: tf.Tensor, filters: int, kernel: int, stride: int, conv: str, bn: str, depthwise: bool
) -> tf.Tensor:
    """Conv (torch padding=k//2, i.e. symmetric) + BatchNorm(eps=1e-5), no activation."""
    if kernel > 1 and stride > 1:  # 'same' would pad bottom/right only
        x = tf.keras.layers.ZeroPadding2D(kernel // 2, name=f"{conv}_pad")(x)
        padding = "valid"
    else:  # stride 1: 'same' pads symmetrically, exactly like torch
        padding = "same"
    if depthwise:
        x = tf.keras.layers.DepthwiseConv2D(
            kernel, stride, padding=padding, use_bias=False, name=conv
        )(x)
    else:
        x = tf.keras.layers.Conv2D(
            filters, kernel, stride, padding=padding, use_bias=False, name=conv
        )(x)
    return tf.keras.layers.BatchNormalization(epsilon=_TORCH_BN_EPSILON, name=bn)(x)


def _relu6(x: tf.Tensor, name: str) -> tf.Tensor:
    return tf.keras.layers.ReLU(6.0, name=name)(x)


def _torch_inverted_residual(
    x: tf.Tensor, index: int, in_channels: int, out_channels: int, stride: int, expansion: int
) -> tf.Tensor:
    """torchvision ``InvertedResidual`` ``features.<index>``; layer names mirror its modules."""
    prefix = f"features_{index}_conv"
    shortcut = x
    step = 0
    if expansion != 1:
        x = _torch_conv_bn(
            x, in_channels * expansion, 1, 1, f"{prefix}_0_0", f"{prefix}_0_1", depthwise=False
        )
        x = _relu6(x, f"{prefix}_0_relu6")
        step = 1
    x = _torch_conv_bn(x, 0, 3, stride, f"{prefix}_{step}_0", f"{prefix}_{step}_1", depthwise=True)
    x = _relu6(x, f"{prefix}_{step}_relu6")
    x = _torch_conv_bn(
        x, out_channels, 1, 1, f"{prefix}_{step + 1}", f"{prefix}_{step + 2}", depthwise=False
    )
    if stride == 1 and in_channels == out_channels:
        x = tf.keras.layers.Add(name=f"features_{index}_add")([shortcut, x])
    return x


def build_torchvision_mobilenet_v2(image_size: int) -> tf.keras.Model:
    """torchvision's MobileNetV2 (width 1.0) rebuilt in Keras, layer for layer.

    Differs from ``keras.applications.MobileNetV2`` where it matters for reusing torch
    weights: symmetric padding on stride-2 convs, BatchNorm eps 1e-5, torch-style input
    normalisation. Conv/BN layers are named after the torch module path ('.' -> '_').
    """
    inputs = _input("mobilenet_v2", image_size)
    x = _torch_normalize(inputs, "torchvision_normalize")
    x = _torch_conv_bn(x, 32, 3, 2, "features_0_0", "features_0_1", depthwise=False)
    x = _relu6(x, "features_0_relu6")
    channels, index = 32, 1
    for expansion, out_channels, repeats, first_stride in _TORCHVISION_MOBILENET_V2_BLOCKS:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            x = _torch_inverted_residual(x, index, channels, out_channels, stride, expansion)
            channels, index = out_channels, index + 1
    x = _torch_conv_bn(x, 1280, 1, 1, f"features_{index}_0", f"features_{index}_1", False)
    x = _relu6(x, TORCHVISION_LAST_CONV)
    return tf.keras.Model(inputs, x, name="mobilenet_v2_torchvision_backbone")


# --------------------------------------------------------------------------- weight sources


def _from_file(name: str, image_size: int, path: Path) -> Backbone:
    """Step 1: an explicit weights file, in whichever layout it was saved from."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if name == "mobilenet_v2" and weights_lib.file_uses_torchvision_layout(path):
        model, last_conv = build_torchvision_mobilenet_v2(image_size), TORCHVISION_LAST_CONV
    elif path.suffix == ".pth":
        raise ValueError(f".pth weights are only supported for mobilenet_v2, not {name}")
    else:
        model, last_conv = build_keras_architecture(name, image_size), _KERAS_LAST_CONV[name]
    weights_lib.load_weights_file(model, path)
    if name == "efficientnet_b0":
        _repair_keras_efficientnet_file(model)
    return Backbone(model, name, f"file:{path.resolve()}", last_conv)


def _repair_keras_efficientnet_file(model: tf.keras.Model) -> None:
    """A raw Keras efficientnetb0_notop.h5 stores std as the variance; square it back."""
    layer = next(
        layer
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.Normalization) and layer.weights
    )
    variance = layer.get_weights()[1]
    std = weights_lib.IMAGENET_STD_RGB
    if all(abs(float(v) - s) < 1e-4 for v, s in zip(variance, std, strict=True)):
        logger.info("EfficientNet file stores ImageNet std as variance; using std**2")
        set_efficientnet_normalization(model)


def _from_keras(name: str, image_size: int, required: bool) -> Backbone | None:
    """Step 2: Keras' ImageNet weights, if cached or the host answers the probe quickly."""
    cached = weights_lib.cached_keras_weights(name, image_size)
    if cached is None and not weights_lib.internet_reachable():
        message = (
            f"Keras ImageNet weights for {name}: not in {weights_lib.keras_models_dir()} and "
            f"{weights_lib.PROBE_HOST}:{weights_lib.PROBE_PORT} unreachable"
        )
        if required:
            raise RuntimeError(message)
        logger.info("%s; skipping", message)
        return None
    model = build_keras_architecture(name, image_size)
    try:
        weights_lib.transfer_keras_imagenet(model, _APPLICATIONS[name], image_size)
    except Exception as error:  # any download or cache failure: try the next source
        if required:
            raise RuntimeError(f"Keras ImageNet weights for {name} failed: {error}") from error
        logger.warning("Keras ImageNet weights for %s failed (%s); trying next source", name, error)
        return None
    if name == "efficientnet_b0":
        set_efficientnet_normalization(model)
    source = "keras:imagenet" + (f" (cached {cached})" if cached else "")
    return Backbone(model, name, source, _KERAS_LAST_CONV[name])


def _from_offline_package(
    name: str, image_size: int, cache_dir: str | None, required: bool
) -> Backbone | None:
    """Step 3: ImageNet weights shipped inside a registry package, converted and cached."""
    source = weights_lib.OFFLINE_SOURCES.get(name)
    path = source.locate() if source else None
    if path is None:
        message = f"no offline ImageNet weights for {name}" + (
            f": package {source.distribution} not installed" if source else ""
        )
        if required:
            raise RuntimeError(message)
        logger.info("%s; skipping", message)
        return None
    if name == "mobilenet_v2":
        model, last_conv = build_torchvision_mobilenet_v2(image_size), TORCHVISION_LAST_CONV

        def convert(target: tf.keras.Model) -> None:
            weights_lib.convert_torchvision_checkpoint(target, path)

        tag = "mobilenet_v2-torchvision"
    else:  # densenet121: the backbone nested in capricorn's classifier
        model, last_conv = build_keras_architecture(name, image_size), _KERAS_LAST_CONV[name]

        def convert(target: tf.keras.Model) -> None:
            weights_lib.transfer_keras3_submodel(target, path, "densenet121")

        tag = "densenet121-capricorn"
    cache = weights_lib.cache_path(tag, path, cache_dir)
    weights_lib.load_or_convert(model, cache, convert)
    return Backbone(model, name, source.provenance(), last_conv)


def _random(name: str, image_size: int, reason: str) -> Backbone:
    """Step 4: random initialisation, with the Keras input convention."""
    if reason:
        logger.warning(
            "!!! NO IMAGENET WEIGHTS for backbone %s (%s): training from RANDOM "
            "initialisation; expect much worse accuracy !!!",
            name,
            reason,
        )
    model = build_keras_architecture(name, image_size)
    source = "random" + (f" ({reason})" if reason else " (requested)")
    return Backbone(model, name, source, _KERAS_LAST_CONV[name])


# --------------------------------------------------------------------------- entry point


def build_backbone(
    name: str, image_size: int, weights: str = "auto", cache_dir: str | None = None
) -> Backbone:
    """Build backbone ``name`` for square ``image_size`` inputs.

    ``weights``: "auto" (file > Keras > offline package > random), "imagenet" (Keras only),
    "offline" (registry package only), "random", or a path to a local weights file (.h5,
    .weights.h5, .keras; .pth for mobilenet_v2). ``cache_dir`` holds converted weights.
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights not in WEIGHT_MODES:
        backbone = _from_file(name, image_size, Path(weights).expanduser())
    elif weights == "random":
        backbone = _random(name, image_size, reason="")
    elif weights == "imagenet":
        backbone = _from_keras(name, image_size, required=True)
    elif weights == "offline":
        backbone = _from_offline_package(name, image_size, cache_dir, required=True)
    else:
        backbone = _from_keras(name, image_size, required=False) or _from_offline_package(
            name, image_size, cache_dir, required=False
        )
        if backbone is None:
            backbone = _random(name, image_size, "no ImageNet weights available")
    logger.info("backbone %s: weights %s", name, backbone.weights_source)
    return backbone
