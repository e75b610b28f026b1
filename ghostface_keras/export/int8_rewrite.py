"""Rewrite a model into ops that XNNPACK runs in int8, without changing its function."""

from __future__ import annotations

import numpy as np


def folds_into_producer(alpha: np.ndarray) -> bool:
    """Whether a PReLU with slopes `alpha` takes the three-op int8 form ``z + k |z|`` (every a > -0.5),
    whose first multiply the converter folds into the convolution before it."""
    return bool(np.all((1.0 + np.asarray(alpha, np.float32)) / 2.0 > 0.25))


def _decomposed_prelu_layer(prelu):
    """A layer equal to `prelu` built from LEAKY_RELU(-1) = |x|, per-channel MULs and an ADD.

    prelu(x) = (1 + a) / 2 * x + (1 - a) / 2 * |x| for every alpha a. XNNPACK delegates int8 LEAKY_RELU,
    MUL and ADD but not int8 PRELU (nor the RELU / MINIMUM / MAXIMUM that other decompositions need), so
    with PRELU every activation would leave the delegate and run on slow reference kernels. When every
    a > -1 the form z + k |z| with z = (1 + a) / 2 * x and k = (1 - a) / (1 + a) is used instead: the
    converter folds the first multiply into the convolution before it, leaving three int8 ops; it is
    used only while k <= 3 (a > -0.5), because a large k would magnify the rounding error of |z|.
    """
    import keras

    alpha = np.asarray(prelu.get_weights()[0], dtype=np.float32)
    positive_scale, absolute_scale = (1.0 + alpha) / 2.0, (1.0 - alpha) / 2.0
    if folds_into_producer(alpha):
        ratio = absolute_scale / positive_scale

        def call(x):
            scaled = positive_scale * x
            return scaled + ratio * keras.ops.leaky_relu(scaled, negative_slope=-1.0)

    else:

        def call(x):
            return positive_scale * x + absolute_scale * keras.ops.leaky_relu(x, negative_slope=-1.0)

    return keras.layers.Lambda(call, name=prelu.name)


def _hard_sigmoid_as_relu6(x):
    # clip(0.2 x + 0.5, 0, 1) == relu6(1.2 x + 3) / 6: the converter fuses "+ 3" and RELU6 into the
    # SE conv, while int8 MINIMUM (from clip) is not delegated by XNNPACK
    import keras

    return keras.ops.relu6(1.2 * x + 3.0) * (1.0 / 6.0)


def _average_pool_as_depthwise(pool):
    """Valid-padded AveragePooling2D as a DepthwiseConv2D with constant weights (int8 AVERAGE_POOL_2D
    is not delegated by XNNPACK; a depthwise conv is)."""
    import keras

    pool_height, pool_width = pool.pool_size
    channels = pool.input.shape[-1]
    layer = keras.layers.DepthwiseConv2D(
        (pool_height, pool_width), strides=pool.strides, padding="valid", use_bias=False, name=pool.name
    )
    layer.build(pool.input.shape)
    layer.set_weights([np.full((pool_height, pool_width, channels, 1), 1.0 / (pool_height * pool_width), np.float32)])
    return layer


def _int8_replacement(layer):
    import keras

    if isinstance(layer, keras.layers.PReLU):
        return _decomposed_prelu_layer(layer)
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Activation) and getattr(activation, "__name__", "") == "hard_sigmoid_keras2":
        return keras.layers.Activation(_hard_sigmoid_as_relu6, name=layer.name)
    if isinstance(layer, keras.layers.AveragePooling2D) and layer.padding == "valid":
        return _average_pool_as_depthwise(layer)
    if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
        return xnnpack_int8_equivalent(layer)
    return layer  # shared, weights and all


def xnnpack_int8_equivalent(model):
    """The same function as `model`, written with ops that XNNPACK runs in int8.

    PReLU becomes ``(1 + a) / 2 * x + (1 - a) / 2 * |x|``, the Keras-2 hard sigmoid ``clip(0.2 x + 0.5,
    0, 1)`` becomes ``relu6(1.2 x + 3) / 6`` and valid AveragePooling2D a constant depthwise conv: in
    exact arithmetic nothing changes, and in float32 the outputs of trained weights agree to < 1e-5 of their
    scale (tests/test_export_claims.py), but the full-integer TFLite graph then stays inside one XNNPACK
    partition. Every other layer is shared with `model`, not copied.

    Example:
        >>> import keras
        >>> from ghostface_keras import GhostFaceNetV1
        >>> keras.utils.set_random_seed(0)
        >>> model = GhostFaceNetV1(width=0.5)
        >>> twin = xnnpack_int8_equivalent(model)
        >>> x = np.random.default_rng(0).uniform(-1, 1, (2, 112, 112, 3)).astype("float32")
        >>> a, b = np.asarray(model(x)), np.asarray(twin(x))
        >>> # untrained, the official He initializer makes ~1e6-sized, ill-conditioned outputs: compare directions
        >>> cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        >>> bool(np.all(cosine > 1 - 1e-5))
        True
    """
    import keras

    return keras.models.clone_model(model, clone_function=_int8_replacement)
