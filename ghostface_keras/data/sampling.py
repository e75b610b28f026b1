"""Batch compositions other than "every image once, in random order".

- `class_balanced_dataset`: P x K batches (P identities, K images each), what pair / triplet style
  losses need so that every batch holds positives. Classes with fewer than K images are left out.
- `partial_class_dataset`: every batch draws its identities from one contiguous range of classes, the
  ranges taken in turn, for partial-FC style training where only one slice of the classifier's rows is
  touched per step. Labels stay global; the slice of a batch is `labels // ceil(num_classes / num_splits)`.

Both re-draw their composition every epoch from `(seed, epoch)`, so a seed makes runs repeatable.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from ghostface_keras.data.pipeline import ImageSource, build_dataset
from ghostface_keras.errors import DataError


def _source(data) -> ImageSource:
    """An identity folder, a RecordIO folder / .rec file, or an `ImageSource`."""
    if isinstance(data, ImageSource):
        return data
    path = Path(data)
    if path.suffix in (".rec", ".idx") or (path.is_dir() and any(path.glob("*.rec"))):
        from ghostface_keras.data.recordio import recordio_source

        return recordio_source(path)
    from ghostface_keras.data.folders import scan_image_folder

    return scan_image_folder(path).to_source()


def class_balanced_order(images_per_identity: int, identities_per_batch: int, seed: int | None):
    """An `EpochOrder` of P x K batches: P distinct identities, K images each, redrawn every epoch.

    Each class's images are shuffled and cut into chunks of K (the remainder waits for the next epoch's
    reshuffle); every batch takes one chunk from each of P different classes, drawn in proportion to the
    chunks the classes have left, so large classes are spread over the epoch. Chunks that cannot fill a
    batch of P distinct identities are left out of this epoch.

    Example:
        >>> order = class_balanced_order(2, 2, seed=0)
        >>> batch = order(np.array([0, 0, 0, 1, 1, 2]), 0)
        >>> sorted((batch.reshape(-1, 2)[:, 0] // 3).tolist())  # a chunk of class 0 (items 0-2), one of class 1
        [0, 1]
    """

    def order(labels: np.ndarray, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(None if seed is None else (seed, epoch))
        chunks: list[list[np.ndarray]] = []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            usable = len(members) // images_per_identity * images_per_identity
            if usable:
                chunks.append(list(np.sort(members[:usable].reshape(-1, images_per_identity), axis=1)))
        batches = []
        remaining = np.array([len(class_chunks) for class_chunks in chunks], dtype=np.float64)
        while np.count_nonzero(remaining) >= identities_per_batch:
            picked = rng.choice(len(chunks), identities_per_batch, replace=False, p=remaining / remaining.sum())
            for class_position in picked:
                batches.append(chunks[class_position].pop())
                remaining[class_position] -= 1
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)

    return order


def class_balanced_dataset(
    data,
    batch_size: int,
    images_per_identity: int = 4,
    image_size: int = 112,
    augment=None,
    seed: int | None = None,
    cache: bool | str = "auto",
) -> tf.data.Dataset:
    """Batches of P = `batch_size // K` distinct identities x K = `images_per_identity` images each.

    `data` is an identity folder, a RecordIO folder or `.rec` file, or an `ImageSource`.

    Example:
        >>> dataset = class_balanced_dataset("faces/", batch_size=64, images_per_identity=4, seed=0)  # doctest: +SKIP
        >>> images, labels = next(iter(dataset))   # 16 identities x 4 images                           # doctest: +SKIP
    """
    if images_per_identity < 1 or batch_size < images_per_identity:
        raise DataError(f"need 1 <= images_per_identity <= batch_size, got {images_per_identity} and {batch_size}")
    source = _source(data)
    counts = np.bincount(source.labels)
    if not (counts >= images_per_identity).any():
        raise DataError(f"{source.name}: no identity has {images_per_identity} images (largest has {counts.max()})")
    identities_per_batch = batch_size // images_per_identity
    if (counts >= images_per_identity).sum() < identities_per_batch:
        raise DataError(
            f"{source.name}: a batch needs {identities_per_batch} identities with >= {images_per_identity} images, "
            f"only {(counts >= images_per_identity).sum()} have that many"
        )
    return build_dataset(
        source, identities_per_batch * images_per_identity, image_size, augment, True, seed, cache, drop_remainder=True,
        order=class_balanced_order(images_per_identity, identities_per_batch, seed),
    )


def partial_class_order(num_classes: int, num_splits: int, batch_size: int, seed: int | None):
    """An `EpochOrder` whose consecutive batches come from class ranges 0, 1, ..., S-1, 0, 1, ... in turn.

    When a range runs out of full batches the others continue in turn, so no class is dropped.
    """
    span = math.ceil(num_classes / num_splits)

    def order(labels: np.ndarray, epoch: int) -> np.ndarray:
        rng = np.random.default_rng(None if seed is None else (seed, epoch))
        queues = []
        for split in range(num_splits):
            members = rng.permutation(np.flatnonzero(labels // span == split))
            full = len(members) // batch_size * batch_size
            queues.append(list(members[:full].reshape(-1, batch_size)))
        batches = []
        while any(queues):
            for queue in queues:
                if queue:
                    batches.append(queue.pop(0))
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)

    return order


def partial_class_dataset(
    data,
    batch_size: int,
    num_splits: int,
    image_size: int = 112,
    augment=None,
    seed: int | None = None,
    cache: bool | str = "auto",
) -> tf.data.Dataset:
    """Batches whose labels all lie in one of `num_splits` contiguous class ranges, ranges taken in turn.

    The dataset's `class_range` attribute is the range width: batch labels // class_range = its slice.

    Example:
        >>> dataset = partial_class_dataset("faces/", batch_size=128, num_splits=4, seed=0)  # doctest: +SKIP
        >>> images, labels = next(iter(dataset))  # every label in [0, dataset.class_range)      # doctest: +SKIP
    """
    source = _source(data)
    num_classes = len(source.class_names)
    if not 1 <= num_splits <= num_classes:
        raise DataError(f"{source.name}: num_splits must be in 1..{num_classes}, got {num_splits}")
    dataset = build_dataset(
        source, batch_size, image_size, augment, True, seed, cache, drop_remainder=True,
        order=partial_class_order(num_classes, num_splits, batch_size, seed),
    )
    dataset.class_range = math.ceil(num_classes / num_splits)
    return dataset


__all__ = ["class_balanced_dataset", "partial_class_dataset", "class_balanced_order", "partial_class_order"]
