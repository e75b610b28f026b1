"""MobileFaceNet and MMobileFaceNet.

MobileFaceNet: Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face
Verification on Mobile Devices", CCBR 2018 (Table 1), here with PReLU and the GDC head to a 512-d
embedding (the form used by insightface and by the GhostFaceNets comparisons).

MMobileFaceNet: Hassanpour & Kowsari, "Lightweight Face Recognition: An Improved MobileFaceNet
Model". Their text says they doubled "the kernel count in all CNN layers" and their table doubles
the block widths, but doubling every width gives about 3.7 M parameters and 850 M MACs, while they
report 2.1 M parameters and 456.89 MFLOPs (vs 1.1 M / 236.75 for MobileFaceNet). Doubling the
bottlenecks' expansion (hidden) channels instead gives 2.07 M parameters / 432 M MACs, matching what they report, so
`MMobileFaceNet` is `MobileFaceNet(expansion_multiplier=2)`; `width=2` gives the literal reading (4.1 M / 853 M).
"""

from __future__ import annotations

from typing import NamedTuple

import keras

from ghostface_keras.models.blocks import (
    ActivationSpec,
    LayerSettings,
    activation_layer,
    batch_norm,
    conv_bn_act,
    depthwise_conv,
    gdc_head,
    make_divisible,
    mobilefacenet_bottleneck,
    renamed_arguments,
    restore_builtin_initializers,
)
from ghostface_keras.weights.apply import apply_weights


class BottleneckStage(NamedTuple):
    """One row of MobileFaceNet's Table 1: expansion factor t, output channels c, repeats n, stride s."""

    expansion: int
    out_channels: int
    repeats: int
    strides: int


MOBILEFACENET_STAGES: tuple[BottleneckStage, ...] = (
    BottleneckStage(2, 64, 5, 2),
    BottleneckStage(4, 128, 1, 2),
    BottleneckStage(2, 128, 6, 1),
    BottleneckStage(4, 128, 1, 2),
    BottleneckStage(2, 128, 2, 1),
)
STEM_CHANNELS = 64
FINAL_CHANNELS = 512


@renamed_arguments(scale="embedding_bn_scale")
def MobileFaceNet(width: float = 1.0, expansion_multiplier: float = 1.0, embedding_size: int = 512,
                  input_shape=(112, 112, 3), activation: ActivationSpec = "prelu", dropout: float = 0.0,
                  use_bias: bool = False, embedding_bn_scale: bool = True, bn_momentum: float = 0.9,
                  bn_epsilon: float = 1e-5, weight_decay: float = 5e-4, name: str = "MobileFaceNet",
                  weights=None) -> keras.Model:
    """MobileFaceNet with a GDC head (1.22 M parameters, 221 M MACs at 112x112).

    Args:
        width: multiplier of every layer's channel count (stem, blocks, final 1x1 conv).
        expansion_multiplier: multiplier of the bottlenecks' expansion factors only (2 = MMobileFaceNet).
        embedding_size, input_shape, activation, dropout, use_bias, embedding_bn_scale, bn_momentum,
            bn_epsilon, weight_decay, weights: as in `GhostFaceNetV1` (`scale=` is a deprecated alias of
            `embedding_bn_scale=`; no MobileFaceNet weights are released, so `weights=` takes a file).
        name: the model's name.

    Example:
        >>> model = MobileFaceNet()
        >>> model.output_shape
        (None, 512)
        >>> import tempfile
        >>> path = f"{tempfile.mkdtemp()}/mobilefacenet.keras"
        >>> model.save(path)
        >>> same = MobileFaceNet(weights=path)
    """
    settings = LayerSettings(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, weight_decay=weight_decay,
                             padding="same")
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    stem = make_divisible(STEM_CHANNELS * width, 8)
    x = conv_bn_act(inputs, stem, 3, settings, "stem", strides=2, activation=activation)
    x = depthwise_conv(x, 3, settings, "stem_dw")
    x = batch_norm(x, settings, "stem_dw_bn")
    x = activation_layer(x, activation, "stem_dw_act")
    block = 0
    for stage in MOBILEFACENET_STAGES:
        out_channels = make_divisible(stage.out_channels * width, 8)
        for repeat in range(stage.repeats):
            block += 1
            hidden = make_divisible(x.shape[-1] * stage.expansion * expansion_multiplier, 8)
            x = mobilefacenet_bottleneck(x, hidden, out_channels, stage.strides if repeat == 0 else 1, settings,
                                         name=f"block{block}", activation=activation)
    x = conv_bn_act(x, make_divisible(FINAL_CHANNELS * width, 8), 1, settings, "final", activation=activation)
    embedding = gdc_head(x, settings, embedding_size=embedding_size, dropout=dropout, use_bias=use_bias,
                         embedding_bn_scale=embedding_bn_scale)
    return apply_weights(restore_builtin_initializers(keras.Model(inputs, embedding, name=name)), weights)


@renamed_arguments(scale="embedding_bn_scale")
def MMobileFaceNet(embedding_size: int = 512, input_shape=(112, 112, 3), **kwargs) -> keras.Model:
    """MMobileFaceNet (Hassanpour & Kowsari): MobileFaceNet with doubled bottleneck expansions.

    About 2.07 M parameters and 432 M MACs (reported: 2.1 M, 456.89 MFLOPs). Keyword arguments
    (`weights=` included) pass through to `MobileFaceNet`.

    Example:
        >>> round(MMobileFaceNet().count_params() / 1e6, 1)
        2.1
        >>> model = MMobileFaceNet(weights="mmobilefacenet.weights.h5")    # doctest: +SKIP
    """
    kwargs.setdefault("expansion_multiplier", 2.0)
    kwargs.setdefault("name", "MMobileFaceNet")
    return MobileFaceNet(embedding_size=embedding_size, input_shape=input_shape, **kwargs)
