"""Transform module file: encoded image bytes -> float RGB at the training size.

Decoding and resizing here (not in the Trainer) puts the exact same preprocessing into the
serving graph, so clients send raw PNG/JPEG bytes. The image is resized to the size the
model trains at and no bigger: decoded floats take ~15x the encoded bytes on disk.
"""

from typing import Any

import tensorflow as tf

from modules import features


def decode_and_resize(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """[batch] or [batch, 1] encoded images -> float32 [batch, size, size, 3] in [0, 1]."""

    def one(image_bytes: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)  # uint8 -> [0, 1]
        image = tf.image.resize(image, [image_size, image_size], antialias=True)
        return tf.clip_by_value(image, 0.0, 1.0)

    return tf.map_fn(
        one,
        tf.reshape(encoded, [-1]),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def preprocessing_fn(
    inputs: dict[str, tf.Tensor], custom_config: dict[str, Any] | None = None
) -> dict[str, tf.Tensor]:
    """tf.Transform entry point; ``custom_config['image_size']`` comes from pipeline configs."""
    image_size = int((custom_config or {}).get("image_size", features.DEFAULT_IMAGE_SIZE))
    outputs = {
        features.TRANSFORMED_IMAGE_KEY: decode_and_resize(inputs[features.IMAGE_KEY], image_size)
    }
    if features.LABEL_KEY in inputs:  # absent at serving time
        outputs[features.TRANSFORMED_LABEL_KEY] = tf.reshape(inputs[features.LABEL_KEY], [-1])
    return outputs
