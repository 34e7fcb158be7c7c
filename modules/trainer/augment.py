"""Training-only augmentation: tissue has no orientation, and stains vary between labs."""

import tensorflow as tf


def augment(image: tf.Tensor, seed: int = 0) -> tf.Tensor:
    """One float [H, W, 3] image in [0, 1] -> a randomly flipped/rotated/zoomed/stained copy."""
    del seed  # per-op stateful randomness; the global seed makes runs repeatable
    size = image.shape[0]  # static: the model needs a fixed input shape
    image = tf.image.random_flip_left_right(image)
    image = tf.image.random_flip_up_down(image)
    image = tf.image.rot90(image, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
    # Zoom in up to 20%: crop a random square and scale it back up.
    crop = tf.cast(size * tf.random.uniform([], 0.8, 1.0), tf.int32)
    image = tf.image.random_crop(image, tf.stack([crop, crop, 3]))
    image = tf.image.resize(image, [size, size])
    image = tf.image.random_brightness(image, 0.1)
    image = tf.image.random_contrast(image, 0.85, 1.15)
    # Stain augmentation: H&E colour varies with protocol and scanner.
    image = tf.image.random_hue(image, 0.04)
    image = tf.image.random_saturation(image, 0.8, 1.2)
    return tf.clip_by_value(image, 0.0, 1.0)
