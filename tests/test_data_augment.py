"""Augmentation: each level's distribution, each op against an independent implementation, keyed draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ghostface_keras.data import AugmentConfig, Augmentation, build_augmentation
from ghostface_keras.data.augment import (
    Draws,
    FaceRandAugment,
    LowerFaceMask,
    RandomContrastFactor,
    RandomCutout,
    RandomCropResize,
    RandomSaturationFactor,
    _autocontrast,
    _blend,
    _equalize,
    _grayscale,
    _smooth,
    resolve_augmentation,
)
from ghostface_keras.errors import DataError


def _random_batch(count=8, seed=0, low=0, high=256):
    return np.random.default_rng(seed).integers(low, high, (count, 112, 112, 3)).astype(np.float32)


def _keys(count, first=0):
    return tf.range(first, first + count, dtype=tf.int64)


def _apply(op, images, seed=0):
    """One op on its own, keyed by position."""
    return Augmentation([op], seed=seed)(tf.constant(images), _keys(len(images))).numpy()


def test_level_0_only_flips():
    images = _random_batch(16)
    out = build_augmentation(0, seed=1)(images, _keys(16)).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_flip_probability_is_one_half():
    images = np.arange(2, dtype=np.float32).reshape(1, 1, 2, 1) * np.ones((1, 1, 1, 3), np.float32)
    out = build_augmentation("flip", seed=3)(np.repeat(images, 4000, axis=0), _keys(4000)).numpy()
    assert abs(np.mean(out[:, 0, 0, 0] == 1.0) - 0.5) < 0.03


def test_level_1_adds_one_delta_per_image_within_official_range():
    symmetric = np.full((256, 8, 8, 3), 128.0, np.float32)  # mid-grey: flips are invisible, nothing clips
    out = build_augmentation(1, seed=2)(symmetric, _keys(256)).numpy()
    deltas = (out - symmetric).reshape(256, -1)
    assert np.allclose(deltas, deltas[:, :1], atol=1e-4)  # one delta for the whole image
    assert np.all(np.abs(deltas[:, 0]) <= 12.75) and abs(np.std(deltas[:, 0]) - 12.75 / np.sqrt(3)) < 1.0  # U(-12.75, 12.75)


@pytest.mark.parametrize("level, spread", [(2, 0.2), (3, 0.3)])
def test_contrast_and_saturation_factors_are_uniform_in_official_range(level, spread):
    ops = build_augmentation(level, seed=4).ops
    contrast, saturation = ops[2], ops[3]
    assert (contrast.lower, contrast.upper) == pytest.approx((1 - spread, 1 + spread))
    assert (saturation.lower, saturation.upper) == pytest.approx((1 - spread, 1 + spread))
    assert ops[1].max_delta == pytest.approx(12.75 * level)
    factors = Draws(seed=4, op_index=2, keys=_keys(2000)).uniform(0, contrast.lower, contrast.upper).numpy()
    assert factors.min() >= 1 - spread and factors.max() < 1 + spread
    assert abs(factors.mean() - 1) < 0.01 and abs(factors.std() - 2 * spread / np.sqrt(12)) < 0.01


@pytest.mark.parametrize("factor", [0.8, 1.2])
def test_contrast_and_saturation_match_tf_image(factor):
    images = _random_batch(2, low=30, high=220)
    contrast = _apply(RandomContrastFactor(factor, factor), images)
    np.testing.assert_allclose(contrast, tf.image.adjust_contrast(images, factor).numpy(), atol=1e-3)
    saturation = _apply(RandomSaturationFactor(factor, factor), images)
    expected = tf.image.adjust_saturation(images / 255.0, factor).numpy() * 255.0
    np.testing.assert_allclose(saturation, expected, atol=1e-2)


def test_random_crop_is_a_real_window_at_uniform_offsets():
    images = _random_batch(3)
    out = _apply(RandomCropResize(100, 100), images, seed=3)
    for crop, image in zip(out, images):
        found = [(top, left) for top in range(13) for left in range(13) if np.allclose(crop, image[top : top + 100, left : left + 100], atol=0.01)]
        assert len(found) == 1
    tops = Draws(seed=3, op_index=0, keys=_keys(13000)).integers(0, 13).numpy()
    assert tops.min() == 0 and tops.max() == 12 and np.bincount(tops).min() > 850  # 13 offsets, 1000 each expected


def test_level_3_keeps_shape_and_range():
    augmentation = build_augmentation("crop", seed=4)
    assert augmentation.op_names == ["flip", "brightness", "contrast", "saturation", "crop", "clip"]
    out = augmentation(_random_batch(), _keys(8)).numpy()
    assert out.shape == (8, 112, 112, 3) and out.min() >= 0 and out.max() <= 255


def test_lower_face_mask_greys_rows_from_055_to_07_height_down():
    images = _random_batch(16, low=0, high=100)  # never 128, so grey pixels are the mask's
    out = _apply(LowerFaceMask(1.0), images, seed=5)
    starts = []
    for masked, image in zip(out, images):
        grey_rows = np.flatnonzero(np.all(masked == 128, axis=(1, 2)))
        start = grey_rows[0]
        assert 61 <= start < 78 and np.array_equal(grey_rows, np.arange(start, 112))
        np.testing.assert_array_equal(masked[:start], image[:start])
        starts.append(start)
    assert len(set(starts)) > 4


def test_erase_and_mask_probabilities():
    grey_free = np.zeros((2000, 16, 16, 3), np.float32)
    erase = Augmentation([RandomCutout(0.3, size=4)], seed=6)(grey_free, _keys(2000)).numpy()
    mask = Augmentation([LowerFaceMask(0.2)], seed=6)(grey_free, _keys(2000)).numpy()
    assert abs(np.any(erase == 128, axis=(1, 2, 3)).mean() - 0.3) < 0.03  # part of the square is always inside
    assert abs(np.all(mask[:, -1] == 128, axis=(1, 2)).mean() - 0.2) < 0.03


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


def test_randaugment_picks_each_of_8_ops_with_probability_one_eighth():
    choices = Draws(seed=7, op_index=1, keys=_keys(8000)).integers(0, 8).numpy()
    assert np.all(np.abs(np.bincount(choices, minlength=8) - 1000) < 120)


def test_official_randaugment_at_magnitude_5_only_changes_by_autocontrast_equalize_or_cutout():
    """The documented official quirk: enhance factor 1.8*5/10+0.1 = 1 is the identity."""
    images = _random_batch(8, low=0, high=256).round()
    out = _apply(FaceRandAugment(5, num_ops=1, official=True), images, seed=6)
    for changed, image in zip(out, images):
        options = [image, _autocontrast(image[None]).numpy()[0], _equalize(image[None]).numpy()[0]]
        cutout = np.all(changed == 128, axis=-1).sum() > 0 and np.array_equal(changed[changed != 128], image[changed != 128])
        assert cutout or any(np.array_equal(changed, option) for option in options)


def test_randaugment_and_options_build_from_config():
    augmentation = AugmentConfig("randaugment", magnitude=9, erase_probability=0.5, mask_probability=0.5, seed=0).build()
    assert augmentation.op_names == ["flip", "randaugment", "erase", "lower_face_mask"]
    out = augmentation(_random_batch(), _keys(8)).numpy()
    assert out.shape == (8, 112, 112, 3) and 0 <= out.min() and out.max() <= 255


def test_config_round_trips_through_json():
    config = AugmentConfig("randaugment", magnitude=7, official_randaugment=True, seed=3)
    assert AugmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(DataError, match="unknown fields"):
        AugmentConfig.from_dict({"level": 1, "sepia": True})


def test_draws_depend_on_key_and_seed_only_not_on_batch():
    images = _random_batch(8)
    augmentation = build_augmentation(3, erase_probability=0.5, seed=11)
    whole = augmentation(images, _keys(8, first=100)).numpy()
    halves = [augmentation(images[part], _keys(4, first=100 + 4 * index)).numpy() for index, part in enumerate([slice(0, 4), slice(4, 8)])]
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    reversed_order = augmentation(images[::-1], _keys(8, first=100)[::-1]).numpy()
    np.testing.assert_array_equal(whole, reversed_order[::-1])
    assert not np.array_equal(whole, build_augmentation(3, erase_probability=0.5, seed=12)(images, _keys(8, first=100)).numpy())
    assert not np.array_equal(whole, augmentation(images, _keys(8, first=200)).numpy())


def test_draws_are_uniform_and_independent_across_draws_and_epochs():
    keys = tf.constant(np.arange(20000, dtype=np.int64) + 3 * 2**32)
    draws = Draws(seed=0, op_index=0, keys=keys)
    first, second = draws.uniform(0).numpy(), draws.uniform(1).numpy()
    assert np.all(np.abs(np.histogram(first, 10, (0, 1))[0] - 2000) < 200)
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.03
    earlier_epoch = Draws(seed=0, op_index=0, keys=keys - 2**32).uniform(0).numpy()
    assert abs(np.corrcoef(first, earlier_epoch)[0, 1]) < 0.03


def test_augmentation_accepts_uint8_and_returns_float32():
    images = _random_batch(4).astype(np.uint8)
    augmentation = build_augmentation(1, seed=0)
    from_uint8 = augmentation(images, _keys(4))
    assert from_uint8.dtype == tf.float32
    np.testing.assert_array_equal(from_uint8.numpy(), augmentation(images.astype(np.float32), _keys(4)).numpy())


def test_resolve_augmentation_forms():
    assert resolve_augmentation(None) is None and resolve_augmentation("none") is None and resolve_augmentation(-1) is None
    assert resolve_augmentation("flip", seed=5).seed == 5
    assert resolve_augmentation(AugmentConfig(1), seed=5).seed == 5  # a config without a seed takes the dataset's
    assert resolve_augmentation(AugmentConfig(1, seed=2), seed=5).seed == 2
    function = lambda pixels: pixels  # noqa: E731
    assert resolve_augmentation(function) is function
    with pytest.raises(DataError, match="augment must be"):
        resolve_augmentation(2.5)


def test_unknown_level_is_a_data_error():
    with pytest.raises(DataError, match="unknown augmentation level"):
        build_augmentation("sepia")
