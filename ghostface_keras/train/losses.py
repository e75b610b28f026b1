"""Margin losses on cosine logits: ArcFace / CombinedMargin, CosFace, MagFace, AdaFace.

Every loss receives `y_pred` = the cosines from `ghostface_keras.train.heads.NormDense` (B x C; MagFace and
AdaFace also need the extra last column `-||x||`, i.e. a head built with `append_norm=True`) and
`y_true` = integer class labels (B or B x 1). Only the target class's cosine is changed by a margin;
all logits are then multiplied by the scale `s` and fed to softmax cross-entropy, optionally with label
smoothing `(1 - ls) * onehot + ls / C`. The losses return one value per sample; Keras averages them
(and, under a distribution strategy, divides by the number of replicas so that gradients are those of the
global batch).

NaN safety: every `acos`/`sqrt` of a cosine is taken on a value clipped to [-1 + eps, 1 - eps], so a cosine
that rounds to +-1 (identical vectors, float16 rounding) gives finite values and gradients.
"""

from __future__ import annotations

import math

import keras
from keras import ops

_COSINE_EPSILON = 1e-7


def _labels_and_onehot(y_true, num_classes: int):
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return labels, ops.one_hot(labels, num_classes, dtype="float32")


def _smoothed_cross_entropy(onehot, logits, label_smoothing: float):
    if label_smoothing:
        num_classes = ops.cast(ops.shape(onehot)[-1], "float32")
        onehot = onehot * (1.0 - label_smoothing) + label_smoothing / num_classes
    return keras.losses.categorical_crossentropy(onehot, logits, from_logits=True)


class _MarginLoss(keras.losses.Loss):
    """Shared plumbing: split off the norm column, apply `target_logit`, scale, cross-entropy."""

    needs_norm = False

    def __init__(self, scale: float, label_smoothing: float = 0.0, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = float(scale)
        self.label_smoothing = float(label_smoothing)

    def target_logit(self, cosines, norms):
        """The margined cosine of the target class, for every sample (B,)."""
        raise NotImplementedError

    def state_variables(self) -> list:
        """Non-trainable variables the loss updates while training (saved with the training state)."""
        return []

    def norm_regularizer(self, norms):
        """A per-sample term added to the cross-entropy, from the raw embedding norms (B,); None for none.
        (MagFace's g(a); the class-sharded head, `ghostface_keras.train.sharded`, adds it the same way.)"""
        return None

    def margined_logits(self, y_true, y_pred):
        """Scaled logits with the margin applied at the target class (what the softmax sees)."""
        y_pred = ops.cast(y_pred, "float32")
        if self.needs_norm:
            cosines, norms = y_pred[:, :-1], -y_pred[:, -1]
        else:
            cosines, norms = y_pred, None
        cosines = ops.clip(cosines, -1.0 + _COSINE_EPSILON, 1.0 - _COSINE_EPSILON)
        labels, onehot = _labels_and_onehot(y_true, ops.shape(cosines)[-1])
        target_cosine = ops.sum(cosines * onehot, axis=1)
        target = self.target_logit(target_cosine, norms)
        logits = cosines + onehot * ops.expand_dims(target - target_cosine, 1)
        return self.scale * logits, onehot, norms

    def call(self, y_true, y_pred):
        logits, onehot, _ = self.margined_logits(y_true, y_pred)
        return _smoothed_cross_entropy(onehot, logits, self.label_smoothing)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(scale=self.scale, label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ArcFace(_MarginLoss):
    """Additive angular margin (ArcFace) and the combined-margin family.

    Target logit: `phi = cos(m1 * theta + m2) - m3` with `theta = acos(cos_y)`; every logit is then `s *`
    (target `phi`, others `cos_j`). Defaults: m1 = 1, m2 = 0.5, m3 = 0, s = 64 (the official recipe
    starts with s = 32 for one epoch). m1 gives SphereFace's multiplicative margin, m2 ArcFace's additive
    angular margin, m3 CosFace's additive cosine margin (CombinedMargin of insightface).

    Once `m1 * theta + m2` passes pi, `phi` would start rising again; as in the official code the logit
    continues monotonically instead: `-2 * (1 + m3) - phi` (both pieces equal `-1 - m3` at the joint).

    Example:
        >>> import numpy as np
        >>> loss = ArcFace(scale=64.0, margin=0.5)
        >>> cosines = np.array([[0.9, 0.1], [0.2, 0.7]], dtype="float32")
        >>> round(float(loss(np.array([0, 1]), cosines)), 3) > 0
        True
    """

    def __init__(
        self,
        scale: float = 64.0,
        margin: float = 0.5,
        multiplicative_margin: float = 1.0,
        cosine_margin: float = 0.0,
        label_smoothing: float = 0.0,
        name: str = "arcface",
        **kwargs,
    ):
        super().__init__(scale, label_smoothing, name=name, **kwargs)
        self.margin = float(margin)
        self.multiplicative_margin = float(multiplicative_margin)
        self.cosine_margin = float(cosine_margin)
        self._threshold = math.cos((math.pi - self.margin) / self.multiplicative_margin)

    def target_logit(self, cosines, norms):
        theta = ops.arccos(cosines)
        phi = ops.cos(self.multiplicative_margin * theta + self.margin) - self.cosine_margin
        continued = -2.0 * (1.0 + self.cosine_margin) - phi
        return ops.where(cosines > self._threshold, phi, continued)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            margin=self.margin,
            multiplicative_margin=self.multiplicative_margin,
            cosine_margin=self.cosine_margin,
        )
        return config


CombinedMargin = ArcFace


@keras.saving.register_keras_serializable(package="ghostface_keras")
class CosFace(_MarginLoss):
    """Large-margin cosine loss: target logit `cos_y - m`, all logits times s. Defaults m = 0.35, s = 64.

    Example:
        >>> import numpy as np
        >>> loss = CosFace(scale=30.0, margin=0.35)
        >>> float(loss(np.array([0]), np.array([[0.5, 0.5]], dtype="float32"))) > float(np.log(2))
        True
    """

    def __init__(self, scale: float = 64.0, margin: float = 0.35, label_smoothing: float = 0.0,
                 name: str = "cosface", **kwargs):
        super().__init__(scale, label_smoothing, name=name, **kwargs)
        self.margin = float(margin)

    def target_logit(self, cosines, norms):
        return cosines - self.margin

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(margin=self.margin)
        return config


@keras.saving.register_keras_serializable(package="ghostface_keras")
class MagFace(_MarginLoss):
    """Magnitude-aware margin (MagFace, Meng et al. 2021). Needs `NormDense(append_norm=True)`.

    With `a = clip(||x||, l_a, u_a)` the raw embedding norm:
      margin `m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m`,
      target logit `min(cos(theta + m(a)), cos_y)` (the margin never raises the logit), all logits times s,
      loss `CE + lambda_g * g(a)` with the regularizer `g(a) = a / u_a**2 + 1 / a`.
    Paper defaults: l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35, s = 64.

    Example:
        >>> import numpy as np
        >>> loss = MagFace()
        >>> y_pred = np.array([[0.8, 0.1, -30.0]], dtype="float32")  # 2 cosines, then -||x|| = -30
        >>> float(loss(np.array([0]), y_pred)) > 0
        True
    """

    needs_norm = True

    def __init__(
        self,
        scale: float = 64.0,
        min_norm: float = 10.0,
        max_norm: float = 110.0,
        min_margin: float = 0.45,
        max_margin: float = 0.8,
        regularizer_weight: float = 35.0,
        label_smoothing: float = 0.0,
        name: str = "magface",
        **kwargs,
    ):
        super().__init__(scale, label_smoothing, name=name, **kwargs)
        self.min_norm, self.max_norm = float(min_norm), float(max_norm)
        self.min_margin, self.max_margin = float(min_margin), float(max_margin)
        self.regularizer_weight = float(regularizer_weight)

    def _clipped_norm(self, norms):
        return ops.clip(norms, self.min_norm, self.max_norm)

    def target_logit(self, cosines, norms):
        magnitude = self._clipped_norm(norms)
        slope = (self.max_margin - self.min_margin) / (self.max_norm - self.min_norm)
        margin = slope * (magnitude - self.min_norm) + self.min_margin
        phi = ops.cos(ops.arccos(cosines) + margin)
        return ops.minimum(phi, cosines)

    def norm_regularizer(self, norms):
        magnitude = self._clipped_norm(norms)
        return self.regularizer_weight * (magnitude / self.max_norm**2 + 1.0 / magnitude)

    def call(self, y_true, y_pred):
        logits, onehot, norms = self.margined_logits(y_true, y_pred)
        return _smoothed_cross_entropy(onehot, logits, self.label_smoothing) + self.norm_regularizer(norms)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(min_norm=self.min_norm, max_norm=self.max_norm, min_margin=self.min_margin,
                      max_margin=self.max_margin, regularizer_weight=self.regularizer_weight)
        return config


@keras.saving.register_keras_serializable(package="ghostface_keras")
class AdaFace(_MarginLoss):
    """Quality-adaptive margin (AdaFace, Kim et al. 2022). Needs `NormDense(append_norm=True)`.

    The embedding norm `n = clip(||x||, 1e-3, 100)` is a proxy of image quality. With running statistics
    `mean`, `std` of n (EMA with momentum `alpha` = 0.01 of the batch mean and unbiased batch std, started
    at 20 and 100 as officially) the normalized quality is `z = clip(h * (n - mean) / (std + 1e-3), -1, 1)`
    (gradient stopped), and the target logit is
    `cos(clip(theta - m * z, eps, pi - eps)) - (m + m * z)`; all logits times s.
    Defaults: m = 0.4, h = 0.333, s = 64. The statistics are updated on every call with `training=True`
    semantics (every loss evaluation in `fit`); create the loss inside `strategy.scope()` when training on
    several devices, so the statistics are mirrored variables. `Trainer` saves them with its training
    state and restores them on resume (`state_variables`).

    Example:
        >>> import numpy as np
        >>> loss = AdaFace()
        >>> y_pred = np.array([[0.5, 0.3, -20.0]], dtype="float32")  # 2 cosines, then -||x|| = -20 (the running mean)
        >>> round(float(loss(np.array([0]), y_pred)), 2)   # z = 0: target 0.5 - m = 0.1, loss ~ 64 * (0.3 - 0.1)
        12.8
        >>> float(loss.running_mean), float(loss.running_std)   # updated: std 0.99 * 100 + 0.01 * 0 (one sample)
        (20.0, 99.0)
    """

    needs_norm = True

    def __init__(self, scale: float = 64.0, margin: float = 0.4, norm_scale: float = 0.333,
                 momentum: float = 0.01, label_smoothing: float = 0.0, name: str = "adaface", **kwargs):
        super().__init__(scale, label_smoothing, name=name, **kwargs)
        self.margin, self.norm_scale, self.momentum = float(margin), float(norm_scale), float(momentum)
        self.running_mean = keras.Variable(20.0, trainable=False, name="adaface_norm_mean", aggregation="mean")
        self.running_std = keras.Variable(100.0, trainable=False, name="adaface_norm_std", aggregation="mean")

    def state_variables(self) -> list:
        return [self.running_mean, self.running_std]

    def _update_statistics(self, norms):
        batch_mean = ops.mean(norms)
        count = ops.cast(ops.shape(norms)[0], "float32")
        batch_std = ops.sqrt(ops.sum(ops.square(norms - batch_mean)) / ops.maximum(count - 1.0, 1.0))
        self.running_mean.assign(self.momentum * batch_mean + (1.0 - self.momentum) * self.running_mean)
        self.running_std.assign(self.momentum * batch_std + (1.0 - self.momentum) * self.running_std)

    def target_logit(self, cosines, norms):
        norms = ops.stop_gradient(ops.clip(norms, 1e-3, 100.0))
        self._update_statistics(norms)
        quality = (norms - self.running_mean) / (self.running_std + 1e-3)
        quality = ops.stop_gradient(ops.clip(self.norm_scale * quality, -1.0, 1.0))
        theta = ops.arccos(cosines)
        angle = ops.clip(theta - self.margin * quality, 1e-3, math.pi - 1e-3)
        return ops.cos(angle) - (self.margin + self.margin * quality)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(margin=self.margin, norm_scale=self.norm_scale, momentum=self.momentum)
        return config


_LOSSES = {"arcface": ArcFace, "cosface": CosFace, "magface": MagFace, "adaface": AdaFace}


def get_margin_loss(name: str, **kwargs) -> _MarginLoss:
    """Build a margin loss by name (`arcface`, `cosface`, `magface`, `adaface`); None-valued kwargs use defaults.

    Example:
        >>> get_margin_loss("cosface", scale=30.0).scale
        30.0
    """
    key = name.lower()
    if key not in _LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(_LOSSES)}")
    return _LOSSES[key](**{k: v for k, v in kwargs.items() if v is not None})
