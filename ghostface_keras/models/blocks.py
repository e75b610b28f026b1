"""Functional building blocks shared by every architecture here.

Each builder takes a Keras tensor, a `name` prefix and a `LayerSettings`, and names every layer it
creates `<prefix>_<part>`: layer names are the contract that weight conversion, fine-tuning and
layer surgery rely on. Only `keras.layers` / `keras.ops` are used, so the blocks run on every Keras
backend.

Two padding styles exist because the official code uses both and they give different numbers for
stride-2 convolutions: `"same"` is TensorFlow's asymmetric SAME padding (GhostNetV1, MobileFaceNet),
`"symmetric"` is an explicit `ZeroPadding2D(k // 2)` before a VALID convolution (GhostNetV2, i.e.
PyTorch-style padding).
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Union

import keras
import numpy as np
from keras import layers, ops

from ghostface_keras.models.batch_norm import BatchNormalization

ActivationSpec = Union[str, Callable, None]


def renamed_arguments(**renames: str):
    """Decorator keeping renamed keyword arguments working as deprecated aliases (`old="new"`).

    Passing `old=` emits a `DeprecationWarning` naming `new=` and behaves exactly like `new=`;
    passing both (by keyword, or `new` positionally) raises `TypeError`, as Python does for a
    duplicate argument. The wrapped function's signature shows only the new names.

    Example:
        >>> @renamed_arguments(strides="stem_strides")
        ... def build(stem_strides=2):
        ...     return stem_strides
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     build(strides=1), str(caught[0].message)
        (1, 'build(strides=...) is deprecated; use stem_strides=... instead')
    """

    def decorate(function):
        positional = list(inspect.signature(function).parameters)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs or new in positional[:len(args)]:
                    raise TypeError(f"{function.__name__}() got both {old}= (deprecated) and {new}=; "
                                    f"pass only {new}=")
                warnings.warn(f"{function.__name__}({old}=...) is deprecated; use {new}=... instead",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        wrapper.renamed_arguments = dict(renames)  # for callers that merge configs (ModelSpec.build)
        return wrapper

    return decorate


def make_divisible(value: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round `value` to the nearest multiple of `divisor`, never dropping below 90 % of it.

    This is the channel rounding of GhostNet / MobileNetV3 (divisor 4 in GhostFaceNets).

    Example:
        >>> make_divisible(16 * 1.3), make_divisible(960 * 1.3), make_divisible(92 * 0.25)
        (20, 1248, 24)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package="ghostface_keras")
def hard_sigmoid_keras2(x):
    """Keras 2's `hard_sigmoid`: clip(0.2 * x + 0.5, 0, 1).

    The official GhostFaceNetV1 weights were trained with this gate; Keras 3's `hard_sigmoid`
    is relu6(x + 3) / 6 (slope 1/6), a different function.

    Example:
        >>> [round(float(v), 6) for v in hard_sigmoid_keras2(keras.ops.convert_to_tensor([-3.0, 0.0, 1.0]))]
        [0.0, 0.5, 0.7]
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


SE_GATES = {
    "hard_sigmoid_keras2": hard_sigmoid_keras2,
    "hard_sigmoid": "hard_sigmoid",  # Keras 3: relu6(x + 3) / 6, PyTorch's Hardsigmoid
    "sigmoid": "sigmoid",
}


# Kernel initializers of the official backbones (read from the official .h5 files' layer configs): GhostNetV1
# draws every conv and depthwise kernel from VarianceScaling(2.0, fan_out, truncated normal); GhostNetV2 and
# MobileFaceNet keep Keras' default, Glorot uniform. The GDC head is the same in all: GDC_dw Glorot uniform,
# GDC_conv Glorot normal.
KERNEL_INITIALIZERS = {
    "ghostnet_v1": {"class_name": "VarianceScaling",
                    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}},
    "glorot_uniform": "glorot_uniform",
}


@dataclass(frozen=True)
class LayerSettings:
    """Options every block shares: BatchNorm statistics, weight decay, padding style, kernel initializer.

    `weight_decay` is the decay seen by SGD; it is applied as an L2 kernel regularizer of half the
    value (Keras' L2(l) adds l * sum(w^2), whose gradient is 2 * l * w), as the official recipe does
    (5e-4 -> L2(2.5e-4) on conv, depthwise and dense kernels; none on biases, BN or PReLU).
    `kernel_initializer` is a key of `KERNEL_INITIALIZERS`, for the backbone's conv and depthwise kernels.
    """

    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    weight_decay: float = 0.0
    padding: str = "same"
    kernel_initializer: str = "glorot_uniform"

    def __post_init__(self):
        if self.padding not in ("same", "symmetric"):
            raise ValueError(f"padding must be 'same' or 'symmetric', got {self.padding!r}")
        if self.kernel_initializer not in KERNEL_INITIALIZERS:
            raise ValueError(f"kernel_initializer must be one of {sorted(KERNEL_INITIALIZERS)}, "
                             f"got {self.kernel_initializer!r}")

    def regularizer(self):
        return keras.regularizers.L2(self.weight_decay / 2) if self.weight_decay > 0 else None

    def initializer(self):
        """A fresh initializer (each layer draws its own kernel), drawn on the host while building."""
        return HostDrawn(copy.deepcopy(KERNEL_INITIALIZERS[self.kernel_initializer]))


# --------------------------------------------------------------------------------------------------
# Initial weights drawn with numpy
# --------------------------------------------------------------------------------------------------
def _fans(shape: tuple[int, ...], input_axes=None, output_axes=None) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight shape as Keras counts them: a conv kernel (..., in, out) multiplies both
    by its receptive field; explicit axes, when a VarianceScaling config names them, take precedence."""
    if input_axes is not None and output_axes is not None:
        return math.prod(shape[a] for a in input_axes), math.prod(shape[a] for a in output_axes)
    if len(shape) < 2:
        return (shape[0], shape[0]) if shape else (1, 1)
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def variance_scaling_values(config: dict, shape, rng: np.random.Generator) -> np.ndarray:
    """Values a Keras `VarianceScaling` of `config` draws for `shape` (same distribution, numpy's stream):
    variance scale / fan (fan_in, fan_out or their mean), truncated normal (at 2 standard deviations,
    rescaled so the variance is kept), untruncated normal or uniform.

    Example:
        >>> values = variance_scaling_values({"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
        ...                                  (3, 3, 64, 128), np.random.default_rng(0))
        >>> round(float(values.std() * np.sqrt(3 * 3 * 128 / 2.0)), 2)     # std sqrt(2 / fan_out)
        1.0
    """
    shape = tuple(int(d) for d in shape)
    fan_in, fan_out = _fans(shape, config.get("input_axes"), config.get("output_axes"))
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(config.get("mode", "fan_in"), (fan_in + fan_out) / 2)
    scale = float(config.get("scale", 1.0)) / max(1.0, fan)
    distribution = config.get("distribution", "truncated_normal")
    if distribution == "uniform":
        limit = math.sqrt(3.0 * scale)
        return rng.uniform(-limit, limit, shape)
    if distribution == "untruncated_normal":
        return rng.normal(0.0, math.sqrt(scale), shape)
    # truncated at +-2: the standard normal keeps 0.87962566 of its standard deviation there (Keras' constant)
    values = rng.standard_normal(shape)
    outside = np.abs(values) > 2.0
    while outside.any():  # redraw until all lie inside: a truncated normal, as Keras' backends draw
        values[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(values) > 2.0
    return values * (math.sqrt(scale) / 0.87962566103423978)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class HostDrawn(keras.initializers.Initializer):
    """A built-in `VarianceScaling`-family initializer (He, Glorot, LeCun, ...) drawn with numpy on the host.

    Why: on JAX every eager random draw of a new shape is an XLA compilation of its own (about 0.1-0.3 s on
    CPU), so building GhostFaceNetV1-0.5-2, a hundred kernels of different shapes, took 30 s on JAX against
    1.4 s on TensorFlow (`benchmarks/model_build.py`). Same distribution, one random stream on every backend:
    a seed (`keras.utils.set_random_seed`, which seeds numpy) gives the same initial weights on TensorFlow and
    JAX. The builders put `initializer` itself back on their layers once the model is built
    (`restore_builtin_initializers`), so saved configs name the built-in one, as the official files do.

    Example:
        >>> drawn = HostDrawn("glorot_uniform")
        >>> tuple(drawn((3, 3, 16, 32)).shape), type(drawn.initializer).__name__
        ((3, 3, 16, 32), 'GlorotUniform')
    """

    def __init__(self, initializer):
        self.initializer = keras.initializers.get(initializer)
        if not isinstance(self.initializer, keras.initializers.VarianceScaling):
            raise ValueError(f"HostDrawn draws VarianceScaling initializers, not {type(self.initializer).__name__}")

    def __call__(self, shape, dtype=None):
        # from the attributes, not get_config(): Glorot, He and LeCun configs hold only their seed
        config = {name: getattr(self.initializer, name, None)
                  for name in ("scale", "mode", "distribution", "input_axes", "output_axes")}
        seed = getattr(self.initializer, "seed", None)
        # no seed of its own: the next one from numpy's global stream (seeded by keras.utils.set_random_seed)
        rng = np.random.default_rng(seed if isinstance(seed, int) else np.random.randint(0, 2**31 - 1))
        values = variance_scaling_values(config, shape, rng)
        return ops.convert_to_tensor(values.astype(keras.backend.standardize_dtype(dtype or "float32")))

    def get_config(self) -> dict:
        return {"initializer": keras.initializers.serialize(self.initializer)}


_INITIALIZER_ATTRIBUTES = ("kernel_initializer", "depthwise_initializer")


def restore_builtin_initializers(model: keras.Model) -> keras.Model:
    """Give every layer built with a `HostDrawn` initializer the built-in one it stands for (its weights are
    drawn by then); returns `model`.

    Example:
        >>> inputs = keras.Input((8, 8, 3))
        >>> layer = layers.Conv2D(4, 3, kernel_initializer=HostDrawn("he_normal"))
        >>> model = restore_builtin_initializers(keras.Model(inputs, layer(inputs)))
        >>> layer.get_config()["kernel_initializer"]["class_name"]
        'HeNormal'
    """
    pending = list(model.layers)
    while pending:
        layer = pending.pop()
        pending.extend(getattr(layer, "layers", ()))  # a nested model's own layers
        for attribute in _INITIALIZER_ATTRIBUTES:
            value = getattr(layer, attribute, None)
            if isinstance(value, HostDrawn):
                setattr(layer, attribute, value.initializer)
    return model


def _pad_for(x, kernel_size, strides, settings: LayerSettings, name: str):
    """Return (tensor, keras padding mode) realising the settings' padding style."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if settings.padding == "same":
        return x, "same"
    if kh == 1 and kw == 1:
        return x, "valid"
    pad = ((kh // 2, kh // 2), (kw // 2, kw // 2))
    return layers.ZeroPadding2D(pad, name=f"{name}_pad")(x), "valid"


def conv(x, filters: int, kernel_size, settings: LayerSettings, name: str, strides=1, use_bias=False):
    """Conv2D (no bias by default) with the settings' padding and weight decay."""
    x, padding = _pad_for(x, kernel_size, strides, settings, name)
    return layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer=settings.initializer(),
        kernel_regularizer=settings.regularizer(),
        name=name,
    )(x)


def depthwise_conv(x, kernel_size, settings: LayerSettings, name: str, strides=1):
    """DepthwiseConv2D without bias, with the settings' padding and weight decay."""
    x, padding = _pad_for(x, kernel_size, strides, settings, name)
    return layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        depthwise_initializer=settings.initializer(),
        depthwise_regularizer=settings.regularizer(),
        name=name,
    )(x)


def batch_norm(x, settings: LayerSettings, name: str, scale: bool = True):
    """BatchNormalization with the settings' momentum and epsilon (official: 0.9 / 1e-5)."""
    return BatchNormalization(
        momentum=settings.bn_momentum, epsilon=settings.bn_epsilon, scale=scale, name=name
    )(x)


def activation_layer(x, activation: ActivationSpec, name: str):
    """Apply `activation`; "prelu" is a PReLU shared over H and W with alpha starting at 0.25.

    `None` returns `x` unchanged (no layer).
    """
    if activation is None:
        return x
    if activation == "prelu":
        return layers.PReLU(
            alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name=name
        )(x)
    return layers.Activation(activation, name=name)(x)


def conv_bn_act(x, filters, kernel_size, settings, name, strides=1, activation: ActivationSpec = None):
    """Conv2D -> BN -> optional activation, named `<name>_conv`, `<name>_bn`, `<name>_act`."""
    x = conv(x, filters, kernel_size, settings, f"{name}_conv", strides=strides)
    x = batch_norm(x, settings, f"{name}_bn")
    return activation_layer(x, activation, f"{name}_act")


def ghost_module(x, out_channels: int, settings: LayerSettings, name: str, activation: ActivationSpec):
    """Ghost module: 1x1 conv to half the channels ("intrinsic" maps) and a cheap 3x3 depthwise conv
    of those maps ("ghost" maps), concatenated. Both halves are activated when `activation` is set.
    """
    intrinsic = math.ceil(out_channels / 2)
    primary = conv_bn_act(x, intrinsic, 1, settings, f"{name}_prim", activation=activation)
    cheap = depthwise_conv(primary, 3, settings, f"{name}_cheap_dw")
    cheap = batch_norm(cheap, settings, f"{name}_cheap_bn")
    cheap = activation_layer(cheap, activation, f"{name}_cheap_act")
    return layers.Concatenate(name=f"{name}_concat")([primary, cheap])


@keras.saving.register_keras_serializable(package="ghostface_keras")
class BilinearResize(layers.Layer):
    """Bilinear resize to a fixed (height, width): half-pixel centres, no antialias.

    Not `keras.layers.Resizing`: that is an image-preprocessing layer whose `call` defaults to
    ``training=True``, and in an eager ``model(x)`` without ``training=False`` Keras hands that value on
    to every later layer of the call, so all BatchNorms after the first DFC gate used batch statistics
    (GhostFaceNetV2 embeddings of ``model(x)`` differed from ``model.predict(x)``).

    Example:
        >>> tuple(BilinearResize(7, 7)(keras.ops.ones((1, 3, 3, 8))).shape)
        (1, 7, 7, 8)
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)

    def call(self, inputs):
        return ops.image.resize(inputs, (self.height, self.width), interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


def dfc_attention(block_input, out_channels: int, settings: LayerSettings, name: str):
    """GhostNetV2's decoupled fully connected (DFC) attention gate, computed from the block input.

    2x2 average pool (floor), 1x1 conv + BN, horizontal (1,5) and vertical (5,1) depthwise convs
    with BN, sigmoid, then a bilinear resize (half-pixel centres, no antialias) back to the input's
    height and width. Returns the gate; the caller multiplies it with the ghost module output.
    """
    height, width = block_input.shape[1], block_input.shape[2]
    if height is None or width is None:
        raise ValueError("DFC attention needs a static input height and width")
    gate = layers.AveragePooling2D(2, strides=2, padding="valid", name=f"{name}_pool")(block_input)
    gate = conv(gate, out_channels, 1, settings, f"{name}_conv")
    gate = batch_norm(gate, settings, f"{name}_bn")
    symmetric = replace(settings, padding="symmetric")
    gate = depthwise_conv(gate, (1, 5), symmetric, f"{name}_h_dw")
    gate = batch_norm(gate, settings, f"{name}_h_bn")
    gate = depthwise_conv(gate, (5, 1), symmetric, f"{name}_v_dw")
    gate = batch_norm(gate, settings, f"{name}_v_bn")
    gate = layers.Activation("sigmoid", name=f"{name}_sigmoid")(gate)
    return BilinearResize(height, width, name=f"{name}_resize")(gate)


def se_block(x, settings: LayerSettings, name: str, ratio: float = 0.25, gate: str = "hard_sigmoid",
             activation: ActivationSpec = "prelu", divisor: int = 4):
    """Squeeze-excite: mean over H,W -> 1x1 conv (bias) to make_divisible(C * ratio) -> activation
    -> 1x1 conv (bias) back to C -> gate -> multiply with the input.

    `gate` is a key of `SE_GATES`: "hard_sigmoid_keras2" (clip(0.2x+0.5), official V1 weights) or
    "hard_sigmoid" (relu6(x+3)/6, official V2).
    """
    if gate not in SE_GATES:
        raise ValueError(f"unknown SE gate {gate!r}; choose one of {sorted(SE_GATES)}")
    channels = x.shape[-1]
    # keepdims pooling instead of GAP + Reshape: no dynamic-shape ops in TFLite graphs
    squeezed = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    squeezed = layers.Conv2D(make_divisible(channels * ratio, divisor), 1, use_bias=True,
                             kernel_initializer=settings.initializer(), kernel_regularizer=settings.regularizer(),
                             name=f"{name}_reduce")(squeezed)
    squeezed = activation_layer(squeezed, activation, f"{name}_act")
    squeezed = layers.Conv2D(channels, 1, use_bias=True, kernel_initializer=settings.initializer(),
                             kernel_regularizer=settings.regularizer(), name=f"{name}_expand")(squeezed)
    squeezed = layers.Activation(SE_GATES[gate], name=f"{name}_gate")(squeezed)
    return layers.Multiply(name=f"{name}_mul")([x, squeezed])


def ghost_bottleneck(x, kernel_size: int, expansion: int, out_channels: int, strides: int,
                     settings: LayerSettings, name: str, se_ratio: float = 0.0, use_dfc: bool = False,
                     activation: ActivationSpec = "prelu", se_gate: str = "hard_sigmoid"):
    """Ghost bottleneck (GhostNet V1 / V2).

    ghost module (activated; times the DFC gate when `use_dfc`) -> if stride 2: k x k depthwise
    conv + BN -> optional SE -> ghost module (linear) -> add a shortcut. The shortcut is the
    identity when channels and resolution are unchanged, else k x k depthwise (stride) + BN + 1x1
    conv + BN.
    """
    in_channels = x.shape[-1]
    hidden = ghost_module(x, expansion, settings, f"{name}_ghost1", activation)
    if use_dfc:
        gate = dfc_attention(x, expansion, settings, f"{name}_ghost1_dfc")
        hidden = layers.Multiply(name=f"{name}_ghost1_dfc_mul")([gate, hidden])
    if strides > 1:
        hidden = depthwise_conv(hidden, kernel_size, settings, f"{name}_down_dw", strides=strides)
        hidden = batch_norm(hidden, settings, f"{name}_down_bn")
    if se_ratio > 0:
        hidden = se_block(hidden, settings, f"{name}_se", ratio=se_ratio, gate=se_gate, activation=activation)
    hidden = ghost_module(hidden, out_channels, settings, f"{name}_ghost2", activation=None)
    if in_channels == out_channels and strides == 1:
        shortcut = x
    else:
        shortcut = depthwise_conv(x, kernel_size, settings, f"{name}_short_dw", strides=strides)
        shortcut = batch_norm(shortcut, settings, f"{name}_short_dw_bn")
        shortcut = conv(shortcut, out_channels, 1, settings, f"{name}_short_conv")
        shortcut = batch_norm(shortcut, settings, f"{name}_short_bn")
    return layers.Add(name=f"{name}_add")([shortcut, hidden])


def mobilefacenet_bottleneck(x, expansion_channels: int, out_channels: int, strides: int,
                             settings: LayerSettings, name: str, activation: ActivationSpec = "prelu"):
    """MobileNetV2-style inverted residual of MobileFaceNet: 1x1 expand + BN + act, 3x3 depthwise
    (stride) + BN + act, 1x1 linear projection + BN; identity shortcut when shapes allow.
    """
    in_channels = x.shape[-1]
    hidden = conv_bn_act(x, expansion_channels, 1, settings, f"{name}_expand", activation=activation)
    hidden = depthwise_conv(hidden, 3, settings, f"{name}_dw", strides=strides)
    hidden = batch_norm(hidden, settings, f"{name}_dw_bn")
    hidden = activation_layer(hidden, activation, f"{name}_dw_act")
    hidden = conv(hidden, out_channels, 1, settings, f"{name}_project_conv")
    hidden = batch_norm(hidden, settings, f"{name}_project_bn")
    if strides == 1 and in_channels == out_channels:
        return layers.Add(name=f"{name}_add")([x, hidden])
    return hidden


@renamed_arguments(scale="embedding_bn_scale")
def gdc_head(x, settings: LayerSettings, embedding_size: int = 512, dropout: float = 0.0,
             use_bias: bool = False, embedding_bn_scale: bool = True):
    """Global depthwise conv (GDC) embedding head with the official layer names.

    GDC_dw (depthwise, kernel = feature-map size, valid) -> GDC_batchnorm -> optional GDC_dropout
    -> GDC_conv (1x1 to `embedding_size`, optional bias) -> GDC_flatten -> pre_embedding (BN;
    `embedding_bn_scale` = learn its gamma) -> embedding (float32 linear output; not L2-normalized).
    `scale=` is a deprecated alias of `embedding_bn_scale=`.
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError("the GDC head needs a static feature-map size (give the model a fixed input_shape)")
    x = layers.DepthwiseConv2D((height, width), padding="valid", use_bias=False,
                               depthwise_initializer=HostDrawn("glorot_uniform"), depthwise_regularizer=settings.regularizer(),
                               name="GDC_dw")(x)
    x = batch_norm(x, settings, "GDC_batchnorm")
    if dropout > 0:
        x = layers.Dropout(dropout, name="GDC_dropout")(x)
    x = layers.Conv2D(embedding_size, 1, use_bias=use_bias, kernel_initializer=HostDrawn("glorot_normal"),
                      kernel_regularizer=settings.regularizer(), name="GDC_conv")(x)
    x = layers.Flatten(name="GDC_flatten")(x)
    x = batch_norm(x, settings, "pre_embedding", scale=embedding_bn_scale)
    return layers.Activation("linear", dtype="float32", name="embedding")(x)
