"""Run and inspect TFLite files with LiteRT: outputs, op lists, delegate partitions, latency."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ghostface_keras.core.errors import ModelLoadError


def dynamic_tensor_names(path: str | os.PathLike) -> list[str]:
    """Names of tensors whose shape signature has an unknown (-1) dimension: must be empty for phones."""
    interpreter = make_interpreter(path, delegates=False)
    return [
        tensor["name"]
        for tensor in interpreter.get_tensor_details()
        if -1 in np.asarray(tensor.get("shape_signature", tensor["shape"])).tolist()
    ]


def _interpreter_class():
    """LiteRT's maintained interpreter when installed (extra ``litert``), else TensorFlow's copy."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    return Interpreter, OpResolverType


def make_interpreter(path: str | os.PathLike, num_threads: int | None = 1, delegates: bool = True):
    """A ready-to-run LiteRT interpreter for `path` (XNNPACK on unless ``delegates=False``; `num_threads`
    None lets LiteRT choose). A file LiteRT cannot load raises `ModelLoadError` naming it.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
        >>> interpreter = make_interpreter(path, num_threads=1)
        >>> interpreter.get_input_details()[0]["shape"].tolist()
        [1, 112, 112, 3]
    """
    interpreter_class, resolver = _interpreter_class()
    options = {} if delegates else {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        interpreter = interpreter_class(model_path=str(path), num_threads=num_threads, **options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelLoadError(f"{path}: not a loadable TFLite model ({first_line})") from error
    return interpreter


def tflite_op_names(path: str | os.PathLike) -> list[str]:
    """Op names of the TFLite graph in execution order (before any delegate), e.g. ``["CONV_2D", ...]``.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
        >>> sorted(set(tflite_op_names(path)))      # a GhostFaceNet: CONV_2D, DEPTHWISE_CONV_2D, PRELU, ...
        ['FULLY_CONNECTED', 'MEAN']
    """
    interpreter = make_interpreter(path, delegates=False)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def count_delegate_nodes(path: str | os.PathLike) -> int:
    """How many XNNPACK partitions the default interpreter makes: 1 means the whole graph is delegated
    (as long as the graph also has no dynamic-shape op, which `export_tflite` guarantees)."""
    interpreter = make_interpreter(path, delegates=True)
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def has_static_batch(details) -> bool:
    """True when a TFLite input was traced with a fixed batch (our phone exports): XNNPACK cannot resize it."""
    signature = details.get("shape_signature")
    return signature is not None and len(signature) > 0 and int(signature[0]) > 0


def quantize_input(values: np.ndarray, details) -> np.ndarray:
    """`values` in the dtype of a TFLite input tensor: cast for float inputs, scale / zero point / clip
    (round half to even) for integer ones. `details` is an entry of ``get_input_details()``."""
    dtype = details["dtype"]
    if np.issubdtype(dtype, np.floating):
        return np.asarray(values).astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.rint(np.asarray(values) / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize_output(values: np.ndarray, details) -> np.ndarray:
    """A TFLite output tensor as float32 (integer outputs through their scale and zero point)."""
    if np.issubdtype(np.asarray(values).dtype, np.floating):
        return np.asarray(values, dtype=np.float32)
    scale, zero_point = details["quantization"]
    return ((np.asarray(values).astype(np.float32) - zero_point) * scale).astype(np.float32)


def run_tflite(path_or_interpreter, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Embeddings of normalized float32 `images` (N, H, W, C) from a TFLite model, one batch-1 call each.

    Quantized input / output tensors are handled with their scale and zero point.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> from ghostface_keras.core.preprocessing import normalize_images
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
        >>> pixels = np.zeros((8, 112, 112, 3), np.uint8)
        >>> run_tflite(path, normalize_images(pixels)).shape
        (8, 32)
    """
    interpreter = path_or_interpreter
    if isinstance(path_or_interpreter, (str, os.PathLike)):
        interpreter = make_interpreter(path_or_interpreter, num_threads)
    input_details = interpreter.get_input_details()[0]
    output_details = interpreter.get_output_details()[0]
    batch = int(input_details["shape"][0])
    images = np.asarray(images, dtype=np.float32)
    outputs = []
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)]) if len(chunk) < batch else chunk
        interpreter.set_tensor(input_details["index"], quantize_input(padded, input_details))
        interpreter.invoke()
        result = dequantize_output(interpreter.get_tensor(output_details["index"]), output_details)
        outputs.append(np.array(result[: len(chunk)], dtype=np.float32))
    return np.concatenate(outputs)


def tflite_latency_ms(path_or_interpreter, num_threads: int = 1, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time of one ``invoke`` in milliseconds (LiteRT, XNNPACK, `num_threads`).

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
        >>> milliseconds = tflite_latency_ms(path, num_threads=1)
        >>> milliseconds > 0
        True
    """
    interpreter = path_or_interpreter
    if isinstance(path_or_interpreter, (str, os.PathLike)):
        interpreter = make_interpreter(path_or_interpreter, num_threads)
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], np.zeros(details["shape"], details["dtype"]))
    for _ in range(warmup):
        interpreter.invoke()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        interpreter.invoke()
        timings.append(time.perf_counter() - start)
    return float(np.median(timings) * 1e3)


class TFLiteEmbedder:
    """A `.tflite` embedding model as a callable: normalized float32 ``(N, H, W, C)`` -> float32 ``(N, D)``.

    Files with a dynamic batch (e.g. the official conversion) are resized to each batch and run in one
    invoke; files with a static batch (our phone exports, which XNNPACK cannot resize) are fed in chunks
    of that batch by `run_tflite`, the last chunk padded. int8 / uint8 inputs and outputs are quantized
    with their scale and zero point. The evaluation and inference code both run `.tflite` files through it.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> from ghostface_keras.core.preprocessing import normalize_images
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face_int8.tflite", "int8", representative_data=faces)
        >>> embed = TFLiteEmbedder(path)
        >>> pixels = np.zeros((8, 112, 112, 3), np.uint8)
        >>> embed(normalize_images(pixels)).shape
        (8, 32)
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.interpreter = make_interpreter(self.path, num_threads)
        self._refresh_details()
        self.input_size = int(self.input_shape[1])
        self._static_batch = has_static_batch(self.input_detail)

    def _refresh_details(self) -> None:
        self.input_detail = self.interpreter.get_input_details()[0]
        self.input_shape = tuple(int(value) for value in self.input_detail["shape"])

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if not self._static_batch and len(batch) != self.input_shape[0]:
            self.interpreter.resize_tensor_input(self.input_detail["index"], [len(batch), *batch.shape[1:]])
            self.interpreter.allocate_tensors()
            self._refresh_details()
        return run_tflite(self.interpreter, batch)  # one invoke once resized; fixed batches go in chunks
