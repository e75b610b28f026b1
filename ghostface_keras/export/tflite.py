"""TFLite conversion: static batch-1 graphs of builtin ops, fp32 / fp16 / dynamic / full int8."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable
from collections.abc import Iterable

import numpy as np

from ghostface_keras.core.errors import ExportError, GhostFaceError
from ghostface_keras.core.files import write_atomically
from ghostface_keras.export.activation_ranges import clip_activation_ranges, quantize_with_best_percentile
from ghostface_keras.export.equalize import equalize_channel_ranges
from ghostface_keras.export.formats import QUANTIZATIONS
from ghostface_keras.export.int8_rewrite import xnnpack_int8_equivalent
from ghostface_keras.export.quantization_aware import is_quantization_aware
from ghostface_keras.runtime.litert import dynamic_tensor_names, tflite_op_names
from ghostface_keras.export.saved_model import _write_saved_model
from ghostface_keras.runtime.tflite_metadata import with_tflite_metadata

# channel ranges are measured on this many calibration images (a max over them, like the converter's)
EQUALIZATION_IMAGES = 64


# TFLite ops that compute tensor shapes at run time (the official V1 conversion has SHAPE -> STRIDED_SLICE ->
# PACK feeding the SE reshape); with them XNNPACK cannot delegate the whole graph.
DYNAMIC_SHAPE_OPS = frozenset({"SHAPE", "BROADCAST_ARGS"})


def _as_image_array(images: Iterable[np.ndarray] | None) -> np.ndarray | None:
    """Calibration images as one (N, H, W, C) float32 array (an iterable is read once)."""
    if images is None:
        return None
    array = np.asarray(images if isinstance(images, np.ndarray) else list(images), dtype=np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or len(array) == 0:
        raise ExportError(f"representative_data must be (N, H, W, C) images, got shape {array.shape}")
    return array


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
    equalize: bool = True,
    activation_percentile: float | str | None = "auto",
    checkpoint: str | None = None,
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
        equalize: with ``"int8"``, balance per-channel activation ranges first
            (`equalize_channel_ranges`, same function): trained models with large PReLU slopes
            need it.
        activation_percentile: with ``"int8"``, quantize each activation over the
            (100 - p)th..p-th percentile of its calibration values instead of their min..max
            (`clip_activation_ranges`); ``"auto"`` (default) tries 99.9..99.999 and keeps the one
            closest to float on held-out calibration images (`quantize_with_best_percentile`);
            ``None`` keeps the converter's min/max.
        checkpoint: the released checkpoint these weights are (written into the file's metadata, so the file
            gets that checkpoint's verification threshold however it is quantized); default: recognized from
            the weights of `model` (`ghostface_keras.runtime.loading.identify_checkpoint`), nothing written if none.

    A model from `quantization_aware_model` exports only as ``"int8"``: its own ranges become the int8
    scales as they are (no equalization, calibration or percentile), so the file computes what it
    computes; `representative_data` is still required by the converter (a few images suffice) and
    fills only ranges the model lacks.

    Example:
        >>> import keras
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
        >>> export_tflite(model, f"{tempfile.mkdtemp()}/face_int8.tflite", "int8", representative_data=train_faces)
        PosixPath('.../face_int8.tflite')
    """
    import tensorflow as tf

    if quantization not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    path = Path(path)
    traced = model
    quantization_aware = is_quantization_aware(model)
    if quantization_aware and quantization != "int8":
        raise ExportError(
            f"{path}: a quantization-aware model exports only as int8 (got {quantization!r}); export the float model"
        )
    if quantization == "int8" and not quantization_aware:
        representative_data = _as_image_array(representative_data)
        if equalize and representative_data is not None:
            traced = equalize_channel_ranges(model, representative_data[:EQUALIZATION_IMAGES])
        traced = xnnpack_int8_equivalent(traced)
    with tempfile.TemporaryDirectory(prefix="ghostface_export_") as staging:
        _write_saved_model(traced, Path(staging), batch_size, uint8_signature=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(staging, signature_keys=["serving_default"])
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        # a twin's FakeQuant ranges take precedence; the representative images fill only ranges it lacks
        _configure_quantization(converter, quantization, representative_data, int8_io)
        try:
            if quantization == "int8" and activation_percentile is not None and not quantization_aware:
                flatbuffer = _quantize_with_percentile_ranges(
                    converter, representative_data, activation_percentile, int8_io
                )
            else:
                flatbuffer = converter.convert()
        except Exception as error:  # the converter raises several unrelated types
            raise ExportError(f"{path}: TFLite conversion failed ({quantization}): {error}") from error
    checkpoint = checkpoint or _recognized_checkpoint(model)
    if checkpoint:
        flatbuffer = with_tflite_metadata(flatbuffer, {"checkpoint": checkpoint})
    write_atomically(path, flatbuffer)
    _check_static_builtin_graph(path)
    return path


def _recognized_checkpoint(model) -> str | None:
    """The released checkpoint `model` runs, from its float weights (None for your own models)."""
    from ghostface_keras.runtime.loading import identify_checkpoint, load_model

    try:
        found = identify_checkpoint(load_model(model, identify=False, check=False))
    except GhostFaceError:
        return None
    return found.name if found is not None else None


def _quantize_with_percentile_ranges(converter, images: np.ndarray, percentile, int8_io: bool) -> bytes:
    """The converter's int8 flow split in two: calibrate, clip the ranges to percentiles, quantize."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    converter._experimental_calibrate_only = True  # the documented hook of tf.lite's QuantizationDebugger
    calibrated = converter.convert()
    io_type = tf.int8 if int8_io else tf.float32

    def quantize(flatbuffer: bytes) -> bytes:
        return mlir_quantize(flatbuffer, input_data_type=io_type, output_data_type=io_type)

    if percentile == "auto":
        return quantize_with_best_percentile(calibrated, images, quantize)[0]
    if isinstance(percentile, str):
        raise ExportError(f"activation_percentile must be a number, 'auto' or None, got {percentile!r}")
    return quantize(clip_activation_ranges(calibrated, images, float(percentile)))


def _check_static_builtin_graph(path: Path) -> None:
    """Refuse a flatbuffer with Flex ops, shape-computing ops or tensors of unknown size."""
    forbidden = sorted({name for name in tflite_op_names(path) if name.startswith("Flex") or name in DYNAMIC_SHAPE_OPS})
    dynamic = dynamic_tensor_names(path)
    if forbidden or dynamic:
        raise ExportError(
            f"{path}: graph keeps Flex / dynamic-shape ops {forbidden} or dynamic tensors {dynamic[:5]}; "
            "XNNPACK could not delegate it whole"
        )
