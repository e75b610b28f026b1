"""The tf.data pipeline shared by every training source (identity folders, RecordIO).

A source says how to read item i's encoded bytes and what its label is; `build_dataset` turns that into
batches of `(float32 images normalized by preprocessing.normalize_images, int32 labels)`:

    items -> [shuffle] -> decode (parallel) -> skip bad images -> batch -> augment -> normalize -> prefetch

When the decoded dataset fits in memory (`cache="auto"`), every image is decoded once, up front, into
one uint8 array; later epochs only shuffle indices and gather, so small datasets are never re-decoded and
the count of unreadable files is exact before training starts. Larger datasets are decoded on the fly
and bad files are skipped (and logged once each) as they are met.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from ghostface_keras.data.decode import ImageDecodeError, decode_image_bytes, decode_many
from ghostface_keras.errors import DataError
from ghostface_keras.preprocessing import normalize_images

logger = logging.getLogger(__name__)

# Never cache more than this much decoded pixel data automatically, whatever the free memory says.
AUTO_CACHE_MAX_BYTES = 2 * 1024**3
SKIPPED_PATHS_SHOWN = 5

# An epoch's item order: (labels of the usable items, epoch number) -> item indices, in batch order.
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
    order: Optional[EpochOrder] = None,
) -> tf.data.Dataset:
    """Batches of `(images, labels)` from an `ImageSource` (see the module docstring for the stages).

    The returned dataset carries `class_names`, `num_classes`, `num_images` and `skipped_files`
    attributes (the way `keras.utils.image_dataset_from_directory` carries `class_names`).
    `order`, when given, replaces shuffling: it is called once per epoch and returns the item sequence
    (the samplers in `sampling.py` use it for class-balanced and partial-class batches).

    Example:
        >>> files = ["a.jpg", "b.jpg"]                                                   # doctest: +SKIP
        >>> source = ImageSource("mine", np.array([0, 1]), ["alice", "bob"],
        ...                      lambda i: open(files[i], "rb").read(), files.__getitem__)  # doctest: +SKIP
        >>> images, labels = next(iter(build_dataset(source, batch_size=2)))               # doctest: +SKIP
    """
    if batch_size < 1:
        raise DataError(f"{source.name}: batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise DataError(f"{source.name}: no images found")
    skipped = list(source.skipped)
    if should_cache(cache, len(source), image_size):
        dataset, num_images = _decoded_in_memory(source, batch_size, image_size, shuffle, seed, drop_remainder, skipped, order)
    else:
        warn_skipped(source.name, skipped)
        dataset = _decoded_on_the_fly(source, batch_size, image_size, shuffle, seed, drop_remainder, skipped, order)
        num_images = len(source)
    dataset = _finish(dataset, augment, image_size, seed, normalize)
    dataset.class_names = list(source.class_names)
    dataset.num_classes = len(source.class_names)
    dataset.num_images = num_images
    dataset.skipped_files = skipped
    return dataset


def _item_order(labels: np.ndarray, shuffle: bool, seed, order: Optional[EpochOrder], buffer_limit: int) -> tf.data.Dataset:
    """The dataset of item indices for each epoch: plain, shuffled, or from an `EpochOrder`."""
    if order is not None:
        epochs = itertools.count()

        def one_epoch():
            yield np.asarray(order(labels, next(epochs)), dtype=np.int64)

        return tf.data.Dataset.from_generator(one_epoch, output_signature=tf.TensorSpec([None], tf.int64)).unbatch()
    items = tf.data.Dataset.range(len(labels))
    if shuffle:
        items = items.shuffle(min(len(labels), buffer_limit), seed=seed, reshuffle_each_iteration=True)
    return items


def _decoded_in_memory(source, batch_size, image_size, shuffle, seed, drop_remainder, skipped, order):
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
    labels = np.asarray(source.labels, dtype=np.int32)[~failed]
    logger.info("%s: %d images decoded and cached in memory (%.1f MB)", source.name, len(images), images.nbytes / 1e6)

    def gather(indices: np.ndarray):
        return images[indices], labels[indices]

    def gather_batch(indices):
        batch_images, batch_labels = tf.numpy_function(gather, [indices], (tf.uint8, tf.int32), stateful=False)
        batch_images.set_shape([None, image_size, image_size, 3])
        batch_labels.set_shape([None])
        return batch_images, batch_labels

    dataset = _item_order(labels, shuffle, seed, order, len(labels)).batch(batch_size, drop_remainder=drop_remainder)
    return dataset.map(gather_batch, num_parallel_calls=tf.data.AUTOTUNE), len(images)


def _decoded_on_the_fly(source, batch_size, image_size, shuffle, seed, drop_remainder, skipped, order):
    labels = np.asarray(source.labels, dtype=np.int32)
    reported: set[int] = set()
    lock = threading.Lock()
    blank = np.zeros((image_size, image_size, 3), dtype=np.uint8)

    def load(item: np.ndarray):
        item = int(item)
        try:
            return decode_image_bytes(source.read_bytes(item), image_size), labels[item], True
        except (ImageDecodeError, OSError) as error:
            with lock:
                if item not in reported:  # each bad file is reported once, not once per epoch
                    reported.add(item)
                    skipped.append((source.describe(item), str(error)))
                    logger.warning("%s: skipped %s (%s)", source.name, source.describe(item), error)
            return blank, labels[item], False

    def load_item(item):
        image, label, ok = tf.numpy_function(load, [item], (tf.uint8, tf.int32, tf.bool), stateful=False)
        image.set_shape([image_size, image_size, 3])
        label.set_shape([])
        return image, label, ok

    dataset = _item_order(labels, shuffle, seed, order, 1_000_000).map(load_item, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.filter(_is_decoded).map(_drop_flag)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def _is_decoded(image, label, ok):
    return ok


def _drop_flag(image, label, ok):
    return image, label


def _finish(dataset, augment, image_size, seed, normalize):
    """Batch-level stages: augmentation (Keras layers on float pixels in [0, 255]), normalization, prefetch."""
    from ghostface_keras.data.augment import resolve_augmentation

    layer = resolve_augmentation(augment, image_size=image_size, seed=seed)

    def to_model_input(images, labels):
        pixels = tf.cast(images, tf.float32)
        if layer is not None:
            pixels = layer(pixels, training=True)
        return (normalize_images(pixels) if normalize else pixels), labels

    # A seeded augmentation draws from one random state: run it in order so the same seed gives the same epochs.
    parallel = None if (layer is not None and seed is not None) else tf.data.AUTOTUNE
    return dataset.map(to_model_input, num_parallel_calls=parallel).prefetch(tf.data.AUTOTUNE)
