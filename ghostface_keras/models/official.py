"""Convert the officially released Keras-2 GhostFaceNets `.h5` files into our Keras 3 models.

The variant is inferred from the file's config and weight shapes, our model is built with matching
options, and every weight is copied by graph topology with its shape checked.

Reading the file and pairing its layers with ours (by graph topology) is `ghostface_keras.weights.official`.

Command line:
    ghostface-convert GN_W0.5_S2_ArcFace_epoch16.h5 gn_w05.keras

Example:
    >>> from ghostface_keras.models.official import load_official
    >>> model = load_official("GN_W0.5_S2_ArcFace_epoch16.h5")     # doctest: +SKIP
    >>> model.name                                                 # doctest: +SKIP
    'GhostFaceNetV1-0.5-2'
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import ConversionError
from ghostface_keras.core.files import atomic_output
from ghostface_keras.models.blocks import make_divisible
from ghostface_keras.models.ghostfacenet import V1_LAST_EXPANSION, V2_LAST_EXPANSION
from ghostface_keras.weights.official import (
    OfficialLayer,
    auto_name_index,
    copy_official_weights,
    our_layers,
    read_official,
    weighted_in_topological_order,
)

log = logging.getLogger(__name__)

CANDIDATE_WIDTHS = tuple(round(0.05 * i, 2) for i in range(5, 61))  # 0.25 .. 3.0


@dataclass(frozen=True)
class OfficialVariant:
    """What `inspect_official` infers from a file: enough to build the matching model."""

    version: int
    width: float
    strides: int
    use_bias: bool
    scale: bool
    embedding_size: int
    input_shape: tuple[int, int, int]
    activation: str
    se_gate: str
    bn_momentum: float
    bn_epsilon: float

    @property
    def name(self) -> str:
        return f"GhostFaceNetV{self.version}-{self.width:g}-{self.strides}"

    def build(self, **overrides):
        from ghostface_keras.models.ghostfacenet import GhostFaceNetV1, GhostFaceNetV2

        config = asdict(self)
        version = config.pop("version")
        config["input_shape"] = tuple(config["input_shape"])
        # the builders' names for this variant's `strides` / `scale`; an override under either name wins
        for field_name, argument in (("strides", "stem_strides"), ("scale", "embedding_bn_scale")):
            value = config.pop(field_name)
            if field_name not in overrides:
                config[argument] = value
        config.update(overrides)
        return (GhostFaceNetV1 if version == 1 else GhostFaceNetV2)(**config)


# ----------------------------------------------------------------------------------------------
# Inferring the variant
# ----------------------------------------------------------------------------------------------

def _first(layers: dict[str, OfficialLayer], class_name: str) -> OfficialLayer | None:
    return next((layer for layer in layers.values() if layer.class_name == class_name), None)


def inspect_official(path: str) -> OfficialVariant:
    """Infer version, width, stem stride, GDC bias, BN scale and embedding size of an official file.

    Example:
        >>> inspect_official("GN_W0.5_S2_ArcFace_epoch16.h5").name    # doctest: +SKIP
        'GhostFaceNetV1-0.5-2'
    """
    layers, outputs, attrs = read_official(path)
    return _infer_variant(path, layers, outputs, attrs)


def _infer_variant(path, layers, outputs, attrs) -> OfficialVariant:
    if "GDC_dw" not in layers or "GDC_conv" not in layers or "pre_embedding" not in layers:
        raise ConversionError(f"{path}: no GDC head (GDC_dw / GDC_conv / pre_embedding layers): "
                              "not a GhostFaceNets embedding model")
    classes = {layer.class_name for layer in layers.values()}
    version = 2 if ("AveragePooling2D" in classes or any(n.startswith("stack3_") for n in layers)) else 1
    stem = _stem(path, layers, outputs)
    stem_channels = stem.weights[0].shape[-1]
    gdc_kernel = layers["GDC_dw"].weights[0].shape
    final_channels = gdc_kernel[2]
    last = V1_LAST_EXPANSION if version == 1 else V2_LAST_EXPANSION
    widths = [w for w in CANDIDATE_WIDTHS
              if make_divisible(16 * w) == stem_channels and make_divisible(last * w) == final_channels]
    if not widths:
        raise ConversionError(f"{path}: stem {stem_channels} / final {final_channels} channels fit no "
                              f"GhostFaceNetV{version} width")
    # weights-only saves have no config: a 112x112 input ends at 4x4 with stem stride 2, 7x7 with 1
    strides = int(stem.config["strides"][0]) if "strides" in stem.config else (2 if gdc_kernel[0] <= 4 else 1)
    gdc_conv = layers["GDC_conv"]
    input_shape = _input_shape(layers)
    bn = _first(layers, "BatchNormalization")
    activation = "prelu" if "PReLU" in classes else "relu"
    keras_major = str(attrs.get("keras_version", "2")).split(".")[0]
    if version == 1:
        se_gate = "hard_sigmoid_keras2" if keras_major == "2" else "hard_sigmoid"
    else:
        se_gate = "hard_sigmoid"
    candidates = [OfficialVariant(
        version=version, width=width, strides=strides, use_bias=len(gdc_conv.weights) > 1,
        scale=len(layers["pre_embedding"].weights) == 4, embedding_size=int(gdc_conv.weights[0].shape[-1]),
        input_shape=input_shape, activation=activation, se_gate=se_gate,
        bn_momentum=float(bn.config.get("momentum", 0.9)), bn_epsilon=float(bn.config.get("epsilon", 1e-5)),
    ) for width in _prefer_round(widths)]
    return candidates[0] if len(candidates) == 1 else _first_matching(path, candidates, layers)


def _stem(path, layers, outputs) -> OfficialLayer:
    if outputs:
        order = weighted_in_topological_order(layers, outputs)
        stem = order[0] if order else None
    elif "stem_conv" in layers:
        stem = layers["stem_conv"]
    else:
        convs = [layer for layer in layers.values() if layer.class_name == "Conv2D" and layer.name != "GDC_conv"]
        stem = min(convs, key=lambda layer: auto_name_index(layer.name)) if convs else None
    if stem is None or stem.class_name != "Conv2D":
        raise ConversionError(f"{path}: cannot find the stem convolution")
    return stem


def _shape_signature(layers) -> list[tuple[str, tuple]]:
    return sorted((layer.class_name, tuple(w.shape for w in layer.weights)) for layer in layers if layer.weights)


def _prefer_round(widths: Sequence[float]) -> list[float]:
    """Equivalent widths build identical models; try the ones with the fewest decimals first."""
    return sorted(widths, key=lambda w: (len(f"{w:g}"), abs(w - 1.0)))


def _first_matching(path, candidates: list[OfficialVariant], layers: dict[str, OfficialLayer]) -> OfficialVariant:
    import keras

    wanted = _shape_signature(layers.values())
    for candidate in candidates:
        model = candidate.build(weight_decay=0.0)
        ours = _shape_signature(our_layers(model).values())
        keras.backend.clear_session()
        if ours == wanted:
            return candidate
    raise ConversionError(f"{path}: no width in {[c.width for c in candidates]} reproduces every weight shape")


def _input_shape(layers: dict[str, OfficialLayer]) -> tuple[int, int, int]:
    for layer in layers.values():
        if layer.class_name == "InputLayer":
            shape = layer.config.get("batch_input_shape") or layer.config.get("batch_shape")
            if shape and all(d is not None for d in shape[1:]):
                return tuple(int(d) for d in shape[1:])
    return (112, 112, 3)


# ----------------------------------------------------------------------------------------------
# Conversion
# ----------------------------------------------------------------------------------------------

def load_official(path: str, **overrides):
    """Build our model for an official GhostFaceNets `.h5` file and copy its weights, exactly.

    Accepts full-model saves (`model.save(path)`, the released checkpoints), saves of the training
    model (embedding model plus a classification head, flat or nested: the head is dropped), and
    weights-only saves (`save_weights`; they hold no graph, so layers pair by V2's stable names or,
    for V1's automatic names, per layer class in creation order, and BatchNorm epsilon is taken as
    the recipe's 1e-5 unless overridden with `bn_epsilon=`). The file
    is read with h5py; nothing in it is executed. `overrides` pass to the builder (e.g.
    `weight_decay=0`, `dropout=0.2` for fine-tuning); architecture-changing overrides fail the
    shape checks with a `ConversionError`.

    Raises:
        ConversionError: naming the file and the first layer whose class or shape does not match.

    Example:
        >>> model = load_official("GN_W0.5_S2_ArcFace_epoch16.h5")    # doctest: +SKIP
        >>> model.output_shape                                        # doctest: +SKIP
        (None, 512)
    """
    model, _ = _convert(os.fspath(path), **overrides)
    return model


def _convert(path: str, **overrides):
    """`(model, inferred variant)` of an official file, reading and parsing it once."""
    layers, outputs, attrs = read_official(path)
    variant = _infer_variant(path, layers, outputs, attrs)
    model = variant.build(**overrides)
    copied = copy_official_weights(path, layers, outputs, model)
    log.info("converted %s as %s (%d layers with weights)", path, variant.name, copied)
    return model, variant


def convert_file(source: str, destination: str, check_batch: int = 4, seed: int = 0) -> tuple[OfficialVariant, float]:
    """Convert `source` (.h5) to `destination` (.keras) and reload it to check it computes the same
    function; returns the inferred variant and the max abs difference of that self-check.

    Example:
        >>> variant, difference = convert_file("GN_W0.5_S2_ArcFace_epoch16.h5", "gn.keras")  # doctest: +SKIP
    """
    import keras

    if not destination.endswith(".keras"):
        raise ConversionError(f"{destination}: the output must be a .keras file")
    model, variant = _convert(os.fspath(source))
    with atomic_output(destination) as temporary:
        model.save(str(temporary))
    reloaded = keras.models.load_model(destination, compile=False)
    probe = np.random.default_rng(seed).uniform(-1, 1, size=(check_batch, *variant.input_shape)).astype("float32")
    difference = float(np.max(np.abs(np.asarray(model(probe, training=False)) -
                                     np.asarray(reloaded(probe, training=False)))))
    return variant, difference
