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
from ghostface_keras.core.errors import DataError


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


# ------------------------------------------------------------------------------------------------
# Levels 2 and 3 as a whole, against an independent numpy computation (docs/data.md "Augmentation levels")
# ------------------------------------------------------------------------------------------------
def _numpy_fmix32(value):
    value = value ^ (value >> np.uint32(16))
    value = value * np.uint32(0x85EBCA6B)
    value = value ^ (value >> np.uint32(13))
    value = value * np.uint32(0xC2B2AE35)
    return value ^ (value >> np.uint32(16))


def _numpy_bits(seed, op_index, draw, keys):
    """docs/data.md: murmur3's 32-bit finalizer applied twice, to the key's low half xor the draw's constant,
    then xor the high half times the golden-ratio constant; computed here with numpy's wrapping uint32."""
    from ghostface_keras.data.augment import draw_constant

    keys = np.asarray(keys, np.uint64)
    low = (keys & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    high = (keys >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
        inner = _numpy_fmix32(low ^ np.uint32(draw_constant(seed, op_index, draw)))
        return _numpy_fmix32(inner ^ (high * np.uint32(0x9E3779B9)))


def _numpy_uniform(seed, op_index, draw, keys, low=0.0, high=1.0):
    """Top 24 bits as a float in [0, 1), scaled to [low, high)."""
    return low + (_numpy_bits(seed, op_index, draw, keys) >> np.uint32(8)).astype(np.float64) * 2.0**-24 * (high - low)


def _numpy_integers(seed, op_index, draw, keys, count):
    return ((_numpy_bits(seed, op_index, draw, keys) >> np.uint32(8)).astype(np.int64) * count) >> 24


def _numpy_crop_resize(image, top, left, crop, size):
    """Bilinear resampling of the crop x crop window at (top, left) to size x size, first and last pixel
    centres of the window on the first and last output pixels (tf.image.crop_and_resize's box convention)."""
    positions = np.arange(size) * (crop - 1) / (size - 1)
    rows, cols = top + positions, left + positions
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, image.shape[0] - 1), np.minimum(c0 + 1, image.shape[1] - 1)
    wr, wc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top_row = image[r0][:, c0] * (1 - wc) + image[r0][:, c1] * wc
    bottom_row = image[r1][:, c0] * (1 - wc) + image[r1][:, c1] * wc
    return top_row * (1 - wr) + bottom_row * wr


def _numpy_level(level, images, keys, seed, crop_size=100):
    """docs/data.md's parameters of a level, applied in the library's op order: flip, brightness, contrast,
    saturation, (crop,) clip; each op's draws keyed by its position in that order."""
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    spread, max_delta = 0.1 * level, 12.75 * level
    out = []
    flips = _numpy_uniform(seed, 0, 0, keys) < 0.5
    deltas = _numpy_uniform(seed, 1, 0, keys, -max_delta, max_delta)
    contrasts = _numpy_uniform(seed, 2, 0, keys, 1 - spread, 1 + spread)
    saturations = _numpy_uniform(seed, 3, 0, keys, 1 - spread, 1 + spread)
    for index, image in enumerate(np.asarray(images, np.float64)):
        x = image[:, ::-1] if flips[index] else image
        x = x + deltas[index]
        mean = x.mean(axis=(0, 1))
        x = (x - mean) * contrasts[index] + mean
        hsv = rgb_to_hsv(np.clip(x, 0, 255) / 255.0)
        hsv[..., 1] = np.clip(hsv[..., 1] * saturations[index], 0, 1)
        x = hsv_to_rgb(hsv) * 255.0
        if level >= 3:
            slack = x.shape[0] - crop_size + 1
            top = _numpy_integers(seed, 4, 0, keys[index : index + 1], slack)[0]
            left = _numpy_integers(seed, 4, 1, keys[index : index + 1], x.shape[1] - crop_size + 1)[0]
            x = _numpy_crop_resize(x, top, left, crop_size, image.shape[0])
        out.append(np.clip(x, 0, 255))
    return np.stack(out)


def _face_like(count, seed=0):
    """Smooth, coloured, in-range pixels (synthetic faces): contrast and saturation changes are visible."""
    from ghostface_keras.data import render_synthetic_faces

    pixels, _ = render_synthetic_faces(count, 1, seed=seed)
    return pixels.astype(np.float32)


def test_keyed_draws_equal_the_documented_hash_computed_in_numpy():
    keys = np.array([0, 1, 2, 12345, 2**32 - 1, 2**32, 3 * 2**32 + 17, 2**40 + 5], np.int64)
    for seed, op_index, draw in [(0, 0, 0), (11, 3, 1), (2**40 + 3, 5, 2)]:
        draws = Draws(seed=seed, op_index=op_index, keys=tf.constant(keys))
        np.testing.assert_array_equal(draws.bits(draw).numpy(), _numpy_bits(seed, op_index, draw, keys))
        np.testing.assert_array_equal(draws.integers(draw, 13).numpy(), _numpy_integers(seed, op_index, draw, keys, 13))


@pytest.mark.parametrize("level", [2, 3])
def test_level_equals_its_documented_ops_with_the_keyed_parameters(level):
    """Each image's output = flip, brightness, contrast, saturation (level 3: and the 100x100 window resized
    back) with docs/data.md's parameters, computed independently in numpy (matplotlib's HSV)."""
    images = _face_like(12)
    keys = np.arange(12, dtype=np.int64) + 5 * 2**32 + 40  # epoch 5, positions 40..51
    ours = build_augmentation(level, seed=21)(images, tf.constant(keys)).numpy()
    expected = _numpy_level(level, images, keys, seed=21)
    assert ours.shape == expected.shape == (12, 112, 112, 3)
    np.testing.assert_allclose(ours, expected, atol=0.01)
    assert np.abs(ours - expected).mean() < 0.001
    # not a tautology: the same images under another seed are far from this reference
    other = build_augmentation(level, seed=22)(images, tf.constant(keys)).numpy()
    assert np.abs(other - expected).mean() > 1.0


@pytest.mark.parametrize("level", [2, 3])
def test_level_brightness_delta_fills_its_documented_range(level):
    """Mid-grey images: contrast (around the channel mean), saturation (S = 0) and the crop change nothing,
    so out - 128 is the image's brightness delta: one value per image, ~ U(-12.75 level, 12.75 level)."""
    grey = np.full((600, 112, 112, 3), 128.0, np.float32)
    out = build_augmentation(level, seed=level)(grey, _keys(600)).numpy()
    deltas = out - 128.0
    per_image = deltas[:, 56, 56, 0]
    np.testing.assert_allclose(deltas, np.broadcast_to(per_image[:, None, None, None], deltas.shape), atol=1e-3)
    bound = 12.75 * level
    assert np.abs(per_image).max() <= bound + 1e-3 and np.abs(per_image).max() > 0.97 * bound
    assert abs(per_image.mean()) < 0.1 * bound and abs(per_image.std() - bound / np.sqrt(3)) < 0.08 * bound


def test_level_2_contrast_factor_is_uniform_in_0_8_to_1_2():
    """Grey ramps (R = G = B: saturation is a no-op) that never clip: the spread of each output around its
    mean is the input's times the image's contrast factor, ~ U(0.8, 1.2) and different per image."""
    ramp = np.linspace(100.0, 156.0, 112, dtype=np.float32)
    images = np.broadcast_to(ramp[None, :, None, None], (400, 112, 112, 3)).copy()
    out = build_augmentation(2, seed=8)(images, _keys(400)).numpy()
    factors = out[..., 0].std(axis=(1, 2)) / images[..., 0].std(axis=(1, 2))
    assert factors.min() >= 0.8 - 1e-4 and factors.max() <= 1.2 + 1e-4
    assert factors.min() < 0.81 and factors.max() > 1.19 and abs(factors.mean() - 1.0) < 0.02
    assert len(np.unique(factors.round(5))) > 390


def test_level_2_saturation_factor_is_uniform_in_0_8_to_1_2():
    """Single-colour images: contrast is a no-op (every pixel is the mean), so HSV saturation after the
    level / before it, with the same brightness delta applied, is the image's factor ~ U(0.8, 1.2)."""
    from matplotlib.colors import rgb_to_hsv

    colour = np.array([150.0, 110.0, 90.0], np.float32)  # S = 0.4: scaled by 1.2 it stays below 1
    images = np.broadcast_to(colour, (400, 8, 8, 3)).copy()
    keys = np.arange(400, dtype=np.int64)
    out = build_augmentation(2, seed=9)(images, tf.constant(keys)).numpy()[:, 0, 0]
    brightened = np.clip(colour[None] + _numpy_uniform(9, 1, 0, keys, -25.5, 25.5)[:, None], 0, 255)
    factors = rgb_to_hsv(out / 255.0)[:, 1] / rgb_to_hsv(brightened / 255.0)[:, 1]
    assert factors.min() >= 0.8 - 1e-3 and factors.max() <= 1.2 + 1e-3
    assert factors.min() < 0.81 and factors.max() > 1.19 and abs(factors.mean() - 1.0) < 0.02


def test_level_3_window_is_resized_back_with_its_corners_kept():
    """A linear ramp image: bilinear resampling is exact on it, so each output row / column reads
    top + i * 99 / 111 of the input: a 100-pixel window at an integer offset in 0..12, corners kept."""
    rows = np.arange(112, dtype=np.float32)[:, None] * np.ones((1, 112), np.float32)
    ramp = np.stack([rows * 2, rows.T * 2, np.full((112, 112), 7.0, np.float32)], axis=-1)
    out = Augmentation([RandomCropResize(100, 112)], seed=4)(np.repeat(ramp[None], 200, 0), _keys(200)).numpy()
    tops, lefts = out[:, 0, 0, 0] / 2, out[:, 0, 0, 1] / 2
    np.testing.assert_allclose(tops, np.round(tops), atol=1e-3)
    np.testing.assert_allclose(lefts, np.round(lefts), atol=1e-3)
    assert set(np.round(tops).astype(int)) == set(range(13)) and set(np.round(lefts).astype(int)) == set(range(13))
    spacing = np.arange(112) * 99 / 111
    np.testing.assert_allclose(out[:, :, 0, 0] / 2, tops[:, None] + spacing, atol=1e-3)
    np.testing.assert_allclose(out[:, 0, :, 1] / 2, lefts[:, None] + spacing, atol=1e-3)
    np.testing.assert_allclose(out[:, -1, -1, :2] / 2, np.stack([tops, lefts], 1) + 99, atol=1e-3)
    np.testing.assert_array_equal(out[..., 2], 7.0)


@pytest.mark.parametrize("level", [2, 3])
def test_pipeline_keys_each_image_by_epoch_and_position(level, tmp_path):
    """docs/data.md: the pipeline keys an image by epoch * 2**32 + its position in the epoch's order, so
    with a seed every epoch is reproducible and epochs differ: epoch e of a level-2/3 dataset equals the
    level applied to the raw pixels with those keys."""
    from PIL import Image

    from ghostface_keras.data import image_folder_dataset

    for index, face in enumerate(_face_like(6, seed=3).astype(np.uint8)):
        folder = tmp_path / f"id{index // 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(face).save(folder / f"{index}.png")
    raw = np.concatenate([b.numpy() for b, _ in image_folder_dataset(tmp_path, 3, shuffle=False, normalize=False)])
    dataset = image_folder_dataset(tmp_path, 3, shuffle=False, normalize=False, augment=level, seed=13)
    epochs = [np.concatenate([b.numpy() for b, _ in dataset]) for _ in range(2)]
    augmentation = build_augmentation(level, seed=13)
    for epoch, images in enumerate(epochs):
        keys = tf.constant(epoch * 2**32 + np.arange(6, dtype=np.int64))
        np.testing.assert_array_equal(images, augmentation(raw, keys).numpy())
    assert np.abs(epochs[0] - epochs[1]).mean() > 1.0
    again = image_folder_dataset(tmp_path, 3, shuffle=False, normalize=False, augment=level, seed=13)
    np.testing.assert_array_equal(np.concatenate([b.numpy() for b, _ in again]), epochs[0])
