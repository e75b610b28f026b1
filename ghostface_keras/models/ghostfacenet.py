"""GhostFaceNets: GhostNet V1 / V2 backbones with PReLU and a GDC embedding head.

Alansari et al., "GhostFaceNets: Lightweight Face Recognition Model From Cheap Operations",
IEEE Access 11, 2023. Architectures, channel plans and padding follow the official implementation
exactly (parameter counts equal; see `shared/reference/official/README.md` for the quirks).
"""

from __future__ import annotations

import keras

from ghostface_keras.models.blocks import (ActivationSpec, LayerSettings, gdc_head, renamed_arguments,
                                          restore_builtin_initializers)
from ghostface_keras.weights.apply import apply_weights
from ghostface_keras.models.ghostnet import ghostnet_features

# The official GhostFaceNetV1 ends its last bottleneck and final conv at 512 * width channels
# (664 at width 1.3); GhostFaceNetV2 keeps GhostNet's 960 (1248 at width 1.3).
V1_LAST_EXPANSION = 512
V2_LAST_EXPANSION = 960


def _ghostfacenet(version: int, width: float, stem_strides: int, use_bias: bool, embedding_bn_scale: bool,
                  embedding_size: int, dropout: float, input_shape, activation: ActivationSpec, bn_momentum: float,
                  bn_epsilon: float, weight_decay: float, se_gate: str, weights) -> keras.Model:
    settings = LayerSettings(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, weight_decay=weight_decay,
                             padding="same" if version == 1 else "symmetric",
                             kernel_initializer="ghostnet_v1" if version == 1 else "glorot_uniform")
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    features = ghostnet_features(
        inputs,
        width=width,
        stem_strides=stem_strides,
        version=version,
        last_expansion=V1_LAST_EXPANSION if version == 1 else V2_LAST_EXPANSION,
        activation=activation,
        se_gate=se_gate,
        settings=settings,
    )
    embedding = gdc_head(features, settings, embedding_size=embedding_size, dropout=dropout,
                         use_bias=use_bias, embedding_bn_scale=embedding_bn_scale)
    model = keras.Model(inputs, embedding, name=f"GhostFaceNetV{version}-{width:g}-{stem_strides}")
    return apply_weights(restore_builtin_initializers(model), weights)


@renamed_arguments(strides="stem_strides", scale="embedding_bn_scale")
def GhostFaceNetV1(width: float = 1.3, stem_strides: int = 2, use_bias: bool = False, embedding_bn_scale: bool = True,
                   embedding_size: int = 512, dropout: float = 0.0, input_shape=(112, 112, 3),
                   activation: ActivationSpec = "prelu", bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                   weight_decay: float = 5e-4, se_gate: str = "hard_sigmoid_keras2", weights=None) -> keras.Model:
    """GhostFaceNetV1: GhostNetV1 backbone (TF "same" padding) + PReLU + GDC head.

    Args:
        width: channel multiplier (paper: 1.3; the official checkpoints also include 0.5 and 1.0).
        stem_strides: stride of the stem convolution, 1 or 2 (the paper's "-1"/"-2" suffix; stride 1
            costs ~3.6x MACs). `strides=` is a deprecated alias.
        use_bias: bias on `GDC_conv` (the official stride-1 recipe and `GhostFaceNets_with_Bias` use it).
        embedding_bn_scale: learn gamma in the final `pre_embedding` BatchNorm (the embedding's BN; not
            the logit scale of the margin losses). `scale=` is a deprecated alias.
        embedding_size: size of the output embedding.
        dropout: dropout rate after `GDC_batchnorm` (official recipe: 0).
        input_shape: (H, W, 3); the GDC kernel is sized to the final feature map.
        activation: "prelu" (official), or any Keras activation name.
        bn_momentum, bn_epsilon: BatchNorm settings of every layer (official: 0.9, 1e-5).
        weight_decay: SGD weight decay as L2(weight_decay / 2) on conv/depthwise kernels (official
            5e-4; 0 disables it, e.g. when the optimizer decays weights itself).
        se_gate: squeeze-excite gate; "hard_sigmoid_keras2" = clip(0.2x+0.5, 0, 1), the function the
            official V1 weights were trained with; "hard_sigmoid" = relu6(x+3)/6.
        weights: `None` (random initialization), the name of a released checkpoint or of a registry model
            with one (`ghostface_keras.list_pretrained()`; downloaded once and cached by `load_pretrained`),
            or the path of a `.keras` model, a Keras-3 `.weights.h5` file or an official Keras-2
            GhostFaceNets `.h5` (converted by `load_official`). Weights are copied by layer name (by entry
            for `.weights.h5`) after every shape has been checked. The built architecture must match the
            weights: `create_model(name, pretrained=True)` picks the matching options for a release.

    Returns:
        A functional `keras.Model` from normalized RGB images to float32 embeddings (not
        L2-normalized), named like the registry (`GhostFaceNetV1-1.3-2`).

    Raises:
        ModelLoadError: a missing or unreadable file, or weights that do not fit the built model (one line
            naming the file and the first mismatching layer with both shapes).
        ModelNameError: `weights` is neither a file nor a released checkpoint.
        PretrainedError: a released checkpoint that cannot be downloaded or fails its hash check.

    Example:
        >>> model = GhostFaceNetV1(width=1.3, stem_strides=2)
        >>> model.count_params(), model.output_shape
        (4066388, (None, 512))
        >>> model = GhostFaceNetV1(width=0.5, weights="GhostFaceNetV1-0.5-2")     # doctest: +SKIP
        >>> model = GhostFaceNetV1(width=0.5, weights="GN_W0.5_S2_ArcFace_epoch16.h5")  # doctest: +SKIP
    """
    return _ghostfacenet(1, width, stem_strides, use_bias, embedding_bn_scale, embedding_size, dropout, input_shape,
                         activation, bn_momentum, bn_epsilon, weight_decay, se_gate, weights)


@renamed_arguments(strides="stem_strides", scale="embedding_bn_scale")
def GhostFaceNetV2(width: float = 1.3, stem_strides: int = 2, use_bias: bool = False, embedding_bn_scale: bool = True,
                   embedding_size: int = 512, dropout: float = 0.0, input_shape=(112, 112, 3),
                   activation: ActivationSpec = "prelu", bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                   weight_decay: float = 5e-4, se_gate: str = "hard_sigmoid", weights=None) -> keras.Model:
    """GhostFaceNetV2: GhostNetV2 backbone (DFC attention, symmetric padding) + PReLU + GDC head.

    Same arguments as `GhostFaceNetV1` (`weights=` included; no official V2 weights are released, so it
    takes a file); the SE gate defaults to relu6(x+3)/6 as in the official V2.

    Example:
        >>> model = GhostFaceNetV2(width=1.3, stem_strides=1)
        >>> model.count_params()
        6880288
        >>> model = GhostFaceNetV2(width=1.3, stem_strides=1, weights="my_v2.keras")   # doctest: +SKIP
    """
    return _ghostfacenet(2, width, stem_strides, use_bias, embedding_bn_scale, embedding_size, dropout, input_shape,
                         activation, bn_momentum, bn_epsilon, weight_decay, se_gate, weights)
