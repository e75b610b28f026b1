"""Analytic multiply-accumulate (MAC) counts, the "FLOPs" convention of the GhostNet and
GhostFaceNets papers.

`count_flops` sums, for batch 1, kh*kw*(cin/groups)*cout*hout*wout over Conv2D layers,
kh*kw*c*multiplier*hout*wout over DepthwiseConv2D layers and in*out over Dense layers. BatchNorm,
activations, additions, pooling and resizing are not counted.

How this relates to the number the official `Flops.ipynb` prints: that notebook runs the
TensorFlow profiler's float-op count on the traced graph and halves it, so it counts the same MACs
plus about half of the element-wise ops (BN, PReLU, add, multiply, sigmoid, resize): 60.79 M vs our
59.32 M for GhostFaceNetV1-1.3-2 (+2.5 %), 274.05 M vs 267.15 M for GhostFaceNetV2-1.3-1 (+2.6 %).
"""

from __future__ import annotations

import math

import keras


def _spatial(shape) -> int:
    return math.prod(int(d) for d in shape[1:-1])


def _layer_macs(layer) -> int:
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = layer.kernel.shape  # (kh, kw, channels, depth multiplier)
        return math.prod(int(d) for d in kernel) * _spatial(layer.output.shape)
    if isinstance(layer, keras.layers.Conv2D):
        kh, kw, cin_per_group, cout = (int(d) for d in layer.kernel.shape)
        return kh * kw * cin_per_group * cout * _spatial(layer.output.shape)
    if isinstance(layer, keras.layers.Dense):
        kernel_in, kernel_out = (int(d) for d in layer.kernel.shape)
        positions = math.prod(int(d) for d in layer.output.shape[1:-1]) if len(layer.output.shape) > 2 else 1
        return kernel_in * kernel_out * positions
    if isinstance(layer, keras.Model):
        return count_flops(layer)
    return 0


def count_flops(model: keras.Model) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (conv, depthwise conv and dense layers).

    Needs a model built with a fixed input size. Nested models (e.g. an embedding model inside a
    training model) are counted through.

    Example:
        >>> from ghostface_keras import GhostFaceNetV1
        >>> count_flops(GhostFaceNetV1(width=1.3, strides=2))
        59316222
    """
    return sum(_layer_macs(layer) for layer in model.layers)
