"""The classifier on top of a backbone, and the freezing rules of two-phase training."""

import tensorflow as tf

from modules import features
from modules.trainer.backbones import Backbone


def build_classifier(
    backbone: Backbone, image_size: int, dropout: float, head_l2: float = 0.0
) -> tf.keras.Model:
    """Backbone + a linear head on one tile: pool, standardise, dropout, logit, sigmoid.

    A pretrained backbone always runs in inference mode, so its ImageNet BatchNorm statistics
    stay put. A randomly initialised one has no statistics worth keeping: its BatchNorm
    layers follow Keras' learning phase (batch statistics while fitting), or its features
    collapse to a constant and the model learns nothing.

    The head is affine up to the sigmoid, so the mean of tile logits is the logit of the
    mean tile feature: ``recipe`` trains on mean features, serving averages tile logits.
    """
    inputs = tf.keras.Input((image_size, image_size, 3), name=features.TRANSFORMED_IMAGE_KEY)
    x = backbone.model(inputs, training=False if backbone.pretrained else None)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool", dtype="float32")(x)
    # Standardisation of the pooled features, adapted on the training split's features.
    x = tf.keras.layers.Normalization(name="feature_norm", dtype="float32")(x)
    x = tf.keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 even under mixed precision: a sigmoid in float16 saturates.
    regularizer = tf.keras.regularizers.L2(head_l2) if head_l2 > 0 else None
    logit = tf.keras.layers.Dense(
        1, dtype="float32", kernel_regularizer=regularizer, name="malignant_logit"
    )(x)
    outputs = tf.keras.layers.Activation("sigmoid", dtype="float32", name="malignant")(logit)
    return tf.keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")


def freeze_backbone(backbone: tf.keras.Model) -> None:
    backbone.trainable = False


def unfreeze_top(backbone: tf.keras.Model, fraction: float) -> int:
    """Makes the top ``fraction`` of the backbone's layers trainable, BatchNorm excepted.

    Returns how many layers now train. BatchNorm layers stay frozen: their moving statistics
    come from ImageNet and a small histology batch would wreck them.
    """
    backbone.trainable = True
    layers = backbone.layers
    first = int(round(len(layers) * (1.0 - fraction)))
    trainable = 0
    for index, layer in enumerate(layers):
        is_bn = isinstance(layer, tf.keras.layers.BatchNormalization)
        layer.trainable = index >= first and not is_bn
        trainable += int(layer.trainable and bool(layer.weights))
    return trainable
