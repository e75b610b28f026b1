"""ONNX export through tf2onnx (optional extra ``onnx``) and an onnxruntime runner."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ghostface_keras.core.errors import ExportError
from ghostface_keras.core.files import write_atomically
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
        >>> import keras, tempfile
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> export_onnx(model, f"{tempfile.mkdtemp()}/face.onnx")     # needs the onnx extra  # doctest: +SKIP
        PosixPath('.../face.onnx')
    """
    if not onnx_available():
        raise ExportError("ONNX export needs tf2onnx and onnxruntime: pip install 'ghostface_keras[onnx]'")
    import tensorflow as tf

    path = Path(path)
    height, width, channels = _model_input_shape(model)
    signature = [tf.TensorSpec([batch_size, height, width, channels], tf.float32, "images")]
    try:
        import tf2onnx

        # tf2onnx on the inference function directly: through `model.export(format="onnx")` GhostFaceNetV2
        # came out wrong (cosine ~0.25 to Keras), the same trace through `from_function` is exact
        function = tf.function(lambda images: model(images, training=False))
        proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
        _round_up_resize_scales(proto)
    except Exception as error:  # noqa: BLE001 - tf2onnx raises many unrelated types
        raise ExportError(f"{path}: ONNX conversion failed: {error}") from error
    return write_atomically(path, proto.SerializeToString())


def _round_up_resize_scales(model) -> int:
    """Nudge fractional constant `Resize` scales of an ONNX ModelProto up by one float32 step, in place.

    tf2onnx writes a resize to a fixed size (GhostNetV2's DFC gate, 3x3 -> 7x7) as constant scales
    (7/3 = 2.3333333 in float32), and onnxruntime sizes the output as floor(3 x 2.3333333) = 6: the gate
    no longer matches the feature map. One ulp up gives floor(7.0000005) = 7 and moves the sampling
    positions by about 1e-7 of a pixel.
    """
    from onnx import numpy_helper

    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    names = {node.input[2] for node in model.graph.node
             if node.op_type == "Resize" and len(node.input) > 2 and node.input[2] in initializers}
    changed = 0
    for name in names:
        scales = numpy_helper.to_array(initializers[name]).astype(np.float32)
        fractional = scales != np.round(scales)
        if fractional.any():
            bumped = np.where(fractional, np.nextafter(scales, np.float32(np.inf)), scales).astype(np.float32)
            initializers[name].CopyFrom(numpy_helper.from_array(bumped, name))
            changed += 1
    return changed


def run_onnx(path: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Embeddings of normalized float32 `images` from an ONNX model (the runner of `ghostface_keras.load_model`)."""
    from ghostface_keras.runtime.loading import load_model

    return load_model(path, identify=False, check=False).runner(images)
