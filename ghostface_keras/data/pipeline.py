"""The tf.data pipeline shared by every training source (identity folders, RecordIO).

A source says how to read item i's encoded bytes and what its label is; `build_dataset` turns that into
batches of `(float32 images normalized by preprocessing.normalize_images, int32 labels)`:

    epoch order -> global batches -> this shard's slice -> decode / gather -> augment (keyed) -> normalize -> prefetch

Every epoch's order comes from an `EpochOrder`, `order(labels, epoch) -> item indices` (a seeded
permutation, the identity, or a sampler's composition); the epoch number counts the iterators created
over the dataset. Each position of an epoch gets the key `epoch * 2**32 + position`, and augmentation
draws are pure functions of `(seed, key)` (see `augment.py`), so a seed fixes every epoch's images
whatever the parallelism, and `num_shards` data-parallel processes, each decoding only its slice of
every global batch, together see exactly the images and labels of an unsharded run.

When the decoded dataset fits in memory (`cache="auto"`), every image is decoded once, up front, into
one uint8 array; epochs then only gather, so small datasets are never re-decoded and the count of
unreadable files is exact before training starts (unreadable items are left out). Larger datasets are
decoded on the fly; an item whose file turns out unreadable is replaced by the next readable image of
the same identity (or, if none of that identity's files reads, the next readable item), and logged
once. Replacing instead of dropping keeps every epoch, and every shard, at a known number of batches.

Only TensorFlow ops run inside the maps: the pipeline feeds every Keras backend.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Callable
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from ghostface_keras.data.augment import Augmentation, resolve_augmentation, resolve_seed
from ghostface_keras.data.decode import ImageDecodeError, decode_image_bytes, decode_many
from ghostface_keras.core.errors import DataError
from ghostface_keras.core.preprocessing import normalize_images

logger = logging.getLogger(__name__)

# Never cache more than this much decoded pixel data automatically, whatever the free memory says.
AUTO_CACHE_MAX_BYTES = 2 * 1024**3
SKIPPED_PATHS_SHOWN = 5
# Streaming: an item whose replacement search meets this many unreadable records in a row stops the run (the
# file or its index is corrupt) instead of reading, and logging, millions of records first.
MAX_REPLACEMENT_ATTEMPTS = 100
# An image's augmentation key is epoch * EPOCH_KEY_STRIDE + its position in the epoch's global order.
EPOCH_KEY_STRIDE = 2**32

# An epoch's item order: (labels of the usable items, epoch number) -> item indices, in batch order.
# Every epoch must have the same number of items (the dataset's cardinality is fixed at build time).
EpochOrder = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class ImageSource:
    """A labelled collection of encoded images: what `build_dataset` needs from a reader.

    `read_bytes(i)` returns item i's encoded image; `describe(i)` names it in messages (a path, or
    "train.rec key 17"); `skipped` lists `(name, reason)` of entries the reader already rejected.
    """

    name: str
    labels: np.ndarray
    class_names: list[str]
    read_bytes: Callable[[int], bytes]
    describe: Callable[[int], str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.labels))


def shuffled_order(seed: int) -> EpochOrder:
    """An `EpochOrder`: a fresh permutation every epoch, `np.random.default_rng((seed, epoch))`.

    Example:
        >>> order = shuffled_order(0)
        >>> sorted(order(np.zeros(5), 0).tolist()), order(np.zeros(5), 0).tolist() == order(np.zeros(5), 0).tolist()
        ([0, 1, 2, 3, 4], True)
    """

    def order(labels: np.ndarray, epoch: int) -> np.ndarray:
        return np.random.default_rng((seed, epoch)).permutation(len(labels))

    return order


def identity_order(labels: np.ndarray, epoch: int) -> np.ndarray:
    """An `EpochOrder`: the items in their own order, every epoch (`shuffle=False`)."""
    return np.arange(len(labels))


@dataclass(frozen=True)
class Batching:
    """Global batches and one shard's slice of each: shard s keeps [s*b, (s+1)*b), b = batch_size // num_shards.

    Example:
        >>> batching = Batching(batch_size=4, num_shards=2, shard_index=1, drop_remainder=True)
        >>> batching.num_batches(10), [rows.tolist() for rows in batching.split(np.arange(10))]
        (2, [[[2, 3], [6, 7]]])
    """

    batch_size: int
    num_shards: int = 1
    shard_index: int = 0
    drop_remainder: bool = False

    @property
    def shard_batch_size(self) -> int:
        return self.batch_size // self.num_shards

    def num_batches(self, num_items: int) -> int:
        return num_items // self.batch_size if self.drop_remainder else math.ceil(num_items / self.batch_size)

    def split(self, items: np.ndarray) -> list[np.ndarray]:
        """This shard's part of every batch of one epoch, as rows: [full batches, b] (+ [1, rest] if kept)."""
        full = len(items) // self.batch_size
        rows = items[: full * self.batch_size].reshape(full, self.num_shards, self.shard_batch_size)[:, self.shard_index]
        rest = items[full * self.batch_size :]
        return [rows, rest[None]] if len(rest) and not self.drop_remainder else [rows]


def sharded_batching(name: str, batch_size: int, num_shards: int, shard_index: int, drop_remainder: bool, seed) -> Batching:
    """Check the batching arguments of a dataset builder (one-line `DataError`s) and return the `Batching`."""
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DataError(f"{name}: batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(num_shards, bool) or not isinstance(num_shards, (int, np.integer)) or num_shards < 1:
        raise DataError(f"{name}: num_shards must be an integer >= 1, got {num_shards!r}")
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or not 0 <= shard_index < num_shards:
        raise DataError(f"{name}: shard_index must be an integer in 0..{num_shards - 1}, got {shard_index!r}")
    if num_shards > 1:
        if batch_size % num_shards:
            raise DataError(f"{name}: batch_size {batch_size} (the global batch) is not divisible by num_shards {num_shards}")
        if seed is None:
            raise DataError(f"{name}: num_shards={num_shards} needs a seed, so that every process draws the same order and augmentation")
    # Sharded runs drop the last incomplete batch: every process must step the same number of times.
    return Batching(int(batch_size), int(num_shards), int(shard_index), bool(drop_remainder or num_shards > 1))


def should_cache(cache: bool | str, num_items: int, image_size: int) -> bool:
    """Resolve `cache=True/False/"auto"`: auto caches when the decoded uint8 pixels fit comfortably."""
    if cache == "auto":
        needed = num_items * image_size * image_size * 3
        return needed <= min(AUTO_CACHE_MAX_BYTES, _available_memory() // 4)
    if isinstance(cache, bool):
        return cache
    raise DataError(f"cache must be True, False or 'auto', got {cache!r}")


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def warn_skipped(name: str, skipped: list[tuple[str, str]]) -> None:
    """One warning line: how many entries were skipped and the first few of them."""
    if not skipped:
        return
    shown = ", ".join(f"{path} ({reason})" for path, reason in skipped[:SKIPPED_PATHS_SHOWN])
    more = f" and {len(skipped) - SKIPPED_PATHS_SHOWN} more" if len(skipped) > SKIPPED_PATHS_SHOWN else ""
    logger.warning("%s: skipped %d unreadable or non-image files: %s%s", name, len(skipped), shown, more)


def build_dataset(
    source: ImageSource,
    batch_size: int,
    image_size: int = 112,
    augment=None,
    shuffle: bool = True,
    seed: int | None = None,
    cache: bool | str = "auto",
    drop_remainder: bool = False,
    normalize: bool = True,
    order: EpochOrder | None = None,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Batches of `(images, labels)` from an `ImageSource` (see the module docstring for the stages).

    Args:
        source: the items to read.
        batch_size: the GLOBAL batch: with `num_shards` > 1 each shard yields `batch_size // num_shards`.
        image_size: side of the square RGB images.
        augment: None / "none" / -1, a level (0-3 or a name), an `AugmentConfig`, an `Augmentation`, or a
            plain TF-traceable callable `fn(pixels)` on float32 batches in [0, 255] (run sequentially and
            not keyed: its randomness is its own, so it does not shard exactly).
        shuffle: a new permutation every epoch (`np.random.default_rng((seed, epoch))`); False keeps item order.
        seed: fixes the orders and the augmentation; None draws one at random now.
        cache: "auto" decodes everything into memory when it fits; True / False force either path.
        drop_remainder: drop the last incomplete batch (always, when sharded).
        normalize: False returns float32 pixels in [0, 255].
        order: an `EpochOrder` replacing `shuffle` (the samplers of `sampling.py` use it).
        num_shards, shard_index: this process's share of every global batch: needs `batch_size %
            num_shards == 0` and a seed; the last incomplete global batch is dropped, so every shard
            yields the same number of batches. Concatenating the shards' k-th batches in shard order
            gives the unsharded k-th batch exactly (images after augmentation, and labels).

    The returned dataset carries `class_names`, `num_classes`, `num_images`, `skipped_files`,
    `global_batch_size`, `num_shards` and `shard_index` attributes; its `cardinality()` is the number
    of batches per epoch, the same on every shard.

    Example:
        >>> import io; from PIL import Image
        >>> def png(value):
        ...     buffer = io.BytesIO(); Image.new("RGB", (112, 112), (value,) * 3).save(buffer, "PNG")
        ...     return buffer.getvalue()
        >>> blobs = [png(value) for value in (0, 64, 128, 192)]
        >>> source = ImageSource("mine", np.array([0, 0, 1, 1]), ["alice", "bob"], blobs.__getitem__, str)
        >>> shard = build_dataset(source, batch_size=4, augment="flip", seed=0, num_shards=2, shard_index=1)
        >>> int(shard.cardinality()), shard.global_batch_size
        (1, 4)
        >>> [images.shape for images, labels in shard]
        [TensorShape([2, 112, 112, 3])]
    """
    batching = sharded_batching(source.name, batch_size, num_shards, shard_index, drop_remainder, seed)
    if len(source) == 0:
        raise DataError(f"{source.name}: no images found")
    seed = resolve_seed(seed)
    skipped = list(source.skipped)
    if should_cache(cache, len(source), image_size):
        images, labels = _decode_all(source, image_size, skipped)
        num_images = len(images)
    else:
        warn_skipped(source.name, skipped)
        images, labels, num_images = None, np.asarray(source.labels, dtype=np.int32), len(source)
    order = order if order is not None else (shuffled_order(seed) if shuffle else identity_order)
    stream, num_batches = _index_stream(source.name, labels, order, batching)
    if images is not None:
        dataset = stream.map(_gatherer(images, labels, image_size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    else:
        dataset = _decoded_on_the_fly(stream, source, labels, image_size, batching.shard_batch_size, skipped)
    dataset = _finish(dataset, augment, image_size, seed, normalize)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(num_batches)).prefetch(tf.data.AUTOTUNE)
    dataset.class_names = list(source.class_names)
    dataset.num_classes = len(source.class_names)
    dataset.num_images = num_images
    dataset.skipped_files = skipped
    dataset.global_batch_size = batching.batch_size
    dataset.num_shards = batching.num_shards
    dataset.shard_index = batching.shard_index
    return dataset


def _index_stream(name: str, labels: np.ndarray, order: EpochOrder, batching: Batching) -> tuple[tf.data.Dataset, int]:
    """This shard's `(item indices, keys)` of every batch, one epoch per iterator, and batches per epoch."""
    first_epoch = np.asarray(order(labels, 0), dtype=np.int64)
    num_items = len(first_epoch)
    num_batches = batching.num_batches(num_items)
    if num_batches == 0:
        raise DataError(f"{name}: an epoch of {num_items} items holds no full batch of {batching.batch_size}")
    pending = {0: first_epoch}  # epoch 0 is already drawn: hand it over instead of drawing it twice
    epochs = itertools.count()

    def one_epoch():
        epoch = next(epochs)
        items = pending.pop(epoch, None)
        items = np.asarray(order(labels, epoch), dtype=np.int64) if items is None else items
        if len(items) != num_items:
            raise DataError(f"{name}: epoch {epoch} has {len(items)} items, epoch 0 had {num_items}; an EpochOrder must keep the count")
        keys = epoch * EPOCH_KEY_STRIDE + np.arange(num_items, dtype=np.int64)
        yield from zip(batching.split(items), batching.split(keys))

    # whole epochs as [batches, b] blocks, split into batch rows in C++: no Python call per batch
    spec = tf.TensorSpec([None, None], tf.int64)
    return tf.data.Dataset.from_generator(one_epoch, output_signature=(spec, spec)).unbatch(), num_batches


def _decode_all(source: ImageSource, image_size: int, skipped: list) -> tuple[np.ndarray, np.ndarray]:
    """Every readable image as one uint8 array, and their labels; unreadable items are logged and left out."""
    images, failures = decode_many(
        len(source), source.read_bytes, image_size, progress_label=f"Decoding {source.name} into memory"
    )
    failed = np.zeros(len(source), dtype=bool)
    for item, reason in failures:
        failed[item] = True
        skipped.append((source.describe(item), reason))
    warn_skipped(source.name, skipped)
    if len(images) == 0:
        raise DataError(f"{source.name}: none of the {len(source)} images could be decoded")
    logger.info("%s: %d images decoded and cached in memory (%.1f MB)", source.name, len(images), images.nbytes / 1e6)
    return images, np.asarray(source.labels, dtype=np.int32)[~failed]


def _gatherer(images: np.ndarray, labels: np.ndarray, image_size: int):
    """The map from a batch of (item indices, keys) to (uint8 images, labels, keys), from memory."""

    def gather(indices: np.ndarray):
        return images[indices], labels[indices]

    def gather_batch(indices, keys):
        batch_images, batch_labels = tf.numpy_function(gather, [indices], (tf.uint8, tf.int32), stateful=False)
        batch_images.set_shape([None, image_size, image_size, 3])
        batch_labels.set_shape([None])
        return batch_images, batch_labels, keys

    return gather_batch


class _SubstitutingLoader:
    """Decode item i; an unreadable item is replaced by the next readable image of its identity.

    Candidates are the identity's other items in item order after i (wrapping round), then every other
    item after i. Readability is a property of the file, so every shard and every epoch picks the same
    replacement; it is remembered, and each bad file is reported once.
    """

    def __init__(self, source: ImageSource, labels: np.ndarray, image_size: int, skipped: list):
        self.source, self.labels, self.image_size, self.skipped = source, labels, image_size, skipped
        self.bad: set[int] = set()
        self.replacement: dict[int, int] = {}
        self.lock = threading.Lock()
        self._by_label: np.ndarray | None = None
        self._sorted_labels: np.ndarray | None = None

    def load(self, item) -> tuple[np.ndarray, np.int32]:
        item = int(item)
        chosen = self.replacement.get(item, item)
        image = self._try(chosen)
        if image is not None:
            return image, self.labels[chosen]
        attempts = 1
        for candidate in self._candidates(item):
            if candidate in self.bad:
                continue
            image = self._try(candidate)
            if image is not None:
                with self.lock:
                    self.replacement[item] = candidate
                return image, self.labels[candidate]
            attempts += 1
            if attempts >= MAX_REPLACEMENT_ATTEMPTS:
                raise DataError(f"{self.source.name}: {attempts} records in a row could not be read (first: "
                                f"{self.skipped[0][0]}: {self.skipped[0][1]}); the file or its index is corrupt")
        raise DataError(f"{self.source.name}: none of the {len(self.labels)} images could be decoded")

    def _try(self, item: int) -> np.ndarray | None:
        try:
            return decode_image_bytes(self.source.read_bytes(item), self.image_size)
        except (ImageDecodeError, DataError, OSError) as error:  # DataError: a corrupt RecordIO record
            with self.lock:
                if item not in self.bad:  # each bad file is reported once, not once per epoch or shard
                    self.bad.add(item)
                    self.skipped.append((self.source.describe(item), str(error)))
                    if len(self.skipped) <= SKIPPED_PATHS_SHOWN:
                        logger.warning("%s: skipped %s (%s)%s", self.source.name, self.source.describe(item), error,
                                       "; further skips are counted in the dataset's skipped_files, not logged"
                                       if len(self.skipped) == SKIPPED_PATHS_SHOWN else "")
            return None

    def _candidates(self, item: int) -> Iterator[int]:
        """The same identity's other items after `item` (wrapping round), then the other identities' items."""
        label, count = self.labels[item], len(self.labels)
        same = self._members(label)
        split = int(np.searchsorted(same, item, side="right"))
        yield from (int(candidate) for candidate in itertools.chain(same[split:], same[: split - 1]))
        for offset in range(1, count):
            candidate = (item + offset) % count
            if self.labels[candidate] != label:
                yield candidate

    def _members(self, label) -> np.ndarray:
        """The items of one identity, in item order."""
        with self.lock:
            if self._by_label is None:
                by_label = np.argsort(self.labels, kind="stable")
                self._by_label, self._sorted_labels = by_label, self.labels[by_label]
        first = np.searchsorted(self._sorted_labels, label, side="left")
        last = np.searchsorted(self._sorted_labels, label, side="right")
        return self._by_label[first:last]


@contextlib.contextmanager
def pipeline_errors_in_one_line() -> Iterator[None]:
    """Re-raise a `DataError` raised while tf.data streams (a corrupt dataset found mid-epoch) as itself.

    tf.data wraps an exception of a Python reader into an `OpError` whose message holds the exception's
    name, text and a Python traceback; commands would print all of it. Training runs inside this.

    Example:
        >>> with pipeline_errors_in_one_line():
        ...     raise tf.errors.InvalidArgumentError(None, None, "{{node}} DataError: a.rec: bad magic\\nTraceback ...")
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: a.rec: bad magic
    """
    try:
        yield
    except tf.errors.OpError as error:
        found = re.search(r"\b(?:DataError|ImageDecodeError): ([^\n]+)", error.message or "")
        if found is None:
            raise
        raise DataError(found.group(1).strip()) from None


def _decoded_on_the_fly(stream, source: ImageSource, labels: np.ndarray, image_size: int, shard_batch_size: int, skipped: list):
    loader = _SubstitutingLoader(source, labels, image_size, skipped)

    def load_item(item, key):
        image, label = tf.numpy_function(loader.load, [item], (tf.uint8, tf.int32), stateful=False)
        image.set_shape([image_size, image_size, 3])
        label.set_shape([])
        return image, label, key

    # one image per item (bad ones replaced), so re-batching restores exactly this shard's batches
    items = stream.unbatch().map(load_item, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return items.batch(shard_batch_size)


def _finish(dataset, augment, image_size: int, seed: int, normalize: bool):
    """Batch-level stages: augmentation (on float pixels in [0, 255]), normalization."""
    augmentation = resolve_augmentation(augment, image_size=image_size, seed=seed)
    keyed = isinstance(augmentation, Augmentation)

    def to_model_input(images, labels, keys):
        if keyed:
            pixels = augmentation(images, keys)  # takes the uint8 images: it casts after pixel moves
        else:
            pixels = tf.cast(images, tf.float32)
            pixels = pixels if augmentation is None else augmentation(pixels)
        return (normalize_images(pixels) if normalize else tf.cast(pixels, tf.float32)), labels

    # Keyed draws are stateless: parallel calls give the same epochs. A user callable may hold a random
    # state, which only a sequential map keeps repeatable.
    parallel = tf.data.AUTOTUNE if (augmentation is None or keyed) else None
    return dataset.map(to_model_input, num_parallel_calls=parallel, deterministic=True)
