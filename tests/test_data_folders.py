"""Identity-folder pipeline: labels, decoding, skipped files, caching, determinism."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from ghostface_keras.data import image_folder_dataset, scan_image_folder
from ghostface_keras.core.errors import DataError


def _write(path, pixels, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)


def _rgb(value, size=112):
    return np.full((size, size, 3), value, dtype=np.uint8)


def _all(dataset):
    images, labels = [], []
    for batch_images, batch_labels in dataset:
        images.append(np.asarray(batch_images))
        labels.append(np.asarray(batch_labels))
    return np.concatenate(images), np.concatenate(labels)


def test_labels_follow_natural_order_and_empty_folders_are_ignored(tmp_path):
    for name in ["10", "9", "id2", "id10"]:
        _write(tmp_path / name / "a.png", _rgb(len(name) * 20))
    (tmp_path / "empty").mkdir()
    index = scan_image_folder(tmp_path)
    assert index.class_names == ["9", "10", "id2", "id10"]
    dataset = image_folder_dataset(tmp_path, batch_size=8, shuffle=False)
    assert dataset.class_names == ["9", "10", "id2", "id10"] and dataset.num_classes == 4
    images, labels = _all(dataset)
    assert labels.tolist() == [0, 1, 2, 3]
    # folder "10" holds pixels 40: the normalized value computed by hand
    assert np.allclose(images[1], (40 - 127.5) / 128)


def test_pixels_are_the_normalized_jpeg_decode(tmp_path):
    rng = np.random.default_rng(0)
    _write(tmp_path / "a" / "x.jpg", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    images, _ = _all(image_folder_dataset(tmp_path, batch_size=1, shuffle=False))
    expected = np.asarray(Image.open(tmp_path / "a" / "x.jpg").convert("RGB"), dtype=np.float32)
    np.testing.assert_allclose(images[0], (expected - 127.5) / 128, atol=1e-6)


def test_gray_rgba_and_other_sizes_become_rgb_112(tmp_path):
    _write(tmp_path / "a" / "gray.png", np.full((112, 92), 200, np.uint8))
    rgba = np.zeros((112, 112, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    _write(tmp_path / "b" / "rgba.png", rgba)
    _write(tmp_path / "c" / "small.png", _rgb(77, size=56))
    images, labels = _all(image_folder_dataset(tmp_path, batch_size=4, shuffle=False, normalize=False))
    assert images.shape == (3, 112, 112, 3)
    assert np.all(images[0] == 200)
    assert np.all(images[1] == np.array([10, 20, 30]))
    assert np.all(images[2] == 77)


@pytest.mark.parametrize("cache", [True, False])
def test_bad_files_are_skipped_and_counted(tmp_path, caplog, cache):
    rng = np.random.default_rng(1)
    for identity in ["1", "2"]:
        for shot in range(3):
            _write(tmp_path / identity / f"{shot}.jpg", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    good = (tmp_path / "1" / "0.jpg").read_bytes()
    (tmp_path / "1" / "truncated.jpg").write_bytes(good[: len(good) // 4])
    (tmp_path / "1" / "notes.jpg").write_text("this is not an image")
    (tmp_path / "2" / "Thumbs.db").write_bytes(b"\0" * 64)
    (tmp_path / "3").mkdir()
    with caplog.at_level(logging.WARNING):
        dataset = image_folder_dataset(tmp_path, batch_size=1, shuffle=False, cache=cache, normalize=False)
        images, labels = _all(dataset)
    assert dataset.num_classes == 2 and len(images) == int(dataset.cardinality())
    if cache:  # decoded up front: the bad files are left out
        assert len(images) == 6 and sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    else:  # met on the fly: each bad file is replaced by the next readable image of its identity
        assert len(images) == 8 and labels.tolist() == [0] * 5 + [1] * 3
        decoded = {name: np.asarray(Image.open(tmp_path / "1" / name).convert("RGB")) for name in ["0.jpg", "1.jpg", "2.jpg"]}
        # identity 1's files in natural order: 0, 1, 2, notes (-> 0.jpg, wrapping round), truncated (-> 0.jpg)
        for image, name in zip(images[:5], ["0.jpg", "1.jpg", "2.jpg", "0.jpg", "0.jpg"]):
            np.testing.assert_array_equal(image, decoded[name])
        again, _ = _all(dataset)  # a second epoch reports nothing new
        assert len(again) == 8 and len(dataset.skipped_files) == 3
    skipped = sorted(path.rsplit("/", 1)[-1] for path, _ in dataset.skipped_files)
    assert skipped == ["Thumbs.db", "notes.jpg", "truncated.jpg"]
    if cache:  # the in-memory path knows the total before training: one line with the count
        lines = [record.getMessage() for record in caplog.records if "skipped" in record.getMessage()]
        assert len(lines) == 1 and "skipped 3 " in lines[0]


def test_folder_without_images_is_a_data_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=str(tmp_path)):
        image_folder_dataset(tmp_path, batch_size=2)
    with pytest.raises(DataError, match="not a folder"):
        image_folder_dataset(tmp_path / "missing", batch_size=2)


def test_cached_and_streamed_pipelines_agree(tmp_path):
    rng = np.random.default_rng(2)
    for identity in range(3):
        for shot in range(4):
            _write(tmp_path / str(identity) / f"{shot}.png", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    cached = _all(image_folder_dataset(tmp_path, batch_size=5, shuffle=False, cache=True))
    streamed = _all(image_folder_dataset(tmp_path, batch_size=5, shuffle=False, cache=False))
    np.testing.assert_array_equal(cached[0], streamed[0])
    np.testing.assert_array_equal(cached[1], streamed[1])


def test_seed_makes_shuffle_and_augmentation_repeatable(tmp_path):
    rng = np.random.default_rng(3)
    for identity in range(4):
        for shot in range(4):
            _write(tmp_path / str(identity) / f"{shot}.png", rng.integers(0, 256, (112, 112, 3), dtype=np.uint8))
    first = image_folder_dataset(tmp_path, batch_size=4, seed=7, augment=2)
    second = image_folder_dataset(tmp_path, batch_size=4, seed=7, augment=2)
    epoch_a, epoch_b = _all(first), _all(second)
    np.testing.assert_array_equal(epoch_a[1], epoch_b[1])
    np.testing.assert_allclose(epoch_a[0], epoch_b[0], atol=1e-6)
    next_epoch = _all(first)  # a new epoch is a new permutation of the same images
    assert sorted(next_epoch[1].tolist()) == sorted(epoch_a[1].tolist())
    assert next_epoch[1].tolist() != epoch_a[1].tolist() or not np.allclose(next_epoch[0], epoch_a[0])


def test_class_names_are_saved_as_csv(tmp_path):
    for name in ["b", "a"]:
        _write(tmp_path / "data" / name / "x.png", _rgb(5))
    _write(tmp_path / "data" / "a" / "y.png", _rgb(6))
    out = scan_image_folder(tmp_path / "data").save_class_names(tmp_path / "run" / "classes.csv")
    assert out.read_text().splitlines() == ["label,identity,images", "0,a,2", "1,b,1"]


def test_celeba_train_folder_loads(data_dir):
    train = data_dir / "celeba_aligned112" / "train"
    index = scan_image_folder(train)
    assert index.num_classes == 219 and index.num_images == 4317 and not index.skipped
    assert index.class_names == sorted(index.class_names, key=int)
