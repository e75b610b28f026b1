"""The one reader of Keras model files (`.keras`, Keras-3 `.h5`) and the test for an official Keras-2 `.h5`.

`runtime.loading.load_model` (every door that runs a model) and `weights.apply.apply_weights` (a builder's
`weights=`) both read files through here, so a bad file gets the same one-line `ModelLoadError` from either.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path
from typing import Any

from ghostface_keras.core.errors import ModelLoadError


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (Keras and h5py errors can run to pages)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:200] if lines else type(error).__name__


def is_official_h5(path: str | Path) -> bool:
    """Whether `path` is an HDF5 model or weights file written by Keras 2 (how the official code saves).

    Raises:
        ModelLoadError: not a readable HDF5 file.
    """
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            version = handle.attrs.get("keras_version", b"")
    except OSError as error:
        raise ModelLoadError(f"{path}: not a readable HDF5 model file ({first_line(error)})") from None
    version = version.decode() if isinstance(version, bytes) else str(version)
    return version.startswith("2.")


def read_keras_model(path: str | Path) -> Any:
    """The Keras model in a `.keras` or Keras-3 `.h5` file, loaded in Keras' safe mode without compiling.

    Our serializable objects are registered as soon as Keras is imported (`ghostface_keras/__init__.py`).

    Raises:
        ModelLoadError: one line naming the file: not a zip archive, unreadable, or not a Keras model.
    """
    import keras

    path = Path(path)
    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{path}: not a .keras file (a .keras model is a zip archive; this file is not one)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = keras.saving.load_model(str(path), compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for a bad file; the user needs one line
        raise ModelLoadError(f"{path}: cannot load as a Keras model ({type(error).__name__}: "
                             f"{first_line(error)})") from None
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model
