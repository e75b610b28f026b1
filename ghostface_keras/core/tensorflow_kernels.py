"""TensorFlow's fused training kernels, for the layer and the optimizer that use them on the TensorFlow backend.

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
    channels, flat = x.shape[-1], len(x.shape) == 2
    if flat:  # (batch, channels) as (batch, 1, 1, channels)
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
    return (tf.reshape(outputs, [-1, channels]) if flat else outputs), mean, variance


def keras_momentum_update(variable, accumulator, learning_rate, gradient, momentum: float, nesterov: bool) -> None:
    """`accumulator <- momentum * accumulator - lr * gradient; variable <- variable + accumulator` (Nesterov:
    `+ momentum * accumulator - lr * gradient`) in one `ResourceApplyKerasMomentum` kernel, on `tf.Variable`s.

    Example:
        >>> variable, accumulator = tf.Variable([1.0]), tf.Variable([0.0])
        >>> keras_momentum_update(variable, accumulator, 0.1, tf.constant([1.0]), 0.9, False)
        >>> round(float(variable[0]), 6), round(float(accumulator[0]), 6)
        (0.9, -0.1)
    """
    dtype = variable.dtype
    tf.raw_ops.ResourceApplyKerasMomentum(
        var=variable.handle, accum=accumulator.handle, lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
        momentum=tf.cast(momentum, dtype), use_locking=False, use_nesterov=bool(nesterov))
