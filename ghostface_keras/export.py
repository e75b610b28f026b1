"""Ship a face-embedding model: SavedModel, TFLite (fp32 / fp16 / dynamic / int8) and ONNX, with proof.

Every export is traced with a *static* input shape (batch 1, 112x112x3 float32 NHWC by default), so the
squeeze-excite reshape and the DFC-attention resize have constant shapes: the TFLite graph then holds no
SHAPE / STRIDED_SLICE / PACK ops and XNNPACK delegates all of it (the official conversion keeps those
dynamic-shape ops, see the fixtures' README, quirk 20). The TFLite converter folds every BatchNormalization
into the convolution before it (including the `pre_embedding` BN after `Flatten`, because the 1x1 GDC conv
runs on a 1x1 map) and the V1 hard-sigmoid's `0.2 x + 0.5` into the SE conv. Only TFLite builtin ops are
allowed: a model that would need Flex (Select TF) ops fails to convert instead of silently growing.

`check_parity` then runs the exported file next to the Keras model on real images and measures size,
max abs / relative difference, cosine similarity and LiteRT latency; `PARITY_THRESHOLDS` states what
"the same embeddings" means for each quantization.

Example:
    >>> from ghostface_keras import create_model
    >>> from ghostface_keras.export import export_tflite, check_parity
    >>> model = create_model("GhostFaceNetV1-1.3-2")
    >>> path = export_tflite(model, "ghostfacenet.tflite")              # fp32, batch 1
    >>> report = check_parity(model, path, images)                     # images: (N,112,112,3) float32
    >>> report.passed
    True

Command line (also installed as `ghostface-export`):
    python -m ghostface_keras.export --model model.keras --format tflite --quantization int8 \\
        --calibration-data faces/train --output model_int8.tflite
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ghostface_keras.errors import ExportError, GhostFaceError
from ghostface_keras.preprocessing import IMAGE_SIZE, normalize_images

logger = logging.getLogger(__name__)

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")

# What "the same embeddings" means per export kind. The float32 exports differ from Keras only by
# operation order (folded BN, fused kernels), so their max abs diff divided by the largest Keras
# output magnitude must stay below 1e-4. Quantized exports are judged by cosine similarity of the
# embeddings, the quantity face verification uses.
PARITY_THRESHOLDS: dict[str, dict[str, float]] = {
    "none": {"max_relative_diff": 1e-4},
    "savedmodel": {"max_relative_diff": 1e-5},
    "onnx": {"max_relative_diff": 1e-4},
    "float16": {"min_cosine": 0.999},
    "dynamic": {"min_cosine": 0.99},
    "int8": {"mean_cosine": 0.98},
}

# TFLite ops that compute tensor shapes at run time (the official V1 conversion has SHAPE -> STRIDED_SLICE ->
# PACK feeding the SE reshape); with them XNNPACK cannot delegate the whole graph.
DYNAMIC_SHAPE_OPS = frozenset({"SHAPE", "BROADCAST_ARGS"})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# ----------------------------------------------------------------------------------------------
# Tracing with a static input signature
# ----------------------------------------------------------------------------------------------
def _model_input_shape(model) -> tuple[int, int, int]:
    """(H, W, C) of a single-input image model; fails clearly for anything else."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise ExportError(f"model {model.name!r} has {len(shape)} inputs; export expects one image input")
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ExportError(
            f"model {model.name!r} has input shape {shape}; export needs a fixed (batch, H, W, C) shape "
            "such as (None, 112, 112, 3)"
        )
    return tuple(int(d) for d in shape[1:])


def _write_saved_model(model, directory: Path, batch_size: int | None, uint8_signature: bool) -> None:
    """Trace `model` with a static-shape signature into a SavedModel (Keras 3 ExportArchive)."""
    import keras
    import tensorflow as tf

    height, width, channels = _model_input_shape(model)
    shape = [batch_size, height, width, channels]
    archive = keras.export.ExportArchive()
    archive.track(model)
    call = functools.partial(model.__call__, training=False)
    archive.add_endpoint("serving_default", call, input_signature=[tf.TensorSpec(shape, tf.float32, "images")])
    if uint8_signature:

        def from_pixels(pixels):
            # the one normalization of this library, inside the graph: phones feed camera bytes directly
            return model(normalize_images(pixels), training=False)

        archive.add_endpoint(
            "serving_uint8", from_pixels, input_signature=[tf.TensorSpec(shape, tf.uint8, "pixels")]
        )
    archive.write_out(str(directory), verbose=False)


def export_saved_model(
    model, directory: str | os.PathLike, batch_size: int | None = None, uint8_signature: bool = True
) -> Path:
    """Write `model` as a TensorFlow SavedModel with a float32 NHWC serving signature.

    Signatures: ``serving_default`` takes ``images`` (float32, ``(batch, 112, 112, 3)``, pixels already
    normalized with `normalize_images`) and returns the embedding; with ``uint8_signature`` a second one,
    ``serving_uint8``, takes ``pixels`` (uint8 RGB) and normalizes inside the graph. ``batch_size=None``
    keeps the batch dimension dynamic (servers); pass 1 for a phone-style static graph.

    Example:
        >>> path = export_saved_model(model, "exported/ghostfacenet")
        >>> serve = tf.saved_model.load(str(path)).signatures["serving_uint8"]
        >>> serve(pixels=tf.zeros([1, 112, 112, 3], tf.uint8))["output_0"].shape
        TensorShape([1, 512])
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ExportError(f"{directory}: output folder exists and is not empty; choose a new path")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        _write_saved_model(model, staging, batch_size, uint8_signature)
        if directory.exists():
            directory.rmdir()
        staging.rename(directory)
    except BaseException:
        _remove_tree(staging)
        raise
    return directory


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# TFLite
# ----------------------------------------------------------------------------------------------
def _decomposed_prelu_layer(prelu):
    """A layer equal to `prelu` built from LEAKY_RELU(-1) = |x|, per-channel MULs and an ADD.

    prelu(x) = (1 + a) / 2 * x + (1 - a) / 2 * |x| for every alpha a. XNNPACK delegates int8 LEAKY_RELU,
    MUL and ADD but not int8 PRELU (nor the RELU / MINIMUM / MAXIMUM that other decompositions need), so
    with PRELU every activation would leave the delegate and run on slow reference kernels. When every
    a > -1 the form z + k |z| with z = (1 + a) / 2 * x and k = (1 - a) / (1 + a) is used instead: the
    converter folds the first multiply into the convolution before it, leaving three int8 ops; it is
    used only while k <= 3 (a > -0.5), because a large k would magnify the rounding error of |z|.
    """
    import keras

    alpha = np.asarray(prelu.get_weights()[0], dtype=np.float32)
    positive_scale, absolute_scale = (1.0 + alpha) / 2.0, (1.0 - alpha) / 2.0
    if np.all(positive_scale > 0.25):
        ratio = absolute_scale / positive_scale

        def call(x):
            scaled = positive_scale * x
            return scaled + ratio * keras.ops.leaky_relu(scaled, negative_slope=-1.0)

    else:

        def call(x):
            return positive_scale * x + absolute_scale * keras.ops.leaky_relu(x, negative_slope=-1.0)

    return keras.layers.Lambda(call, name=prelu.name)


def _hard_sigmoid_as_relu6(x):
    # clip(0.2 x + 0.5, 0, 1) == relu6(1.2 x + 3) / 6: the converter fuses "+ 3" and RELU6 into the
    # SE conv, while int8 MINIMUM (from clip) is not delegated by XNNPACK
    import keras

    return keras.ops.relu6(1.2 * x + 3.0) * (1.0 / 6.0)


def _average_pool_as_depthwise(pool):
    """Valid-padded AveragePooling2D as a DepthwiseConv2D with constant weights (int8 AVERAGE_POOL_2D
    is not delegated by XNNPACK; a depthwise conv is)."""
    import keras

    pool_height, pool_width = pool.pool_size
    channels = pool.input.shape[-1]
    layer = keras.layers.DepthwiseConv2D(
        (pool_height, pool_width), strides=pool.strides, padding="valid", use_bias=False, name=pool.name
    )
    layer.build(pool.input.shape)
    layer.set_weights([np.full((pool_height, pool_width, channels, 1), 1.0 / (pool_height * pool_width), np.float32)])
    return layer


def _int8_replacement(layer):
    import keras

    if isinstance(layer, keras.layers.PReLU):
        return _decomposed_prelu_layer(layer)
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Activation) and getattr(activation, "__name__", "") == "hard_sigmoid_keras2":
        return keras.layers.Activation(_hard_sigmoid_as_relu6, name=layer.name)
    if isinstance(layer, keras.layers.AveragePooling2D) and layer.padding == "valid":
        return _average_pool_as_depthwise(layer)
    if isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth"):
        return xnnpack_int8_equivalent(layer)
    return layer  # shared, weights and all


def xnnpack_int8_equivalent(model):
    """The same function as `model`, written with ops that XNNPACK runs in int8.

    PReLU becomes ``(1 + a) / 2 * x + (1 - a) / 2 * |x|``, the Keras-2 hard sigmoid ``clip(0.2 x + 0.5,
    0, 1)`` becomes ``relu6(1.2 x + 3) / 6`` and valid AveragePooling2D a constant depthwise conv: in
    exact arithmetic nothing changes (float32 outputs agree to ~1e-6), but the full-integer TFLite graph
    then stays inside one XNNPACK partition. Every other layer is shared with `model`, not copied.

    Example:
        >>> twin = xnnpack_int8_equivalent(model)
        >>> np.allclose(twin(x), model(x), atol=1e-4)
        True
    """
    import keras

    return keras.models.clone_model(model, clone_function=_int8_replacement)


def _representative_dataset(images: Iterable[np.ndarray]) -> Callable[[], Iterable[list[np.ndarray]]]:
    """Converter callback yielding one normalized float32 (1, H, W, C) image at a time."""

    def generate():
        for image in images:
            array = np.asarray(image, dtype=np.float32)
            yield [array[None] if array.ndim == 3 else array]

    return generate


def _configure_quantization(converter, quantization: str, representative_data, int8_io: bool) -> None:
    import tensorflow as tf

    if quantization == "none":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "int8":
        if representative_data is None:
            raise ExportError(
                "int8 quantization needs representative_data: a few hundred normalized aligned faces "
                "(CLI: --calibration-data DIR)"
            )
        converter.representative_dataset = _representative_dataset(representative_data)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8


def export_tflite(
    model,
    path: str | os.PathLike,
    quantization: str = "none",
    representative_data: Iterable[np.ndarray] | None = None,
    int8_io: bool = False,
    batch_size: int = 1,
) -> Path:
    """Convert `model` to a TFLite flatbuffer with a static batch and only builtin ops.

    Args:
        model: a Keras model with one image input, e.g. ``create_model("GhostFaceNetV1-1.3-2")``.
        path: output ``.tflite`` file (written atomically).
        quantization: ``"none"`` (float32), ``"float16"`` (fp16 weights, half the size),
            ``"dynamic"`` (int8 weights, float activations) or ``"int8"`` (full integer; needs
            ``representative_data``).
        representative_data: normalized float32 images, ``(N, H, W, C)`` or an iterable of
            ``(H, W, C)`` arrays, used to calibrate the int8 activation ranges: real aligned faces.
        int8_io: with ``"int8"``, make the input and output tensors int8 too (otherwise they stay
            float32 and the model quantizes / dequantizes at its edges).
        batch_size: the static batch of the signature; keep 1 for phones (XNNPACK).

    Example:
        >>> export_tflite(model, "face_int8.tflite", "int8", representative_data=train_faces[:200])
        PosixPath('face_int8.tflite')
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    path = Path(path)
    traced = xnnpack_int8_equivalent(model) if quantization == "int8" else model
    with tempfile.TemporaryDirectory(prefix="ghostface_export_") as staging:
        _write_saved_model(traced, Path(staging), batch_size, uint8_signature=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        _configure_quantization(converter, quantization, representative_data, int8_io)
        try:
            flatbuffer = converter.convert()
        except Exception as error:  # the converter raises several unrelated types
            raise ExportError(f"{path}: TFLite conversion failed ({quantization}): {error}") from error
    _write_atomically(path, flatbuffer)
    _check_static_builtin_graph(path)
    return path


def _check_static_builtin_graph(path: Path) -> None:
    """Refuse a flatbuffer with Flex ops, shape-computing ops or tensors of unknown size."""
    forbidden = sorted({name for name in tflite_op_names(path) if name.startswith("Flex") or name in DYNAMIC_SHAPE_OPS})
    dynamic = dynamic_tensor_names(path)
    if forbidden or dynamic:
        raise ExportError(
            f"{path}: graph keeps Flex / dynamic-shape ops {forbidden} or dynamic tensors {dynamic[:5]}; "
            "XNNPACK could not delegate it whole"
        )


def dynamic_tensor_names(path: str | os.PathLike) -> list[str]:
    """Names of tensors whose shape signature has an unknown (-1) dimension: must be empty for phones."""
    interpreter = make_interpreter(path, delegates=False)
    return [
        tensor["name"]
        for tensor in interpreter.get_tensor_details()
        if -1 in np.asarray(tensor.get("shape_signature", tensor["shape"])).tolist()
    ]


def _write_atomically(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _interpreter_class():
    """LiteRT's maintained interpreter when installed (extra ``litert``), else TensorFlow's copy."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    return Interpreter, OpResolverType


def make_interpreter(path: str | os.PathLike, num_threads: int = 1, delegates: bool = True):
    """A ready-to-run LiteRT interpreter for `path` (XNNPACK on unless ``delegates=False``).

    Example:
        >>> interpreter = make_interpreter("face.tflite", num_threads=1)
        >>> interpreter.get_input_details()[0]["shape"].tolist()
        [1, 112, 112, 3]
    """
    interpreter_class, resolver = _interpreter_class()
    options = {} if delegates else {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    try:
        interpreter = interpreter_class(model_path=str(path), num_threads=num_threads, **options)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ExportError(f"{path}: not a loadable TFLite model: {error}") from error
    return interpreter


def tflite_op_names(path: str | os.PathLike) -> list[str]:
    """Op names of the TFLite graph in execution order (before any delegate), e.g. ``["CONV_2D", ...]``.

    Example:
        >>> sorted(set(tflite_op_names("face.tflite")))
        ['CONV_2D', 'DEPTHWISE_CONV_2D', 'MEAN', 'MINIMUM', 'MUL', 'PRELU', 'RELU', 'RESHAPE', ...]
    """
    interpreter = make_interpreter(path, delegates=False)
    return [op["op_name"] for op in interpreter._get_ops_details()]


def count_delegate_nodes(path: str | os.PathLike) -> int:
    """How many XNNPACK partitions the default interpreter makes: 1 means the whole graph is delegated
    (as long as the graph also has no dynamic-shape op, which `export_tflite` guarantees)."""
    interpreter = make_interpreter(path, delegates=True)
    return sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())


def _quantize_input(images: np.ndarray, details: dict) -> np.ndarray:
    if details["dtype"] == np.float32:
        return images.astype(np.float32)
    scale, zero_point = details["quantization"]
    info = np.iinfo(details["dtype"])
    return np.clip(np.round(images / scale + zero_point), info.min, info.max).astype(details["dtype"])


def _dequantize_output(values: np.ndarray, details: dict) -> np.ndarray:
    if details["dtype"] == np.float32:
        return values
    scale, zero_point = details["quantization"]
    return (values.astype(np.float32) - zero_point) * scale


def run_tflite(path_or_interpreter, images: np.ndarray, num_threads: int = 1) -> np.ndarray:
    """Embeddings of normalized float32 `images` (N, H, W, C) from a TFLite model, one batch-1 call each.

    Quantized input / output tensors are handled with their scale and zero point.

    Example:
        >>> run_tflite("face.tflite", normalize_images(pixels)).shape
        (8, 512)
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
        interpreter.set_tensor(input_details["index"], _quantize_input(padded, input_details))
        interpreter.invoke()
        result = _dequantize_output(interpreter.get_tensor(output_details["index"]), output_details)
        outputs.append(np.array(result[: len(chunk)], dtype=np.float32))
    return np.concatenate(outputs)


def tflite_latency_ms(path_or_interpreter, num_threads: int = 1, repeats: int = 50, warmup: int = 5) -> float:
    """Median wall time of one ``invoke`` in milliseconds (LiteRT, XNNPACK, `num_threads`).

    Example:
        >>> tflite_latency_ms("face.tflite", num_threads=1)
        4.1
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


# ----------------------------------------------------------------------------------------------
# ONNX (optional extra)
# ----------------------------------------------------------------------------------------------
def onnx_available() -> bool:
    """True when tf2onnx and onnxruntime are importable (``pip install ghostface_keras[onnx]``)."""
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except Exception:  # tf2onnx can fail with errors other than ImportError on new numpy / TF
        return False
    return True


def export_onnx(model, path: str | os.PathLike, batch_size: int | None = 1, opset: int | None = None) -> Path:
    """Convert `model` to ONNX through tf2onnx (needs the ``onnx`` extra), input float32 NHWC.

    Example:
        >>> export_onnx(model, "face.onnx")
        PosixPath('face.onnx')
    """
    if not onnx_available():
        raise ExportError("ONNX export needs tf2onnx and onnxruntime: pip install 'ghostface_keras[onnx]'")
    import tensorflow as tf

    path = Path(path)
    height, width, channels = _model_input_shape(model)
    signature = [tf.TensorSpec([batch_size, height, width, channels], tf.float32, "images")]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.partial.onnx"
    try:
        model.export(str(staging), format="onnx", input_signature=signature, opset_version=opset, verbose=False)
        os.replace(staging, path)
    except Exception as error:
        staging.unlink(missing_ok=True)
        raise ExportError(f"{path}: ONNX conversion failed: {error}") from error
    return path


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Embeddings of normalized float32 `images` from an ONNX model (onnxruntime, CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    batch = feed.shape[0] if isinstance(feed.shape[0], int) else None
    images = np.asarray(images, dtype=np.float32)
    if batch is None:
        return np.asarray(session.run(None, {feed.name: images})[0], dtype=np.float32)
    return np.concatenate([session.run(None, {feed.name: images[i : i + 1]})[0] for i in range(len(images))])


def run_saved_model(directory: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Embeddings from the ``serving_default`` signature of an exported SavedModel."""
    import tensorflow as tf

    serve = tf.saved_model.load(str(directory)).signatures["serving_default"]
    batch = serve.structured_input_signature[1]["images"].shape[0]
    step = batch or len(images)
    outputs = [
        next(iter(serve(images=tf.constant(images[i : i + step], tf.float32)).values())).numpy()
        for i in range(0, len(images), step)
    ]
    return np.concatenate(outputs).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Parity report
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ParityReport:
    """How closely an exported file reproduces the Keras model, and how fast it runs."""

    path: str
    format: str
    quantization: str
    size_mib: float
    images: int
    max_abs_diff: float
    max_relative_diff: float
    min_cosine: float
    mean_cosine: float
    thresholds: dict[str, float]
    latency_ms: dict[int, float] = dataclasses.field(default_factory=dict)
    op_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        """One line per threshold the export misses (empty when it passes)."""
        checks = {
            "max_relative_diff": (self.max_relative_diff, lambda value, limit: value <= limit),
            "min_cosine": (self.min_cosine, lambda value, limit: value >= limit),
            "mean_cosine": (self.mean_cosine, lambda value, limit: value >= limit),
        }
        return [
            f"{name} {checks[name][0]:.6g} misses threshold {limit:g}"
            for name, limit in self.thresholds.items()
            if not checks[name][1](checks[name][0], limit)
        ]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_markdown(self) -> str:
        """The report as a two-column Markdown table."""
        rows = [
            ("file", self.path),
            ("format / quantization", f"{self.format} / {self.quantization}"),
            ("size", f"{self.size_mib:.2f} MiB"),
            ("parity images", str(self.images)),
            ("max abs diff vs Keras", f"{self.max_abs_diff:.3g}"),
            ("max relative diff", f"{self.max_relative_diff:.3g}"),
            ("cosine vs Keras min / mean", f"{self.min_cosine:.6f} / {self.mean_cosine:.6f}"),
        ]
        rows += [(f"LiteRT latency, {threads} thread(s)", f"{ms:.2f} ms (median)") for threads, ms in self.latency_ms.items()]
        if self.op_names:
            rows.append(("TFLite ops", ", ".join(sorted(set(self.op_names)))))
        rows.append(("thresholds", ", ".join(f"{k} {v:g}" for k, v in self.thresholds.items())))
        rows.append(("parity", "PASS" if self.passed else "FAIL: " + "; ".join(self.failures)))
        return "\n".join(["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def _size_mib(path: Path) -> float:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return path.stat().st_size / 2**20


def _detect_format(path: Path) -> str:
    if path.is_dir():
        return "savedmodel"
    if path.suffix == ".onnx":
        return "onnx"
    return "tflite"


def check_parity(
    model,
    exported: str | os.PathLike,
    images: np.ndarray,
    quantization: str = "none",
    latency_threads: Sequence[int] = (1, 2),
    latency_repeats: int = 50,
) -> ParityReport:
    """Compare an exported file with the Keras `model` on normalized float32 `images` (N, H, W, C).

    The format is taken from the path (folder = SavedModel, ``.onnx``, otherwise TFLite); thresholds
    come from `PARITY_THRESHOLDS`. Latency (TFLite only) is the median of `latency_repeats` invokes.

    Example:
        >>> report = check_parity(model, "face_fp16.tflite", val_faces, "float16")
        >>> print(report.to_markdown())
    """
    exported = Path(exported)
    if not exported.exists():
        raise ExportError(f"{exported}: exported model not found")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ExportError(f"parity images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    fmt = _detect_format(exported)
    reference = np.asarray(model.predict(images, batch_size=32, verbose=0), dtype=np.float32)
    latency, ops = {}, []
    if fmt == "tflite":
        outputs = run_tflite(exported, images)
        ops = tflite_op_names(exported)
        latency = {t: tflite_latency_ms(exported, t, latency_repeats) for t in latency_threads}
    elif fmt == "onnx":
        outputs = run_onnx(exported, images)
    else:
        outputs = run_saved_model(exported, images)
    abs_diff = float(np.max(np.abs(outputs - reference)))
    cosines = _cosines(outputs, reference)
    threshold_key = quantization if fmt == "tflite" else fmt
    return ParityReport(
        path=str(exported),
        format=fmt,
        quantization=quantization if fmt == "tflite" else "none",
        size_mib=_size_mib(exported),
        images=len(images),
        max_abs_diff=abs_diff,
        max_relative_diff=abs_diff / max(float(np.max(np.abs(reference))), 1e-12),
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        thresholds=dict(PARITY_THRESHOLDS[threshold_key]),
        latency_ms=latency,
        op_names=ops,
    )


# ----------------------------------------------------------------------------------------------
# Images and models from the command line
# ----------------------------------------------------------------------------------------------
def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files under `directory` (recursively, e.g. one sub-folder per identity), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: image folder not found")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_face_images(files: Sequence[Path], size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Read aligned RGB faces into a normalized float32 (N, H, W, 3) array (resized only if needed)."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as error:
            raise ExportError(f"{file}: unreadable image ({error})") from error
    return normalize_images(np.stack(arrays))


def sample_images(
    directory: str | os.PathLike,
    count: int,
    seed: int = 0,
    skip: int = 0,
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
) -> np.ndarray:
    """`count` normalized images drawn reproducibly from `directory`, after skipping the first `skip`
    of the same draw (so calibration and parity images never overlap).

    Example:
        >>> sample_images("celeba_aligned112/train", 200).shape
        (200, 112, 112, 3)
    """
    files = list_images(directory)
    order = np.random.default_rng(seed).permutation(len(files))[skip : skip + count]
    if len(order) == 0:
        raise ExportError(f"{directory}: only {len(files)} images, none left after the first {skip}")
    return load_face_images([files[i] for i in order], size)


def load_model_for_export(spec: str):
    """A Keras model from a ``.keras`` / Keras ``.h5`` file, an official GhostFaceNets ``.h5``, or a
    registry name such as ``GhostFaceNetV1-1.3-2`` (randomly initialized, for benchmarks)."""
    import keras

    path = Path(spec)
    if not path.exists():
        if path.suffix in (".keras", ".h5", ".tflite", ".onnx") or os.sep in spec:
            raise ExportError(f"{spec}: model file not found")
        from ghostface_keras.registry import create_model

        return create_model(spec)
    if path.suffix == ".keras":
        try:
            return keras.saving.load_model(str(path), compile=False)
        except Exception as error:
            raise ExportError(f"{path}: cannot load the Keras model: {error}") from error
    if path.suffix == ".h5":
        return _load_h5(path)
    raise ExportError(f"{path}: expected a .keras or .h5 model file")


def _load_h5(path: Path):
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as keras_error:
        try:
            from ghostface_keras import convert
        except ImportError:
            raise ExportError(f"{path}: cannot load the .h5 model: {keras_error}") from keras_error
        logger.info("%s is not a Keras 3 file; converting it as an official GhostFaceNets checkpoint", path)
        return convert.load_official(str(path))


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------
def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ghostface-export",
        description="Export a face-embedding model to SavedModel / TFLite / ONNX and check that it gives "
        "the same embeddings as Keras (exit code 1 when parity misses its threshold).",
    )
    parser.add_argument("--model", required=True, help=".keras / .h5 file, or a registry name")
    parser.add_argument("--format", choices=FORMATS, default="tflite")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none", help="TFLite only")
    parser.add_argument("--calibration-data", help="folder of aligned 112x112 faces (int8 calibration)")
    parser.add_argument("--calibration-size", type=int, default=200, help="images drawn for int8 calibration")
    parser.add_argument(
        "--parity-data",
        help="folder of aligned faces for the parity check (default: calibration images not used to "
        "calibrate; without any folder: reproducible random pixels)",
    )
    parser.add_argument("--parity-size", type=int, default=32)
    parser.add_argument("--int8-io", action="store_true", help="int8 input/output tensors (int8 only)")
    parser.add_argument("--batch-size", type=int, default=1, help="static batch of the exported signature")
    parser.add_argument("--no-uint8-signature", action="store_true", help="SavedModel: float32 signature only")
    parser.add_argument("--threads", default="1,2", help="LiteRT latency thread counts, comma separated")
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def _parity_images(args: argparse.Namespace, height_width: tuple[int, int]) -> np.ndarray:
    if args.parity_data:
        return sample_images(args.parity_data, args.parity_size, seed=1, size=height_width)
    if args.calibration_data:
        # images the calibration did not see, from the same reproducible draw
        return sample_images(
            args.calibration_data, args.parity_size, seed=0, skip=args.calibration_size, size=height_width
        )
    logger.warning("no --parity-data: checking parity on random pixels, a weaker test than real faces")
    pixels = np.random.default_rng(1234).integers(0, 256, (args.parity_size, *height_width, 3))
    return normalize_images(pixels.astype(np.uint8))


def _export(args: argparse.Namespace, model, height_width: tuple[int, int]) -> Path:
    if args.format == "savedmodel":
        batch = None if args.batch_size <= 0 else args.batch_size
        return export_saved_model(model, args.output, batch, uint8_signature=not args.no_uint8_signature)
    if args.format == "onnx":
        return export_onnx(model, args.output, batch_size=args.batch_size)
    calibration = None
    if args.quantization == "int8":
        if not args.calibration_data:
            raise ExportError("--quantization int8 needs --calibration-data DIR (aligned faces)")
        calibration = sample_images(args.calibration_data, args.calibration_size, seed=0, size=height_width)
    return export_tflite(model, args.output, args.quantization, calibration, args.int8_io, args.batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ghostface_keras.export`` / ``ghostface-export``.

    Example:
        $ ghostface-export --model model.keras --format tflite --quantization float16 \\
              --parity-data faces/val --output model_fp16.tflite
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _parse_arguments(argv)
    try:
        if args.format != "tflite" and args.quantization != "none":
            raise ExportError(f"--quantization {args.quantization} applies to --format tflite only")
        threads = tuple(int(t) for t in args.threads.split(",") if t.strip())
        model = load_model_for_export(args.model)
        height, width, _ = _model_input_shape(model)
        exported = _export(args, model, (height, width))
        images = _parity_images(args, (height, width))
        report = check_parity(model, exported, images, args.quantization, latency_threads=threads)
    except GhostFaceError as error:
        print(f"ghostface-export: error: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # e.g. a malformed --threads list
        print(f"ghostface-export: error: {error}", file=sys.stderr)
        return 2
    print(report.to_markdown())
    if not report.passed:
        print(f"ghostface-export: parity FAILED for {exported}: {'; '.join(report.failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
