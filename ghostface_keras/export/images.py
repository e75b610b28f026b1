"""Aligned face images and models from files, for calibration, parity checks and the CLI."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ghostface_keras.errors import ExportError
from ghostface_keras.preprocessing import IMAGE_SIZE, normalize_images

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files under `directory` (recursively, e.g. one sub-folder per identity), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory}: image folder not found")
    files = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ExportError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def load_face_images(files: Sequence[Path], size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Read aligned RGB faces into a normalized float32 (N, H, W, 3) array (resized only if needed)."""
    from PIL import Image, UnidentifiedImageError

    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                image = image.convert("RGB")
                if image.size != (size[1], size[0]):
                    image = image.resize((size[1], size[0]), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as error:
            raise ExportError(f"{file}: unreadable image ({error})") from error
    return normalize_images(np.stack(arrays))


def sample_images(
    directory: str | os.PathLike,
    count: int,
    seed: int = 0,
    skip: int = 0,
    size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE),
) -> np.ndarray:
    """`count` normalized images drawn reproducibly from `directory`, after skipping the first `skip`
    of the same draw (so calibration and parity images never overlap).

    Example:
        >>> sample_images("celeba_aligned112/train", 200).shape
        (200, 112, 112, 3)
    """
    files = list_images(directory)
    order = np.random.default_rng(seed).permutation(len(files))[skip : skip + count]
    if len(order) == 0:
        raise ExportError(f"{directory}: only {len(files)} images, none left after the first {skip}")
    return load_face_images([files[i] for i in order], size)


def load_model_for_export(spec: str):
    """A Keras model from a ``.keras`` / Keras ``.h5`` file, an official GhostFaceNets ``.h5``, or a
    registry name such as ``GhostFaceNetV1-1.3-2`` (randomly initialized, for benchmarks)."""
    import keras

    path = Path(spec)
    if not path.exists():
        if path.suffix in (".keras", ".h5", ".tflite", ".onnx") or os.sep in spec:
            raise ExportError(f"{spec}: model file not found")
        from ghostface_keras.registry import create_model

        return create_model(spec)
    if path.suffix == ".keras":
        try:
            return keras.saving.load_model(str(path), compile=False)
        except Exception as error:
            raise ExportError(f"{path}: cannot load the Keras model: {error}") from error
    if path.suffix == ".h5":
        return _load_h5(path)
    raise ExportError(f"{path}: expected a .keras or .h5 model file")


def _load_h5(path: Path):
    import keras

    try:
        return keras.saving.load_model(str(path), compile=False)
    except Exception as keras_error:
        try:
            from ghostface_keras import convert
        except ImportError:
            raise ExportError(f"{path}: cannot load the .h5 model: {keras_error}") from keras_error
        logger.info("%s is not a Keras 3 file; converting it as an official GhostFaceNets checkpoint", path)
        return convert.load_official(str(path))
