"""Read an official Keras-2 GhostFaceNets `.h5` file as data and copy its weights into a built model.

The file is read with h5py only: its JSON config is parsed as data (no layer or function is ever
deserialized from it). `copy_official_weights` pairs the file's layers with those of a model that is already
built (by `ghostface_keras.models.official.load_official`, or by a builder's `weights=`) and copies every
weight with its shape checked. Nothing here builds a model, so the builders can use it.

Why topology and not names: the official V1 files carry process-dependent automatic names
(`conv2d_17`, ...), and in parallel branches the stored layer order is not a reliable pairing. Both
graphs are walked depth-first from the embedding output, visiting each layer's inputs in order,
and the layers that hold weights are paired in that visiting order. Our builders create every
multi-input layer with the same input order as the official ones (Add: shortcut first; Multiply:
DFC gate first, SE input first; Concatenate: primary first).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import ConversionError

log = logging.getLogger(__name__)

@dataclass
class OfficialLayer:
    name: str
    class_name: str
    config: dict
    inbound: list[str]
    weights: list[np.ndarray]


# ----------------------------------------------------------------------------------------------
# Reading the file
# ----------------------------------------------------------------------------------------------

def _inbound_names(inbound_nodes) -> list[str]:
    """Names of the layers feeding a layer, in argument order, from a Keras 2 or Keras 3 config."""
    names: list[str] = []

    def walk(item):
        if isinstance(item, dict):
            if "keras_history" in item:
                names.append(item["keras_history"][0])
                return
            for key in ("config", "args", "kwargs"):
                if key in item:
                    walk(item[key])
            if not any(key in item for key in ("config", "args", "kwargs")):
                for value in item.values():
                    walk(value)
        elif isinstance(item, (list, tuple)):
            if len(item) >= 3 and isinstance(item[0], str) and isinstance(item[1], int):
                names.append(item[0])
                for rest in item[3:]:
                    walk(rest)
            else:
                for value in item:
                    walk(value)

    walk(inbound_nodes)
    return names


def _read_weight_groups(group, path: str) -> dict[str, list[tuple[str, np.ndarray]]]:
    """(weight name, array) pairs per weight group of a Keras 2 h5 file, in `weight_names` order
    (the true order; the datasets themselves are listed alphabetically)."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {}
    try:
        layer_names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
    except KeyError:
        raise ConversionError(f"{path}: no 'layer_names' in the weight group: not a Keras .h5 save") from None
    for layer_name in layer_names:
        layer_group = group[layer_name]
        names = [n.decode() if isinstance(n, bytes) else n for n in layer_group.attrs.get("weight_names", [])]
        try:
            groups[layer_name] = [(name, np.asarray(layer_group[name], dtype=np.float32)) for name in names]
        except KeyError as error:
            raise ConversionError(f"{path}: layer {layer_name!r} lists a weight the file does not hold "
                                  f"({error}): truncated or damaged file") from None
    return groups


def _weights_by_layer(groups, layer_names) -> dict[str, list[np.ndarray]]:
    """Weights per layer; a nested model's group (a name that is not one of the layers) holds the
    weights of all its layers, named "<layer>/<weight>:0", and is split by layer."""
    weights = {name: [array for _, array in pairs] for name, pairs in groups.items() if name in layer_names}
    for name, pairs in groups.items():
        if name in layer_names:
            continue
        for weight_name, array in pairs:
            owner = weight_name.split("/")[-2] if "/" in weight_name else name
            weights.setdefault(owner, []).append(array)
    return weights


def _layers_from_config(model_config: dict) -> tuple[list[dict], list[str]]:
    """The embedding model's layer configs and output names, descending into a nested model if the
    file is a training model with the embedding model inside."""
    config = model_config.get("config", model_config)
    layers = config.get("layers", [])
    for layer in layers:
        if layer.get("class_name") in ("Functional", "Model", "Sequential") and any(
                inner.get("config", {}).get("name") == "embedding" or inner.get("name") == "embedding"
                for inner in layer.get("config", {}).get("layers", [])):
            return _layers_from_config(layer)
    names = {layer.get("name", layer.get("config", {}).get("name")) for layer in layers}
    if "embedding" in names:
        return layers, ["embedding"]
    outputs = [ref[0] for ref in config.get("output_layers", [])]
    return layers, outputs


def read_official(path: str) -> tuple[dict[str, OfficialLayer], list[str], dict]:
    """Parse the file into {name: layer} with inbound names and weights, plus outputs and root attrs."""
    import h5py

    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ConversionError(f"{path}: not a readable HDF5 file ({error})") from None
    with handle:
        attrs = {key: (value.decode() if isinstance(value, bytes) else value) for key, value in handle.attrs.items()}
        weight_group = handle["model_weights"] if "model_weights" in handle else handle
        groups = _read_weight_groups(weight_group, path)
        raw_config = attrs.get("model_config")
    if raw_config is None:
        return _layers_from_weights_only(path, groups), [], attrs
    try:
        layer_configs, outputs = _layers_from_config(json.loads(raw_config))
    except (ValueError, AttributeError) as error:
        raise ConversionError(f"{path}: unreadable model_config JSON ({error})") from None
    names = [entry.get("name") or entry.get("config", {}).get("name") for entry in layer_configs]
    weights = _weights_by_layer(groups, set(names))
    layers: dict[str, OfficialLayer] = {}
    for entry in layer_configs:
        name = entry.get("name") or entry.get("config", {}).get("name")
        layers[name] = OfficialLayer(name, entry.get("class_name", ""), entry.get("config", {}),
                              _inbound_names(entry.get("inbound_nodes", [])), weights.get(name, []))
    if "embedding" not in layers and not outputs:
        raise ConversionError(f"{path}: the model config has no 'embedding' layer and no outputs: "
                              "not a GhostFaceNets model")
    return layers, outputs, attrs


def _class_from_weights(name: str, arrays: list[np.ndarray]) -> str:
    """Layer class of a weights-only entry, from its auto name or its weights' shapes."""
    if name.startswith("depthwise_conv2d") or name.endswith("dw_conv") or name == "GDC_dw":
        return "DepthwiseConv2D"
    if len(arrays) in (2, 3, 4) and all(a.ndim == 1 for a in arrays):
        return "BatchNormalization"
    if len(arrays) == 1 and arrays[0].ndim == 3:
        return "PReLU"
    if arrays and arrays[0].ndim == 2:
        return "Dense"
    return "Conv2D"


def _layers_from_weights_only(path: str, groups) -> dict[str, OfficialLayer]:
    """Layers of a weights-only save (no config: no graph, so `inbound` stays empty)."""
    layers = {}
    for name, pairs in groups.items():
        arrays = [array for _, array in pairs]
        if arrays:
            layers[name] = OfficialLayer(name, _class_from_weights(name, arrays), {}, [], arrays)
    if "GDC_dw" not in layers:
        raise ConversionError(f"{path}: no GDC_dw weights: not a GhostFaceNets embedding model")
    return layers


# Official GhostNetV2 (kecam) layer names -> ours; V2 files carry these stable names.
_V2_NAME_RULES = (
    (r"^(stack\d+)_ghost_(\d)_short_1_(conv|bn)$", r"\1_ghost\2_dfc_\3"),
    (r"^(stack\d+)_ghost_(\d)_short_2_dw_conv$", r"\1_ghost\2_dfc_h_dw"),
    (r"^(stack\d+)_ghost_(\d)_short_2_bn$", r"\1_ghost\2_dfc_h_bn"),
    (r"^(stack\d+)_ghost_(\d)_short_3_dw_conv$", r"\1_ghost\2_dfc_v_dw"),
    (r"^(stack\d+)_ghost_(\d)_short_3_bn$", r"\1_ghost\2_dfc_v_bn"),
    (r"^(stack\d+)_ghost_(\d)_(prim|cheap)_prelu$", r"\1_ghost\2_\3_act"),
    (r"^(stack\d+)_ghost_(\d)_cheap_dw_conv$", r"\1_ghost\2_cheap_dw"),
    (r"^(stack\d+)_ghost_(\d)_(prim_conv|prim_bn|cheap_bn)$", r"\1_ghost\2_\3"),
    (r"^(stack\d+)_down_dw_conv$", r"\1_down_dw"),
    (r"^(stack\d+)_se_1_conv$", r"\1_se_reduce"),
    (r"^(stack\d+)_se_prelu$", r"\1_se_act"),
    (r"^(stack\d+)_se_2_conv$", r"\1_se_expand"),
    (r"^(stack\d+)_short_1_dw_conv$", r"\1_short_dw"),
    (r"^(stack\d+)_short_1_bn$", r"\1_short_dw_bn"),
    (r"^(stack\d+)_short_2_(conv|bn)$", r"\1_short_\2"),
    (r"^stem_prelu$", "stem_act"),
    (r"^pre_(conv|bn)$", r"final_\1"),
    (r"^pre_prelu$", "final_act"),
)
# Order in which the official code creates the layers of one block (= the numbering of V1's auto names)
_CREATION_PARTS = ("prim_conv", "prim_bn", "prim_act", "cheap_dw", "cheap_bn", "cheap_act", "dfc_conv", "dfc_bn",
                   "dfc_h_dw", "dfc_h_bn", "dfc_v_dw", "dfc_v_bn", "down_dw", "down_bn", "se_reduce", "se_act",
                   "se_expand", "short_dw", "short_dw_bn", "short_conv", "short_bn")


def _our_name_for_v2(name: str) -> str:
    for pattern, replacement in _V2_NAME_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


def _creation_key(our_name: str) -> tuple[int, int, int]:
    """Sort key reproducing the official creation order of our layer names."""
    head = {"stem_conv": 0, "stem_bn": 1, "stem_act": 2, "final_conv": 0, "final_bn": 1, "final_act": 2,
            "GDC_dw": 0, "GDC_batchnorm": 1, "GDC_conv": 2, "pre_embedding": 3}
    if our_name.startswith("stem"):
        return (0, 0, head[our_name])
    if our_name.startswith("final"):
        return (100, 0, head[our_name])
    if our_name in head:
        return (101, 0, head[our_name])
    match = re.match(r"^stack(\d+)_(ghost(\d)_)?(.+)$", our_name)
    stack, ghost, part = int(match.group(1)), int(match.group(3) or 0), match.group(4)
    block_part = _CREATION_PARTS.index(part)
    # ghost module 2 comes after down/se, before the shortcut
    phase = 0 if ghost == 1 else (2 if ghost == 2 else (1 if part.startswith(("down", "se")) else 3))
    return (stack, phase, block_part)


def auto_name_index(name: str) -> tuple[int, int]:
    match = re.match(r"^(.*?)(?:_(\d+))?$", name)
    return (0 if match.group(2) is None else 1, int(match.group(2) or 0))


def pair_weights_only(path: str, layers: dict[str, OfficialLayer], model) -> list[tuple[OfficialLayer, str]]:
    """Pair a weights-only file's layers with ours: by translated name (V2's stable names), else
    per layer class in creation order (V1's auto names are numbered in creation order)."""
    ours = {layer.name: layer for layer in model.layers if layer.weights}
    translated = {_our_name_for_v2(name): layer for name, layer in layers.items()}
    if set(translated) == set(ours):
        return [(translated[name], name) for name in ours]
    fixed = ("GDC_dw", "GDC_batchnorm", "GDC_conv", "pre_embedding")
    pairs = [(layers[name], name) for name in fixed if name in layers]
    for class_name in ("Conv2D", "DepthwiseConv2D", "BatchNormalization", "PReLU"):
        theirs = sorted((layer for name, layer in layers.items() if layer.class_name == class_name
                         and name not in fixed), key=lambda layer: auto_name_index(layer.name))
        mine = sorted((name for name, layer in ours.items() if type(layer).__name__ == class_name
                       and name not in fixed), key=_creation_key)
        if len(theirs) != len(mine):
            raise ConversionError(f"{path}: {len(theirs)} {class_name} layers in the file, {len(mine)} in our "
                                  "model: the architectures differ")
        pairs.extend(zip(theirs, mine))
    return pairs


def weighted_in_topological_order(layers: dict[str, OfficialLayer], outputs: Sequence[str]) -> list[OfficialLayer]:
    """Depth-first post-order from the outputs, inputs visited in argument order; weighted layers only."""
    order: list[OfficialLayer] = []
    visited = set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                layer = layers[name]
                if layer.weights:
                    order.append(layer)
                continue
            if name in visited or name not in layers:
                continue
            visited.add(name)
            stack.append((name, True))
            for parent in reversed(layers[name].inbound):
                if parent not in visited:
                    stack.append((parent, False))
    return order


def our_layers(model) -> dict[str, OfficialLayer]:
    config = model.get_config()
    by_name = {layer.name: layer for layer in model.layers}
    result = {}
    for entry in config["layers"]:
        name = entry["name"]
        result[name] = OfficialLayer(name, entry["class_name"], entry["config"], _inbound_names(entry["inbound_nodes"]),
                              [np.asarray(w) for w in by_name[name].get_weights()])
    return result




def copy_official_weights(path: str, layers: dict[str, OfficialLayer], outputs: Sequence[str], model,
                          label: str | None = None) -> int:
    """Copy the weights of an official file (`read_official(path)`'s layers and outputs) into `model`; returns
    the number of layers copied. Every pair is checked (class and weight shapes) before it is assigned.

    Raises:
        ConversionError: naming the file and the first layer whose class or shape does not match.
    """
    if outputs:
        theirs_in_order = weighted_in_topological_order(layers, outputs)
        ours = [layer.name for layer in weighted_in_topological_order(our_layers(model), ["embedding"])]
        if len(theirs_in_order) != len(ours):
            raise ConversionError(f"{path}: {len(theirs_in_order)} layers with weights in the file, {len(ours)} in "
                                  f"{model.name}: the architectures differ")
        pairs = list(zip(theirs_in_order, ours))
    else:
        pairs = pair_weights_only(path, layers, model)
    checked = []
    for theirs, our_name in pairs:
        mine = model.get_layer(our_name)
        if theirs.class_name != type(mine).__name__:
            raise ConversionError(f"{path}: layer {theirs.name!r} ({theirs.class_name}) pairs with our "
                                  f"{our_name!r} ({type(mine).__name__}): the architectures differ")
        shapes = [tuple(w.shape) for w in theirs.weights]
        expected = [tuple(w.shape) for w in mine.weights]
        if shapes != expected:
            raise ConversionError(f"{label or path}: layer {our_name!r} has weight shapes {shapes} in the file, "
                                  f"{model.name} expects {expected}")
        checked.append((mine, theirs.weights))
    for mine, weights in checked:  # assign only once every pair fits: a mismatch leaves the model untouched
        mine.set_weights(weights)
    return len(checked)
