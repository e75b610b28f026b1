"""Aligned face images from folders, for int8 calibration and parity checks."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import DataError, ExportError
from ghostface_keras.core.files import IMAGE_EXTENSIONS
from ghostface_keras.core.files import list_images
from ghostface_keras.core.images import read_face_images
from ghostface_keras.core.preprocessing import IMAGE_SIZE, normalize_images

logger = logging.getLogger(__name__)

def _image_files(directory: str | os.PathLike) -> list[Path]:
    """The one image lister's files (`ghostface_keras.core.files.list_images`); none is an `ExportError`."""
    try:
        files = list_images(directory)
    except DataError as error:
        raise ExportError(f"{directory}: image folder not found") from error
    if not files:
        raise ExportError(f"{directory}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return files


def load_face_images(files: Sequence[Path], size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Read aligned RGB faces (`ghostface_keras.core.images`, the one reader) into a normalized float32
    (N, H, W, 3) array, resized only if needed; an unreadable file is an `ExportError` naming it."""
    if size[0] != size[1]:
        raise ExportError(f"face images are square; got size {size}")
    try:
        return normalize_images(read_face_images(list(files), size[0]))
    except DataError as error:
        raise ExportError(str(error)) from None


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
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> folder = synthetic_faces(tempfile.mkdtemp(), num_identities=3, images_per_identity=4)
        >>> calibration = sample_images(folder, 8)
        >>> parity = sample_images(folder, 4, skip=8)       # the other 4 images of the same draw
        >>> calibration.shape, calibration.dtype, parity.shape
        ((8, 112, 112, 3), dtype('float32'), (4, 112, 112, 3))
    """
    files = _image_files(directory)
    order = np.random.default_rng(seed).permutation(len(files))[skip : skip + count]
    if len(order) == 0:
        raise ExportError(f"{directory}: only {len(files)} images, none left after the first {skip}")
    return load_face_images([files[i] for i in order], size)
