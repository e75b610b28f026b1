"""Module paths of release 0.1 that moved in the 0.2 layout, kept working for one release.

`import ghostface_keras.align` (or `errors`, `loading`, ...) still works and warns `DeprecationWarning`. A module
that moved whole is the same module object under both names (so patching either patches both); a module that
was split (`align`, `convert`, `pretrained`) is a read-only view that finds each name in its new homes, in order.
Remove in 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any
from collections.abc import Sequence

# old module -> its new home(s); one home: an alias, several: a view searched in order
MOVED: dict[str, tuple[str, ...]] = {
    "ghostface_keras.errors": ("ghostface_keras.core.errors",),
    "ghostface_keras.files": ("ghostface_keras.core.files",),
    "ghostface_keras.images": ("ghostface_keras.core.images",),
    "ghostface_keras.numeric": ("ghostface_keras.core.numeric",),
    "ghostface_keras.tables": ("ghostface_keras.core.tables",),
    "ghostface_keras.progress": ("ghostface_keras.core.progress",),
    "ghostface_keras.preprocessing": ("ghostface_keras.core.preprocessing",),
    "ghostface_keras.distribution": ("ghostface_keras.core.distribution",),
    "ghostface_keras.checkpoints": ("ghostface_keras.weights.checkpoints",),
    "ghostface_keras.models._weights": ("ghostface_keras.weights.apply",),
    "ghostface_keras.blocks": ("ghostface_keras.models.blocks",),
    "ghostface_keras.registry": ("ghostface_keras.models.registry",),
    "ghostface_keras.flops": ("ghostface_keras.models.flops",),
    "ghostface_keras.loading": ("ghostface_keras.runtime.loading",),
    "ghostface_keras.embedding": ("ghostface_keras.runtime.embedding",),
    "ghostface_keras.export.runtime": ("ghostface_keras.runtime.litert",),
    "ghostface_keras.export.tflite_metadata": ("ghostface_keras.runtime.tflite_metadata",),
    "ghostface_keras.heads": ("ghostface_keras.train.heads",),
    "ghostface_keras.losses": ("ghostface_keras.train.losses",),
    "ghostface_keras.optimizers": ("ghostface_keras.train.optimizers",),
    "ghostface_keras.partial_fc": ("ghostface_keras.train.partial_fc",),
    "ghostface_keras.schedules": ("ghostface_keras.train.schedules",),
    "ghostface_keras.callbacks": ("ghostface_keras.train.callbacks",),
    "ghostface_keras.recipes": ("ghostface_keras.train.recipes",),
    "ghostface_keras.training": ("ghostface_keras.train.trainer",),
    "ghostface_keras.blazeface": ("ghostface_keras.faces.blazeface",),
    "ghostface_keras.inference": ("ghostface_keras.faces.embedder",),
    "ghostface_keras.video": ("ghostface_keras.faces.video",),
    "ghostface_keras.tracking": ("ghostface_keras.faces.tracking",),
    "ghostface_keras.litert_pipeline": ("ghostface_keras.faces.litert_pipeline",),
    "ghostface_keras.service": ("ghostface_keras.serve.protocol",),
    "ghostface_keras.align": ("ghostface_keras.faces.alignment", "ghostface_keras.faces.mtcnn",
                              "ghostface_keras.faces.detectors", "ghostface_keras.faces.align_folder",
                              "ghostface_keras.core.images"),
    "ghostface_keras.convert": ("ghostface_keras.models.official", "ghostface_keras.weights.official"),
    "ghostface_keras.pretrained": ("ghostface_keras.models.pretrained", "ghostface_keras.weights.download",
                                   "ghostface_keras.weights.checkpoints"),
}


def _view(name: str, homes: Sequence[str]) -> types.ModuleType:
    """A module whose attributes are looked up in `homes`, first hit wins."""
    view = types.ModuleType(name, f"Deprecated: moved to {', '.join(homes)}.")

    def __getattr__(attribute: str) -> Any:
        for home in homes:
            module = importlib.import_module(home)
            if hasattr(module, attribute):
                return getattr(module, attribute)
        raise AttributeError(f"module {name!r} has no attribute {attribute!r}")

    view.__getattr__ = __getattr__  # type: ignore[attr-defined]
    view.__path__ = []  # type: ignore[attr-defined]  # lets `import old.sub` report a clean ModuleNotFoundError
    return view


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, homes: tuple[str, ...]) -> None:
        self.homes = homes
        self._home_spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(f"{spec.name} moved to {' / '.join(self.homes)}; the old path goes in 0.3",
                      DeprecationWarning, stacklevel=3)
        if len(self.homes) > 1:
            return _view(spec.name, self.homes)
        module = importlib.import_module(self.homes[0])
        self._home_spec = module.__spec__
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        # the import system stamped the alias spec on the real module: give it its own back
        if self._home_spec is not None:
            module.__spec__ = self._home_spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Resolves the 0.1 module paths in `MOVED` to their new homes."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        homes = MOVED.get(name)
        if homes is None:
            return None
        return importlib.machinery.ModuleSpec(name, _MovedModuleLoader(homes))


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
