"""Parity report: how closely an exported file reproduces the Keras model, and how fast it runs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ghostface_keras.runtime.embedding import EmbeddingFunction
from ghostface_keras.core.errors import ExportError
from ghostface_keras.runtime.litert import tflite_latency_ms, tflite_op_names
from ghostface_keras.core.numeric import row_cosines

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
    come from `PARITY_THRESHOLDS`. Both sides run through the one embedding path
    (`ghostface_keras.runtime.embedding.EmbeddingFunction.network`, no flip). Latency (TFLite only) is the median of
    `latency_repeats` invokes.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face_fp16.tflite", "float16")
        >>> val_faces = np.random.default_rng(0).uniform(-1, 1, (4, 112, 112, 3)).astype("float32")  # normalized
        >>> report = check_parity(model, path, val_faces, "float16")
        >>> print(report.to_markdown())
        | measure | value |
        | --- | --- |
        | file | .../face_fp16.tflite |
        | format / quantization | tflite / float16 |
        ...
        | parity | PASS |
    """
    exported = Path(exported)
    if not exported.exists():
        raise ExportError(f"{exported}: exported model not found")
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ExportError(f"parity images must be a non-empty (N, H, W, C) array, got shape {images.shape}")
    fmt = _detect_format(exported)
    reference = EmbeddingFunction(model, batch_size=32, flip=False).network(images)
    outputs = EmbeddingFunction(str(exported), batch_size=32, flip=False).network(images)
    latency, ops = {}, []
    if fmt == "tflite":
        ops = tflite_op_names(exported)
        latency = {t: tflite_latency_ms(exported, t, latency_repeats) for t in latency_threads}
    abs_diff = float(np.max(np.abs(outputs - reference)))
    cosines = row_cosines(outputs, reference)
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
