"""Embedding extraction shared by every protocol: batched, flip TTA, progress bar, any model format.

The official convention (insightface, Keras_insightface): embedding = f(x) + f(mirror(x)), summed
before the L2 normalization. Pixels are normalized by `ghostface_keras.preprocessing.normalize_images`.

Models can be given as a Keras model (or any callable on float32 batches), a `.keras` / `.h5`
file (official Keras-2 `.h5` files go through `ghostface_keras.convert.load_official`), a
TensorFlow SavedModel folder, or a `.tflite` file.

Example:
    >>> from ghostface_keras.evaluation import extract_embeddings
    >>> embeddings = extract_embeddings("model.keras", images, batch_size=128, flip=True)
    >>> embeddings.shape        # images: (N, 112, 112, 3) uint8 RGB
    (N, 512)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ghostface_keras.errors import DataError, GhostFaceError, ModelLoadError
from ghostface_keras.export.runtime import TFLiteEmbedder
from ghostface_keras.preprocessing import normalize_images

logger = logging.getLogger(__name__)

BatchFunction = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Model loading: everything becomes `uint8 batch (B, H, W, 3) -> flip-summed raw embeddings (B, D)`
# --------------------------------------------------------------------------------------------------
class EmbeddingFunction:
    """A model wrapped as `pixels -> raw embeddings`, with flip TTA done in the same forward pass.

    Keras models on the TensorFlow backend run one compiled graph per batch (normalization, mirror,
    forward pass on the image and its mirror stacked into one batch, sum); the last short batch is
    padded so the graph is traced once.

    Example:
        >>> embed = EmbeddingFunction(model, batch_size=64, flip=True)
        >>> embed(images[:64]).shape
        (64, 512)
    """

    def __init__(self, model: Any, batch_size: int = 128, flip: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = load_embedding_model(model)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.input_size = _input_size(self.model)
        self._forward = self._build_forward()

    def _build_forward(self) -> BatchFunction:
        if _is_tensorflow_keras_model(self.model):
            return _compiled_keras_forward(self.model, self.flip)
        return _eager_forward(self.model, self.flip)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = _check_pixels(pixels, self.input_size)
        count = len(pixels)
        if count < self.batch_size and _is_tensorflow_keras_model(self.model):
            padding = np.zeros((self.batch_size - count,) + pixels.shape[1:], dtype=pixels.dtype)
            pixels = np.concatenate([pixels, padding])
        return np.asarray(self._forward(pixels), dtype=np.float32)[:count]


def as_embedding_function(model: Any, batch_size: int = 128, flip: bool = True) -> EmbeddingFunction:
    """`model` itself if it already is an `EmbeddingFunction` (its own batch size and flip win), else a new one.

    Example:
        >>> embed = as_embedding_function("model.keras", batch_size=64)
        >>> as_embedding_function(embed) is embed
        True
    """
    return model if isinstance(model, EmbeddingFunction) else EmbeddingFunction(model, batch_size, flip)


def _compiled_keras_forward(model: Any, flip: bool) -> BatchFunction:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(pixels):
        inputs = normalize_images(pixels)
        if not flip:
            return model(inputs, training=False)
        both = tf.concat([inputs, tf.reverse(inputs, axis=[2])], axis=0)
        outputs = model(both, training=False)
        half = tf.shape(inputs)[0]
        return outputs[:half] + outputs[half:]

    return lambda pixels: forward(tf.convert_to_tensor(pixels)).numpy()


def _eager_forward(model: BatchFunction, flip: bool) -> BatchFunction:
    def forward(pixels: np.ndarray) -> np.ndarray:
        inputs = normalize_images(pixels)
        outputs = _to_numpy(model(inputs))
        if flip:
            outputs = outputs + _to_numpy(model(np.ascontiguousarray(inputs[:, :, ::-1])))
        return outputs

    return forward


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        value = next(iter(value.values()))
    if isinstance(value, (list, tuple)):
        value = value[0]
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)


def _is_tensorflow_keras_model(model: Any) -> bool:
    import keras

    return isinstance(model, keras.Model) and keras.backend.backend() == "tensorflow"


def _input_size(model: Any) -> tuple[int, int] | None:
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def _check_pixels(pixels: Any, size: tuple[int, int] | None) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DataError(f"images must be (N, H, W, 3) RGB pixels, got shape {pixels.shape}")
    if size is not None and tuple(pixels.shape[1:3]) != size:
        raise DataError(f"images are {pixels.shape[1]}x{pixels.shape[2]} but the model expects "
                        f"{size[0]}x{size[1]}")
    return pixels


def load_embedding_model(model: Any) -> Any:
    """A model object from a model, a callable, or a path (`.keras`, `.h5`, SavedModel folder, `.tflite`).

    Raises:
        ModelLoadError: the path does not exist or cannot be read as a model (one-line message).

    Example:
        >>> model = load_embedding_model("exports/ghostfacenet.tflite")
        >>> model(normalized_batch).shape
        (1, 512)
    """
    if not isinstance(model, (str, os.PathLike)):
        if not callable(model):
            raise ModelLoadError(f"model must be a Keras model, a callable or a path, got {type(model).__name__}")
        return model
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"{path}: model file or folder not found")
    if path.is_dir():
        return _load_saved_model(path)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return TFLiteModel(path)
    if suffix in (".keras", ".h5", ".hdf5"):
        return _load_keras_file(path)
    raise ModelLoadError(f"{path}: unknown model format (expected .keras, .h5, .tflite or a SavedModel folder)")


def _load_keras_file(path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as keras_error:  # any reader failure becomes one clear message below
        if path.suffix.lower() != ".keras":
            official = _try_official_h5(path)
            if official is not None:
                return official
        raise ModelLoadError(f"{path}: cannot load as a Keras model ({type(keras_error).__name__}: "
                             f"{_first_line(keras_error)})") from keras_error


def _try_official_h5(path: Path) -> Any:
    """Official Keras-2 GhostFaceNets `.h5` files do not load in Keras 3; the converter reads them."""
    try:
        from ghostface_keras.convert import load_official
    except ImportError:
        return None
    try:
        logger.info("%s: not a Keras 3 file, converting it as an official GhostFaceNets .h5", path)
        return load_official(str(path))
    except GhostFaceError as error:
        logger.info("%s: official conversion failed too: %s", path, error)
        return None


def _load_saved_model(path: Path) -> BatchFunction:
    if not (path / "saved_model.pb").exists():
        raise ModelLoadError(f"{path}: a folder but not a SavedModel (no saved_model.pb)")
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as error:  # corrupt SavedModel: report it in one line
        raise ModelLoadError(f"{path}: cannot load SavedModel ({_first_line(error)})") from error
    signature = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None
    if signature is None:
        raise ModelLoadError(f"{path}: SavedModel has no 'serving_default' signature")
    input_name = next(iter(signature.structured_input_signature[1]))

    def run(inputs: np.ndarray) -> np.ndarray:
        return _to_numpy(signature(**{input_name: tf.constant(inputs, dtype=tf.float32)}))

    return run


# `.tflite` files run through the one runner that export and inference use too
TFLiteModel = TFLiteEmbedder


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------
def iterate_batches(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `images` of at most `batch_size` rows.

    Example:
        >>> [len(batch) for batch in iterate_batches(np.zeros((5, 2, 2, 3)), 2)]
        [2, 2, 1]
    """
    for start in range(0, len(images), batch_size):
        yield images[start:start + batch_size]


def extract_embeddings(model: Any, images: np.ndarray | Iterable[np.ndarray], batch_size: int = 128,
                       flip: bool = True, normalize: bool = True, progress: bool = True,
                       total: int | None = None) -> np.ndarray:
    """Embeddings of RGB pixel images, in order, optionally flip-summed, optionally L2-normalized.

    Args:
        model: a Keras model, a callable on normalized float32 batches, an `EmbeddingFunction`, or a
            path (`.keras`, `.h5`, SavedModel folder, `.tflite`).
        images: (N, H, W, 3) uint8 RGB array, or an iterable of such batches (for data that does
            not fit in memory, e.g. IJB-C; give `total` for the progress bar).
        flip: add the embedding of the mirrored image before normalizing (official TTA).
        normalize: L2-normalize the result (False keeps the raw flip-summed sums).

    Example:
        >>> embeddings = extract_embeddings(model, images, batch_size=256, flip=True)
        >>> np.allclose(np.linalg.norm(embeddings, axis=1), 1.0)
        True
    """
    embed = as_embedding_function(model, batch_size, flip)
    if isinstance(images, np.ndarray):
        total = len(images)
        batches: Iterable[np.ndarray] = iterate_batches(images, embed.batch_size)
    else:
        batches = images
    bar = _progress_bar(total) if progress else None
    outputs, done = [], 0
    for batch in batches:
        for start in range(0, len(batch), embed.batch_size):
            outputs.append(embed(batch[start:start + embed.batch_size]))
        done += len(batch)
        if bar is not None:
            bar.update(done)
    if not outputs:
        raise DataError("no images to embed")
    embeddings = np.concatenate(outputs)
    if not np.all(np.isfinite(embeddings)):
        raise DataError(f"the model produced NaN/inf embeddings for {int(np.sum(~np.isfinite(embeddings).all(1)))} "
                        "images (diverged weights?)")
    if normalize:
        from ghostface_keras.evaluation.verification import l2_normalize

        embeddings = l2_normalize(embeddings)
    return embeddings


def _progress_bar(total: int | None) -> Any:
    import keras

    return keras.utils.Progbar(total, unit_name="image")
