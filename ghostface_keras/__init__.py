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

__version__ = "0.1.0"

# public name -> module that defines it; one line per module
_API = {
    "ghostface_keras.errors": ("ConversionError", "DataError", "ExportError", "GhostFaceError", "ModelLoadError",
                               "ModelNameError", "NoFaceError"),
    "ghostface_keras.preprocessing": ("IMAGE_SIZE", "denormalize_images", "normalize_images"),
    "ghostface_keras.blocks": ("hard_sigmoid_keras2", "make_divisible"),
    "ghostface_keras.flops": ("count_flops",),
    "ghostface_keras.models": ("GhostFaceNetV1", "GhostFaceNetV2", "GhostNetV1", "GhostNetV2", "MMobileFaceNet",
                               "MobileFaceNet"),
    "ghostface_keras.registry": ("ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"),
    "ghostface_keras.checkpoints": ("Checkpoint", "get_checkpoint", "list_pretrained"),
    "ghostface_keras.pretrained": ("PretrainedError", "load_pretrained"),
    "ghostface_keras.convert": ("load_official",),
    "ghostface_keras.loading": ("LoadedModel", "load_model"),
    "ghostface_keras.embedding": ("EmbeddingFunction", "extract_embeddings"),
    "ghostface_keras.data": ("image_folder_dataset", "load_bin", "recordio_dataset", "save_bin", "synthetic_faces"),
    "ghostface_keras.align": ("MTCNNDetector", "align_face", "align_folder", "estimate_similarity_transform",
                              "load_rgb_image"),
    "ghostface_keras.inference": ("FaceEmbedder", "Gallery"),
    "ghostface_keras.export": ("check_parity", "export_onnx", "export_saved_model", "export_tflite"),
    "ghostface_keras.evaluation": ("evaluate_ijb", "evaluate_verification", "verification_metrics"),
    "ghostface_keras.heads": ("NormDense",),
    "ghostface_keras.losses": ("AdaFace", "ArcFace", "CombinedMargin", "CosFace", "MagFace", "get_margin_loss"),
    "ghostface_keras.optimizers": ("SAMModel", "build_optimizer"),
    "ghostface_keras.partial_fc": ("PartialFCModel",),
    "ghostface_keras.schedules": ("CosineRestarts", "ExponentialEpochDecay", "StepDecay"),
    "ghostface_keras.callbacks": ("VerificationCallback",),
    "ghostface_keras.training": ("Stage", "Trainer"),
    "ghostface_keras.distribution": ("Cluster", "setup_cluster", "use_cpu_devices"),
}
_WHERE = {name: module for module, names in _API.items() for name in names}
_SUBMODULES = {"align", "blazeface", "blocks", "callbacks", "checkpoints", "convert", "data", "distribution",
               "embedding", "errors", "evaluation", "export", "files", "flops", "heads", "images", "inference",
               "litert_pipeline", "loading", "losses", "models", "numeric", "optimizers", "partial_fc",
               "preprocessing", "pretrained", "recipes", "registry", "schedules", "tracking", "training", "video"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """Import the defining module on first use (PEP 562) and cache the attribute."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif name in _SUBMODULES:
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
_SERIALIZABLE_MODULES = ("ghostface_keras.blocks", "ghostface_keras.heads", "ghostface_keras.losses")


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
