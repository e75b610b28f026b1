"""SavedModel export with a static-shape (or dynamic-batch) float32 serving signature."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ghostface_keras.core.errors import ExportError
from ghostface_keras.core.files import atomic_output
from ghostface_keras.core.preprocessing import normalize_images


def _model_input_shape(model) -> tuple[int, int, int]:
    """(H, W, C) of a single-input image model; fails clearly for anything else."""
    shape = model.input_shape
    if isinstance(shape, list):
        raise ExportError(f"model {model.name!r} has {len(shape)} inputs; export expects one image input")
    if len(shape) != 4 or any(d is None for d in shape[1:]):
        raise ExportError(
            f"model {model.name!r} has input shape {shape}; export needs a fixed (batch, H, W, C) shape "
            "such as (None, 112, 112, 3)"
        )
    return tuple(int(d) for d in shape[1:])


def _write_saved_model(model, directory: Path, batch_size: int | None, uint8_signature: bool) -> None:
    """Trace `model` with a static-shape signature into a SavedModel (Keras 3 ExportArchive)."""
    import keras
    import tensorflow as tf

    height, width, channels = _model_input_shape(model)
    shape = [batch_size, height, width, channels]
    archive = keras.export.ExportArchive()
    archive.track(model)
    call = functools.partial(model.__call__, training=False)
    archive.add_endpoint("serving_default", call, input_signature=[tf.TensorSpec(shape, tf.float32, "images")])
    if uint8_signature:

        def from_pixels(pixels):
            # the one normalization of this library, inside the graph: phones feed camera bytes directly
            return model(normalize_images(pixels), training=False)

        archive.add_endpoint(
            "serving_uint8", from_pixels, input_signature=[tf.TensorSpec(shape, tf.uint8, "pixels")]
        )
    archive.write_out(str(directory), verbose=False)


def export_saved_model(
    model, directory: str | os.PathLike, batch_size: int | None = None, uint8_signature: bool = True
) -> Path:
    """Write `model` as a TensorFlow SavedModel with a float32 NHWC serving signature.

    Signatures: ``serving_default`` takes ``images`` (float32, ``(batch, 112, 112, 3)``, pixels already
    normalized with `normalize_images`) and returns the embedding; with ``uint8_signature`` a second one,
    ``serving_uint8``, takes ``pixels`` (uint8 RGB) and normalizes inside the graph. ``batch_size=None``
    keeps the batch dimension dynamic (servers); pass 1 for a phone-style static graph.

    Example:
        >>> import keras, tempfile, tensorflow as tf
        >>> inputs = keras.Input((112, 112, 3))               # a tiny stand-in for a 512-d GhostFaceNet
        >>> model = keras.Model(inputs, keras.layers.Dense(512)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_saved_model(model, f"{tempfile.mkdtemp()}/exported/ghostfacenet")
        >>> serve = tf.saved_model.load(str(path)).signatures["serving_uint8"]
        >>> serve(pixels=tf.zeros([1, 112, 112, 3], tf.uint8))["output_0"].shape
        TensorShape([1, 512])
    """
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ExportError(f"{directory}: output folder exists and is not empty; choose a new path")
    with atomic_output(directory) as staging:
        _write_saved_model(model, staging, batch_size, uint8_signature)
    return directory


def run_saved_model(directory: str | os.PathLike, images: np.ndarray) -> np.ndarray:
    """Embeddings of normalized float32 `images` from the ``serving_default`` signature of a SavedModel
    (the runner of `ghostface_keras.load_model`)."""
    from ghostface_keras.runtime.loading import load_model

    return load_model(directory, identify=False, check=False).runner(images)
