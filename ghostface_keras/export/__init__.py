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

Modules: `saved_model` (SavedModel), `tflite` (conversion), `int8_rewrite` (XNNPACK-friendly int8 ops),
`equalize` (per-channel range equalization before int8), `quantization_aware` (a twin that rounds like
the int8 file, for fine-tuning against it), `runtime` (LiteRT: run, inspect, time),
`parity` (the report), `onnx` (optional extra), `images` (faces and models from files), `cli`.
"""

from ghostface_keras.export.cli import FORMATS, main
from ghostface_keras.export.images import IMAGE_SUFFIXES, list_images, load_face_images, load_model_for_export, sample_images
from ghostface_keras.export.int8_rewrite import xnnpack_int8_equivalent
from ghostface_keras.export.onnx import export_onnx, onnx_available, run_onnx
from ghostface_keras.export.parity import PARITY_THRESHOLDS, ParityReport, check_parity
from ghostface_keras.export.quantization_aware import (
    fine_tune_quantization_aware,
    is_quantization_aware,
    quantization_aware_model,
)
from ghostface_keras.export.runtime import (
    TFLiteEmbedder,
    count_delegate_nodes,
    dynamic_tensor_names,
    make_interpreter,
    run_tflite,
    tflite_latency_ms,
    tflite_op_names,
)
from ghostface_keras.export.saved_model import export_saved_model, run_saved_model
from ghostface_keras.export.tflite import DYNAMIC_SHAPE_OPS, QUANTIZATIONS, export_tflite

__all__ = [
    "DYNAMIC_SHAPE_OPS", "FORMATS", "IMAGE_SUFFIXES", "PARITY_THRESHOLDS", "QUANTIZATIONS", "ParityReport",
    "TFLiteEmbedder", "check_parity", "count_delegate_nodes", "dynamic_tensor_names", "export_onnx",
    "export_saved_model", "export_tflite", "fine_tune_quantization_aware", "is_quantization_aware", "list_images",
    "load_face_images", "load_model_for_export", "main", "make_interpreter", "onnx_available",
    "quantization_aware_model", "run_onnx", "run_saved_model", "run_tflite", "sample_images", "tflite_latency_ms",
    "tflite_op_names", "xnnpack_int8_equivalent",
]
