"""Training augmentation: plain TensorFlow ops whose randomness is stateless and keyed per image.

An `Augmentation` is a list of ops applied to float32 batches of RGB pixels in [0, 255] (before
normalization). It is called as `augmentation(pixels, keys)`: `keys` holds one int64 per image, and
every random value an op draws for an image is a pure function of `(seed, key, op position, draw
number)`, computed by a counter-based hash (murmur3's 32-bit finalizer, twice) rather than by a random
state. The pipeline keys each image by `epoch * 2**32 + its position in the epoch's global order`, so
the same seed gives the same augmented epochs whatever the parallelism, batch size or number of data
shards: a sharded run sees bit-identical images to an unsharded one. Only TensorFlow ops are used
(no Keras layers or `keras.random`), so the `tf.data` maps run under every Keras backend.

The levels reproduce the official GhostFaceNets `RandomProcessImage(random_status=rs)`
distributions exactly; each level adds to the previous one:

| level | name           | adds                                                                         |
|-------|----------------|------------------------------------------------------------------------------|
| 0     | "flip"         | horizontal flip, p = 0.5                                                     |
| 1     | "brightness"   | + add one delta ~ U(-12.75*rs, 12.75*rs) per image (rs = the level)          |
| 2     | "color"        | + contrast and saturation factors ~ U(1 - 0.1*rs, 1 + 0.1*rs)                |
| 3     | "crop"         | + random crop_size x crop_size crop (default 100) resized back to the input  |
|       | "randaugment"  | flip, then 2 ops of {AutoContrast, Equalize, Color, Contrast, Brightness,    |
|       |                | Sharpness, Cutout, identity} per image at `magnitude` (see FaceRandAugment)  |

Levels >= 1 clip the result to [0, 255]. Options on any level: `erase_probability` (a grey square of
`erase_size` px at a random place: random erasing) and `mask_probability` (the lower face from a random
row in [0.55, 0.7) of the height filled with grey: a synthetic face mask).

Reductions over an image (contrast means) are taken in float64 and elementwise code replaces matmul /
convolution kernels (grayscale, smoothing), so an image's result does not depend on the size of the
batch it is in (kernels may block a batch differently and round differently).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from typing import Any, Callable, ClassVar
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from ghostface_keras.core.errors import DataError

LEVEL_NAMES = {"flip": 0, "brightness": 1, "color": 2, "crop": 3, "randaugment": "randaugment"}
GREY = 128.0
_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9  # odd constants of murmur3 / the golden ratio: spread small integers over 32 bits


def resolve_seed(seed: int | None) -> int:
    """An explicit seed as a non-negative int below 2**64; None draws a fresh random one.

    Example:
        >>> resolve_seed(7), resolve_seed(-1) == 2**64 - 1, 0 <= resolve_seed(None) < 2**63
        (7, True, True)
    """
    if seed is None:
        return secrets.randbits(63)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise DataError(f"seed must be an integer or None, got {seed!r}")
    return int(seed) % 2**64


# Stateless keyed randomness --------------------------------------------------------------------------


def _fmix32_int(value: int) -> int:
    """murmur3's 32-bit finalizer on a Python int (for the per-draw constants)."""
    value &= _MASK32
    value ^= value >> 16
    value = (value * 0x85EBCA6B) & _MASK32
    value ^= value >> 13
    value = (value * 0xC2B2AE35) & _MASK32
    return value ^ (value >> 16)


def _fmix32(value: tf.Tensor) -> tf.Tensor:
    """murmur3's 32-bit finalizer on a uint32 tensor (multiplications wrap modulo 2**32)."""
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, tf.constant(16, tf.uint32)))
    value = value * tf.constant(0x85EBCA6B, tf.uint32)
    value = tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, tf.constant(13, tf.uint32)))
    value = value * tf.constant(0xC2B2AE35, tf.uint32)
    return tf.bitwise.bitwise_xor(value, tf.bitwise.right_shift(value, tf.constant(16, tf.uint32)))


def draw_constant(seed: int, op_index: int, draw: int) -> int:
    """The 32-bit constant that names one random draw of one op under one seed."""
    value = _fmix32_int((seed & _MASK32) ^ _GOLDEN)
    value = _fmix32_int(value ^ (seed >> 32))
    value = _fmix32_int(value ^ (op_index * 0x85EBCA77))
    return _fmix32_int(value ^ (draw * 0xC2B2AE3D))


class Draws:
    """The random numbers one op draws for a batch: one value per image and draw number.

    Value = fmix32(fmix32(key_low ^ c) ^ key_high * golden), c = `draw_constant(seed, op_index, draw)`:
    a pure function of the seed, the image's key and the draw, so it is the same in any batch.

    Example:
        >>> draws = Draws(seed=0, op_index=0, keys=tf.constant([5, 6, 5], tf.int64))
        >>> u = draws.uniform(0).numpy()
        >>> bool(u[0] == u[2]), bool(u[0] != u[1]), bool(((0 <= u) & (u < 1)).all())
        (True, True, True)
    """

    def __init__(self, seed: int, op_index: int, keys: tf.Tensor):
        self.seed, self.op_index = int(seed), int(op_index)
        keys = tf.cast(keys, tf.int64)
        self._low = tf.cast(keys, tf.uint32)  # int64 -> uint32 keeps the low 32 bits
        self._high_mixed = tf.cast(tf.bitwise.right_shift(keys, 32), tf.uint32) * tf.constant(_GOLDEN, tf.uint32)

    def bits(self, draw: int) -> tf.Tensor:
        """32 random bits per image (uint32 [B])."""
        constant = tf.constant(draw_constant(self.seed, self.op_index, draw), tf.uint32)
        return _fmix32(tf.bitwise.bitwise_xor(_fmix32(tf.bitwise.bitwise_xor(self._low, constant)), self._high_mixed))

    def uniform(self, draw: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        """float32 [B] ~ U[low, high), from the top 24 bits (exactly representable in float32)."""
        unit = tf.cast(tf.bitwise.right_shift(self.bits(draw), tf.constant(8, tf.uint32)), tf.float32) * (2.0**-24)
        return low + unit * (high - low)

    def integers(self, draw: int, count) -> tf.Tensor:
        """int32 [B] uniform in [0, count): integer arithmetic, so `count` itself is never drawn."""
        top = tf.cast(tf.bitwise.right_shift(self.bits(draw), tf.constant(8, tf.uint32)), tf.int64)
        return tf.cast(tf.bitwise.right_shift(top * tf.cast(count, tf.int64), 24), tf.int32)

    def coin(self, draw: int, probability: float) -> tf.Tensor:
        """bool [B], True with `probability`."""
        return self.uniform(draw) < probability


def _per_image(values: tf.Tensor) -> tf.Tensor:
    """[B] -> [B, 1, 1, 1], to broadcast one value per image over its pixels."""
    return tf.reshape(values, [-1, 1, 1, 1])


# The ops: each is `op(images, draws) -> images` on float32 [B, H, W, 3] pixels in [0, 255] ------------


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror an image left-right with `probability` (the official level-0 op: p = 0.5)."""

    probability: float = 0.5
    name: ClassVar[str] = "flip"
    any_dtype: ClassVar[bool] = True

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        return tf.where(_per_image(draws.coin(0, self.probability)), tf.reverse(images, axis=[2]), images)


@dataclass(frozen=True)
class RandomBrightnessDelta:
    """Add one delta ~ U(-max_delta, max_delta) (on the 0-255 scale) to every pixel of an image."""

    max_delta: float
    name: ClassVar[str] = "brightness"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        return images + _per_image(draws.uniform(0, -self.max_delta, self.max_delta))


@dataclass(frozen=True)
class RandomContrastFactor:
    """`tf.image.adjust_contrast` with a factor ~ U(lower, upper): (x - channel mean) * f + channel mean."""

    lower: float
    upper: float
    name: ClassVar[str] = "contrast"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        factor = _per_image(draws.uniform(0, self.lower, self.upper))
        mean = _image_mean(images)
        return (images - mean) * factor + mean


@dataclass(frozen=True)
class RandomSaturationFactor:
    """`tf.image.adjust_saturation` with a factor ~ U(lower, upper): HSV saturation scaled, clipped to 1."""

    lower: float
    upper: float
    name: ClassVar[str] = "saturation"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        factor = tf.reshape(draws.uniform(0, self.lower, self.upper), [-1, 1, 1])
        # HSV needs [0, 1]; pixels brightened past 255 are clipped here, as the official op's would be on V
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 255.0) / 255.0)
        saturation = tf.clip_by_value(hsv[..., 1] * factor, 0.0, 1.0)
        return tf.image.hsv_to_rgb(tf.stack([hsv[..., 0], saturation, hsv[..., 2]], axis=-1)) * 255.0


@dataclass(frozen=True)
class RandomCropResize:
    """A random crop_size x crop_size window of each image, resized (bilinear) back to output_size."""

    crop_size: int = 100
    output_size: int = 112
    name: ClassVar[str] = "crop"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        shape = tf.shape(images)
        top = tf.cast(draws.integers(0, shape[1] - self.crop_size + 1), tf.float32)
        left = tf.cast(draws.integers(1, shape[2] - self.crop_size + 1), tf.float32)
        last_row, last_col = tf.cast(shape[1] - 1, tf.float32), tf.cast(shape[2] - 1, tf.float32)
        # crop_and_resize boxes are normalized corner coordinates of the first and last pixel centres
        boxes = tf.stack(
            [top / last_row, left / last_col, (top + self.crop_size - 1) / last_row, (left + self.crop_size - 1) / last_col],
            axis=1,
        )
        return tf.image.crop_and_resize(images, boxes, tf.range(shape[0]), [self.output_size, self.output_size])


@dataclass(frozen=True)
class ClipPixels:
    """Clip to the valid pixel range [0, 255] after the photometric changes (draws nothing)."""

    name: ClassVar[str] = "clip"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        return tf.clip_by_value(images, 0.0, 255.0)


@dataclass(frozen=True)
class RandomCutout:
    """With `probability` per image, fill a size x size square at a uniformly random centre with grey (128)."""

    probability: float
    size: int = 40
    name: ClassVar[str] = "erase"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        return _cutout(images, self.size, _per_image(draws.coin(0, self.probability)), draws, first_draw=1)


@dataclass(frozen=True)
class LowerFaceMask:
    """With `probability` per image, grey out every row from a random row in [0.55 H, 0.7 H) down (a face mask)."""

    probability: float
    name: ClassVar[str] = "lower_face_mask"

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        height = tf.shape(images)[1]
        first = tf.cast(0.55 * tf.cast(height, tf.float32), tf.int32)
        last = tf.cast(0.7 * tf.cast(height, tf.float32), tf.int32)
        start = _per_image(first + draws.integers(0, last - first))
        rows = tf.reshape(tf.range(height), [1, -1, 1, 1])
        masked = tf.logical_and(rows >= start, _per_image(draws.coin(1, self.probability)))
        return tf.where(masked, GREY, images)


def _cutout(images, size: int, apply, draws: Draws, first_draw: int):
    """Grey size x size squares at random centres (draws `first_draw`, `first_draw + 1`) where `apply`."""
    shape = tf.shape(images)
    centre_y = _per_image(draws.integers(first_draw, shape[1]))
    centre_x = _per_image(draws.integers(first_draw + 1, shape[2]))
    rows = tf.reshape(tf.range(shape[1]), [1, -1, 1, 1])
    cols = tf.reshape(tf.range(shape[2]), [1, 1, -1, 1])
    half = size // 2
    inside = (tf.abs(rows - centre_y) < half) | (rows - centre_y == -half)
    inside &= (tf.abs(cols - centre_x) < half) | (cols - centre_x == -half)
    return tf.where(inside & apply, GREY, images)


@dataclass(frozen=True)
class FaceRandAugment:
    """RandAugment restricted to photometric ops (face crops are aligned: no rotate/shear/translate).

    Each of `num_ops` rounds picks, per image, one of AutoContrast, Equalize, Color, Contrast, Brightness,
    Sharpness, Cutout or identity (1/8 each) and applies it at `magnitude` m in [0, 10]:
    enhance ops blend with factor 1 + s * 0.9 * m / 10, s = +-1 at random (so m = 5 gives 0.55 or 1.45);
    Cutout fills a grey square of side 2 * int(4 * m) px. `official=True` uses the official fixed factor
    1.8 * m / 10 + 0.1 instead, which is exactly 1 (no change) at the official m = 5.
    """

    magnitude: float = 5.0
    num_ops: int = 2
    official: bool = False
    name: ClassVar[str] = "randaugment"
    DRAWS_PER_ROUND: ClassVar[int] = 4  # op choice, factor sign, cutout centre y and x

    def _factor(self, draws: Draws, draw: int) -> tf.Tensor:
        if self.official:
            return tf.constant(self.magnitude / 10.0 * 1.8 + 0.1)
        sign = tf.where(_per_image(draws.coin(draw, 0.5)), 1.0, -1.0)
        return 1.0 + sign * 0.9 * self.magnitude / 10.0

    def __call__(self, images: tf.Tensor, draws: Draws) -> tf.Tensor:
        images = tf.round(tf.clip_by_value(images, 0.0, 255.0))  # the ops are defined on 8-bit pixels
        for round_index in range(self.num_ops):
            first = round_index * self.DRAWS_PER_ROUND
            choice = _per_image(draws.integers(first, 8))
            factor = self._factor(draws, first + 1)
            grey = _grayscale(images)
            candidates = [
                _autocontrast(images),
                _equalize(images),
                _blend(grey, images, factor),
                _blend(_image_mean(grey), images, factor),
                _blend(tf.zeros_like(images), images, factor),
                _blend(_smooth(images), images, factor),
                _cutout(images, 2 * int(self.magnitude / 10.0 * 40), tf.constant(True), draws, first + 2),
            ]
            result = images
            for index, candidate in enumerate(candidates):
                result = tf.where(tf.equal(choice, index), candidate, result)
            images = tf.round(result)
        return images


def _image_mean(images: tf.Tensor) -> tf.Tensor:
    """Per-image, per-channel mean [B, 1, 1, C], summed in float64: the same bits in any batch size."""
    return tf.cast(tf.reduce_mean(tf.cast(images, tf.float64), axis=[1, 2], keepdims=True), images.dtype)


def _blend(degenerate, images, factor):
    return tf.clip_by_value(degenerate + factor * (images - degenerate), 0.0, 255.0)


def _grayscale(images):
    """ITU-R 601 luma (`tf.image.rgb_to_grayscale`'s weights), elementwise, broadcast to 3 channels."""
    luma = images[..., 0:1] * 0.2989 + images[..., 1:2] * 0.587 + images[..., 2:3] * 0.114
    return tf.broadcast_to(luma, tf.shape(images))


def _autocontrast(images):
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    stretched = (images - low) * (255.0 / tf.maximum(high - low, 1.0))
    return tf.where(high > low, stretched, images)


def _smooth(images):
    """PIL's SMOOTH kernel (centre 5, neighbours 1, /13) inside, original pixels on the 1-px border.

    A separable 3x3 box sum plus 4x the centre: on the 8-bit pixels RandAugment works with, every
    partial sum is an integer below 2**24, so the result is exact whatever the summation order.
    """
    rows = images[:, :-2] + images[:, 1:-1] + images[:, 2:]
    box = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    smoothed = tf.round((box + 4.0 * images[:, 1:-1, 1:-1]) / 13.0)
    return tf.pad(smoothed, [[0, 0], [1, 1], [1, 1], [0, 0]]) + _border(images)


def _border(images):
    """`images` on the 1-px border, zero inside."""
    shape = tf.shape(images)
    interior = tf.pad(tf.zeros([shape[1] - 2, shape[2] - 2]), [[1, 1], [1, 1]], constant_values=1.0)
    return images * interior[None, :, :, None]


def _equalize(images):
    """Per-image, per-channel histogram equalization with PIL's lookup-table rule."""
    shape = tf.shape(images)
    channels_first = tf.reshape(tf.transpose(tf.cast(images, tf.int32), [0, 3, 1, 2]), [shape[0] * 3, -1])
    rows = tf.shape(channels_first)[0]
    offsets = channels_first + 256 * tf.range(rows)[:, None]
    histogram = tf.reshape(tf.math.bincount(tf.reshape(offsets, [-1]), minlength=rows * 256, maxlength=rows * 256), [rows, 256])
    # step: pixels per output level, ignoring the last occupied level (PIL's ImageOps.equalize)
    last_value = tf.reduce_max(tf.where(histogram > 0, tf.range(256)[None, :], 0), axis=1)
    last_count = tf.gather(histogram, last_value, batch_dims=1)
    step = (tf.reduce_sum(histogram, axis=1) - last_count) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(histogram, axis=1, exclusive=True) + (safe_step // 2)[:, None]) // safe_step[:, None]
    lut = tf.clip_by_value(lut, 0, 255)
    equalized = tf.gather(lut, channels_first, batch_dims=1)
    equalized = tf.where((step > 0)[:, None], equalized, channels_first)
    equalized = tf.transpose(tf.reshape(equalized, [shape[0], 3, shape[1], shape[2]]), [0, 2, 3, 1])
    return tf.cast(equalized, images.dtype)


# The augmentation object and its recipe ---------------------------------------------------------------

AugmentOp = Callable[[tf.Tensor, Draws], tf.Tensor]


class Augmentation:
    """A keyed augmentation: `augmentation(pixels, keys)` applies `ops` in order with stateless draws.

    `pixels`: [B, H, W, 3] in [0, 255] (float32, or uint8: ops that only move pixels, like the flip, run
    on it before the cast); `keys`: int64 [B], one per image (default 0..B-1). Returns float32. Equal
    (seed, key) give equal results, in any batch and any order. Works eagerly and inside `tf.data` maps.

    Example:
        >>> augmentation = Augmentation([HorizontalFlip(1.0)], seed=0)
        >>> augmentation.op_names
        ['flip']
        >>> pixels = tf.reshape(tf.range(6, dtype=tf.float32), [1, 1, 2, 3])
        >>> augmentation(pixels, tf.constant([3], tf.int64)).numpy()[0, 0].tolist()
        [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]
    """

    def __init__(self, ops: Sequence[AugmentOp], seed: int | None = None, name: str = "augment"):
        self.ops = tuple(ops)
        self.seed = resolve_seed(seed)
        self.name = name

    @property
    def op_names(self) -> list[str]:
        """Short names of the ops, in the order they run."""
        return [getattr(op, "name", type(op).__name__) for op in self.ops]

    def __call__(self, pixels, keys=None) -> tf.Tensor:
        images = tf.convert_to_tensor(pixels)
        keys = tf.range(tf.shape(images)[0], dtype=tf.int64) if keys is None else tf.cast(keys, tf.int64)
        for op_index, op in enumerate(self.ops):
            # ops that only move pixels run on the input dtype: flipping uint8 moves 4x fewer bytes
            if not getattr(op, "any_dtype", False):
                images = tf.cast(images, tf.float32)
            images = op(images, Draws(self.seed, op_index, keys))
        return tf.cast(images, tf.float32)

    def __repr__(self) -> str:
        return f"Augmentation({self.name!r}, seed={self.seed}, ops=[{', '.join(map(repr, self.ops))}])"


@dataclass
class AugmentConfig:
    """A named augmentation recipe (plain data: JSON round trip through `to_dict` / `from_dict`).

    `seed=None` means: the dataset's seed when passed as `augment=` to a dataset builder, a fresh random
    seed when built on its own.

    Example:
        >>> config = AugmentConfig(level="crop", mask_probability=0.2, seed=1)
        >>> config.build().op_names
        ['flip', 'brightness', 'contrast', 'saturation', 'crop', 'clip', 'lower_face_mask']
        >>> AugmentConfig.from_dict(config.to_dict()) == config
        True
    """

    level: int | str = 0
    image_size: int = 112
    crop_size: int = 100
    magnitude: float = 5.0
    num_ops: int = 2
    official_randaugment: bool = False
    erase_probability: float = 0.0
    erase_size: int = 40
    mask_probability: float = 0.0
    seed: int | None = None

    def build(self) -> Augmentation:
        return build_augmentation(**self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AugmentConfig:
        unknown = sorted(set(values) - {item.name for item in dataclasses.fields(cls)})
        if unknown:
            raise DataError(f"AugmentConfig: unknown fields {unknown}")
        return cls(**values)


def build_augmentation(
    level: int | str = 0,
    image_size: int = 112,
    crop_size: int = 100,
    magnitude: float = 5.0,
    num_ops: int = 2,
    official_randaugment: bool = False,
    erase_probability: float = 0.0,
    erase_size: int = 40,
    mask_probability: float = 0.0,
    seed: int | None = None,
) -> Augmentation:
    """The `Augmentation` of one level (see the module docstring for each level's parameters).

    Example:
        >>> augmentation = build_augmentation("brightness", seed=0)
        >>> augmentation.op_names
        ['flip', 'brightness', 'clip']
        >>> augmentation(tf.fill([2, 112, 112, 3], 128.0), tf.constant([0, 1], tf.int64)).shape
        TensorShape([2, 112, 112, 3])
    """
    level = LEVEL_NAMES.get(level, level) if isinstance(level, str) else level
    ops: list[AugmentOp] = [HorizontalFlip(0.5)]
    if level == "randaugment":
        ops.append(FaceRandAugment(magnitude, num_ops, official=official_randaugment))
    elif isinstance(level, int) and not isinstance(level, bool) and 0 <= level <= 3:
        ops += _level_ops(level, crop_size, image_size)
    else:
        raise DataError(f"unknown augmentation level {level!r}: use 0-3, {sorted(LEVEL_NAMES)} or None")
    if erase_probability > 0:
        ops.append(RandomCutout(erase_probability, erase_size))
    if mask_probability > 0:
        ops.append(LowerFaceMask(mask_probability))
    return Augmentation(ops, seed=seed, name=f"augment_{level}")


def _level_ops(level: int, crop_size: int, image_size: int) -> list[AugmentOp]:
    """The official `RandomProcessImage(random_status=level)` ops after the flip."""
    ops: list[AugmentOp] = []
    if level >= 1:
        ops.append(RandomBrightnessDelta(12.75 * level))
    if level >= 2:
        ops.append(RandomContrastFactor(1 - 0.1 * level, 1 + 0.1 * level))
        ops.append(RandomSaturationFactor(1 - 0.1 * level, 1 + 0.1 * level))
    if level >= 3:
        if crop_size > image_size:
            raise DataError(f"crop_size {crop_size} is larger than image_size {image_size}")
        ops.append(RandomCropResize(crop_size, image_size))
    if level >= 1:
        ops.append(ClipPixels())
    return ops


def resolve_augmentation(augment, image_size: int = 112, seed: int | None = None):
    """The `augment=` argument of the dataset builders as an `Augmentation`, a plain callable, or None.

    A level or an `AugmentConfig` without its own seed uses `seed` (the dataset's). A plain callable is
    returned as it is and will be called as `fn(pixels)` inside a `tf.data` map, so it must be
    TensorFlow-traceable (Keras layers only work there under the TensorFlow backend).

    Example:
        >>> resolve_augmentation("flip", seed=3).op_names, resolve_augmentation("none")
        (['flip'], None)
    """
    if augment is None or (isinstance(augment, str) and augment == "none") or (isinstance(augment, int) and augment == -1):
        return None
    if isinstance(augment, Augmentation):
        return augment
    if isinstance(augment, AugmentConfig):
        return (augment if augment.seed is not None else dataclasses.replace(augment, seed=seed)).build()
    if isinstance(augment, (int, str)) and not isinstance(augment, bool):
        return build_augmentation(augment, image_size=image_size, seed=seed)
    if callable(augment):
        return augment
    raise DataError(
        f"augment must be None, a level (0-3 or a name), an AugmentConfig, an Augmentation or a callable; got {augment!r}"
    )
