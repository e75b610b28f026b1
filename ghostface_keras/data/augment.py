"""Training augmentation as Keras preprocessing layers, chosen by named level.

Every layer works on float32 batches of RGB pixels in [0, 255] (before normalization) and draws an
independent random value per image. The levels reproduce the official GhostFaceNets
`RandomProcessImage(random_status=rs)` distributions exactly; each level adds to the previous one:

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
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from ghostface_keras.errors import DataError

LEVEL_NAMES = {"flip": 0, "brightness": 1, "color": 2, "crop": 3, "randaugment": "randaugment"}
GREY = 128.0


@dataclass
class AugmentConfig:
    """A named augmentation recipe; `build()` turns it into a Keras layer.

    Example:
        >>> layer = AugmentConfig(level="crop", mask_probability=0.2, seed=1).build()
        >>> layer(tf.zeros([2, 112, 112, 3])).shape
        TensorShape([2, 112, 112, 3])
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

    def build(self) -> keras.Sequential:
        return build_augmentation(**self.__dict__)


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
) -> keras.Sequential:
    """The augmentation layer stack of one level (see the module docstring for each level's parameters).

    Example:
        >>> augment = build_augmentation("brightness", seed=0)
        >>> [type(layer).__name__ for layer in augment.layers]
        ['RandomFlip', 'RandomBrightnessDelta', 'ClipPixels']
    """
    level = LEVEL_NAMES.get(level, level) if isinstance(level, str) else level
    seeds = _SeedSequence(seed)
    layers: list[keras.layers.Layer] = [keras.layers.RandomFlip("horizontal", seed=seeds.next(), name="random_flip")]
    if level == "randaugment":
        layers.append(FaceRandAugment(magnitude, num_ops, official=official_randaugment, seed=seeds.next()))
    elif isinstance(level, int) and 0 <= level <= 3:
        if level >= 1:
            layers.append(RandomBrightnessDelta(12.75 * level, seed=seeds.next()))
        if level >= 2:
            layers.append(RandomContrastFactor(1 - 0.1 * level, 1 + 0.1 * level, seed=seeds.next()))
            layers.append(RandomSaturationFactor(1 - 0.1 * level, 1 + 0.1 * level, seed=seeds.next()))
        if level >= 3:
            layers.append(RandomCropResize(crop_size, image_size, seed=seeds.next()))
        if level >= 1:
            layers.append(ClipPixels())
    else:
        raise DataError(f"unknown augmentation level {level!r}: use 0-3, {sorted(LEVEL_NAMES)} or None")
    if erase_probability > 0:
        layers.append(RandomCutout(erase_probability, erase_size, seed=seeds.next(), name="random_erasing"))
    if mask_probability > 0:
        layers.append(LowerFaceMask(mask_probability, seed=seeds.next()))
    return keras.Sequential(layers, name=f"augment_{level}")


def resolve_augmentation(augment, image_size: int = 112, seed: int | None = None):
    """Turn the `augment=` argument of the dataset builders into a callable on float batches (or None)."""
    if augment is None or augment == "none" or augment == -1:
        return None
    if isinstance(augment, AugmentConfig):
        return augment.build()
    if isinstance(augment, (int, str)) and not isinstance(augment, bool):
        return build_augmentation(augment, image_size=image_size, seed=seed)
    if callable(augment):
        return augment
    raise DataError(f"augment must be None, a level (0-3 or a name), an AugmentConfig or a layer; got {augment!r}")


class _SeedSequence:
    """Distinct seeds for the layers of one stack, all derived from the user's seed (or all None)."""

    def __init__(self, seed: int | None):
        self.seed, self.count = seed, 0

    def next(self) -> int | None:
        self.count += 1
        return None if self.seed is None else self.seed * 1009 + self.count


class _RandomLayer(keras.layers.Layer):
    """Base of the per-image random layers: one seed generator, per-image uniform draws."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def per_image_uniform(self, images, low, high):
        return keras.random.uniform((tf.shape(images)[0], 1, 1, 1), low, high, seed=self.seed_generator)

    def per_image_coin(self, images, probability):
        return self.per_image_uniform(images, 0.0, 1.0) < probability

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


class RandomBrightnessDelta(_RandomLayer):
    """Add one delta ~ U(-max_delta, max_delta) (on the 0-255 scale) to every pixel of an image."""

    def __init__(self, max_delta: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.max_delta = float(max_delta)

    def call(self, images, training=True):
        if not training:
            return images
        return images + self.per_image_uniform(images, -self.max_delta, self.max_delta)

    def get_config(self):
        return {**super().get_config(), "max_delta": self.max_delta}


class RandomContrastFactor(_RandomLayer):
    """`tf.image.adjust_contrast` with a factor ~ U(lower, upper): (x - channel mean) * f + channel mean."""

    def __init__(self, lower: float, upper: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.lower, self.upper = float(lower), float(upper)

    def call(self, images, training=True):
        if not training:
            return images
        factor = self.per_image_uniform(images, self.lower, self.upper)
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        return (images - mean) * factor + mean

    def get_config(self):
        return {**super().get_config(), "lower": self.lower, "upper": self.upper}


class RandomSaturationFactor(RandomContrastFactor):
    """`tf.image.adjust_saturation` with a factor ~ U(lower, upper): HSV saturation scaled, clipped to 1."""

    def call(self, images, training=True):
        if not training:
            return images
        factor = self.per_image_uniform(images, self.lower, self.upper)[..., 0]
        # HSV needs [0, 1]; pixels brightened past 255 are clipped here, as the official op's would be on V
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 255.0) / 255.0)
        saturation = tf.clip_by_value(hsv[..., 1] * factor, 0.0, 1.0)
        hsv = tf.stack([hsv[..., 0], saturation, hsv[..., 2]], axis=-1)
        return tf.image.hsv_to_rgb(hsv) * 255.0


class RandomCropResize(_RandomLayer):
    """A random crop_size x crop_size window of each image, resized (bilinear) back to output_size."""

    def __init__(self, crop_size: int = 100, output_size: int = 112, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.crop_size, self.output_size = int(crop_size), int(output_size)

    def call(self, images, training=True):
        if not training:
            return images
        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)
        batch = tf.shape(images)[0]
        top = tf.floor(keras.random.uniform((batch,), 0.0, 1.0, seed=self.seed_generator) * (height - self.crop_size + 1))
        left = tf.floor(keras.random.uniform((batch,), 0.0, 1.0, seed=self.seed_generator) * (width - self.crop_size + 1))
        # crop_and_resize boxes are normalized corner coordinates of the first and last pixel centres
        boxes = tf.stack(
            [top / (height - 1), left / (width - 1), (top + self.crop_size - 1) / (height - 1), (left + self.crop_size - 1) / (width - 1)],
            axis=1,
        )
        return tf.image.crop_and_resize(images, boxes, tf.range(batch), [self.output_size, self.output_size])

    def get_config(self):
        return {**super().get_config(), "crop_size": self.crop_size, "output_size": self.output_size}


class ClipPixels(keras.layers.Layer):
    """Clip to the valid pixel range [0, 255] after the photometric changes."""

    def call(self, images):
        return tf.clip_by_value(images, 0.0, 255.0)


class RandomCutout(_RandomLayer):
    """With probability p per image, fill a size x size square at a uniformly random centre with grey (128)."""

    def __init__(self, probability: float, size: int = 40, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.probability, self.size = float(probability), int(size)

    def call(self, images, training=True):
        if not training:
            return images
        return _cutout(images, self.size, self.per_image_coin(images, self.probability), self.seed_generator)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability, "size": self.size}


class LowerFaceMask(_RandomLayer):
    """With probability p per image, grey out every row from a random row in [0.55 H, 0.7 H) down (a face mask)."""

    def __init__(self, probability: float, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.probability = float(probability)

    def call(self, images, training=True):
        if not training:
            return images
        height = tf.shape(images)[1]
        first = tf.cast(0.55 * tf.cast(height, tf.float32), tf.int32)
        last = tf.cast(0.7 * tf.cast(height, tf.float32), tf.int32)
        start = keras.random.randint((tf.shape(images)[0], 1, 1, 1), first, last, seed=self.seed_generator)
        rows = tf.reshape(tf.range(height), [1, -1, 1, 1])
        masked = tf.logical_and(rows >= start, self.per_image_coin(images, self.probability))
        return tf.where(masked, GREY, images)

    def get_config(self):
        return {**super().get_config(), "probability": self.probability}


def _cutout(images, size, apply, seed_generator):
    shape = tf.shape(images)
    centre_y = keras.random.randint((shape[0], 1, 1, 1), 0, shape[1], seed=seed_generator)
    centre_x = keras.random.randint((shape[0], 1, 1, 1), 0, shape[2], seed=seed_generator)
    rows = tf.reshape(tf.range(shape[1]), [1, -1, 1, 1])
    cols = tf.reshape(tf.range(shape[2]), [1, 1, -1, 1])
    half = size // 2
    inside = (tf.abs(rows - centre_y) < half) | (rows - centre_y == -half)
    inside &= (tf.abs(cols - centre_x) < half) | (cols - centre_x == -half)
    return tf.where(inside & apply, GREY, images)


class FaceRandAugment(_RandomLayer):
    """RandAugment restricted to photometric ops (face crops are aligned: no rotate/shear/translate).

    Each of `num_ops` rounds picks, per image, one of AutoContrast, Equalize, Color, Contrast, Brightness,
    Sharpness, Cutout or identity (1/8 each) and applies it at `magnitude` m in [0, 10]:
    enhance ops blend with factor 1 + s * 0.9 * m / 10, s = +-1 at random (so m = 5 gives 0.55 or 1.45);
    Cutout fills a grey square of side 2 * int(4 * m) px. `official=True` uses the official fixed factor
    1.8 * m / 10 + 0.1 instead, which is exactly 1 (no change) at the official m = 5.
    """

    def __init__(self, magnitude: float = 5.0, num_ops: int = 2, official: bool = False, seed: int | None = None, **kwargs):
        super().__init__(seed, **kwargs)
        self.magnitude, self.num_ops, self.official = float(magnitude), int(num_ops), bool(official)

    def get_config(self):
        return {**super().get_config(), "magnitude": self.magnitude, "num_ops": self.num_ops, "official": self.official}

    def _factor(self, images):
        if self.official:
            return tf.fill([tf.shape(images)[0], 1, 1, 1], self.magnitude / 10.0 * 1.8 + 0.1)
        sign = tf.where(self.per_image_coin(images, 0.5), 1.0, -1.0)
        return 1.0 + sign * 0.9 * self.magnitude / 10.0

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.round(tf.clip_by_value(images, 0.0, 255.0))  # the ops are defined on 8-bit pixels
        for _ in range(self.num_ops):
            choice = keras.random.randint((tf.shape(images)[0], 1, 1, 1), 0, 8, seed=self.seed_generator)
            factor = self._factor(images)
            candidates = [
                _autocontrast(images),
                _equalize(images),
                _blend(_grayscale(images), images, factor),
                _blend(tf.reduce_mean(_grayscale(images), axis=[1, 2, 3], keepdims=True), images, factor),
                _blend(tf.zeros_like(images), images, factor),
                _blend(_smooth(images), images, factor),
                _cutout(images, 2 * int(self.magnitude / 10.0 * 40), tf.constant(True), self.seed_generator),
            ]
            result = images
            for index, candidate in enumerate(candidates):
                result = tf.where(tf.equal(choice, index), candidate, result)
            images = tf.round(result)
        return images


def _blend(degenerate, images, factor):
    return tf.clip_by_value(degenerate + factor * (images - degenerate), 0.0, 255.0)


def _grayscale(images):
    return tf.broadcast_to(tf.image.rgb_to_grayscale(images), tf.shape(images))


def _autocontrast(images):
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    stretched = (images - low) * (255.0 / tf.maximum(high - low, 1.0))
    return tf.where(high > low, stretched, images)


def _smooth(images):
    """PIL's SMOOTH kernel (centre 5, neighbours 1, /13) inside, original pixels on the 1-px border."""
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smoothed = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
    shape = tf.shape(images)
    interior = tf.pad(tf.ones([shape[1] - 2, shape[2] - 2]), [[1, 1], [1, 1]])[None, :, :, None] > 0
    return tf.where(interior, tf.round(smoothed), images)


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
