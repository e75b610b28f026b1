"""`Trainer`: stages of {loss, optimizer, epochs} run as Keras `compile` + `fit`, with exact resume.

An embedding model (image -> 512-d) plus a `NormDense` cosine head make the training model; each stage
recompiles it with its own margin loss (and optimizer, if given) and continues the global epoch count, as
the official GhostFaceNets scheduler does (1 epoch of ArcFace s=32, then s=64). One LR schedule spans all
stages. After every epoch the Trainer writes, atomically, into `output_dir`:

* `history.json` / `history.png` - one record per epoch (see `callbacks.HistoryWriter`);
* `model.keras` - the latest embedding model; `best.keras` - the best by the last verification set;
* `training_state.npz` - every weight, the optimizer slots and the epoch/stage bookkeeping, which
  `fit(..., resume=True)` restores so that training continues at the next epoch with the same schedule.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from collections.abc import Sequence

import keras
import numpy as np

from ghostface_keras.train.callbacks import (
    EpochClock,
    EpochStartLearningRate,
    HistoryWriter,
    NaNGuard,
    StepLossLog,
    StopAtAccuracy,
    VerificationCallback,
    load_history,
)
from ghostface_keras.core.files import load_npz, write_atomically
from ghostface_keras.train.schedules import ShiftedSchedule
from ghostface_keras.core.distribution import (
    Cluster,
    broadcast_arrays_from_writer,
    current_cluster,
    is_writer_process,
    local_predictor,
    sum_over_processes,
    to_numpy,
)
from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.optimizers import SAMModel
from ghostface_keras.train.partial_fc import PartialFCModel

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.npz"
HISTORY_FILE = "history.json"
STEPS_FILE = "steps.json"
MODEL_FILE = "model.keras"
BEST_FILE = "best.keras"
CENTERS_FILE = "class_centers.npy"


@dataclass
class Stage:
    """One training stage: `epochs` epochs of `loss`, with a new `optimizer` or (None) the previous one.

    `freeze_backbone` trains the head only (the embedding model is frozen, BatchNorm in inference mode);
    `sam_rho > 0` trains with sharpness-aware minimization (`optimizers.SAMModel`); `partial_fc_rate < 1`
    computes each step's softmax over that fraction of the classes only (`partial_fc.PartialFCModel`:
    every class of the batch plus random others), for heads of hundreds of thousands of identities; both
    together train SAM over the sampled classes (one step, `ghostface_keras.train.step`).

    Example:
        >>> from ghostface_keras.train.losses import ArcFace
        >>> stage = Stage(epochs=1, loss=ArcFace(scale=32))
    """

    epochs: int
    loss: keras.losses.Loss
    optimizer: keras.optimizers.Optimizer | None = None
    freeze_backbone: bool = False
    sam_rho: float = 0.0
    partial_fc_rate: float = 1.0

    @classmethod
    def coerce(cls, value: Stage | dict) -> Stage:
        """Accept a Stage or a dict with the same keys (`epoch` is accepted for `epochs`, as officially)."""
        if isinstance(value, Stage):
            return value
        value = dict(value)
        if "epoch" in value and "epochs" not in value:
            value["epochs"] = value.pop("epoch")
        return cls(**value)


@dataclass
class _Progress:
    epoch: int = 0  # epochs completed, over all stages
    optimizer_stage: int = -1  # index of the stage that created the optimizer in the saved state
    best: float = -1.0
    extra: dict = field(default_factory=dict)


def class_mean_embeddings(embedding_model: keras.Model, dataset, num_classes: int, verbose: int = 1) -> np.ndarray:
    """The mean L2-normalized embedding of every class over one pass of `dataset` ((images, labels) batches).

    Classes without any image get a random unit vector. In a multi-process run each process passes its
    own shard of the data and every process gets the means over all of them.

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Identity()])
        >>> data = [(np.array([[1.0, 0.0], [0.0, 2.0]], "float32"), np.array([0, 1]))]
        >>> class_mean_embeddings(model, data, 2, verbose=0).round(3).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    predict = local_predictor(embedding_model)
    sums = np.zeros((num_classes, int(embedding_model.output_shape[-1])))
    progress = keras.utils.Progbar(None, unit_name="batch", verbose=verbose if is_writer_process() else 0)
    for images, labels in dataset:
        embeddings = predict(np.asarray(images)).astype(np.float64)
        embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        np.add.at(sums, np.asarray(labels).reshape(-1).astype(int), embeddings)
        progress.add(1)
    sums = sum_over_processes(sums)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    empty = norms[:, 0] == 0
    sums[empty] = np.random.default_rng(0).normal(size=(int(empty.sum()), sums.shape[1]))
    return (sums / np.linalg.norm(sums, axis=1, keepdims=True)).astype(np.float32)


class Trainer:
    """Staged margin-loss training of an embedding model with Keras `fit`.

    Args:
        embedding_model: image -> embedding Keras model (build it inside `strategy.scope()` when using one).
        train_data: a `tf.data.Dataset` of `(normalized images, int labels)` batches (global batch size).
        num_classes: identities in `train_data`.
        output_dir: where history, models and the training state go (created if missing).
        schedule: LR as a function of the global batch index (e.g. `schedules.CosineRestarts`); None keeps
            each optimizer's own learning rate.
        steps_per_epoch: batches per epoch; inferred from the dataset's cardinality when None.
        pair_sets: `{name: (uint8 images, issame)}` verification sets evaluated every `eval_every` epochs.
        sub_centers: sub-centers per class in the head.
        cluster: where the run trains (`distribution.setup_cluster`; default: the current process as it is).
            Build the embedding model inside `cluster.scope()`. Only process 0 writes files; every process
            restores the state it wrote.
        verbose: Keras `fit` verbosity (1 = progress bar).
        steps_per_execution: batches run per call of the compiled train function (fewer host round trips;
            batch-level callbacks then see every N-th batch).
        jit_compile: compile the train step with XLA (True / False / "auto": Keras' choice, off on CPU).
        stop_at_accuracy: stop after the first epoch whose last pair set's verification accuracy reaches
            this (None: train all epochs).
        log_steps: also write every step's loss to `output_dir/steps.json` (`callbacks.StepLossLog`).
        head_weight_decay: coupled weight decay of the class centers, L2(head_weight_decay / 2) on the head's raw
            kernel as the official recipe (`optimizers.add_coupled_weight_decay` does the same for a backbone).

    Example:
        >>> from ghostface_keras.train.losses import ArcFace
        >>> trainer = Trainer(embedding_model, dataset, num_classes=219, output_dir="run")    # doctest: +SKIP
        >>> trainer.fit([{"loss": ArcFace(scale=32), "epochs": 1,
        ...               "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)},
        ...              {"loss": ArcFace(scale=64), "epochs": 50}])                          # doctest: +SKIP
        >>> trainer.fit(same_stages, resume=True)        # after an interruption            # doctest: +SKIP
    """

    def __init__(
        self,
        embedding_model: keras.Model,
        train_data,
        num_classes: int,
        output_dir: str | os.PathLike,
        schedule: Callable | None = None,
        steps_per_epoch: int | None = None,
        pair_sets: dict | None = None,
        eval_every: int = 1,
        sub_centers: int = 1,
        cluster: Cluster | None = None,
        verbose: int | str = "auto",
        steps_per_execution: int = 1,
        jit_compile: bool | str = "auto",
        stop_at_accuracy: float | None = None,
        log_steps: bool = False,
        head_weight_decay: float = 0.0,
    ):
        self.embedding_model, self.train_data = embedding_model, train_data
        self.num_classes, self.output_dir = int(num_classes), Path(output_dir)
        self.schedule, self.pair_sets, self.eval_every = schedule, dict(pair_sets or {}), int(eval_every)
        self.cluster = cluster or current_cluster()
        self.verbose = verbose
        self.steps_per_execution, self.jit_compile = max(1, int(steps_per_execution)), jit_compile
        self.stop_at_accuracy, self.log_steps = stop_at_accuracy, bool(log_steps)
        self.steps_per_epoch = int(steps_per_epoch or self._infer_steps(train_data))
        self._prepare_output_dir()
        self._frozen_layers = [layer for layer in _sublayers(embedding_model) if not layer.trainable]
        with self.cluster.scope():
            # the official head regularizer (output_weight_decay=1): L2(wd / 2) on the raw class centers
            regularizer = keras.regularizers.L2(head_weight_decay / 2) if head_weight_decay > 0 else None
            if self.sharded:
                from ghostface_keras.train.sharded import ShardedNormDense

                self.head = ShardedNormDense(self.num_classes, num_shards=self.cluster.class_shards,
                                             sub_centers=sub_centers, kernel_regularizer=regularizer, name="norm_dense")
            else:
                self.head = NormDense(self.num_classes, sub_centers=sub_centers, kernel_regularizer=regularizer,
                                      name="norm_dense")
            self.head.build((None, int(embedding_model.output_shape[-1])))
        self.progress = _Progress()
        self.model: keras.Model | None = None
        self._optimizer = None
        self.guard = NaNGuard()

    @property
    def sharded(self) -> bool:
        """Whether the class centers are split over the devices (`cluster.class_shards > 1`, JAX)."""
        return self.cluster.class_shards > 1

    # ----------------------------------------------------------------- setup helpers
    @staticmethod
    def _infer_steps(dataset) -> int:
        cardinality = int(dataset.cardinality()) if hasattr(dataset, "cardinality") else -1
        if cardinality <= 0:
            raise GhostFaceError("cannot infer the number of batches per epoch: pass steps_per_epoch")
        return cardinality

    def _prepare_output_dir(self) -> None:
        if self.cluster.is_writer:
            prepare_output_dir(self.output_dir)

    def initialize_head(self, centers: np.ndarray) -> None:
        """Start the head at given class directions (C x D), e.g. `class_mean_embeddings(...)`."""
        self.head.set_class_centers(centers)

    def _all_weights(self) -> list:
        return list(self.embedding_model.weights) + list(self.head.weights)

    # ----------------------------------------------------------------- model per stage
    def _build_model(self, stage: Stage) -> keras.Model:
        self._set_backbone_trainable(not stage.freeze_backbone)
        self.head.append_norm = bool(getattr(stage.loss, "needs_norm", False))
        custom = " and ".join(name for name, used in (("SAM", stage.sam_rho > 0),
                                                      ("partial FC", stage.partial_fc_rate < 1.0)) if used)
        if custom and self.cluster.backend not in ("tensorflow", "jax"):
            raise GhostFaceError(f"{custom} has train steps for the TensorFlow and JAX backends, not "
                                 f"{self.cluster.backend} (plain stages train on every backend)")
        if self.sharded:  # partial FC and SAM too: the same composed step over the class-sharded head
            from ghostface_keras.train.sharded import ShardedFaceModel

            return ShardedFaceModel(self.embedding_model, self.head, sample_rate=stage.partial_fc_rate,
                                    sam_rho=stage.sam_rho, name="face_training_sharded")
        if stage.partial_fc_rate < 1.0:  # with SAM too when sam_rho > 0: one composed step (train/step.py)
            return PartialFCModel(self.embedding_model, self.head, sample_rate=stage.partial_fc_rate,
                                  sam_rho=stage.sam_rho, name="face_training_partial_fc")
        inputs = keras.Input(self.embedding_model.input_shape[1:], name="image")
        outputs = self.head(self.embedding_model(inputs))
        if stage.sam_rho > 0:
            return SAMModel(inputs, outputs, rho=stage.sam_rho, name="face_training_sam")
        return keras.Model(inputs, outputs, name="face_training")

    def _accuracy(self):
        if self.sharded:  # its step predicts column indices (no B x C cosines leave the shards)
            from ghostface_keras.train.sharded import prediction_accuracy

            return prediction_accuracy
        # the head's cosines come first; MagFace / AdaFace stages append a -||x|| column (partial FC: K cosines)
        has_norm_column = self.head.append_norm

        def accuracy(y_true, y_pred):
            labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
            predicted = keras.ops.argmax(y_pred[:, :-1] if has_norm_column else y_pred, axis=1)
            return keras.ops.cast(keras.ops.equal(labels, keras.ops.cast(predicted, "int32")), "float32")

        return accuracy

    def _stage_optimizer(self, index: int, stage: Stage, previous: Stage | None, owner: int):
        """The optimizer of a stage and the index of the stage that created it."""
        if stage.optimizer is not None:
            return stage.optimizer, index
        if self._optimizer is None:
            raise GhostFaceError(f"stage {index + 1} has no optimizer and there is no previous one to reuse")
        if previous is not None and previous.freeze_backbone != stage.freeze_backbone:
            # The trainable variables changed: Keras optimizers only update the variables they were built on.
            return self._optimizer.__class__.from_config(self._optimizer.get_config()), index
        return self._optimizer, owner

    def _callbacks(self, verification: VerificationCallback | None, history: HistoryWriter,
                   clock: EpochClock, lr_callback: EpochStartLearningRate | None, stage_index: int) -> list:
        callbacks = [clock]
        if lr_callback is not None:
            callbacks.append(lr_callback)
        callbacks.append(self.guard)
        if verification is not None:
            callbacks.append(verification)
            if self.stop_at_accuracy is not None:
                callbacks.append(StopAtAccuracy(verification, self.stop_at_accuracy))
        callbacks.append(history)
        if self._step_log is not None:
            callbacks.append(self._step_log)
        callbacks.append(_StateCheckpoint(self, stage_index))
        return callbacks

    # ----------------------------------------------------------------- fit / resume
    def fit(self, stages: Sequence[Stage | dict], resume: bool = False) -> list[dict]:
        """Run the stages (skipping epochs already done when `resume`); returns the history records."""
        stages = [Stage.coerce(s) for s in stages]
        if resume:
            self.restore()
        clock = EpochClock()
        lr_callback = EpochStartLearningRate(self.schedule, self.steps_per_epoch) if self.schedule else None
        verification = None
        if self.pair_sets:
            verification = VerificationCallback(self.embedding_model, self.pair_sets, self.eval_every,
                                                best_path=str(self.output_dir / BEST_FILE) if self.cluster.is_writer
                                                else None)
            verification.best = self.progress.best
        history = HistoryWriter(self.output_dir / HISTORY_FILE, clock, lr_callback, verification, guard=self.guard,
                                write=self.cluster.is_writer)
        history.keep_until(self.progress.epoch)
        self._step_log = None
        if self.log_steps:
            self._step_log = StepLossLog(self.output_dir / STEPS_FILE, write=self.cluster.is_writer)
            self._step_log.keep_until(self.progress.epoch)
        self._verification = verification

        stage_end, previous, owner = 0, None, -1
        for index, stage in enumerate(stages):
            stage_end += int(stage.epochs)
            self._optimizer, owner = self._stage_optimizer(index, stage, previous, owner)
            previous = stage
            if stage_end <= self.progress.epoch:
                continue  # done before the interruption
            self.progress.optimizer_stage = owner
            self._run_stage(index, stage, stage_end, history, clock, lr_callback, verification)
            if self.guard.tripped:
                self.restore()
                raise GhostFaceError(
                    f"training loss became NaN/inf in epoch {self.progress.epoch + 1}; the last good state "
                    f"(epoch {self.progress.epoch}) is kept in {self.output_dir}; lower the learning rate")
            if self.model.stop_training:
                break
        self.save_embedding_model()
        if self.sharded:
            from ghostface_keras.train.sharded import save_class_centers

            save_class_centers(self.head, self.output_dir / CENTERS_FILE)  # every process: a gather
        return history.records

    def _run_stage(self, index, stage, stage_end, history, clock, lr_callback, verification):
        with self.cluster.scope():
            self.model = self._build_model(stage)
            # The metric as an object made here, with its variables: from a bare function Keras would create
            # them inside the first trace of the train step, and TensorFlow then traces the whole step a second
            # time (a tf.function that creates variables is traced again without); that doubled every stage's
            # first step (benchmarks/results/train_vs_official.md).
            accuracy = self._accuracy()
            self.model.compile(optimizer=self._optimizer, loss=stage.loss,
                               metrics=[keras.metrics.MeanMetricWrapper(accuracy, name=accuracy.__name__)],
                               steps_per_execution=self.steps_per_execution, jit_compile=self.jit_compile)
            if self.schedule is not None:
                # Before build: replacing the LR variable by a schedule changes the optimizer's variables.
                self.model.optimizer.learning_rate = ShiftedSchedule(self.schedule, 0)
            self.model.optimizer.build(self.model.trainable_variables)
            if self._pending_optimizer_state is not None and self._pending_optimizer_owner == self.progress.optimizer_stage:
                self._restore_optimizer(self._pending_optimizer_state)
            self._pending_optimizer_state = None
            self._current_loss = stage.loss  # its statistics go into the training state
            self._restore_stage_state(index)
            if self.schedule is not None:
                done = self.progress.epoch * self.steps_per_epoch
                offset = done - int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                self.model.optimizer.learning_rate = ShiftedSchedule(self.schedule, offset)
        logger.info("stage %d: epochs %d-%d, loss %s", index + 1, self.progress.epoch + 1, stage_end,
                    stage.loss.__class__.__name__)
        self.model.fit(self.train_data, epochs=stage_end, initial_epoch=self.progress.epoch,
                       steps_per_epoch=self.steps_per_epoch, verbose=self.verbose if self.cluster.is_writer else 0,
                       shuffle=False,
                       callbacks=self._callbacks(verification, history, clock, lr_callback, index))

    _pending_optimizer_state: list | None = None
    _pending_optimizer_owner: int = -1
    _pending_stage_state: tuple[int, dict] | None = None
    _current_loss: keras.losses.Loss | None = None
    _step_log: StepLossLog | None = None

    def _stage_state_variables(self) -> dict[str, list]:
        """What a stage updates besides weights and optimizer: the loss's statistics (AdaFace's running
        norm mean / std) and the partial-FC class sampler's state."""
        return {"loss": _state_variables(self._current_loss), "sampler": _state_variables(self.model)}

    def _restore_stage_state(self, stage_index: int) -> None:
        """Give the resumed stage its saved loss statistics and sampler state."""
        pending, self._pending_stage_state = self._pending_stage_state, None
        if pending is None or pending[0] != stage_index:
            return  # a later stage starts with its loss as given
        for kind, variables in self._stage_state_variables().items():
            values = pending[1].get(kind, [])
            if [tuple(v.shape) for v in variables] != [value.shape for value in values]:
                logger.warning("saved %s state has %d arrays, this stage has %d state variables: starting it fresh",
                               kind, len(values), len(variables))
                continue
            for variable, value in zip(variables, values):
                variable.assign(value)

    def _restore_optimizer(self, values: list) -> None:
        variables = self.model.optimizer.variables
        if len(variables) != len(values):
            logger.warning("saved optimizer state has %d variables, the optimizer %d: starting it fresh",
                           len(values), len(variables))
            return
        for variable, value in zip(variables, values):
            variable.assign(value)

    # ----------------------------------------------------------------- state files
    def save_state(self, stage_index: int) -> None:
        """Write weights, optimizer slots and bookkeeping to `output_dir/training_state.npz` atomically
        (process 0 only: the other processes hold the same values, or, for class-sharded centers, take part in
        gathering them)."""
        if not self.cluster.is_writer and not (self.sharded and self.cluster.num_processes > 1):
            return
        arrays = {f"weight_{i}": to_numpy(w) for i, w in enumerate(self._all_weights())}
        if self.model is not None and self.model.optimizer is not None:
            for i, variable in enumerate(self.model.optimizer.variables):
                arrays[f"optimizer_{i}"] = to_numpy(variable)
        for kind, variables in self._stage_state_variables().items():
            for i, variable in enumerate(variables):
                arrays[f"{kind}_{i}"] = to_numpy(variable)
        if not self.cluster.is_writer:
            return
        meta = {"epoch": self.progress.epoch, "optimizer_stage": self.progress.optimizer_stage,
                "stage": stage_index, "best": self.progress.best, "extra": self.progress.extra}
        arrays["meta"] = np.array(json.dumps(meta))

        def write(path: Path) -> None:
            with open(path, "wb") as handle:
                np.savez(handle, **arrays)

        write_atomically(self.output_dir / STATE_FILE, write)

    def restore(self) -> bool:
        """Load `training_state.npz` if present: weights now, optimizer slots when its stage is compiled.

        In a multi-process run process 0 reads the file and every process receives its arrays, so the
        other processes need no access to process 0's disk.
        """
        path = self.output_dir / STATE_FILE
        arrays = None
        if self.cluster.is_writer and path.is_file():
            arrays = load_npz(path)  # a damaged state file is one DataError line, not a traceback
        state = broadcast_arrays_from_writer(arrays)
        if state is None:
            logger.info("no training state in %s: starting from epoch 0", self.output_dir)
            return False
        meta = json.loads(str(state["meta"]))
        weights = self._all_weights()
        saved = sorted((k for k in state if k.startswith("weight_")), key=lambda k: int(k[7:]))
        if len(saved) != len(weights):
            raise GhostFaceError(f"{path}: {len(saved)} weights saved but the model has {len(weights)}: "
                                 "resume with the same model and data")
        for variable, key in zip(weights, saved):
            if tuple(variable.shape) != state[key].shape:
                raise GhostFaceError(f"{path}: weight {variable.path} has shape {tuple(variable.shape)}, "
                                     f"saved {state[key].shape}: resume with the same model and data")
            variable.assign(state[key])
        optimizer_keys = sorted((k for k in state if k.startswith("optimizer_")), key=lambda k: int(k[10:]))
        self._pending_optimizer_state = [state[k] for k in optimizer_keys]
        stage_state = {}
        for kind in ("loss", "sampler"):
            keys = sorted((k for k in state if k.startswith(f"{kind}_")), key=lambda k: int(k.split("_")[1]))
            stage_state[kind] = [state[k] for k in keys]
        self._pending_stage_state = (int(meta["stage"]), stage_state)
        self._pending_optimizer_owner = int(meta["optimizer_stage"])
        self.progress = _Progress(int(meta["epoch"]), int(meta["optimizer_stage"]), float(meta["best"]),
                                  dict(meta.get("extra", {})))
        logger.info("resuming %s after epoch %d", self.output_dir, self.progress.epoch)
        return True

    def save_embedding_model(self, path: str | os.PathLike | None = None) -> Path:
        """Save the embedding model (the deliverable) as `.keras`, atomically; default `output_dir/model.keras`.

        Process 0 writes; the other processes of a run return the path without writing.
        """
        target = Path(path) if path else self.output_dir / MODEL_FILE
        if not self.cluster.is_writer:
            return target
        trainable = self.embedding_model.trainable
        self.embedding_model.trainable = True  # the saved model is a plain, fully trainable model
        write_atomically(target, lambda p: self.embedding_model.save(str(p)))
        self._set_backbone_trainable(trainable)
        return target

    def _set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze or unfreeze the embedding model, keeping the layers frozen by the caller frozen.

        Keras' `model.trainable = True` unfreezes every sublayer, which would silently undo e.g. the
        frozen BatchNorm layers of fine-tuning (they would switch to batch statistics).
        """
        self.embedding_model.trainable = trainable
        if trainable:
            for layer in self._frozen_layers:
                layer.trainable = False


class _StateCheckpoint(keras.callbacks.Callback):
    """Advances the Trainer's epoch counter and writes model.keras + the training state after each good epoch."""

    def __init__(self, trainer: Trainer, stage_index: int):
        super().__init__()
        self.trainer, self.stage_index = trainer, stage_index

    def on_epoch_end(self, epoch, logs=None):
        if self.trainer.guard.tripped:
            return
        self.trainer.progress.epoch = epoch + 1
        verification = getattr(self.trainer, "_verification", None)
        if verification is not None:
            self.trainer.progress.best = verification.best
        self.trainer.save_embedding_model()
        self.trainer.save_state(self.stage_index)


def prepare_output_dir(path: str | os.PathLike) -> None:
    """Create `path` and check that a file can be written there; one-line `GhostFaceError` otherwise.

    Example:
        >>> import tempfile
        >>> prepare_output_dir(os.path.join(tempfile.mkdtemp(), "run"))
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise GhostFaceError(f"output directory {path} is not writable: {error}") from error


def _sublayers(model: keras.Model) -> list:
    """Every layer inside `model`, nested models' layers included (not the model itself)."""
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_sublayers(layer))
    return found


def _state_variables(owner) -> list:
    return list(owner.state_variables()) if hasattr(owner, "state_variables") else []


def history_epochs(output_dir: str | os.PathLike) -> list[int]:
    """The epoch numbers recorded in `output_dir/history.json` (a quick check after resuming).

    Example:
        >>> history_epochs("/nonexistent")
        []
    """
    return [int(r["epoch"]) for r in load_history(Path(output_dir) / HISTORY_FILE)]
