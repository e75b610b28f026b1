"""Synthetic identities and the class-balanced / partial-class samplers."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ghostface_keras.data import (
    class_balanced_dataset,
    image_folder_dataset,
    partial_class_dataset,
    render_synthetic_faces,
    synthetic_faces,
)
from ghostface_keras.data.sampling import class_balanced_order, most_distinct_batches


def test_synthetic_identities_are_repeatable_and_disjoint():
    first, labels = render_synthetic_faces(3, 2, seed=0)
    again, _ = render_synthetic_faces(3, 2, seed=0)
    other, _ = render_synthetic_faces(3, 2, seed=0, first_identity=3)
    assert first.shape == (6, 112, 112, 3) and first.dtype == np.uint8 and labels.tolist() == [0, 0, 1, 1, 2, 2]
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first[0], first[1])  # nuisance: two shots of one identity differ


def test_synthetic_identities_are_recognisable_but_not_trivial():
    """1-NN on 16x16 pixels: clearly above chance (identity signal) yet far from perfect (real nuisance)."""
    images, labels = render_synthetic_faces(20, 10, seed=0)
    small = np.stack([np.asarray(Image.fromarray(image).resize((16, 16), Image.BILINEAR), np.float32).ravel() for image in images])
    small -= small.mean(axis=1, keepdims=True)
    small /= np.linalg.norm(small, axis=1, keepdims=True)
    gallery = np.arange(len(labels)) % 10 < 5
    nearest = (small[~gallery] @ small[gallery].T).argmax(axis=1)
    accuracy = (labels[gallery][nearest] == labels[~gallery]).mean()
    assert 0.15 < accuracy < 0.9  # chance is 0.05


def test_synthetic_folder_reads_back(tmp_path):
    root = synthetic_faces(tmp_path / "faces", num_identities=4, images_per_identity=3, seed=1, first_identity=10)
    dataset = image_folder_dataset(root, batch_size=12, shuffle=False, normalize=False)
    images, labels = next(iter(dataset))
    assert dataset.class_names == ["000010", "000011", "000012", "000013"]
    assert labels.numpy().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    drawn, _ = render_synthetic_faces(4, 3, seed=1, first_identity=10)
    other, _ = render_synthetic_faces(4, 3, seed=2, first_identity=10)
    through_jpeg = np.abs(images.numpy() - drawn).mean()  # the same pictures, through JPEG quality 95
    assert through_jpeg < 6 and np.abs(images.numpy() - other).mean() > 4 * through_jpeg


def _labelled_folder(root, counts):
    """Identity folders whose pixel value encodes (label, shot), to check images and labels stay paired."""
    for label, count in enumerate(counts):
        (root / f"{label:02d}").mkdir(parents=True)
        for shot in range(count):
            Image.fromarray(np.full((112, 112, 3), label * 10 + shot, np.uint8)).save(root / f"{label:02d}" / f"{shot}.png")
    return root


def _batches(dataset):
    return [(images.numpy()[:, 0, 0, 0].round().astype(int), labels.numpy()) for images, labels in dataset]


def test_class_balanced_batches_hold_k_images_of_each_identity(tmp_path):
    root = _labelled_folder(tmp_path / "d", [5, 4, 8, 1, 4, 6])
    dataset = class_balanced_dataset(root, batch_size=9, images_per_identity=2, seed=0)  # 9 -> 4 identities x 2
    batches = _batches(image_pixels_dataset(dataset))
    assert batches and all(len(labels) == 8 for _, labels in batches)
    seen = []
    for pixels, labels in batches:
        assert np.array_equal(pixels // 10, labels)  # image and label still belong together
        assert np.bincount(labels)[np.unique(labels)].tolist() == [2] * 4  # 4 distinct identities, 2 each
        seen += labels.tolist()
    assert 3 not in seen  # the identity with one image cannot form a pair
    assert len(batches) >= 2  # 13 chunks over 5 eligible identities: at least 2 batches of 4 distinct ones


def image_pixels_dataset(dataset):
    """Undo the normalization so the encoded pixel values can be read back."""
    return dataset.map(lambda images, labels: (images * 128.0 + 127.5, labels))


def test_partial_class_batches_come_from_one_range_in_turn(tmp_path):
    root = _labelled_folder(tmp_path / "d", [4, 4, 4, 4, 4, 4])
    dataset = partial_class_dataset(root, batch_size=4, num_splits=3, seed=1)
    assert dataset.class_range == 2
    batches = _batches(image_pixels_dataset(dataset))
    splits = [set((labels // 2).tolist()) for _, labels in batches]
    assert all(len(split) == 1 for split in splits)
    assert [split.pop() for split in splits] == [0, 1, 2, 0, 1, 2]
    assert sorted(np.concatenate([pixels for pixels, _ in batches]).tolist()) == sorted(label * 10 + s for label in range(6) for s in range(4))


def test_class_balanced_epochs_all_have_the_most_batches_possible(tmp_path):
    """The batch count is fixed (the dataset's cardinality): the most P-distinct batches the chunks allow."""
    labels = np.repeat(np.arange(7), [9, 2, 2, 2, 3, 2, 6])  # chunks of 2: [4, 1, 1, 1, 1, 1, 3]
    order = class_balanced_order(2, 3, seed=0)
    assert most_distinct_batches(np.array([4, 1, 1, 1, 1, 1, 3]), 3) == 4
    for epoch in range(20):
        batches = order(labels, epoch).reshape(-1, 3, 2)
        assert len(batches) == 4
        assert all(len(set(labels[batch[:, 0]])) == 3 for batch in batches)
        assert all((labels[batch[:, 0]] == labels[batch[:, 1]]).all() for batch in batches)
    root = _labelled_folder(tmp_path / "d", [5, 4, 8, 1, 4, 6])
    dataset = class_balanced_dataset(root, batch_size=8, images_per_identity=2, seed=0)
    assert int(dataset.cardinality()) == 3 and [len(list(dataset)) for _ in range(3)] == [3, 3, 3]
