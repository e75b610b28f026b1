"""The one embedding path: pixels -> (flip TTA) -> network -> L2-normalized embeddings, batched, any runtime.

Inference (`FaceEmbedder`), evaluation (`ghostface-eval`), export parity and the training-time verification
callback all embed through `EmbeddingFunction` / `extract_embeddings`. The convention is the official one
(insightface, Keras_insightface): embedding = f(x) + f(mirror(x)), summed before the L2 normalization;
pixels are normalized by `ghostface_keras.core.preprocessing.normalize_images`. Models are anything
`ghostface_keras.runtime.loading.load_model` takes (Keras model, `.keras`, `.h5`, official `.h5`, SavedModel,
`.tflite`, `.onnx`, a released checkpoint name).

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((112, 112, 3))
    >>> outputs = keras.layers.Dense(64)(keras.layers.GlobalAveragePooling2D()(inputs))
    >>> model = keras.Model(inputs, outputs)
    >>> pixels = np.random.default_rng(0).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    >>> embeddings = extract_embeddings(model, pixels, batch_size=2, progress=False)
    >>> embeddings.shape, bool(np.allclose(np.linalg.norm(embeddings, axis=1), 1.0))
    ((5, 64), True)
"""

from __future__ import annotations

import logging
from typing import Any, Callable
from collections.abc import Iterable, Iterator

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.runtime.loading import LoadedModel, load_model
from ghostface_keras.core.numeric import l2_normalize
from ghostface_keras.core.preprocessing import flip_summed
from ghostface_keras.core.progress import ProgressBar

logger = logging.getLogger(__name__)

BatchFunction = Callable[[np.ndarray], np.ndarray]


class EmbeddingFunction:
    """A model as `uint8 pixels (N, H, W, 3) -> raw (flip-summed) embeddings (N, D)`, batched.

    Keras models on the TensorFlow backend run one compiled graph per batch (normalization, mirror, forward
    pass on the image and its mirror stacked into one batch, sum); a short batch is padded to the next power of
    two (at most `batch_size`), so the graph is traced a few times at most and one photo costs one or two
    forward passes, not `batch_size` of them. In a multi-process run each process computes on its own devices
    (`distribution.local_predictor`). Every other runtime runs through its `LoadedModel` runner.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
        >>> embed = EmbeddingFunction(model, batch_size=4, flip=True)
        >>> embed(np.zeros((3, 112, 112, 3), np.uint8)).shape
        (3, 32)
    """

    def __init__(self, model: Any, batch_size: int = 128, flip: bool = True, check: bool = True) -> None:
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        # identity (thresholds) is not needed to embed: skip its probe unless the caller already loaded it
        self.model: LoadedModel = load_model(model, identify=False, check=check)
        self.batch_size = int(batch_size)
        self.flip = bool(flip)
        self.input_size = self.model.input_size
        self._pad_to_batch = False
        self._forward = self._build_forward()

    @property
    def embedding_size(self) -> int:
        return self.model.embedding_size or 0

    def _build_forward(self) -> BatchFunction:
        keras_model = self.model.keras_model
        if keras_model is not None:
            from ghostface_keras.core.distribution import local_predictor, multi_process

            if multi_process():
                return _runner_forward(local_predictor(keras_model), self.flip)
            import keras

            if keras.backend.backend() == "tensorflow":
                self._pad_to_batch = True
                return _compiled_tensorflow_forward(keras_model, self.flip)
            return _runner_forward(lambda batch: np.asarray(keras_model.predict_on_batch(batch)), self.flip)
        return _runner_forward(self.model.runner, self.flip)

    def network(self, normalized: np.ndarray) -> np.ndarray:
        """The raw network output for already normalized float32 inputs (no flip): what parity compares."""
        normalized = np.asarray(normalized, np.float32)
        outputs = [np.asarray(self.model.runner(batch), np.float32) for batch in iterate_batches(normalized,
                                                                                                 self.batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0, self.embedding_size), np.float32)

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        pixels = _check_pixels(pixels, self.input_size)
        count = len(pixels)
        if count == 0:
            return np.zeros((0, self.embedding_size), np.float32)
        padded = min(self.batch_size, 1 << (count - 1).bit_length())
        if self._pad_to_batch and count < padded:
            padding = np.zeros((padded - count,) + pixels.shape[1:], dtype=pixels.dtype)
            pixels = np.concatenate([pixels, padding])
        return np.asarray(self._forward(pixels), dtype=np.float32)[:count]


def as_embedding_function(model: Any, batch_size: int = 128, flip: bool = True) -> EmbeddingFunction:
    """`model` itself if it already is an `EmbeddingFunction` (its own batch size and flip win), else a new one.

    Example:
        >>> import keras
        >>> inputs = keras.Input((112, 112, 3))
        >>> embed = as_embedding_function(keras.Model(inputs, keras.layers.Dense(32)(keras.layers.Flatten()(inputs))))
        >>> as_embedding_function(embed) is embed
        True
    """
    return model if isinstance(model, EmbeddingFunction) else EmbeddingFunction(model, batch_size, flip)


def _compiled_tensorflow_forward(model: Any, flip: bool) -> BatchFunction:
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def forward(pixels):
        return flip_summed(lambda inputs: model(inputs, training=False), pixels, flip, one_call=True)

    return lambda pixels: forward(tf.convert_to_tensor(pixels)).numpy()


def _runner_forward(runner: BatchFunction, flip: bool) -> BatchFunction:
    return lambda pixels: flip_summed(lambda inputs: np.asarray(runner(inputs), dtype=np.float32), pixels, flip)


def _check_pixels(pixels: Any, size: int | None) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DataError(f"images must be (N, H, W, 3) RGB pixels, got shape {pixels.shape}")
    if size is not None and tuple(pixels.shape[1:3]) != (size, size):
        raise DataError(f"images are {pixels.shape[1]}x{pixels.shape[2]} but the model expects {size}x{size}")
    return pixels


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
    """Embeddings of uint8 RGB images, in order, optionally flip-summed, optionally L2-normalized.

    Args:
        model: anything `load_model` takes, or an `EmbeddingFunction` (its batch size and flip win).
        images: (N, H, W, 3) uint8 RGB array, or an iterable of such batches (for data that does not fit in
            memory, e.g. IJB-C; give `total` for the progress bar).
        flip: add the embedding of the mirrored image before normalizing (official TTA).
        normalize: L2-normalize the result (False keeps the raw flip-summed sums).

    Raises:
        DataError: no images, wrong image shape, or a model that produces NaN/inf.

    Example:
        >>> import keras
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.Flatten()(inputs)))
        >>> extract_embeddings(model, np.zeros((3, 112, 112, 3), np.uint8), progress=False).shape
        (3, 32)
    """
    embed = as_embedding_function(model, batch_size, flip)
    if isinstance(images, np.ndarray):
        total = len(images)
        batches: Iterable[np.ndarray] = iterate_batches(images, embed.batch_size)
    else:
        batches = images
    bar = ProgressBar(total, "image") if progress else None
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
    return l2_normalize(embeddings) if normalize else embeddings
