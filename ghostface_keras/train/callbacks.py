"""Training callbacks: per-epoch learning rate records, verification, history (JSON + PNG), NaN guard.

The learning-rate schedules themselves are in `ghostface_keras.train.schedules`; verification uses the one
embedding path (`ghostface_keras.runtime.embedding`) and the one 10-fold protocol (`ghostface_keras.evaluation`).
Every file is written by `ghostface_keras.core.files.write_atomically`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable
from collections.abc import Iterable

import keras
from keras import ops

from ghostface_keras.core.files import write_atomically

logger = logging.getLogger(__name__)

class EpochStartLearningRate(keras.callbacks.Callback):
    """Records `schedule(epoch * steps_per_epoch)` at every epoch start for the history (no per-batch work).

    Example:
        >>> from ghostface_keras.train.schedules import StepDecay
        >>> callback = EpochStartLearningRate(StepDecay(0.1, [2], steps_per_epoch=100), steps_per_epoch=100)
        >>> callback.on_epoch_begin(2)
        >>> round(callback.epoch_start_lr, 6)
        0.01
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
        >>> from ghostface_keras.train.schedules import StepDecay
        >>> callback = LearningRateCallback(StepDecay(0.1, [2], steps_per_epoch=100), steps_per_epoch=100)
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
        >>> import numpy as np
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
        self._embed = None  # built on first use: the model may still be changing shape before training

    def evaluate(self) -> dict[str, float]:
        """Accuracy of the current embedding model on every pair set.

        In a multi-process run every process evaluates and all take process 0's scores, so that decisions
        made on them (early stop) are the same everywhere.
        """
        from ghostface_keras.core.distribution import broadcast_from_writer
        from ghostface_keras.runtime.embedding import EmbeddingFunction, extract_embeddings
        from ghostface_keras.evaluation.verification import k_fold_accuracy, pair_scores

        if self._embed is None:
            self._embed = EmbeddingFunction(self.embedding_model, self.batch_size, self.flip, check=False)
        scores = {}
        for name, (images, issame) in self.pair_sets.items():
            embeddings = extract_embeddings(self._embed, images, progress=False)
            scores[name] = float(k_fold_accuracy(pair_scores(embeddings), issame)[0].mean())
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
            write_atomically(self.best_path, lambda path: self.embedding_model.save(str(path)))


class StopAtAccuracy(keras.callbacks.Callback):
    """Stops training once the verification callback's *last* pair set reaches `target` accuracy.

    Put it after the `VerificationCallback` (it reads `verification.latest` at epoch end).

    Example:
        >>> stopper = StopAtAccuracy(verification=None, target=0.95)
    """

    def __init__(self, verification: VerificationCallback | None, target: float):
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
