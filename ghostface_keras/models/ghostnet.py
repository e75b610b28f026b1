"""GhostNet V1 / V2 backbones and their ImageNet classifiers.

GhostNet: Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020.
GhostNetV2: Tang et al., "GhostNetV2: Enhance Cheap Operation with Long-Range Attention", NeurIPS 2022.
"""

from __future__ import annotations

from typing import NamedTuple
from collections.abc import Sequence

import keras
from keras import layers

from ghostface_keras.models.blocks import (
    ActivationSpec,
    HostDrawn,
    LayerSettings,
    activation_layer,
    conv_bn_act,
    ghost_bottleneck,
    make_divisible,
    renamed_arguments,
    restore_builtin_initializers,
)
from ghostface_keras.weights.apply import apply_weights


class GhostStage(NamedTuple):
    """One bottleneck row of GhostNet's Table 1 (width 1.0)."""

    kernel_size: int
    expansion: int
    out_channels: int
    se_ratio: float
    strides: int


# GhostNet paper, Table 1. The official GhostFaceNetV1 replaces the last expansion 960 by 512.
GHOSTNET_STAGES: tuple[GhostStage, ...] = (
    GhostStage(3, 16, 16, 0.0, 1),
    GhostStage(3, 48, 24, 0.0, 2),
    GhostStage(3, 72, 24, 0.0, 1),
    GhostStage(5, 72, 40, 0.25, 2),
    GhostStage(5, 120, 40, 0.25, 1),
    GhostStage(3, 240, 80, 0.0, 2),
    GhostStage(3, 200, 80, 0.0, 1),
    GhostStage(3, 184, 80, 0.0, 1),
    GhostStage(3, 184, 80, 0.0, 1),
    GhostStage(3, 480, 112, 0.25, 1),
    GhostStage(3, 672, 112, 0.25, 1),
    GhostStage(5, 672, 160, 0.25, 2),
    GhostStage(5, 960, 160, 0.0, 1),
    GhostStage(5, 960, 160, 0.25, 1),
    GhostStage(5, 960, 160, 0.0, 1),
    GhostStage(5, 960, 160, 0.25, 1),
)
STEM_CHANNELS = 16
FINAL_CHANNELS = 960
DFC_FIRST_STACK = 3  # GhostNetV2 uses plain ghost modules in stacks 1-2, DFC attention from stack 3 on


@renamed_arguments(strides="stem_strides")
def ghostnet_features(
    inputs,
    width: float = 1.0,
    stem_strides: int = 2,
    version: int = 1,
    last_expansion: int = 960,
    activation: ActivationSpec = "relu",
    se_gate: str = "hard_sigmoid",
    settings: LayerSettings | None = None,
    stages: Sequence[GhostStage] = GHOSTNET_STAGES,
):
    """Build the GhostNet feature extractor on `inputs`; returns the activated final 1x1 conv map.

    `stem_strides` is the stem stride (1 or 2; `strides=` is its deprecated alias). `version` 2 adds
    DFC attention to stacks 3..16.
    `last_expansion` is the width-1.0 channel count of the last bottleneck's expansion and of the
    final 1x1 conv (960 in the paper, 512 in the official GhostFaceNetV1).
    """
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version!r}")
    if stem_strides not in (1, 2):
        raise ValueError(f"stem_strides must be 1 or 2, got {stem_strides!r}")
    settings = settings or LayerSettings(padding="same" if version == 1 else "symmetric",
                                         kernel_initializer="ghostnet_v1" if version == 1 else "glorot_uniform")
    x = conv_bn_act(inputs, make_divisible(STEM_CHANNELS * width), 3, settings, "stem", strides=stem_strides,
                    activation=activation)
    for index, stage in enumerate(stages, start=1):
        expansion = last_expansion if index == len(stages) else stage.expansion
        x = ghost_bottleneck(
            x,
            stage.kernel_size,
            make_divisible(expansion * width),
            make_divisible(stage.out_channels * width),
            stage.strides,
            settings,
            name=f"stack{index}",
            se_ratio=stage.se_ratio,
            use_dfc=version == 2 and index >= DFC_FIRST_STACK,
            activation=activation,
            se_gate=se_gate,
        )
    return conv_bn_act(x, make_divisible(last_expansion * width), 1, settings, "final", activation=activation)


def _ghostnet_classifier(version: int, width: float, input_shape, include_top: bool, num_classes: int,
                         dropout: float, activation: ActivationSpec, weight_decay: float, name: str, weights):
    settings = LayerSettings(padding="same" if version == 1 else "symmetric", bn_momentum=0.9,
                             bn_epsilon=1e-5, weight_decay=weight_decay,
                             kernel_initializer="ghostnet_v1" if version == 1 else "glorot_uniform")
    inputs = keras.Input(shape=input_shape, name="input")
    x = ghostnet_features(inputs, width=width, stem_strides=2, version=version, activation=activation,
                          se_gate="hard_sigmoid", settings=settings)
    if include_top:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="head_pool")(x)
        x = layers.Conv2D(1280, 1, use_bias=True, kernel_initializer=HostDrawn("glorot_uniform"),
                          kernel_regularizer=settings.regularizer(), name="head_conv")(x)
        x = activation_layer(x, activation, "head_act")
        x = layers.Flatten(name="head_flatten")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="head_dropout")(x)
        x = layers.Dense(num_classes, kernel_initializer=HostDrawn("glorot_uniform"),
                         kernel_regularizer=settings.regularizer(), name="predictions")(x)
        x = layers.Activation("softmax", dtype="float32", name="probabilities")(x)
    return apply_weights(restore_builtin_initializers(keras.Model(inputs, x, name=name)), weights)


def GhostNetV1(width: float = 1.0, input_shape=(224, 224, 3), include_top: bool = True, num_classes: int = 1000,
               dropout: float = 0.2, activation: ActivationSpec = "relu", weight_decay: float = 0.0,
               weights=None) -> keras.Model:
    """GhostNet (V1) ImageNet classifier of the GhostNet paper (Table 1 / Table 7).

    Args:
        width: channel multiplier (0.5, 1.0, 1.3 in the paper).
        input_shape: fixed input (H, W, 3).
        include_top: add global pooling, the 1280-channel 1x1 conv, dropout and the classifier.
        num_classes: classifier outputs.
        dropout: dropout rate before the classifier.
        activation: activation of stem, ghost modules, SE hidden layer and head ("relu" as in the paper).
        weight_decay: SGD weight decay, applied as L2(weight_decay / 2) on kernels.
        weights: `None` (random initialization) or the path of a `.keras` / Keras-3 `.weights.h5` file of
            the same architecture, copied in with every layer's shapes checked (no ImageNet weights are
            released; see `GhostFaceNetV1` for the accepted values and errors).

    Example:
        >>> model = GhostNetV1(width=1.0)
        >>> round(model.count_params() / 1e6, 1)
        5.2
        >>> import tempfile
        >>> path = f"{tempfile.mkdtemp()}/ghostnet.weights.h5"
        >>> model.save_weights(path)
        >>> same = GhostNetV1(width=1.0, weights=path)
    """
    return _ghostnet_classifier(1, width, input_shape, include_top, num_classes, dropout, activation,
                                weight_decay, f"ghostnetv1_w{width:g}", weights)


def GhostNetV2(width: float = 1.0, input_shape=(224, 224, 3), include_top: bool = True, num_classes: int = 1000,
               dropout: float = 0.2, activation: ActivationSpec = "relu", weight_decay: float = 0.0,
               weights=None) -> keras.Model:
    """GhostNetV2 ImageNet classifier (GhostNet with DFC attention from stack 3 on).

    Same arguments as `GhostNetV1`, `weights=` included.

    Example:
        >>> model = GhostNetV2(width=1.0, input_shape=(224, 224, 3))
        >>> model.output_shape
        (None, 1000)
        >>> model = GhostNetV2(width=1.0, weights="ghostnetv2.keras")      # doctest: +SKIP
    """
    return _ghostnet_classifier(2, width, input_shape, include_top, num_classes, dropout, activation,
                                weight_decay, f"ghostnetv2_w{width:g}", weights)
