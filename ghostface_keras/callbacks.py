"""Training callbacks: learning-rate schedules, verification, history (JSON + PNG), NaN guard.

Schedules are `keras.optimizers.schedules.LearningRateSchedule` objects of the *global* batch index, so
they can be given straight to an optimizer and are evaluated inside the compiled train step. `Trainer`
wraps them in `ShiftedSchedule` (global index = optimizer.iterations + offset), which survives new
optimizers between training stages and resuming at any epoch without per-batch Python work;
`LearningRateCallback` is the per-batch callback alternative.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import keras
import numpy as np
from keras import ops

from ghostface_keras.preprocessing import normalize_images

logger = logging.getLogger(__name__)

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


class EpochStartLearningRate(keras.callbacks.Callback):
    """Records `schedule(epoch * steps_per_epoch)` at every epoch start for the history (no per-batch work).

    Example:
        >>> callback = EpochStartLearningRate(StepDecay(0.1, [2]), steps_per_epoch=100)
    """

    def __init__(self, schedule: Callable, steps_per_epoch: int):
        super().__init__()
        self.schedule, self.steps_per_epoch = schedule, int(steps_per_epoch)
        self.epoch_start_lr: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start_lr = float(self.schedule(epoch * self.steps_per_epoch))


class LearningRateCallback(keras.callbacks.Callback):
    """Sets the optimizer's LR before every batch from `schedule(epoch * steps_per_epoch + batch)`.

    Because the global step comes from Keras' epoch counter (which `fit(initial_epoch=...)` continues), the
    schedule continues across stages with new optimizers and across `--resume`. This costs Python work on
    every batch (and an LR variable write): `Trainer` uses the in-graph `ShiftedSchedule` instead; this
    callback is for optimizers whose learning rate must stay a variable.

    Example:
        >>> callback = LearningRateCallback(StepDecay(0.1, [2]), steps_per_epoch=100)
    """

    def __init__(self, schedule: Callable, steps_per_epoch: int):
        super().__init__()
        self.schedule, self.steps_per_epoch = schedule, int(steps_per_epoch)
        self._epoch = 0
        self.epoch_start_lr: float | None = None

    def _set(self, step: int) -> float:
        value = float(self.schedule(step))
        self.model.optimizer.learning_rate = value
        return value

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self.epoch_start_lr = self._set(epoch * self.steps_per_epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if batch:
            self._set(self._epoch * self.steps_per_epoch + batch)


class EpochClock(keras.callbacks.Callback):
    """Measures each epoch's training time, before evaluation or checkpoint callbacks run (put it first).

    `seconds` is wall time; `cpu_seconds` the CPU time of the whole process (all its threads, input
    pipeline included) over the same span: on a machine shared with other jobs it varies less than wall time.
    """

    def __init__(self):
        super().__init__()
        self.started = self.seconds = self.cpu_started = self.cpu_seconds = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.started
        self.cpu_seconds = time.process_time() - self.cpu_started


class NaNGuard(keras.callbacks.Callback):
    """Stops training after an epoch whose mean loss is not finite; `tripped` tells checkpointing not to save it.

    A single non-finite batch makes the epoch's mean loss non-finite, so checking once per epoch catches
    every divergence without a per-batch host synchronization (which would stall an accelerator and disable
    Keras' asynchronous callback dispatch). Place it before the history and checkpoint callbacks.

    Example:
        >>> guard = NaNGuard()
    """

    def __init__(self):
        super().__init__()
        self.tripped = False

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            logger.error("non-finite mean loss %s in epoch %d: stopping; the last good checkpoint is kept",
                         loss, epoch + 1)
            self.tripped = True
            self.model.stop_training = True


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(temporary_path)` for a temporary file beside `path`, then rename it over `path`.

    Example:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "x.txt")
        >>> write_atomically(target, lambda p: open(p, "w").write("done"))
    """
    path = Path(path)
    suffix = "".join(path.suffixes[-1:])
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def ten_fold_verification(embeddings: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """Insightface-style k-fold verification on consecutive pairs (2i, 2i+1): (mean accuracy, mean threshold).

    For each fold the cosine threshold maximizing accuracy on the other folds is applied to the fold.

    Example:
        >>> emb = np.array([[1, 0], [1, 0.1], [1, 0], [0, 1]] * 10, dtype="float32")
        >>> ten_fold_verification(emb, np.array([True, False] * 10))[0]
        1.0
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    similarity = np.sum(embeddings[0::2] * embeddings[1::2], axis=1)
    issame = np.asarray(issame, dtype=bool)
    candidates = np.concatenate([[-1.0], np.sort(similarity), [1.0]])
    fold_of = np.arange(len(similarity)) * folds // len(similarity)
    accuracies, thresholds = [], []
    for fold in range(folds):
        train, test = fold_of != fold, fold_of == fold
        correct = [(np.sum((similarity[train] >= t) == issame[train])) for t in candidates]
        threshold = candidates[int(np.argmax(correct))]
        accuracies.append(np.mean((similarity[test] >= threshold) == issame[test]))
        thresholds.append(threshold)
    return float(np.mean(accuracies)), float(np.mean(thresholds))


def _verification_accuracy(embeddings: np.ndarray, issame: np.ndarray) -> float:
    """10-fold accuracy from the evaluation module (the official protocol), or the local implementation."""
    try:
        from ghostface_keras.evaluation.verification import k_fold_accuracy, pair_scores
    except ImportError:
        return ten_fold_verification(embeddings, issame)[0]
    return float(np.mean(k_fold_accuracy(pair_scores(embeddings), issame)[0]))


def embed_images(model: keras.Model, images: np.ndarray, batch_size: int = 64, flip: bool = False) -> np.ndarray:
    """Embeddings of uint8 RGB images (N x H x W x 3), optionally summed with the mirrored images' (flip TTA).

    Uses the model's compiled predict function (`predict_on_batch`): an eager `model(batch)` call per batch
    costs several times the forward pass on CPU. In a multi-process run each process computes on its own
    (`distribution.local_predictor`).
    """
    from ghostface_keras.distribution import local_predictor

    predict = local_predictor(model)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = normalize_images(images[start:start + batch_size])
        embedding = predict(batch).astype(np.float32)
        if flip:
            embedding = embedding + predict(np.ascontiguousarray(batch[:, :, ::-1])).astype(np.float32)
        outputs.append(embedding)
    return np.concatenate(outputs)


class VerificationCallback(keras.callbacks.Callback):
    """10-fold verification of the embedding model on pair sets at the end of every `every_n_epochs` epochs.

    Args:
        embedding_model: the model whose (unnormalized) outputs are compared by cosine.
        pair_sets: `{name: (images uint8 N x 112 x 112 x 3, issame bool N/2)}`, e.g. from
            `ghostface_keras.data.load_bin`.
        every_n_epochs: evaluation cadence.
        best_path: where to save the embedding model whenever the *last* pair set's accuracy reaches a new
            best (ties re-save, as officially); None to not save.

    After each evaluation `self.latest` holds `{name: accuracy}`.

    Example:
        >>> images = np.zeros((4, 112, 112, 3), np.uint8)
        >>> callback = VerificationCallback(keras.Sequential([keras.Input((112, 112, 3)), keras.layers.Flatten()]),
        ...                                 {"toy": (images, np.array([True, False]))})
    """

    def __init__(self, embedding_model: keras.Model, pair_sets: dict, every_n_epochs: int = 1,
                 best_path: str | None = None, batch_size: int = 64, flip: bool = False):
        super().__init__()
        self.embedding_model, self.pair_sets = embedding_model, dict(pair_sets)
        self.every_n_epochs, self.best_path = max(1, int(every_n_epochs)), best_path
        self.batch_size, self.flip = int(batch_size), bool(flip)
        self.best = -1.0
        self.latest: dict[str, float] = {}

    def evaluate(self) -> dict[str, float]:
        """Accuracy of the current embedding model on every pair set.

        In a multi-process run every process evaluates and all take process 0's scores, so that decisions
        made on them (early stop) are the same everywhere.
        """
        from ghostface_keras.distribution import broadcast_from_writer

        scores = {}
        for name, (images, issame) in self.pair_sets.items():
            embeddings = embed_images(self.embedding_model, images, self.batch_size, self.flip)
            scores[name] = _verification_accuracy(embeddings, issame)
        return broadcast_from_writer(scores)

    def on_epoch_end(self, epoch, logs=None):
        self.latest = {}
        if (epoch + 1) % self.every_n_epochs:
            return
        self.latest = self.evaluate()
        logger.info("epoch %d verification: %s", epoch + 1,
                    ", ".join(f"{k} {v:.4f}" for k, v in self.latest.items()))
        if logs is not None:
            logs.update({f"val_{name}": value for name, value in self.latest.items()})
        last = list(self.latest.values())[-1] if self.latest else None
        if self.best_path and last is not None and last >= self.best:
            self.best = last
            write_atomically(self.best_path, lambda path: self.embedding_model.save(path))


class StopAtAccuracy(keras.callbacks.Callback):
    """Stops training once the verification callback's *last* pair set reaches `target` accuracy.

    Put it after the `VerificationCallback` (it reads `verification.latest` at epoch end).

    Example:
        >>> stopper = StopAtAccuracy(verification=None, target=0.95)
    """

    def __init__(self, verification: "VerificationCallback | None", target: float):
        super().__init__()
        self.verification, self.target = verification, float(target)
        self.reached_at: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        latest = self.verification.latest if self.verification is not None else {}
        if latest and list(latest.values())[-1] >= self.target:
            logger.info("verification reached %.4f >= %.4f after epoch %d: stopping",
                        list(latest.values())[-1], self.target, epoch + 1)
            self.reached_at = epoch + 1
            self.model.stop_training = True


class HistoryWriter(keras.callbacks.Callback):
    """One JSON record per epoch in `path` (a list), plus a PNG plot beside it, both written atomically.

    Record keys: `epoch` (1-based), `lr` (at the epoch's first batch), `loss`, `accuracy`, one key per
    verification set, `seconds` (training time of the epoch, without evaluation). Existing records are kept
    (resume) except those at or after the epoch training restarts from, so every epoch appears once.
    `write=False` keeps the records in memory only (the processes of a run other than process 0).

    Example:
        >>> writer = HistoryWriter("/tmp/history.json")
    """

    def __init__(self, path: str | os.PathLike, clock: EpochClock | None = None,
                 lr_callback: keras.callbacks.Callback | None = None,
                 verification: VerificationCallback | None = None, plot: bool = True,
                 guard: NaNGuard | None = None, write: bool = True):
        super().__init__()
        self.guard, self.write = guard, bool(write)
        self.path, self.clock, self.lr_callback = Path(path), clock, lr_callback
        self.verification, self.plot = verification, plot
        self.records: list[dict] = load_history(self.path)

    def keep_until(self, epoch: int) -> None:
        """Drop records after `epoch` (1-based): called when resuming from a checkpoint at that epoch."""
        self.records = [r for r in self.records if int(r["epoch"]) <= epoch]

    def _current_lr(self) -> float:
        if self.lr_callback is not None and self.lr_callback.epoch_start_lr is not None:
            return self.lr_callback.epoch_start_lr
        return float(ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if self.guard is not None and self.guard.tripped:
            return  # a diverged epoch is not recorded: training resumes from the last good one
        logs = logs or {}
        record = {"epoch": epoch + 1, "lr": self._current_lr()}
        record.update({key: float(value) for key, value in logs.items()
                       if key in ("loss", "accuracy") and value is not None})
        if self.verification is not None:
            record.update(self.verification.latest)
        record["seconds"] = round(self.clock.seconds, 3) if self.clock else None
        if self.clock:
            record["cpu_seconds"] = round(self.clock.cpu_seconds, 3)
        self.records = [r for r in self.records if int(r["epoch"]) != epoch + 1] + [record]
        if not self.write:
            return
        write_atomically(self.path, lambda p: Path(p).write_text(json.dumps(self.records, indent=1)))
        if self.plot:
            try:
                plot_history(self.records, self.path.with_suffix(".png"))
            except Exception as error:  # noqa: BLE001 - a plot must never stop training
                logger.warning("could not plot the history: %s", error)


class StepLossLog(keras.callbacks.Callback):
    """Every step's training loss in a JSON list `[{"epoch", "step", "loss"}, ...]`, rewritten after each epoch.

    Keras reports the running mean of the epoch after each batch; step k's own loss is recovered as
    `(k + 1) * mean_k - k * mean_(k-1)`. Opt-in (`train.py --log-steps`): reading the logs after every batch
    synchronizes the host with the device once per step. `write=False` keeps the records in memory only.

    Example:
        >>> log = StepLossLog("/tmp/steps.json")
    """

    def __init__(self, path: str | os.PathLike, write: bool = True):
        super().__init__()
        self.path, self.write = Path(path), bool(write)
        self.records: list[dict] = load_history(self.path)
        self._epoch, self._previous_mean = 0, 0.0

    def keep_until(self, epoch: int) -> None:
        """Drop the steps of epochs after `epoch` (1-based), as when resuming from it."""
        self.records = [r for r in self.records if int(r["epoch"]) <= epoch]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._previous_mean = epoch + 1, 0.0
        self.records = [r for r in self.records if int(r["epoch"]) != epoch + 1]

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", float("nan")))
        loss = (batch + 1) * mean - batch * self._previous_mean
        self._previous_mean = mean
        self.records.append({"epoch": self._epoch, "step": batch + 1, "loss": loss})

    def on_epoch_end(self, epoch, logs=None):
        if self.write:
            write_atomically(self.path, lambda p: Path(p).write_text(json.dumps(self.records)))


def load_history(path: str | os.PathLike) -> list[dict]:
    """The list of epoch records in a history JSON, or [] when there is none yet.

    Example:
        >>> load_history("/nonexistent/history.json")
        []
    """
    path = Path(path)
    if not path.is_file():
        return []
    content = json.loads(path.read_text())
    return list(content["epochs"] if isinstance(content, dict) else content)


def plot_history(records: Iterable[dict], png_path: str | os.PathLike) -> None:
    """Loss, accuracy (training and verification) and LR per epoch, saved as a PNG (atomically).

    Example:
        >>> plot_history([{"epoch": 1, "lr": 0.1, "loss": 2.0}], "/tmp/history.png")
    """
    from matplotlib.figure import Figure  # not pyplot: the caller's plotting backend stays as it is

    records = list(records)
    epochs = [r["epoch"] for r in records]
    reserved = {"epoch", "lr", "loss", "accuracy", "seconds", "cpu_seconds"}
    scores = sorted({k for r in records for k in r if k not in reserved})
    figure = Figure(figsize=(13, 3.6))
    axes = figure.subplots(1, 3)
    axes[0].plot(epochs, [r.get("loss") for r in records], marker="o")
    axes[0].set_title("training loss")
    if any("accuracy" in r for r in records):
        axes[1].plot(epochs, [r.get("accuracy") for r in records], marker="o", label="training")
    for name in scores:
        axes[1].plot(epochs, [r.get(name) for r in records], marker="o", label=name)
    axes[1].set_title("accuracy")
    axes[1].legend(fontsize=8)
    axes[2].plot(epochs, [r.get("lr") for r in records], marker="o")
    axes[2].set_yscale("log")
    axes[2].set_title("learning rate")
    for axis in axes:
        axis.set_xlabel("epoch")
    figure.tight_layout()
    write_atomically(png_path, lambda p: figure.savefig(p, format="png", dpi=80))
