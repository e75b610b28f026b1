"""Identity-folder datasets: `ROOT/<identity>/<image>`, one folder per person.

Labels are the positions of the identity folders in natural (numeric-aware) order, so folders
"2", "10", "id_9", "id_10" get labels 0, 1, 2, 3 (a plain sort would put "10" before "2"). Identity
folders without a single image file are ignored; files that are not images are skipped and counted.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf

from ghostface_keras.data.pipeline import ImageSource, build_dataset
from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import is_image_file, write_atomically

logger = logging.getLogger(__name__)



def natural_sort_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: "img2" < "img10", "9" < "10".

    Example:
        >>> sorted(["10", "9", "a2", "a10"], key=natural_sort_key)
        ['9', '10', 'a2', 'a10']
    """
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part.lower()) for part in re.split(r"(\d+)", name) if part)


@dataclass
class FolderIndex:
    """The images of an identity-folder dataset, found by `scan_image_folder` (nothing decoded yet).

    `paths[i]` has label `labels[i]`, whose identity folder is `class_names[labels[i]]`; `skipped`
    lists `(path, reason)` of files that are not images.
    """

    root: Path
    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_images(self) -> int:
        return len(self.paths)

    def save_class_names(self, csv_path: str | os.PathLike) -> Path:
        """Write the label <-> identity-folder mapping as CSV (`label,identity,images`), atomically.

        Example:
            >>> import tempfile
            >>> from ghostface_keras.data import synthetic_faces
            >>> faces = synthetic_faces(tempfile.mkdtemp(), num_identities=2, images_per_identity=3)
            >>> path = scan_image_folder(faces).save_class_names(Path(tempfile.mkdtemp()) / "run" / "classes.csv")
            >>> path.read_text().splitlines()
            ['label,identity,images', '0,000000,3', '1,000001,3']
        """
        return save_class_names(csv_path, self.class_names, np.bincount(self.labels, minlength=self.num_classes))

    def to_source(self) -> ImageSource:
        """The `ImageSource` view of this index that `build_dataset` consumes."""

        def read_bytes(item: int) -> bytes:
            with open(self.paths[item], "rb") as handle:
                return handle.read()

        return ImageSource(
            name=str(self.root),
            labels=self.labels,
            class_names=self.class_names,
            read_bytes=read_bytes,
            describe=lambda item: self.paths[item],
            skipped=list(self.skipped),
        )


def save_class_names(csv_path, class_names, counts=None) -> Path:
    """Write `label,identity[,images]` rows to `csv_path` atomically (temp file + rename)."""
    def write(temporary: Path) -> None:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["label", "identity", "images"])
            for label, name in enumerate(class_names):
                writer.writerow([label, name, "" if counts is None else int(counts[label])])

    return write_atomically(csv_path, write)


def scan_image_folder(path: str | os.PathLike) -> FolderIndex:
    """List the images of `ROOT/<identity>/<image>` and label them by natural identity order.

    Raises `DataError` if `path` is not a folder or holds no image in any identity folder.

    Example:
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> index = scan_image_folder(synthetic_faces(tempfile.mkdtemp(), num_identities=3, images_per_identity=2))
        >>> index.num_classes, index.num_images          # CelebA's train folder: (219, 4317)
        (3, 6)
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected ROOT/<identity>/<image> identity folders)")
    paths: list[str] = []
    labels: list[int] = []
    class_names: list[str] = []
    skipped: list[tuple[str, str]] = []
    with os.scandir(root) as entries:
        identity_dirs = sorted((entry.name for entry in entries if entry.is_dir() and not entry.name.startswith(".")), key=natural_sort_key)
    for identity in identity_dirs:
        images = []
        with os.scandir(root / identity) as entries:
            for entry in entries:
                if not entry.is_file():
                    continue
                if is_image_file(entry.name):
                    images.append(entry.path)
                else:
                    skipped.append((entry.path, "not an image file"))
        if not images:
            continue  # an empty identity gets no label: it would be a class no batch can ever hold
        label = len(class_names)
        class_names.append(identity)
        images.sort(key=lambda image_path: natural_sort_key(os.path.basename(image_path)))
        paths.extend(images)
        labels.extend([label] * len(images))
    if not paths:
        raise DataError(f"{root}: no images found in any identity folder (expected ROOT/<identity>/<image>.jpg)")
    return FolderIndex(root, paths, np.asarray(labels, dtype=np.int32), class_names, skipped)


def image_folder_dataset(
    path: str | os.PathLike,
    batch_size: int,
    image_size: int = 112,
    augment=None,
    shuffle: bool = True,
    seed: int | None = None,
    cache: bool | str = "auto",
    drop_remainder: bool = False,
    normalize: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
) -> tf.data.Dataset:
    """Training batches `(float32 images (x - 127.5) / 128, int32 labels)` from identity folders.

    Args:
        path: `ROOT` of `ROOT/<identity>/<image>`.
        batch_size: images per global batch (split over `num_shards`).
        image_size: side of the square RGB output (other sizes are resized bilinearly).
        augment: None, an augmentation level (0-3, "flip", "brightness", "color", "crop",
            "randaugment"), an `AugmentConfig`, an `Augmentation`, or a TF-traceable callable
            `fn(pixels)` on float [0, 255] batches.
        shuffle: reshuffle the images every epoch.
        seed: makes shuffling and augmentation repeatable (None: a random one).
        cache: "auto" decodes everything once into memory when it fits; True / False force it.
        drop_remainder: drop the last incomplete batch (always, when sharded).
        normalize: False returns float32 pixels in [0, 255] instead.
        num_shards, shard_index: yield only this process's `batch_size // num_shards` slice of every
            global batch (multi-process data parallel; needs a seed; see `build_dataset`).

    The dataset has attributes `class_names` (identity folder of each label), `num_classes`,
    `num_images`, `skipped_files` (`(path, reason)` of every skipped file), `global_batch_size`,
    `num_shards` and `shard_index`; `cardinality()` is the number of batches per epoch.

    Example:
        >>> import tempfile
        >>> from ghostface_keras.data import synthetic_faces
        >>> faces = synthetic_faces(tempfile.mkdtemp(), num_identities=8, images_per_identity=4)
        >>> dataset = image_folder_dataset(faces, batch_size=8, augment="brightness", seed=0)
        >>> dataset.num_classes, dataset.class_names[:2]
        (8, ['000000', '000001'])
        >>> images, labels = next(iter(dataset))
        >>> images.shape, labels.dtype
        (TensorShape([8, 112, 112, 3]), tf.int32)
    """
    index = scan_image_folder(path)
    logger.info("%s: %d images of %d identities", index.root, index.num_images, index.num_classes)
    return build_dataset(
        index.to_source(), batch_size, image_size, augment, shuffle, seed, cache, drop_remainder, normalize,
        num_shards=num_shards, shard_index=shard_index,
    )
