"""Batch compositions other than "every image once, in random order".

- `class_balanced_dataset`: P x K batches (P identities, K images each), what pair / triplet style
  losses need so that every batch holds positives. Classes with fewer than K images are left out.
- `partial_class_dataset`: every batch draws its identities from one contiguous range of classes, the
  ranges taken in turn, for partial-FC style training where only one slice of the classifier's rows is
  touched per step. Labels stay global; the slice of a batch is `labels // ceil(num_classes / num_splits)`.

Both re-draw their composition every epoch from `(seed, epoch)`, so a seed makes runs repeatable, and
both give the same number of batches every epoch (the dataset's cardinality). Both shard like
`build_dataset`: `num_shards` processes each take their slice of every global batch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from ghostface_keras.data.augment import resolve_seed
from ghostface_keras.data.pipeline import ImageSource, build_dataset, sharded_batching
from ghostface_keras.core.errors import DataError


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
    chunks the classes have left, so large classes are spread over the epoch. Every epoch has the most
    batches of P distinct identities the chunks allow (when a weighted draw would leave fewer, the
    classes with the most chunks left are taken instead), so the count is the same every epoch.
    `seed=None` draws a random seed once.

    Example:
        >>> order = class_balanced_order(2, 2, seed=0)
        >>> batch = order(np.array([0, 0, 0, 1, 1, 2]), 0)
        >>> sorted((batch.reshape(-1, 2)[:, 0] // 3).tolist())  # a chunk of class 0 (items 0-2), one of class 1
        [0, 1]
    """
    seed = resolve_seed(seed)

    def order(labels: np.ndarray, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((seed, epoch))
        chunks: list[list[np.ndarray]] = []
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            usable = len(members) // images_per_identity * images_per_identity
            if usable:
                chunks.append(list(np.sort(members[:usable].reshape(-1, images_per_identity), axis=1)))
        remaining = np.array([len(class_chunks) for class_chunks in chunks], dtype=np.int64)
        batches = []
        for left in range(most_distinct_batches(remaining, identities_per_batch), 0, -1):
            for class_position in _pick_classes(rng, remaining, identities_per_batch, left):
                batches.append(chunks[class_position].pop())
                remaining[class_position] -= 1
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)

    return order


def most_distinct_batches(counts: np.ndarray, group: int) -> int:
    """The most batches of `group` distinct classes that classes with `counts` chunks can fill.

    B batches are possible exactly when sum(min(count, B)) >= group * B (each class gives at most one
    chunk per batch); that set of B is an interval from 0, so a binary search finds its end.

    Example:
        >>> most_distinct_batches(np.array([5, 1, 1]), 2), most_distinct_batches(np.array([2, 2, 2]), 2)
        (2, 3)
    """
    counts = np.asarray(counts, dtype=np.int64)
    low, high = 0, int(counts.sum()) // group
    while low < high:
        middle = (low + high + 1) // 2
        if np.minimum(counts, middle).sum() >= group * middle:
            low = middle
        else:
            high = middle - 1
    return low


def _pick_classes(rng: np.random.Generator, remaining: np.ndarray, group: int, batches_left: int) -> np.ndarray:
    """`group` distinct classes for the next batch, weighted by chunks left, keeping `batches_left` reachable."""
    picked = rng.choice(len(remaining), group, replace=False, p=remaining / remaining.sum())
    after = remaining.copy()
    after[picked] -= 1
    if np.minimum(after, batches_left - 1).sum() >= group * (batches_left - 1):
        return picked
    # the fullest classes always keep the rest reachable; random noise below 1 breaks ties only
    return np.argsort(-(remaining + rng.random(len(remaining)) * 0.5))[:group]


def class_balanced_dataset(
    data,
    batch_size: int,
    images_per_identity: int = 4,
    image_size: int = 112,
    augment=None,
    seed: int | None = None,
    cache: bool | str = "auto",
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Batches of P = `batch_size // K` distinct identities x K = `images_per_identity` images each.

    `data` is an identity folder, a RecordIO folder or `.rec` file, or an `ImageSource`. The global
    batch is P x K; with `num_shards` > 1 it must divide by `num_shards` and a seed is needed (see
    `build_dataset`): shard s gets items [s*b, (s+1)*b) of every P x K batch, b = P * K // num_shards.

    Example:
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> faces = synthetic_faces(tempfile.mkdtemp(), num_identities=8, images_per_identity=4)
        >>> dataset = class_balanced_dataset(faces, batch_size=8, images_per_identity=4, seed=0)
        >>> images, labels = next(iter(dataset))   # 2 identities x 4 images
        >>> images.shape, np.unique(labels.numpy(), return_counts=True)[1].tolist()
        (TensorShape([8, 112, 112, 3]), [4, 4])
    """
    if images_per_identity < 1 or batch_size < images_per_identity:
        raise DataError(f"need 1 <= images_per_identity <= batch_size, got {images_per_identity} and {batch_size}")
    source = _source(data)
    identities_per_batch = batch_size // images_per_identity
    global_batch = identities_per_batch * images_per_identity
    sharded_batching(source.name, global_batch, num_shards, shard_index, True, seed)
    counts = np.bincount(source.labels)
    if not (counts >= images_per_identity).any():
        raise DataError(f"{source.name}: no identity has {images_per_identity} images (largest has {counts.max()})")
    if (counts >= images_per_identity).sum() < identities_per_batch:
        raise DataError(
            f"{source.name}: a batch needs {identities_per_batch} identities with >= {images_per_identity} images, "
            f"only {(counts >= images_per_identity).sum()} have that many"
        )
    return build_dataset(
        source, global_batch, image_size, augment, True, seed, cache, drop_remainder=True,
        order=class_balanced_order(images_per_identity, identities_per_batch, seed),
        num_shards=num_shards, shard_index=shard_index,
    )


def partial_class_order(num_classes: int, num_splits: int, batch_size: int, seed: int | None):
    """An `EpochOrder` whose consecutive batches come from class ranges 0, 1, ..., S-1, 0, 1, ... in turn.

    When a range runs out of full batches the others continue in turn, so no class is dropped.
    `seed=None` draws a random seed once.

    Example:
        >>> order = partial_class_order(num_classes=4, num_splits=2, batch_size=2, seed=0)
        >>> (order(np.array([0, 0, 1, 1, 2, 2, 3, 3]), 0).reshape(-1, 2) // 4).tolist()  # items 0-3 hold classes 0-1
        [[0, 0], [1, 1], [0, 0], [1, 1]]
    """
    span = math.ceil(num_classes / num_splits)
    seed = resolve_seed(seed)

    def order(labels: np.ndarray, epoch: int) -> np.ndarray:
        rng = np.random.default_rng((seed, epoch))
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
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Batches whose labels all lie in one of `num_splits` contiguous class ranges, ranges taken in turn.

    The dataset's `class_range` attribute is the range width: batch labels // class_range = its slice.
    `batch_size` is the global batch; `num_shards` / `shard_index` shard it as in `build_dataset`.

    Example:
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> faces = synthetic_faces(tempfile.mkdtemp(), num_identities=8, images_per_identity=4)
        >>> dataset = partial_class_dataset(faces, batch_size=8, num_splits=2, seed=0)
        >>> images, labels = next(iter(dataset))  # every label in [0, dataset.class_range)
        >>> dataset.class_range, bool(np.all(labels.numpy() < dataset.class_range))
        (4, True)
    """
    source = _source(data)
    num_classes = len(source.class_names)
    if not 1 <= num_splits <= num_classes:
        raise DataError(f"{source.name}: num_splits must be in 1..{num_classes}, got {num_splits}")
    sharded_batching(source.name, batch_size, num_shards, shard_index, True, seed)
    dataset = build_dataset(
        source, batch_size, image_size, augment, True, seed, cache, drop_remainder=True,
        order=partial_class_order(num_classes, num_splits, batch_size, seed),
        num_shards=num_shards, shard_index=shard_index,
    )
    dataset.class_range = math.ceil(num_classes / num_splits)
    return dataset


__all__ = [
    "class_balanced_dataset",
    "class_balanced_order",
    "most_distinct_batches",
    "partial_class_dataset",
    "partial_class_order",
]
