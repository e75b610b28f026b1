"""The one input convention of every model here: RGB, 112x112, pixels mapped by (x - 127.5) / 128.

Data pipelines, evaluation, export and inference all call these functions, so the convention is
stated exactly once (it is the official GhostFaceNets / insightface one: no BGR swap, no per-channel
mean or std; the result lies in [-0.99609375, 0.99609375]).
"""

from __future__ import annotations

import sys

import numpy as np

PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0
IMAGE_SIZE = 112


def normalize_images(images):
    """Map uint8-range RGB pixels to the model's input range.

    numpy in, float32 numpy out. TensorFlow tensors (eager, or symbolic inside a `tf.data` map or a
    `tf.function`) get TensorFlow ops, whatever the Keras backend, so input pipelines run under JAX and
    PyTorch too. Any other tensor (JAX, PyTorch, Keras symbolic) goes through `keras.ops`.

    Example:
        >>> normalize_images(np.array([0, 255], dtype=np.uint8)).tolist()
        [-0.99609375, 0.99609375]
        >>> import tensorflow as tf
        >>> normalize_images(tf.constant([128], tf.uint8)).numpy().tolist()
        [0.00390625]
    """
    if isinstance(images, np.ndarray) or np.isscalar(images):
        return (np.asarray(images, dtype=np.float32) - PIXEL_MEAN) * PIXEL_SCALE
    if _is_tensorflow_tensor(images):
        tf = sys.modules["tensorflow"]
        return (tf.cast(images, tf.float32) - PIXEL_MEAN) * PIXEL_SCALE
    import keras  # local import keeps numpy-only callers light

    return (keras.ops.cast(images, "float32") - PIXEL_MEAN) * PIXEL_SCALE


def flip_summed(network, pixels, flip: bool = True, one_call: bool = False):
    """`network(normalize(pixels))`, plus with `flip` the network's output for the mirrored images (width
    axis reversed): the official flip test-time augmentation, the one place it is written.

    numpy or TensorFlow pixels (N, H, W, 3), as `normalize_images`. With TensorFlow tensors, `one_call` runs
    original and mirrored images as one batch of 2N (faster inside a compiled graph); numpy runners always get
    two calls of N (a runner may have a fixed batch size).

    Example:
        >>> network = lambda inputs: inputs.reshape(len(inputs), -1)[:, :2] * 2
        >>> pixels = np.arange(2 * 1 * 2 * 3, dtype=np.uint8).reshape(2, 1, 2, 3)
        >>> flip_summed(network, pixels).tolist() == (network(normalize_images(pixels))
        ...     + network(normalize_images(pixels[:, :, ::-1]))).tolist()
        True
    """
    inputs = normalize_images(pixels)
    if not flip:
        return network(inputs)
    if _is_tensorflow_tensor(inputs):
        tf = sys.modules["tensorflow"]
        mirrored = tf.reverse(inputs, axis=[2])
        if one_call:
            outputs = network(tf.concat([inputs, mirrored], axis=0))
            half = tf.shape(inputs)[0]
            return outputs[:half] + outputs[half:]
        return network(inputs) + network(mirrored)
    mirrored = np.ascontiguousarray(inputs[:, :, ::-1])
    return np.asarray(network(inputs), dtype=np.float32) + np.asarray(network(mirrored), dtype=np.float32)


def _is_tensorflow_tensor(value) -> bool:
    """True for tf.Tensor / tf.Variable, without importing TensorFlow (a TF tensor implies TF is loaded)."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(value, (tf.Tensor, tf.Variable))


def denormalize_images(images: np.ndarray) -> np.ndarray:
    """Inverse of `normalize_images` for numpy input: float model input -> uint8 RGB pixels.

    Example:
        >>> denormalize_images(normalize_images(np.array([0, 128, 255]))).tolist()
        [0, 128, 255]
    """
    pixels = np.asarray(images, dtype=np.float32) / PIXEL_SCALE + PIXEL_MEAN
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
