"""`weights=` of every builder (the keras.applications convention), in one place.

`apply_weights(model, weights)` fills a freshly built model from:
- `None`: nothing (random initialization);
- a released checkpoint or registry model name (`ghostface_keras.weights.checkpoints.list_pretrained()`):
  its official `.h5` is downloaded once (`weights.download`, sha256-verified) and copied as below;
- a `.keras` file: loaded with `keras.saving.load_model` (safe mode), copied by layer name;
- a Keras-3 `.weights.h5` file (`model.save_weights`): checked against the model entry by entry, then
  loaded with `model.load_weights`;
- an official Keras-2 GhostFaceNets `.h5` (full, training-model or weights-only save): read as data and
  copied by graph topology into the built model (`weights.official.copy_official_weights`).

Nothing here builds a model or imports a builder: the builders call this module, so it sits below them.

Every weight is checked before anything is assigned: a file that does not fit the built architecture
raises one `ModelLoadError` line naming the file and the first mismatching layer with both shapes.
"""

from __future__ import annotations

import os
import re

import keras

from ghostface_keras.core.errors import ConversionError, ModelLoadError
from ghostface_keras.weights.keras_files import is_official_h5, read_keras_model

FILE_SUFFIXES = (".keras", ".h5", ".hdf5")


def apply_weights(model: keras.Model, weights) -> keras.Model:
    """Load `weights` (None, a released checkpoint name, or a file path) into `model`; returns `model`.

    Raises:
        ModelLoadError: missing or unreadable file, or weights that do not fit `model` (the message
            names the file and the first mismatching layer and shapes).
        ModelNameError: `weights` is neither a file nor a released checkpoint name.
        PretrainedError: a released checkpoint that cannot be downloaded or fails its hash check.
    """
    if weights is None:
        return model
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, a released checkpoint name or a file path, "
                        f"got {type(weights).__name__}")
    path = os.fspath(weights)
    if os.path.isfile(path) and _is_keras3_weights_file(path):
        _load_keras3_weights(model, path)
        return model
    _fill_from(path, model)
    return model


def _fill_from(path: str, model: keras.Model) -> None:
    """Copy into `model` the weights of a `.keras` / Keras-3 `.h5` file (by layer name), an official Keras-2
    `.h5` (by graph topology), or a released checkpoint name (its official `.h5`, downloaded once)."""
    from ghostface_keras.weights.official import copy_official_weights, read_official

    label = path
    if not os.path.exists(path):
        from ghostface_keras.weights.checkpoints import check_model_source
        from ghostface_keras.weights.download import fetch_checkpoint

        check_model_source(path)  # a missing file, or a name that is no released checkpoint: one line
        path = fetch_checkpoint(path)
    elif not path.lower().endswith(FILE_SUFFIXES):
        raise ModelLoadError(f"{path}: unknown weights format (expected .keras, .h5, .weights.h5 or a released "
                             "checkpoint name)")
    if path.lower().endswith((".h5", ".hdf5")) and is_official_h5(path):
        try:
            layers, outputs, _ = read_official(path)
            copy_official_weights(path, layers, outputs, model, label)
        except ConversionError as error:
            raise ModelLoadError(str(error)) from None
        return
    copy_by_name(read_keras_model(path), model, path)


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


# ----------------------------------------------------------------------------------------------
# Copy by layer name (.keras, official .h5, released checkpoints)
# ----------------------------------------------------------------------------------------------

def _embedding_model(model: keras.Model) -> keras.Model:
    """`model`, or the nested model holding the `embedding` layer when `model` wraps one (a training model)."""
    names = {layer.name for layer in model.layers}
    if "embedding" in names:
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model) and any(inner.name == "embedding" for inner in layer.layers):
            return layer
    return model


def _shapes(layer) -> list[tuple[int, ...]]:
    return [tuple(int(d) for d in w.shape) for w in layer.weights]


def copy_by_name(source: keras.Model, target: keras.Model, label: str) -> None:
    """Check every weighted layer of `target` against the same-named layer of `source`, then copy."""
    source = _embedding_model(source)
    theirs = {layer.name: layer for layer in source.layers if layer.weights}
    pairs = []
    for layer in target.layers:
        if not layer.weights:
            continue
        other = theirs.get(layer.name)
        if other is None:
            raise ModelLoadError(f"{label}: no weights for layer {layer.name!r} of {target.name} "
                                 f"(the file holds {source.name}): a different architecture")
        if type(other).__name__ != type(layer).__name__:
            raise ModelLoadError(f"{label}: layer {layer.name!r} is a {type(other).__name__} in the file, "
                                 f"{target.name} expects a {type(layer).__name__}")
        if _shapes(other) != _shapes(layer):
            raise ModelLoadError(f"{label}: layer {layer.name!r} has weight shapes {_shapes(other)} in the file, "
                                 f"{target.name} expects {_shapes(layer)}")
        pairs.append((layer, other))
    ours = {layer.name for layer, _ in pairs}
    extra = [name for name in theirs if name not in ours]
    if extra:
        raise ModelLoadError(f"{label}: layer {extra[0]!r} {_shapes(theirs[extra[0]])} of the file has no "
                             f"counterpart in {target.name}: a different architecture")
    for layer, other in pairs:
        layer.set_weights(other.get_weights())


# ----------------------------------------------------------------------------------------------
# Keras-3 .weights.h5 (entries are named by layer class and order, not by layer name)
# ----------------------------------------------------------------------------------------------

def _is_keras3_weights_file(path: str) -> bool:
    """A Keras-3 `save_weights` file (Keras 3 insists on the `.weights.h5` suffix; a plain `.h5` is Keras 2)."""
    return path.lower().endswith(".weights.h5")


def _snake_case(name: str) -> str:
    """Keras' `to_snake_case`, which names the entries of a weights file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_entries(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """(entry path, layer) in the order and with the names Keras 3 writes a Functional model's layers."""
    used: dict[str, int] = {}
    entries = []
    for layer in model.layers:
        name = _snake_case(type(layer).__name__)
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        entries.append((f"layers/{name}", layer))
    return entries


def _stored_shapes(group) -> list[tuple[int, ...]] | None:
    if group is None or "vars" not in group:
        return None
    variables = group["vars"]
    return [tuple(int(d) for d in variables[key].shape) for key in sorted(variables, key=int)]


def _load_keras3_weights(model: keras.Model, path: str) -> None:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise ModelLoadError(f"{path}: not a readable HDF5 file ({_one_line(error)})") from None
    with handle:
        entries = _keras3_entries(model)
        for entry, layer in entries:
            stored = _stored_shapes(handle.get(entry))
            if not layer.weights and not stored:
                continue
            if stored is None:
                raise ModelLoadError(f"{path}: no weights for layer {layer.name!r} (entry {entry!r}) of "
                                     f"{model.name}: a different architecture")
            if stored != _shapes(layer):
                raise ModelLoadError(f"{path}: layer {layer.name!r} (entry {entry!r}) has weight shapes {stored} "
                                     f"in the file, {model.name} expects {_shapes(layer)}")
        known = {entry for entry, _ in entries}
        extra = [f"layers/{name}" for name in handle.get("layers", {})
                 if f"layers/{name}" not in known and _stored_shapes(handle[f"layers/{name}"])]
        if extra:
            raise ModelLoadError(f"{path}: entry {extra[0]!r} {_stored_shapes(handle[extra[0]])} of the file has "
                                 f"no counterpart in {model.name}: a different architecture")
    try:
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - checked above; anything left is a damaged file
        raise ModelLoadError(f"{path}: cannot load the weights ({_one_line(error)})") from None

