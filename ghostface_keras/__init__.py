"""ghostface_keras: GhostFaceNets and the MobileFaceNet family in Keras 3.

The public API is imported lazily: `from ghostface_keras import GhostFaceNetV1` loads the model code and
Keras, not the training, evaluation or export stacks (nor pandas or matplotlib through them).

Example:
    >>> from ghostface_keras import GhostFaceNetV1
    >>> model = GhostFaceNetV1(width=1.3, stem_strides=2)   # the paper's GhostFaceNetV1-1.3-2
    >>> model.output_shape
    (None, 512)
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Any

from ghostface_keras import _compat

__version__ = "0.2.0.dev0"

# public name -> module that defines it; one line per module
_API = {
    "ghostface_keras.core.errors": ("ConversionError", "DataError", "ExportError", "GhostFaceError",
                                    "ModelLoadError", "ModelNameError", "NoFaceError"),
    "ghostface_keras.core.preprocessing": ("IMAGE_SIZE", "denormalize_images", "normalize_images"),
    "ghostface_keras.models.blocks": ("hard_sigmoid_keras2", "make_divisible"),
    "ghostface_keras.models.flops": ("count_flops",),
    "ghostface_keras.models": ("GhostFaceNetV1", "GhostFaceNetV2", "GhostNetV1", "GhostNetV2", "MMobileFaceNet",
                               "MobileFaceNet"),
    "ghostface_keras.models.registry": ("ModelSpec", "create_model", "get_model_spec", "list_models",
                                        "register_model"),
    "ghostface_keras.weights.checkpoints": ("Checkpoint", "get_checkpoint", "list_pretrained"),
    "ghostface_keras.weights.download": ("PretrainedError",),
    "ghostface_keras.models.pretrained": ("load_pretrained",),
    "ghostface_keras.models.official": ("load_official",),
    "ghostface_keras.runtime.loading": ("LoadedModel", "load_model"),
    "ghostface_keras.runtime.embedding": ("EmbeddingFunction", "extract_embeddings"),
    "ghostface_keras.data": ("image_folder_dataset", "load_bin", "recordio_dataset", "save_bin", "synthetic_faces"),
    "ghostface_keras.core.images": ("load_rgb_image",),
    "ghostface_keras.faces.alignment": ("align_face", "estimate_similarity_transform"),
    "ghostface_keras.faces.mtcnn": ("MTCNNDetector",),
    "ghostface_keras.faces.align_folder": ("align_folder",),
    "ghostface_keras.faces.embedder": ("FaceEmbedder", "Gallery"),
    "ghostface_keras.export": ("check_parity", "export_onnx", "export_saved_model", "export_tflite"),
    "ghostface_keras.evaluation": ("evaluate_ijb", "evaluate_verification", "verification_metrics"),
    "ghostface_keras.train.heads": ("NormDense",),
    "ghostface_keras.train.losses": ("AdaFace", "ArcFace", "CombinedMargin", "CosFace", "MagFace", "get_margin_loss"),
    "ghostface_keras.train.optimizers": ("SAMModel", "build_optimizer"),
    "ghostface_keras.train.partial_fc": ("PartialFCModel",),
    "ghostface_keras.train.schedules": ("CosineRestarts", "ExponentialEpochDecay", "StepDecay"),
    "ghostface_keras.train.callbacks": ("VerificationCallback",),
    "ghostface_keras.train.trainer": ("Stage", "Trainer"),
    "ghostface_keras.core.distribution": ("Cluster", "setup_cluster", "use_cpu_devices"),
}
_WHERE = {name: module for module, names in _API.items() for name in names}
# the layers, bottom to top (tests/test_architecture.py holds each to importing only those below it)
_SUBMODULES = {"core", "weights", "models", "data", "runtime", "faces", "evaluation", "export", "train", "serve",
               "cli"}
# the 0.1 flat module names (`ghostface_keras.align`, ...): deprecated aliases, see _compat.py
_OLD_SUBMODULES = {name.split(".")[1] for name in _compat.MOVED if name.count(".") == 1}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the defining module on first use (PEP 562) and cache the attribute."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _SUBMODULES or name in _OLD_SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | _SUBMODULES)


# Keras finds the custom objects of a saved `.keras` file (the V1 hard sigmoid, NormDense, the margin losses)
# only once their modules ran `register_keras_serializable`. The API above is lazy, so those modules are
# imported as soon as Keras itself is: a plain `keras.saving.load_model("model.keras")` after
# `import ghostface_keras` works, and `import ghostface_keras` alone still imports no Keras (fast `--help`).
_SERIALIZABLE_MODULES = ("ghostface_keras.models.blocks", "ghostface_keras.models.batch_norm",
                         "ghostface_keras.train.heads", "ghostface_keras.train.losses",
                         "ghostface_keras.train.schedules", "ghostface_keras.train.optimizers",
                         "ghostface_keras.train.partial_fc", "ghostface_keras.train.sharded",
                         "ghostface_keras.export.quantization_aware")


def _register_keras_objects() -> None:
    for module in _SERIALIZABLE_MODULES:
        importlib.import_module(module)


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """A post-import hook: lets Keras load normally, then registers our objects."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "keras":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps find_spec below from finding this finder again
        spec = importlib.util.find_spec("keras")
        if spec is None or spec.loader is None:
            return spec
        execute = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            execute(module)
            _register_keras_objects()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "keras" in sys.modules:
    _register_keras_objects()
elif not any(isinstance(finder, _RegisterAfterKerasImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())
_compat.install()
