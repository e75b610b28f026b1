"""ONNX export through tf2onnx (optional extra ``onnx``) and an onnxruntime runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ghostface_keras.errors import ExportError
from ghostface_keras.export.saved_model import _model_input_shape


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
