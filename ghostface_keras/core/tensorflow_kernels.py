"""TensorFlow's fused training kernels, for the layers that use them on the TensorFlow backend.

Kept out of `models/` so that the model code itself stays backend-free (`models.batch_norm` imports this only
when Keras runs on TensorFlow).
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

# cuDNN refuses a smaller epsilon (Keras 2 silently raised it to this); the CPU kernel takes any.
CUDNN_MIN_EPSILON = 1.001e-5


@functools.lru_cache(maxsize=1)
def gpus_visible() -> bool:
    """Whether TensorFlow sees a GPU (where the fused batch norm needs epsilon >= `CUDNN_MIN_EPSILON`)."""
    return bool(tf.config.list_physical_devices("GPU"))


def batch_norm_training(inputs, gamma, beta, epsilon: float):
    """Batch statistics normalization of NHWC or (batch, channels) `inputs` by `FusedBatchNormV3`.

    Returns `(outputs, mean, variance)` in float32, `variance` the biased batch variance (the kernel's own is
    Bessel-corrected, n / (n - 1) for n values per channel; this undoes it). `gamma` / `beta` may be None
    (ones / zeros).

    Example:
        >>> x = np.arange(24, dtype="float32").reshape(2, 2, 2, 3)
        >>> outputs, mean, variance = batch_norm_training(x, None, None, 1e-5)
        >>> [float(v) for v in mean], bool(np.allclose(variance, x.reshape(-1, 3).var(0), rtol=1e-6))
        ([10.5, 11.5, 12.5], True)
    """
    x = tf.cast(inputs, "float32")
    shape, channels = tf.shape(x), x.shape[-1]
    flat = len(x.shape) == 2
    if flat:
        x = tf.reshape(x, [-1, 1, 1, channels])
    gamma = tf.ones([channels]) if gamma is None else tf.cast(gamma, "float32")
    beta = tf.zeros([channels]) if beta is None else tf.cast(beta, "float32")
    outputs, mean, corrected = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, data_format="NHWC",
                                                                is_training=True)
    static = inputs.shape[:-1]
    if all(side is not None for side in static):  # a constant factor: no shape ops in the graph
        count = max(int(np.prod(static)), 1)
        variance = corrected * (max(count - 1, 1) / count)
    else:
        count = tf.cast(tf.size(x) // channels, "float32")
        variance = corrected * tf.maximum(count - 1.0, 1.0) / count
    return (tf.reshape(outputs, shape) if flat else outputs), mean, variance
