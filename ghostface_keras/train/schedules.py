"""Learning-rate schedules: functions of the *global* batch index, evaluated inside the compiled train step.

Each is a `keras.optimizers.schedules.LearningRateSchedule`, so it can be given straight to an optimizer and
is saved with it. `Trainer` wraps them in `ShiftedSchedule` (global index = optimizer.iterations + offset),
which survives new optimizers between training stages and resuming at any epoch without per-batch Python
work; `callbacks.LearningRateCallback` is the per-batch callback alternative.

Example:
    >>> schedule = build_schedule("step", lr_base=0.1, steps_per_epoch=100, epochs=10)
    >>> round(float(schedule(0)), 4), round(float(schedule(700)), 4), round(float(schedule(950)), 5)
    (0.1, 0.01, 0.001)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

# Enough restart periods for any realistic run (with t_mul=2 the 30th period starts ~2**30 epochs in).
_MAX_RESTARTS = 30


@keras.saving.register_keras_serializable(package="ghostface_keras")
class CosineRestarts(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay with warm restarts, linear warm-up and a cooldown at `lr_min` after each period.

    The official GhostFaceNets semantics (per batch), with `spe` = steps per epoch:
      * warm-up: `warmup_epochs * spe` steps rising linearly from `lr_min` to `lr_base`;
      * period k (k = 0, 1, ...) lasts `first_restart_epochs * t_mul**k` epochs; at position f in [0, 1)
        of it, `lr = lr_min + (lr_base - lr_min) * m_mul**k * (1 + cos(pi * f)) / 2`
        (the floor stays `lr_min`, it is not multiplied by m_mul**k);
      * after each period, `cooldown_epochs` epochs at `lr_min`.
    The official recipe (lr_base 0.1, first restart 45 epochs, m_mul 0.5, lr_min 1e-5, 1 cooldown epoch)
    gives: epochs 0-44 cosine 0.1 -> 1.3e-4, epoch 45 at 1e-5, epochs 46.. restart at 0.05.

    Example:
        >>> schedule = CosineRestarts(0.1, first_restart_epochs=45, steps_per_epoch=100)
        >>> round(float(schedule(46 * 100)), 4)
        0.05
    """

    def __init__(
        self,
        lr_base: float = 0.1,
        first_restart_epochs: float = 45,
        steps_per_epoch: int = 1,
        m_mul: float = 0.5,
        t_mul: float = 2.0,
        lr_min: float = 1e-5,
        warmup_epochs: float = 0,
        cooldown_epochs: float = 1,
    ):
        self.lr_base, self.lr_min = float(lr_base), float(lr_min)
        self.first_restart_epochs, self.steps_per_epoch = float(first_restart_epochs), int(steps_per_epoch)
        self.m_mul, self.t_mul = float(m_mul), float(t_mul)
        self.warmup_epochs, self.cooldown_epochs = float(warmup_epochs), float(cooldown_epochs)
        lengths = [self.first_restart_epochs * self.t_mul**k * self.steps_per_epoch for k in range(_MAX_RESTARTS)]
        cooldown = self.cooldown_epochs * self.steps_per_epoch
        starts = np.cumsum([0.0] + [length + cooldown for length in lengths[:-1]])
        self._period_starts = starts.tolist()
        self._period_lengths = lengths
        self._period_peaks = [(self.lr_base - self.lr_min) * self.m_mul**k for k in range(_MAX_RESTARTS)]

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = self.warmup_epochs * self.steps_per_epoch
        warming = self.lr_min + (self.lr_base - self.lr_min) * step / max(warmup, 1.0)
        position = step - warmup
        period = ops.sum(ops.cast(ops.convert_to_tensor(self._period_starts) <= position, "int32")) - 1
        period = ops.maximum(period, 0)
        start = ops.take(ops.convert_to_tensor(self._period_starts), period)
        length = ops.take(ops.convert_to_tensor(self._period_lengths), period)
        peak = ops.take(ops.convert_to_tensor(self._period_peaks), period)
        fraction = (position - start) / length
        cosine = self.lr_min + peak * 0.5 * (1.0 + ops.cos(math.pi * ops.minimum(fraction, 1.0)))
        decayed = ops.where(fraction >= 1.0, self.lr_min, cosine)
        return ops.where(step < warmup, warming, decayed)

    def get_config(self) -> dict:
        return dict(lr_base=self.lr_base, first_restart_epochs=self.first_restart_epochs,
                    steps_per_epoch=self.steps_per_epoch, m_mul=self.m_mul, t_mul=self.t_mul,
                    lr_min=self.lr_min, warmup_epochs=self.warmup_epochs, cooldown_epochs=self.cooldown_epochs)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ExponentialEpochDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr = max(lr_base * gamma**(epoch - warmup), lr_min)` per epoch, after a linear warm-up from lr_min.

    The improved-MobileFaceNet paper uses gamma = 0.998; the official exponential scheduler is the same with
    `gamma = exp(-rate)`.

    Example:
        >>> round(float(ExponentialEpochDecay(0.1, gamma=0.5, steps_per_epoch=10)(25)), 3)
        0.025
    """

    def __init__(self, lr_base: float = 0.1, gamma: float = 0.998, steps_per_epoch: int = 1,
                 lr_min: float = 1e-6, warmup_epochs: int = 0):
        self.lr_base, self.gamma, self.lr_min = float(lr_base), float(gamma), float(lr_min)
        self.steps_per_epoch, self.warmup_epochs = int(steps_per_epoch), int(warmup_epochs)

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        warming = self.lr_min + (self.lr_base - self.lr_min) * epoch / max(self.warmup_epochs, 1)
        decayed = self.lr_base * ops.power(self.gamma, epoch - self.warmup_epochs)
        return ops.maximum(ops.where(epoch < self.warmup_epochs, warming, decayed), self.lr_min)

    def get_config(self) -> dict:
        return dict(lr_base=self.lr_base, gamma=self.gamma, steps_per_epoch=self.steps_per_epoch,
                    lr_min=self.lr_min, warmup_epochs=self.warmup_epochs)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class StepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """`lr = lr_base * rate**(number of boundaries <= epoch)`: constant LR dropped at the given epochs.

    Example:
        >>> schedule = StepDecay(0.1, boundaries=[3, 5], rate=0.1, steps_per_epoch=10)
        >>> [round(float(schedule(e * 10)), 4) for e in (0, 3, 5)]
        [0.1, 0.01, 0.001]
    """

    def __init__(self, lr_base: float = 0.1, boundaries: Sequence[int] = (), rate: float = 0.1,
                 steps_per_epoch: int = 1):
        self.lr_base, self.rate, self.steps_per_epoch = float(lr_base), float(rate), int(steps_per_epoch)
        self.boundaries = [int(b) for b in boundaries]

    def __call__(self, step):
        epoch = ops.floor(ops.cast(step, "float32") / self.steps_per_epoch)
        passed = sum(ops.cast(epoch >= b, "float32") for b in self.boundaries) if self.boundaries else 0.0
        return self.lr_base * ops.power(self.rate, passed)

    def get_config(self) -> dict:
        return dict(lr_base=self.lr_base, boundaries=self.boundaries, rate=self.rate,
                    steps_per_epoch=self.steps_per_epoch)


def build_schedule(name: str, lr_base: float, steps_per_epoch: int, epochs: int,
                   lr_min: float = 1e-5, warmup_epochs: float = 0) -> keras.optimizers.schedules.LearningRateSchedule:
    """The CLI's `--schedule` choices. `cosine` is a single cosine over the run unless `epochs` exceeds the
    official first restart (45 epochs), `exponential` uses gamma 0.998 per epoch, `step` drops x0.1 at 60% and
    85% of the run, `constant` keeps `lr_base`.

    Example:
        >>> round(float(build_schedule("cosine", 0.1, steps_per_epoch=10, epochs=4)(0)), 3)
        0.1
    """
    if name == "cosine":
        first = min(45, max(epochs - warmup_epochs, 1))
        return CosineRestarts(lr_base, first, steps_per_epoch, lr_min=lr_min, warmup_epochs=warmup_epochs)
    if name == "exponential":
        return ExponentialEpochDecay(lr_base, 0.998, steps_per_epoch, lr_min=lr_min, warmup_epochs=int(warmup_epochs))
    if name == "step":
        boundaries = sorted({max(1, round(epochs * 0.6)), max(1, round(epochs * 0.85))})
        return StepDecay(lr_base, boundaries, 0.1, steps_per_epoch)
    if name == "constant":
        return StepDecay(lr_base, (), 1.0, steps_per_epoch)
    raise ValueError(f"unknown schedule {name!r}; choose cosine, exponential, step or constant")


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ShiftedSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step + offset)`: a schedule of the global batch index driven by an optimizer's own counter.

    A Keras optimizer evaluates its schedule inside the compiled train step at `optimizer.iterations`, with
    no Python work per batch. A new optimizer (a new training stage) starts counting at 0, a restored one
    at its saved count; `offset` = global batch index - `optimizer.iterations` makes both continue the run's
    single schedule. `Trainer` sets it at the start of every stage.

    Example:
        >>> schedule = ShiftedSchedule(StepDecay(0.1, [1], 0.1, steps_per_epoch=10), offset=10)
        >>> round(float(schedule(0)), 4)
        0.01
    """

    def __init__(self, schedule, offset: int = 0):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule, self.offset = schedule, int(offset)

    def __call__(self, step):
        return self.schedule(ops.cast(step, "float32") + float(self.offset))

    def get_config(self) -> dict:
        return dict(schedule=keras.saving.serialize_keras_object(self.schedule), offset=self.offset)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class HeadFirstSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """`head_lr` for the first `head_steps` batches (head-only fine-tuning), then `schedule(step)`.

    Example:
        >>> schedule = HeadFirstSchedule(StepDecay(0.001), head_lr=0.01, head_steps=5)
        >>> [round(float(schedule(s)), 4) for s in (4, 5)]
        [0.01, 0.001]
    """

    def __init__(self, schedule, head_lr: float, head_steps: int):
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule, self.head_lr, self.head_steps = schedule, float(head_lr), int(head_steps)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        later = ops.cast(self.schedule(step), "float32")
        return ops.where(step < float(self.head_steps), ops.cast(self.head_lr, "float32"), later)

    def get_config(self) -> dict:
        return dict(schedule=keras.saving.serialize_keras_object(self.schedule), head_lr=self.head_lr,
                    head_steps=self.head_steps)
