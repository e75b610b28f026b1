"""One model loader for every door: inference, evaluation, export, fine-tuning and the CLIs.

`load_model` takes a Keras model, a `.keras` file, a Keras-3 `.h5`, an official Keras-2 GhostFaceNets
`.h5` (converted by `ghostface_keras.models.official`), a SavedModel folder, a `.tflite` file, an `.onnx` file, or the
name of a released checkpoint (downloaded once), and returns a `LoadedModel`: a runner on normalized
float32 batches plus what is known of the model (input size, embedding size, normalization, the released
checkpoint it is, its verification threshold).

It checks that the model is a face embedder: one (N, H, W, 3) image input and one (N, D) float output with
`MIN_EMBEDDING_SIZE <= D <= MAX_EMBEDDING_SIZE`, not ending in a softmax or sigmoid. Anything else is refused
with one line naming the file and the shapes found. Every failure raises `ModelLoadError`.

The checkpoint identity comes from the weights, not the file name (`checkpoints.signature_of`): the
official `.h5`, its `.keras` conversion and its TFLite export all get the same threshold.

Example:
    >>> import keras
    >>> inputs = keras.Input((112, 112, 3))
    >>> features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    >>> loaded = load_model(keras.Model(inputs, keras.layers.Dense(128)(features)))
    >>> loaded.format, loaded.input_size, loaded.embedding_size, loaded.checkpoint, loaded.threshold
    ('keras', 112, 128, None, 0.3)
    >>> classifier = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(features), name="classifier")
    >>> load_model(classifier)
    Traceback (most recent call last):
    ...
    ghostface_keras.core.errors.ModelLoadError: <Keras model 'classifier'>: not a face-embedding model: ...
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

from ghostface_keras.weights.checkpoints import (
    Checkpoint,
    check_model_source,
    checkpoint_threshold,
    find_checkpoint,
    match_signature,
    probe_images,
    signature_of,
)
from ghostface_keras.core.errors import GhostFaceError, ModelLoadError
from ghostface_keras.core.preprocessing import normalize_images
from ghostface_keras.weights.keras_files import first_line, is_official_h5, read_keras_model

logger = logging.getLogger(__name__)

MIN_EMBEDDING_SIZE = 32
MAX_EMBEDDING_SIZE = 8192
FACE_NORMALIZATION = "(x - 127.5) / 128, RGB"
_CLASSIFIER_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass
class LoadedModel:
    """A face-embedding model from any source, behind one call: normalized float32 (N, H, W, 3) -> (N, D).

    Attributes:
        source: the path, checkpoint name or a description of the object it came from.
        format: "keras", "official-h5", "savedmodel", "tflite", "onnx" or "callable".
        runner: the network itself (no flip, no normalization of the output).
        input_size: side of the square input (112 for every registry model; None: any, for plain callables).
        embedding_size: D (None for plain callables until they run).
        keras_model: the Keras model where there is one (export and fine-tuning need it), else None.
        checkpoint: the released checkpoint these weights are, recognized from the weights, else None.
    """

    source: str
    format: str
    runner: Runner
    input_size: int | None
    embedding_size: int | None
    keras_model: Any = None
    checkpoint: Checkpoint | None = None
    normalization: str = FACE_NORMALIZATION

    @property
    def threshold(self) -> float:
        """The cosine verification threshold of the checkpoint (measured), else the fallback."""
        return checkpoint_threshold(self.checkpoint)

    @property
    def name(self) -> str:
        """The checkpoint's name when known, else the file stem or model name."""
        if self.checkpoint is not None:
            return self.checkpoint.name
        return Path(self.source).stem if self.format != "callable" else self.source

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.runner(batch)


# --------------------------------------------------------------------------------------------------
# The loader
# --------------------------------------------------------------------------------------------------
def load_model(model: Any, identify: bool = True, check: bool = True) -> LoadedModel:
    """Load any supported model (see the module docstring) and check that it is a face embedder.

    Args:
        model: a path, a released checkpoint name, a Keras model, a `LoadedModel` (returned as is) or a
            callable on normalized float32 batches.
        identify: recognize a released checkpoint from the weights (one forward pass on two probe images).
        check: refuse models that are not face embedders (False only for a model being trained, whose
            toy embedding sizes the training tests use).

    Raises:
        ModelLoadError: missing or unreadable file, unknown name, or not a face-embedding model.

    Example:
        >>> load_model("no/such/model.keras")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.ModelLoadError: no/such/model.keras: model file not found
    """
    if isinstance(model, LoadedModel):
        return model
    checkpoint = None
    if isinstance(model, (str, os.PathLike)):
        loaded, checkpoint = _load_source(str(model), check)
    elif _is_keras_model(model):
        loaded = _from_keras(model, f"<Keras model {getattr(model, 'name', '')!r}>", "keras", check)
    elif callable(model):
        loaded = _from_callable(model)
    else:
        raise ModelLoadError(f"model must be a path, a checkpoint name, a Keras model or a callable, got "
                             f"{type(model).__name__}")
    if checkpoint is None and identify:
        checkpoint = identify_checkpoint(loaded)
    loaded.checkpoint = checkpoint
    return loaded


def identify_checkpoint(loaded: LoadedModel) -> Checkpoint | None:
    """The released checkpoint whose weights `loaded` runs, from its embeddings of the probe images."""
    probe = normalize_images(probe_images(loaded.input_size or 112))
    try:
        raw = loaded.runner(probe)
    except Exception as error:  # noqa: BLE001 - a model that cannot run is reported by its first real use
        logger.info("%s: could not run the identity probe (%s)", loaded.source, error)
        return None
    if not np.all(np.isfinite(raw)):
        return None
    checkpoint = match_signature(signature_of(raw))
    if checkpoint is not None:
        logger.info("%s: recognized as the released checkpoint %s", loaded.source, checkpoint.name)
    return checkpoint


def _load_source(source: str, check: bool) -> tuple[LoadedModel, Checkpoint | None]:
    path = Path(source)
    if not path.exists():
        check_model_source(source)
        return _load_checkpoint_name(source, check)
    if path.is_dir():
        return _load_saved_model(path, check), None
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return _load_tflite(path, check), _tflite_checkpoint(path)
    if suffix == ".onnx":
        return _load_onnx(path, check), None
    if suffix in (".keras", ".h5", ".hdf5"):
        return _load_keras_file(path, check), None
    raise ModelLoadError(f"{path}: unknown model format {suffix!r} (expected .keras, .h5, .tflite, .onnx or a "
                         "SavedModel folder)")


def _load_checkpoint_name(name: str, check: bool) -> tuple[LoadedModel, Checkpoint]:
    checkpoint = find_checkpoint(name)  # not None: check_model_source ran
    from ghostface_keras.models.pretrained import load_pretrained

    try:
        model = load_pretrained(checkpoint.name)
    except GhostFaceError as error:
        raise ModelLoadError(str(error)) from None
    return _from_keras(model, checkpoint.name, "keras", check), checkpoint


# --------------------------------------------------------------------------------------------------
# Keras
# --------------------------------------------------------------------------------------------------
def _is_keras_model(model: Any) -> bool:
    import keras

    return isinstance(model, keras.Model)


def _load_keras_file(path: Path, check: bool) -> LoadedModel:
    if path.suffix.lower() in (".h5", ".hdf5") and is_official_h5(path):
        from ghostface_keras.models.official import load_official  # official releases are Keras-2 files

        try:
            return _from_keras(load_official(str(path)), str(path), "official-h5", check)
        except GhostFaceError as error:
            raise ModelLoadError(str(error)) from None
    return _from_keras(read_keras_model(path), str(path), "keras", check)


def _from_keras(model: Any, source: str, format_name: str, check: bool = True) -> LoadedModel:
    inputs = [tuple(tensor.shape) for tensor in model.inputs]
    outputs = [tuple(tensor.shape) for tensor in model.outputs]
    dtypes = [str(getattr(tensor, "dtype", "float32")) for tensor in model.outputs]
    size, embedding_size = check_face_embedder(source, inputs, outputs, dtypes, _final_activation(model), check)

    def run(batch: np.ndarray) -> np.ndarray:
        import keras

        with warnings.catch_warnings():
            # models saved with a one-element input list warn that a bare tensor "doesn't match"
            warnings.filterwarnings("ignore", message="The structure of `inputs`")
            result = model(np.asarray(batch, np.float32), training=False)
        return np.asarray(keras.ops.convert_to_numpy(result), dtype=np.float32)

    return LoadedModel(source, format_name, run, size, embedding_size, keras_model=model)


def _final_activation(model: Any) -> str:
    """The activation that produces the output, as far as the last layer tells ("" when it has none)."""
    layers = getattr(model, "layers", None)
    if not layers:
        return ""
    last = layers[-1]
    if type(last).__name__.lower() in ("softmax", "sigmoid"):
        return type(last).__name__.lower()
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", "") if activation is not None else ""


# --------------------------------------------------------------------------------------------------
# The face-embedder check, the same for every format
# --------------------------------------------------------------------------------------------------
def check_face_embedder(source: str, inputs: Sequence[tuple], outputs: Sequence[tuple],
                        output_dtypes: Sequence[str] = (), final_activation: str = "",
                        check: bool = True) -> tuple[int, int]:
    """(input size, embedding size) of a face embedder, or `ModelLoadError` naming `source` and the shapes.
    With `check=False` only the sizes are read (a model being trained, a classifier whose weights are copied).

    Example:
        >>> check_face_embedder("m.tflite", [(1, 112, 112, 3)], [(1, 512)])
        (112, 512)
        >>> check_face_embedder("m.tflite", [(1, 112, 112, 3)], [(1, 10)])
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.ModelLoadError: m.tflite: not a face-embedding model: expected one (N, H, W, 3) \
image input and one (N, D) float output with 32 <= D <= 8192; found inputs [(1, 112, 112, 3)] and outputs [(1, 10)]
    """
    if not check:
        first_input = tuple(inputs[0]) if inputs else ()
        size = first_input[1] if len(first_input) > 1 and first_input[1] not in (None, -1) else 112
        return int(size), int(outputs[0][-1] or 0) if outputs and outputs[0] else 0
    found = f"found inputs {[tuple(s) for s in inputs]} and outputs {[tuple(s) for s in outputs]}"
    problem = (f"{source}: not a face-embedding model: expected one (N, H, W, 3) image input and one (N, D) float "
               f"output with {MIN_EMBEDDING_SIZE} <= D <= {MAX_EMBEDDING_SIZE}; {found}")
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelLoadError(problem)
    image, output = tuple(inputs[0]), tuple(outputs[0])
    if len(image) != 4 or image[3] != 3 or len(output) != 2 or output[1] is None:
        raise ModelLoadError(problem)
    if not MIN_EMBEDDING_SIZE <= int(output[1]) <= MAX_EMBEDDING_SIZE:
        raise ModelLoadError(problem)
    if output_dtypes and not any(kind in str(output_dtypes[0]) for kind in ("float", "int8")):
        raise ModelLoadError(problem + f" of type {output_dtypes[0]}")
    if final_activation.lower() in _CLASSIFIER_ACTIVATIONS:
        raise ModelLoadError(f"{source}: not a face-embedding model: its output comes from a {final_activation} "
                             f"(a classifier); {found}")
    height, width = image[1], image[2]
    if height not in (None, -1) and width not in (None, -1) and height != width:
        raise ModelLoadError(problem + " (the image input must be square)")
    size = 112 if height in (None, -1) else int(height)
    return size, int(output[1])


# --------------------------------------------------------------------------------------------------
# SavedModel, TFLite, ONNX, plain callables
# --------------------------------------------------------------------------------------------------
def _load_saved_model(path: Path, check: bool = True) -> LoadedModel:
    if not (path / "saved_model.pb").exists():
        raise ModelLoadError(f"{path}: a folder but not a SavedModel (no saved_model.pb)")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # noqa: BLE001 - a corrupt SavedModel: one line
        raise ModelLoadError(f"{path}: cannot load SavedModel ({first_line(error)})") from None
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is None:
        raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature")
    input_specs = signature.structured_input_signature[1]
    output_specs = signature.structured_outputs
    inputs = [tuple(spec.shape.as_list()) for spec in input_specs.values()]
    outputs = [tuple(spec.shape.as_list()) for spec in output_specs.values()]
    dtypes = [spec.dtype.name for spec in output_specs.values()]
    input_name = next(iter(input_specs))
    input_dtype = input_specs[input_name].dtype
    if input_dtype != tf.float32:
        raise ModelLoadError(f"{path}: the serving_default input is {input_dtype.name}; expected float32 "
                             "normalized pixels")
    size, embedding_size = check_face_embedder(str(path), inputs, outputs, dtypes, check=check)
    static_batch = inputs[0][0]

    def run_fixed(padded: np.ndarray) -> np.ndarray:
        return next(iter(signature(**{input_name: tf.constant(padded)}).values())).numpy()

    return LoadedModel(str(path), "savedmodel", _in_chunks(run_fixed, static_batch, embedding_size), size,
                       embedding_size)


def _load_tflite(path: Path, check: bool = True) -> LoadedModel:
    from ghostface_keras.runtime.litert import TFLiteEmbedder, tflite_op_names

    runner = TFLiteEmbedder(path)
    interpreter = runner.interpreter
    inputs = [tuple(int(v) for v in d["shape"]) for d in interpreter.get_input_details()]
    output_details = interpreter.get_output_details()
    outputs = [tuple(int(v) for v in d["shape"]) for d in output_details]
    dtypes = [np.dtype(d["dtype"]).name for d in output_details]
    operators = tflite_op_names(path)
    final = {"SOFTMAX": "softmax", "LOGISTIC": "sigmoid", "LOG_SOFTMAX": "log_softmax"}.get(
        operators[-1] if operators else "", "")
    size, embedding_size = check_face_embedder(str(path), inputs, outputs, dtypes, final, check)
    return LoadedModel(str(path), "tflite", runner, size, embedding_size)


def _tflite_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint our exporter recorded in the file (quantized files cannot be recognized by signature)."""
    from ghostface_keras.runtime.tflite_metadata import read_tflite_metadata

    document = read_tflite_metadata(path.read_bytes()) or {}
    name = document.get("checkpoint")
    return find_checkpoint(name) if isinstance(name, str) else None


def _load_onnx(path: Path, check: bool = True) -> LoadedModel:
    try:
        import onnxruntime
    except ImportError:
        raise ModelLoadError(f"{path}: running ONNX files needs onnxruntime (pip install "
                             "'ghostface_keras[onnx]')") from None
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
        raise ModelLoadError(f"{path}: not a loadable ONNX model ({first_line(error)})") from None
    inputs = [tuple(d if isinstance(d, int) else None for d in node.shape) for node in session.get_inputs()]
    outputs = [tuple(d if isinstance(d, int) else None for d in node.shape) for node in session.get_outputs()]
    dtypes = [node.type for node in session.get_outputs()]
    size, embedding_size = check_face_embedder(str(path), inputs, outputs, dtypes, check=check)
    input_name = session.get_inputs()[0].name
    static_batch = inputs[0][0]

    def run_fixed(padded: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: padded})[0]

    return LoadedModel(str(path), "onnx", _in_chunks(run_fixed, static_batch, embedding_size), size, embedding_size)


def _in_chunks(run_fixed: Runner, static_batch: int | None, embedding_size: int) -> Runner:
    """A runner for any batch from one that needs `static_batch` rows (None / -1: any): the last chunk is padded
    with copies of its last image, and the padding rows are dropped."""
    def run(batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, np.float32)
        chunk = len(batch) if static_batch in (None, -1) else int(static_batch)
        results = []
        for start in range(0, len(batch), max(chunk, 1)):
            part = batch[start:start + chunk]
            padded = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)]) if len(part) < chunk \
                else part
            results.append(np.asarray(run_fixed(padded), np.float32)[:len(part)])
        return np.concatenate(results) if results else np.zeros((0, embedding_size), np.float32)

    return run


def _from_callable(function: Callable) -> LoadedModel:
    """A plain function on normalized batches (your own code): its sizes are not known until it runs, so
    every call checks that it returns one row per image."""
    source = f"<callable {getattr(function, '__name__', type(function).__name__)}>"

    def run(batch: np.ndarray) -> np.ndarray:
        output = np.asarray(_first_output(function(batch)), dtype=np.float32)
        if output.ndim != 2 or len(output) != len(batch):
            raise ModelLoadError(f"{source}: returned shape {output.shape} for {len(batch)} images; expected (N, D)")
        return output

    return LoadedModel(source, "callable", run, None, None)


def _first_output(value: Any) -> Any:
    if isinstance(value, dict):
        value = next(iter(value.values()))
    if isinstance(value, (list, tuple)):
        value = value[0]
    return value.numpy() if hasattr(value, "numpy") else value
