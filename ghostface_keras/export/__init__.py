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
    >>> import keras, numpy as np, tempfile
    >>> from ghostface_keras.export import export_tflite, check_parity
    >>> inputs = keras.Input((112, 112, 3))     # a tiny stand-in for create_model("GhostFaceNetV1-1.3-2")
    >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/ghostfacenet.tflite")      # fp32, batch 1
    >>> images = np.random.default_rng(0).uniform(-1, 1, (4, 112, 112, 3)).astype("float32")  # normalized faces
    >>> report = check_parity(model, path, images)
    >>> report.passed
    True

Command line (also installed as `ghostface-export`):
    python -m ghostface_keras.export --model model.keras --format tflite --quantization int8 \\
        --calibration-data faces/train --output model_int8.tflite

Modules: `saved_model` (SavedModel), `tflite` (conversion), `int8_rewrite` (XNNPACK-friendly int8 ops),
`equalize` (per-channel range equalization before int8), `quantization_aware` (a twin that rounds like
the int8 file, for fine-tuning against it), `runtime` (LiteRT: run, inspect, time),
`parity` (the report), `onnx` (optional extra), `images` (aligned faces from folders). The command line is
`ghostface_keras.cli.export`.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module, imported on first use (so the LiteRT runner can be used without TensorFlow)
_API = {
    "images": ("load_face_images", "sample_images"),
    "ghostface_keras.core.files": ("list_images",),  # the one image lister, also under this name
    "int8_rewrite": ("xnnpack_int8_equivalent",),
    "onnx": ("export_onnx", "onnx_available", "run_onnx"),
    "parity": ("PARITY_THRESHOLDS", "ParityReport", "check_parity"),
    "quantization_aware": ("fine_tune_quantization_aware", "is_quantization_aware", "quantization_aware_model"),
    "ghostface_keras.runtime.litert": ("TFLiteEmbedder", "count_delegate_nodes", "dynamic_tensor_names", "make_interpreter", "run_tflite",
                "tflite_latency_ms", "tflite_op_names"),
    "saved_model": ("export_saved_model", "run_saved_model"),
    "tflite": ("DYNAMIC_SHAPE_OPS", "export_tflite"),
    "formats": ("FORMATS", "QUANTIZATIONS"),
}
_WHERE = {name: module if module.startswith("ghostface_keras.") else f"{__name__}.{module}"
          for module, names in _API.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
