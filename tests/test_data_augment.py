"""Augmentation layers: each level's distribution and each op against an independent implementation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ghostface_keras.data import AugmentConfig, build_augmentation
from ghostface_keras.data.augment import (
    FaceRandAugment,
    LowerFaceMask,
    RandomContrastFactor,
    RandomCropResize,
    RandomSaturationFactor,
    _autocontrast,
    _blend,
    _equalize,
    _grayscale,
    _smooth,
)
from ghostface_keras.errors import DataError


def _random_batch(count=8, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (count, 112, 112, 3)).astype(np.float32)


def test_level_0_only_flips():
    images = _random_batch()
    out = build_augmentation(0, seed=1)(tf.constant(images)).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_level_1_adds_one_delta_per_image_within_official_range():
    symmetric = np.full((16, 112, 112, 3), 128.0, np.float32)  # mid-grey: flips are invisible, nothing clips
    out = build_augmentation(1, seed=2)(tf.constant(symmetric)).numpy()
    deltas = (out - symmetric).reshape(16, -1)
    assert np.allclose(deltas, deltas[:, :1], atol=1e-4)  # one delta for the whole image
    assert np.all(np.abs(deltas[:, 0]) <= 12.75) and np.std(deltas[:, 0]) > 2  # drawn, per image, in +-12.75


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_contrast_and_saturation_match_tf_image(factor):
    images = _random_batch(2, low=30, high=220)
    contrast = RandomContrastFactor(factor, factor)(tf.constant(images)).numpy()
    np.testing.assert_allclose(contrast, tf.image.adjust_contrast(images, factor).numpy(), atol=1e-3)
    saturation = RandomSaturationFactor(factor, factor)(tf.constant(images)).numpy()
    expected = tf.image.adjust_saturation(images / 255.0, factor).numpy() * 255.0
    np.testing.assert_allclose(saturation, expected, atol=1e-2)


def test_random_crop_is_a_real_window():
    images = _random_batch(3)
    out = RandomCropResize(100, 100, seed=3)(tf.constant(images)).numpy()
    for crop, image in zip(out, images):
        found = [(top, left) for top in range(13) for left in range(13) if np.allclose(crop, image[top : top + 100, left : left + 100], atol=0.01)]
        assert len(found) == 1


def test_level_3_keeps_shape_and_range():
    out = build_augmentation("crop", seed=4)(tf.constant(_random_batch())).numpy()
    assert out.shape == (8, 112, 112, 3) and out.min() >= 0 and out.max() <= 255


def test_lower_face_mask_greys_rows_from_055_to_07_height_down():
    images = _random_batch(16, low=0, high=100)  # never 128, so grey pixels are the mask's
    out = LowerFaceMask(1.0, seed=5)(tf.constant(images)).numpy()
    for masked, image in zip(out, images):
        grey_rows = np.flatnonzero(np.all(masked == 128, axis=(1, 2)))
        start = grey_rows[0]
        assert 61 <= start < 78 and np.array_equal(grey_rows, np.arange(start, 112))
        np.testing.assert_array_equal(masked[:start], image[:start])


def test_equalize_and_autocontrast_match_pillow():
    images = _random_batch(2, low=20, high=180).round()
    equalized = _equalize(tf.constant(images)).numpy()
    contrasted = _autocontrast(tf.constant(images)).numpy()
    for index, image in enumerate(images.astype(np.uint8)):
        np.testing.assert_array_equal(equalized[index], np.asarray(ImageOps.equalize(Image.fromarray(image))))
        pil = np.asarray(ImageOps.autocontrast(Image.fromarray(image)), np.float32)
        assert np.abs(contrasted[index] - pil).max() <= 1.0  # Pillow rounds through an 8-bit lookup table


@pytest.mark.parametrize("op", ["Sharpness", "Color", "Brightness"])
def test_enhance_blends_match_pillow(op):
    image = _random_batch(1, low=30, high=220).round()
    batch, factor = tf.constant(image), tf.constant(1.45)
    degenerate = {"Sharpness": _smooth(batch), "Color": _grayscale(batch), "Brightness": tf.zeros_like(batch)}[op]
    ours = tf.round(_blend(degenerate, batch, factor)).numpy()[0]
    pil = np.asarray(getattr(ImageEnhance, op)(Image.fromarray(image[0].astype(np.uint8))).enhance(1.45), np.float32)
    assert np.abs(ours - pil).max() <= 2.0 and np.abs(ours - pil).mean() < 0.5


def test_official_randaugment_at_magnitude_5_only_changes_by_autocontrast_equalize_or_cutout():
    """The documented official quirk: enhance factor 1.8*5/10+0.1 = 1 is the identity."""
    images = _random_batch(4, low=0, high=256).round()
    layer = FaceRandAugment(5, num_ops=1, official=True, seed=6)
    out = layer(tf.constant(images)).numpy()
    for changed, image in zip(out, images):
        options = [image, _autocontrast(image[None]).numpy()[0], _equalize(image[None]).numpy()[0]]
        cutout = np.all(changed == 128, axis=-1).sum() > 0 and np.array_equal(changed[changed != 128], image[changed != 128])
        assert cutout or any(np.array_equal(changed, option) for option in options)


def test_randaugment_and_options_build_from_config():
    layer = AugmentConfig("randaugment", magnitude=9, erase_probability=0.5, mask_probability=0.5, seed=0).build()
    out = layer(tf.constant(_random_batch())).numpy()
    assert out.shape == (8, 112, 112, 3) and 0 <= out.min() and out.max() <= 255


def test_unknown_level_is_a_data_error():
    with pytest.raises(DataError, match="unknown augmentation level"):
        build_augmentation("sepia")
