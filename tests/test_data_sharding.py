"""Multi-process sharding of the input pipeline, keyed augmentation determinism, and other Keras backends.

The contract: with `num_shards=S`, shard s yields items [s*b, (s+1)*b) of every global batch (b = B / S),
so concatenating the shards' k-th batches in shard order is exactly the unsharded k-th batch: images
after augmentation, and labels. Every shard yields the same number of batches, the dataset's cardinality.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from ghostface_keras.data import (
    AugmentConfig,
    ImageSource,
    build_dataset,
    class_balanced_dataset,
    image_folder_dataset,
    partial_class_dataset,
)
from ghostface_keras.data.pipeline import shuffled_order
from ghostface_keras.core.errors import DataError

PROJECT = Path(__file__).resolve().parents[1]
RANDAUGMENT = AugmentConfig("randaugment", magnitude=9, erase_probability=0.5, mask_probability=0.5)


def _folder(root: Path, counts, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for label, count in enumerate(counts):
        (root / f"{label:02d}").mkdir(parents=True)
        for shot in range(count):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / f"{label:02d}" / f"{shot}.png")
    return root


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """6 identities x 4 random images: 24 items, 3 global batches of 8."""
    return _folder(tmp_path_factory.mktemp("faces"), [4] * 6)


def _epochs(dataset, count=2):
    return [[(images.numpy(), labels.numpy()) for images, labels in dataset] for _ in range(count)]


def _assert_shards_make_the_global_batches(make, num_shards, epochs=2):
    """`make(num_shards, shard_index)` -> dataset; shards concatenated == unsharded, batch for batch."""
    unsharded = make(1, 0)
    expected = _epochs(unsharded, epochs)
    shards = [make(num_shards, index) for index in range(num_shards)]
    got = [_epochs(shard, epochs) for shard in shards]
    for shard in shards:
        assert int(shard.cardinality()) == int(unsharded.cardinality()) == len(expected[0])
        assert (shard.global_batch_size, shard.num_shards) == (unsharded.global_batch_size, num_shards)
    for epoch in range(epochs):
        assert all(len(shard[epoch]) == len(expected[epoch]) for shard in got)
        for batch, (images, labels) in enumerate(expected[epoch]):
            np.testing.assert_array_equal(np.concatenate([shard[epoch][batch][1] for shard in got]), labels)
            np.testing.assert_array_equal(np.concatenate([shard[epoch][batch][0] for shard in got]), images)
    return expected


@pytest.mark.parametrize(
    "num_shards, cache, augment",
    # one case in the default tier; the others (5-15 s each on 2 cores) in the large tier
    [pytest.param(2, True, 3, marks=pytest.mark.large), (4, False, 3),
     pytest.param(2, False, RANDAUGMENT, marks=pytest.mark.large),
     pytest.param(4, True, RANDAUGMENT, marks=pytest.mark.large)],
    ids=["2-memory-level3", "4-fly-level3", "2-fly-randaugment", "4-memory-randaugment"],
)
def test_shards_concatenate_to_the_unsharded_batches(faces, num_shards, cache, augment):
    def make(shards, index):
        return image_folder_dataset(
            faces, batch_size=8, augment=augment, seed=5, cache=cache, drop_remainder=True, num_shards=shards, shard_index=index
        )

    expected = _assert_shards_make_the_global_batches(make, num_shards)
    assert make(num_shards, 1).shard_index == 1
    assert not np.array_equal(expected[0][0][0], expected[1][0][0])  # epochs differ


def test_class_balanced_and_partial_class_shards_match(tmp_path):
    root = _folder(tmp_path / "d", [5, 4, 8, 1, 4, 6])
    _assert_shards_make_the_global_batches(
        lambda shards, index: class_balanced_dataset(
            root, batch_size=8, images_per_identity=2, augment=3, seed=1, num_shards=shards, shard_index=index
        ),
        num_shards=2,
    )
    _assert_shards_make_the_global_batches(
        lambda shards, index: partial_class_dataset(
            root, batch_size=4, num_splits=2, augment="flip", seed=2, cache=False, num_shards=shards, shard_index=index
        ),
        num_shards=4,
        epochs=1,
    )


def test_corrupt_files_met_on_the_fly_keep_every_shard_at_the_same_batch_count(tmp_path):
    root = _folder(tmp_path / "d", [4, 4, 4])
    (root / "00" / "7.png").write_bytes(b"not an image")
    good = (root / "01" / "0.png").read_bytes()
    (root / "01" / "8.png").write_bytes(good[: len(good) // 3])  # truncated
    (root / "02" / "9.png").write_text("broken")  # 15 items, 3 unreadable: 3 global batches of 4 on every shard

    def make(shards, index):
        return image_folder_dataset(root, batch_size=4, augment=1, seed=0, cache=False, drop_remainder=True, num_shards=shards, shard_index=index)

    expected = _assert_shards_make_the_global_batches(make, num_shards=4)
    assert [len(epoch) for epoch in expected] == [3, 3]
    assert make(1, 0).skipped_files == []  # nothing is met before iterating
    dataset = make(2, 0)
    _epochs(dataset, 1)
    assert {Path(path).name for path, _ in dataset.skipped_files} <= {"7.png", "8.png", "9.png"}


def test_a_shard_decodes_only_its_own_items(faces):
    """On the fly, shard s reads the items of its slices and nothing else (no bad files to replace)."""
    files = sorted(faces.glob("*/*.png"))
    read: list[int] = []

    def read_bytes(item: int) -> bytes:
        read.append(item)
        return files[item].read_bytes()

    source = ImageSource("faces", np.repeat(np.arange(6), 4), [str(i) for i in range(6)], read_bytes, str)
    _epochs(build_dataset(source, batch_size=8, seed=3, cache=False, num_shards=4, shard_index=3), 1)
    epoch_order = shuffled_order(3)(source.labels, 0)  # the documented order of epoch 0 under seed 3
    assert sorted(read) == sorted(epoch_order[[6, 7, 14, 15, 22, 23]].tolist())


@pytest.mark.large  # two epochs of two full pipelines with parallel maps: ~15 s on 2 cores
def test_seeded_pipeline_repeats_exactly_with_parallel_maps(faces):
    def run(threads=None):
        dataset = image_folder_dataset(faces, batch_size=8, augment=RANDAUGMENT, seed=9, cache=False)
        if threads:
            options = tf.data.Options()
            options.threading.private_threadpool_size = threads
            dataset = dataset.with_options(options)
        return _epochs(dataset)

    first, second, single_threaded = run(), run(), run(threads=1)
    for other in (second, single_threaded):
        for epoch_a, epoch_b in zip(first, other):
            for (images_a, labels_a), (images_b, labels_b) in zip(epoch_a, epoch_b):
                np.testing.assert_array_equal(labels_a, labels_b)
                np.testing.assert_array_equal(images_a, images_b)


def test_cardinality_is_the_batches_per_epoch(faces):
    for drop_remainder, expected in [(False, 3), (True, 2)]:
        dataset = image_folder_dataset(faces, batch_size=10, seed=0, drop_remainder=drop_remainder)
        assert int(dataset.cardinality()) == expected == len(_epochs(dataset, 1)[0])
    sharded = image_folder_dataset(faces, batch_size=10, seed=0, num_shards=2)  # remainder dropped when sharded
    assert int(sharded.cardinality()) == 2 and [len(labels) for _, labels in sharded] == [5, 5]


def test_unseeded_datasets_draw_their_own_seed(faces):
    first = _epochs(image_folder_dataset(faces, batch_size=24, augment=1), 1)[0][0]
    second = _epochs(image_folder_dataset(faces, batch_size=24, augment=1), 1)[0][0]
    assert not np.array_equal(first[0], second[0])


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"num_shards": 0}, "num_shards must be an integer >= 1"),
        ({"num_shards": 2, "shard_index": 2}, r"shard_index must be an integer in 0\.\.1"),
        ({"num_shards": 2, "shard_index": -1}, r"shard_index must be an integer in 0\.\.1"),
        ({"num_shards": 3}, "batch_size 8 .* not divisible by num_shards 3"),
        ({"num_shards": 2, "seed": None}, "num_shards=2 needs a seed"),
        ({"batch_size": 25}, "holds no full batch of 25"),
    ],
)
def test_bad_sharding_arguments_are_one_line_data_errors(faces, arguments, message):
    kwargs = {"batch_size": 8, "seed": 0, "drop_remainder": True, **arguments}
    with pytest.raises(DataError, match=message) as error:
        image_folder_dataset(faces, **kwargs)
    assert "\n" not in str(error.value)


def test_class_balanced_sharding_needs_a_seed(faces):
    with pytest.raises(DataError, match="needs a seed"):
        class_balanced_dataset(faces, batch_size=8, images_per_identity=2, num_shards=2)


_JAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from ghostface_keras.data import AugmentConfig, image_folder_dataset
    augment = AugmentConfig("randaugment", magnitude=9, erase_probability=0.5, mask_probability=0.5)
    dataset = image_folder_dataset(sys.argv[1], batch_size=8, augment=augment, seed=5, num_shards=2, shard_index=1)
    batches = [(np.asarray(images), np.asarray(labels)) for images, labels in dataset]
    np.savez(sys.argv[2], images=np.stack([b[0] for b in batches]), labels=np.stack([b[1] for b in batches]))
    """
)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_pipeline_under_jax_backend_yields_the_tensorflow_arrays(faces, tmp_path):
    """The backend is fixed when keras is imported, hence the subprocess."""
    out = tmp_path / "jax.npz"
    environment = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", _JAX_SCRIPT, str(faces), str(out)], env=environment, cwd=PROJECT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    under_jax = np.load(out)
    dataset = image_folder_dataset(faces, batch_size=8, augment=RANDAUGMENT, seed=5, num_shards=2, shard_index=1)
    batches = [(images.numpy(), labels.numpy()) for images, labels in dataset]
    np.testing.assert_array_equal(under_jax["labels"], np.stack([labels for _, labels in batches]))
    np.testing.assert_array_equal(under_jax["images"], np.stack([images for images, _ in batches]))
