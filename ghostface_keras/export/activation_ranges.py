"""Percentile activation ranges for full-int8 TFLite: clip rare outliers instead of covering them.

The TFLite calibrator records each activation tensor's min and max over the representative images,
and the quantizer spreads 256 int8 levels over that range. In trained GhostFaceNets a handful of
values per tensor lie far outside the bulk (PReLU slopes up to +-16), so min/max wastes most levels
on values that almost never occur, and the rounding error of every ordinary value grows with it;
through 16 residual blocks that error accumulates. Clipping each range to the 0.01th / 99.99th
percentile of the calibration values trades a tiny clipping error on 1 value in 10,000 for finer
steps everywhere else (measured on real aligned faces: official V1-1.3-2 fixture mean cosine
0.952 -> 0.979, released GhostFaceNetV1-0.5-2 0.62 -> 0.79; see docs/export.md).

The flow is the converter's own, split in two: calibrate only (float flatbuffer with min/max per
tensor), rewrite min/max from histograms of the same calibration images, then quantize.

The runnable example is `clip_activation_ranges`'s.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Callable
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.progress import ProgressBar

logger = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.99
# "auto" tries these and keeps the one whose int8 model is closest to float on held-out calibration images
PERCENTILE_CANDIDATES = (99.9, 99.95, 99.99, 99.995, 99.999)
# calibration images held out from the histograms to score the candidates (at most this many, a quarter at most)
SELECTION_IMAGES = 32
# the histogram spans the calibrated [min, max]; 4096 bins resolve the 99.99th percentile of ranges
# whose outliers lie 100x beyond the bulk
HISTOGRAM_BINS = 4096


def _calibrated_ranges(model) -> dict[int, tuple[float, float]]:
    """Tensor index -> calibrated (min, max) for every per-tensor activation range of subgraph 0."""
    ranges = {}
    for index, tensor in enumerate(model.subgraphs[0].tensors):
        quantization = tensor.quantization
        if quantization is not None and quantization.min is not None and len(quantization.min) == 1:
            ranges[index] = (float(quantization.min[0]), float(quantization.max[0]))
    return ranges


def bin_counts(values: np.ndarray, low: float, high: float, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Counts of `values` in `bins` equal bins over [low, high] (values outside go to the end bins)."""
    positions = ((np.ravel(values) - low) * (bins / max(high - low, 1e-12))).astype(np.int64)
    return np.bincount(np.clip(positions, 0, bins - 1), minlength=bins)


def activation_histograms(
    calibrated: bytes, images: np.ndarray, ranges: dict[int, tuple[float, float]], bins: int = HISTOGRAM_BINS
) -> dict[int, np.ndarray]:
    """Counts of every calibrated tensor's values over `images`, in `bins` bins spanning its range."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(
        model_content=calibrated,
        experimental_preserve_all_tensors=True,
        # the default XNNPACK delegate would not keep the intermediate tensors readable
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    input_index = interpreter.get_input_details()[0]["index"]
    counts = {index: np.zeros(bins, np.int64) for index in ranges}
    progress = ProgressBar(len(images), "image")  # draws only on a terminal
    for number, image in enumerate(images, 1):
        interpreter.set_tensor(input_index, np.asarray(image, np.float32)[None])
        interpreter.invoke()
        for index, (low, high) in ranges.items():
            counts[index] += bin_counts(interpreter.get_tensor(index), low, high, bins)
        progress.update(number)
    return counts


def percentile_range(low: float, high: float, counts: np.ndarray, percentile: float) -> tuple[float, float]:
    """The (100 - p)th and p-th percentiles of a histogram over [low, high], widened to contain 0.

    Zero must stay exactly representable (padding, ReLU zeros), so the range always includes it.

    Example:
        >>> percentile_range(-1.0, 1.0, np.array([1, 998, 1]), 99.0)   # 3 bins of width 2/3
        (-0.333..., 0.333...)
    """
    edges = np.linspace(low, high, len(counts) + 1)
    cumulative = np.cumsum(counts) / max(counts.sum(), 1)
    lower = edges[np.searchsorted(cumulative, 1.0 - percentile / 100.0)]
    upper = edges[min(np.searchsorted(cumulative, percentile / 100.0) + 1, len(counts))]
    return min(float(lower), 0.0), max(float(upper), 0.0)


def _histograms(calibrated: bytes, images: np.ndarray):
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    ranges = _calibrated_ranges(model)
    for index in model.subgraphs[0].inputs:  # the input's range is the normalization's, not a statistic
        ranges.pop(index, None)
    return model, ranges, activation_histograms(calibrated, images, ranges)


def _with_ranges(model, ranges, counts, percentile: float) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils

    tensors = model.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        new_low, new_high = percentile_range(low, high, counts[index], percentile)
        tensors[index].quantization.min = np.array([new_low], np.float32)
        tensors[index].quantization.max = np.array([new_high], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def clip_activation_ranges(calibrated: bytes, images: np.ndarray, percentile: float = DEFAULT_PERCENTILE) -> bytes:
    """`calibrated` (a calibrate-only TFLite flatbuffer) with each activation range cut to percentiles.

    Args:
        calibrated: the converter's output with ``_experimental_calibrate_only = True``.
        images: the calibration images, normalized float32 ``(N, H, W, C)``.
        percentile: keep values between the (100 - p)th and p-th percentile; 100 keeps min/max.

    Example:
        >>> import keras, tempfile, tensorflow as tf
        >>> from tensorflow.lite.python.convert import mlir_quantize
        >>> from ghostface_keras.export import export_saved_model
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
        >>> folder = export_saved_model(model, f"{tempfile.mkdtemp()}/model", batch_size=1)
        >>> converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=["serving_default"])
        >>> converter.optimizations = [tf.lite.Optimize.DEFAULT]
        >>> converter.representative_dataset = lambda: ([face[None]] for face in train_faces)
        >>> converter._experimental_calibrate_only = True
        >>> calibrated = converter.convert()          # float graph with each tensor's calibration min/max
        >>> quantized = mlir_quantize(clip_activation_ranges(calibrated, train_faces, 99.99))
    """
    model, ranges, counts = _histograms(calibrated, images)
    logger.info("clipped %d activation ranges to the %.3f percentile", len(ranges), percentile)
    return _with_ranges(model, ranges, counts, percentile)


def _run(content: bytes, images: np.ndarray) -> np.ndarray:
    from ghostface_keras.runtime.litert import run_tflite

    with tempfile.TemporaryDirectory(prefix="ghostface_percentile_") as folder:
        path = os.path.join(folder, "candidate.tflite")
        with open(path, "wb") as stream:
            stream.write(content)
        return run_tflite(path, images)


def quantize_with_best_percentile(
    calibrated: bytes,
    images: np.ndarray,
    quantize: Callable[[bytes], bytes],
    candidates: Sequence[float] = PERCENTILE_CANDIDATES,
) -> tuple[bytes, float, dict[float, float]]:
    """Quantize with the activation percentile whose int8 model best matches float on held-out images.

    The best percentile depends on the weights (official V1-1.3-2 fixture 99.99-99.995, released
    GhostFaceNetV1-0.5-2 99.95), so each candidate is tried: histograms come from all but the last
    ``min(32, N // 4)`` calibration images, and each candidate's int8 model is scored by its mean
    cosine to the calibrated float graph on those held-out images. Parity images are never used.

    Args:
        calibrated: the converter's calibrate-only output.
        images: calibration images, normalized float32 ``(N, H, W, C)``, N >= 8.
        quantize: turns a flatbuffer with rewritten ranges into the int8 flatbuffer (``mlir_quantize``).
        candidates: percentiles to try.

    Returns:
        The chosen int8 flatbuffer, its percentile and every candidate's held-out mean cosine.

    Example:
        >>> import keras, tempfile, tensorflow as tf
        >>> from tensorflow.lite.python.convert import mlir_quantize
        >>> from ghostface_keras.export import export_saved_model
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
        >>> folder = export_saved_model(model, f"{tempfile.mkdtemp()}/model", batch_size=1)
        >>> converter = tf.lite.TFLiteConverter.from_saved_model(str(folder), signature_keys=["serving_default"])
        >>> converter.optimizations = [tf.lite.Optimize.DEFAULT]
        >>> converter.representative_dataset = lambda: ([face[None]] for face in train_faces)
        >>> converter._experimental_calibrate_only = True
        >>> calibrated = converter.convert()          # float graph with each tensor's calibration min/max
        >>> flatbuffer, percentile, scores = quantize_with_best_percentile(calibrated, train_faces, mlir_quantize)
        >>> percentile in scores, sorted(scores) == sorted(PERCENTILE_CANDIDATES)
        (True, True)
    """
    from ghostface_keras.core.numeric import row_cosines

    held_out = min(SELECTION_IMAGES, len(images) // 4)
    if held_out < 2:
        raise ValueError(f"choosing an activation percentile needs at least 8 calibration images, got {len(images)}")
    fit, selection = images[:-held_out], images[-held_out:]
    model, ranges, counts = _histograms(calibrated, fit)
    reference = _run(calibrated, selection)
    scores, best = {}, None
    for percentile in candidates:
        quantized = quantize(_with_ranges(model, ranges, counts, percentile))
        scores[percentile] = float(row_cosines(_run(quantized, selection), reference).mean())
        if best is None or scores[percentile] > scores[best[0]]:
            best = (percentile, quantized)
    logger.info(
        "activation percentile %s chosen on %d held-out calibration images (mean cosine %s)",
        best[0], held_out, ", ".join(f"{p}: {c:.4f}" for p, c in scores.items()),
    )
    return best[1], best[0], scores
