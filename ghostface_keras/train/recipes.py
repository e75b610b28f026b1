"""Training recipes as library code: what `train.py` does, callable from Python with the same result.

`TrainingConfig` is the plain data of a run (the CLI's options, one field each); `train(config)` runs it:
cluster (devices, processes) -> data (this process's shard) -> model (from scratch or `init_from`) ->
stages -> `Trainer.fit` -> files in `config.output` (process 0 only) -> optional TFLite export.

The recipes themselves:

* from scratch (`official_stages`): the official two-stage schedule, 1 epoch of ArcFace / CosFace at
  s = 32 then s (default 64 with SGD), one LR schedule over all epochs; AdamW 2e-3 with s 32, m 0.3 when
  no optimizer is given (SGD 0.1 / s 64 / m 0.5 is meant for millions of images and diverges on small sets);
* fine-tuning (`init_from`): the head starts at the class-mean embeddings, a head-only stage at the base
  LR, then everything at a tenth of it, with the pretrained BatchNorm statistics frozen.

Example:
    >>> config = TrainingConfig(data="faces/", model="GhostFaceNetV1-0.5-2", epochs=2, batch_size=16,
    ...                         output="run")
    >>> resolve_defaults(config).optimizer, config.lr, config.scale, config.margin
    ('adamw', 0.002, 32.0, 0.3)
    >>> result = train(config)                                   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ghostface_keras.core.errors import DataError, GhostFaceError, ModelNameError

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
DEMO_IDENTITIES, DEMO_IMAGES, DEMO_HELD_OUT = 80, 16, 40
LOSSES = ("arcface", "cosface", "magface", "adaface")
OPTIMIZERS = ("sgd", "sgdw", "adamw", "sam")
# Optimizers whose weight decay is the official coupled L2 (L2(wd / 2) in the loss on every conv, depthwise and
# dense kernel and on the head, through momentum); sgdw and adamw decay decoupled from the gradient instead.
COUPLED_DECAY = ("sgd", "sam")
SCHEDULES = ("cosine", "exponential", "step", "constant")
# what a run's identity is: a resumed run must agree on these, or it is refused before anything is written
RUN_IDENTITY = ("model", "init_from", "loss", "sub_centers", "data", "demo", "shard_classes")


def _option(default: Any = None, help: str = "", **argparse: Any) -> Any:
    """A `TrainingConfig` field with its help text (and any argparse detail, e.g. `choices`): the CLI's
    parser is generated from these, so an option's default and meaning are written once. Help texts name
    other settings in backticks (`init_from`), which the CLI shows as its options (`--init-from`)."""
    factory = {"default_factory": list} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, **argparse})


@dataclass
class TrainingConfig:
    """Every setting of a training run: the options of `train.py` are these fields (`_` for `-`), their help
    texts and defaults. None = recipe default (`resolve_defaults`); `demo=True` takes `DEMO_SETTINGS` for every
    field left at its default (`apply_presets`).

    Example:
        >>> config = apply_presets(TrainingConfig(demo=True, epochs=3))
        >>> config.model, config.epochs, config.output
        ('GhostFaceNetV1-0.5-2', 3, 'runs/demo')
    """

    data: str | None = _option(help="identity folders ROOT/<id>/<img>, or a RecordIO train.rec / its folder")
    model: str = _option("GhostFaceNetV1-1.3-2", "registered model name (see ghostface-zoo)")
    epochs: int = _option(20, "training epochs")
    batch_size: int = _option(128, "global batch size, over all devices of all processes")
    output: str | None = _option(help="output directory (default: runs/train, or runs/demo with `demo`)")
    loss: str = _option("arcface", "margin loss", choices=LOSSES)
    margin: float | None = _option(help="loss margin (default: the loss's paper default; ArcFace 0.3 with adamw)")
    scale: float | None = _option(help="logit scale s (default 64 with sgd/sam, whose first epoch uses 32; "
                                       "32 with adamw)")
    sub_centers: int = _option(1, "sub-centers per class (Sub-center ArcFace)")
    optimizer: str | None = _option(help="default adamw from scratch (SGD 0.1 diverges on small datasets), sgd "
                                         "with `init_from`. sgd = the official recipe (momentum 0.9, coupled L2 "
                                         "weight decay); sgdw = SGD with decoupled decay; sam = sgd with "
                                         "sharpness-aware minimization (`sam_rho`)",
                                    choices=OPTIMIZERS)
    sam_rho: float = _option(0.05, "SAM neighbourhood radius (`optimizer` sam)")
    partial_fc_rate: float = _option(1.0, "partial FC: each step's softmax covers this fraction of the classes "
                                          "(batch classes + random others), e.g. 0.1 for 1 M identities; "
                                          "1 = full softmax")
    shard_classes: bool = _option(False, "split the class centers by class over every device of the run (JAX): "
                                         "each device holds C / N centers and their optimizer slots, the softmax "
                                         "is distributed, and `partial_fc_rate` samples on every shard; for "
                                         "millions of identities (docs/training.md)")
    lr: float | None = _option(help="base LR (default sgd 0.1 from scratch, 0.01 fine-tuning; adamw 2e-3 / 1e-4)")
    weight_decay: float | None = _option(help="weight decay (default 5e-4, 0.05 with adamw): coupled L2(wd/2) on "
                                              "every kernel and the head with sgd and sam, as the official recipe; "
                                              "decoupled with sgdw and adamw")
    gdc_bias: bool | None = _option(help="train GDC_conv with a bias (default: as the official recipe, only for "
                                         "stem stride 1)")
    schedule: str = _option("cosine", "LR schedule", choices=SCHEDULES)
    warmup_epochs: float = _option(0.0, "linear LR warm-up epochs")
    augment: Any = _option("flip", "augmentation level 0-3 or a name (see ghostface_keras.data)")
    eval_bins: list = _option([], "verification .bin files evaluated every `eval_every` epochs", nargs="*")
    eval_every: int = _option(1, "evaluate every N epochs")
    stop_at: float | None = _option(help="stop once the last `eval_bins` set reaches this accuracy (`demo`: 0.96)")
    mixed_precision: bool = _option(False, "mixed_float16 (GPUs)")
    init_from: str | None = _option(help="start from weights: an official .h5 or a .keras embedding model")
    freeze_backbone_epochs: int | None = _option(help="train only the head first for N epochs (default 1 with "
                                                      "`init_from`, else 0)")
    resume: bool = _option(False, "continue the run in `output` where it stopped")
    seed: int = _option(0, "random seed of weights, data order and augmentation")
    steps_per_execution: int = _option(1, "batches per call of the compiled train step (fewer host round trips "
                                          "on GPUs)")
    jit_compile: bool = _option(False, "compile the train step with XLA (always on JAX)")
    log_steps: bool = _option(False, "also write every step's loss to steps.json in `output`")
    demo: bool = _option(False, "train on generated synthetic identities (CPU minutes), with recipes.DEMO_SETTINGS "
                                "for every option left at its default")
    export_tflite: bool = _option(False, "also export model.tflite into `output` at the end")
    devices: int | None = _option(help="local devices per process (default: every accelerator on JAX, one on "
                                       "TensorFlow, where N > 1 means MirroredStrategy)")
    cpu_devices: int | None = _option(help="split the CPU into N logical devices (data parallel without GPUs)")
    coordinator: str | None = _option(help="HOST:PORT of process 0: multi-process / multi-host training (JAX)")
    num_processes: int = _option(1, "processes of the run (with `coordinator`)")
    process_id: int = _option(0, "this process's rank, 0..N-1 (0 writes the files)")
    init_timeout: float = _option(300.0, "seconds to wait for every process to join the coordinator")

    @classmethod
    def from_dict(cls, values: dict) -> TrainingConfig:
        """A config from a dict of field values; unknown keys are refused with one line."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise GhostFaceError(f"unknown training options {unknown}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# `demo=True`: settings that finish in a few CPU minutes on generated identities and export a TFLite file
DEMO_SETTINGS = {"model": "GhostFaceNetV1-0.5-2", "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3,
                 "scale": 32.0, "margin": 0.3, "stop_at": 0.96, "export_tflite": True}


def apply_presets(config: TrainingConfig) -> TrainingConfig:
    """The demo preset (`DEMO_SETTINGS` for every field still at its default) and the default output folder;
    in place, and idempotent. `train` calls it; call it yourself to see what a config will run."""
    if config.demo:
        defaults = {f.name: f.default for f in dataclasses.fields(config)}
        for key, value in DEMO_SETTINGS.items():
            if getattr(config, key) == defaults[key]:
                setattr(config, key, value)
    config.output = output_folder(config)
    return config


def output_folder(config: TrainingConfig) -> str:
    """Where a run writes: `output`, else runs/demo or runs/train."""
    return config.output or os.path.join("runs", "demo" if config.demo else "train")


def validate(config: TrainingConfig) -> None:
    """Refuse impossible settings with one line each (a `GhostFaceError` whose `fields` are the settings it
    names), before anything is loaded or written."""
    checks = [
        (config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}", ("epochs",)),
        (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}", ("batch_size",)),
        (config.lr is None or (np.isfinite(config.lr) and config.lr > 0), f"lr must be > 0, got {config.lr}",
         ("lr",)),
        (config.weight_decay is None or config.weight_decay >= 0,
         f"weight_decay must be >= 0, got {config.weight_decay}", ("weight_decay",)),
        (config.scale is None or config.scale > 0, f"scale must be > 0, got {config.scale}", ("scale",)),
        (config.sub_centers >= 1, f"sub_centers must be >= 1, got {config.sub_centers}", ("sub_centers",)),
        (0.0 < config.partial_fc_rate <= 1.0, f"partial_fc_rate must be in (0, 1], got {config.partial_fc_rate}",
         ("partial_fc_rate",)),
        (config.sam_rho >= 0, f"sam_rho must be >= 0, got {config.sam_rho}", ("sam_rho",)),
        (config.eval_every >= 1, f"eval_every must be >= 1, got {config.eval_every}", ("eval_every",)),
        (config.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {config.warmup_epochs}", ("warmup_epochs",)),
        (config.steps_per_execution >= 1, f"steps_per_execution must be >= 1, got {config.steps_per_execution}",
         ("steps_per_execution",)),
        (config.loss in LOSSES, f"loss must be one of {LOSSES}, got {config.loss!r}", ("loss",)),
        (config.optimizer is None or config.optimizer in OPTIMIZERS,
         f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}", ("optimizer",)),
        (config.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {config.schedule!r}",
         ("schedule",)),
        (config.demo or bool(config.data), "data is required (or use demo)", ("data", "demo")),
    ]
    for ok, message, fields in checks:
        if not ok:
            raise GhostFaceError(message, fields=fields)
    _check_paths(config)


def _check_paths(config: TrainingConfig) -> None:
    """Missing data, checkpoints or .bin files and an unwritable output, named in one line before anything
    loads (the backend import alone takes seconds)."""
    from ghostface_keras.core.files import check_input_paths, check_output_path
    from ghostface_keras.weights.checkpoints import check_model_source

    if not config.demo and not Path(config.data).exists():
        raise DataError(f"data {config.data}: no such file or directory", fields=("data",))
    check_input_paths((path, ".bin file") for path in config.eval_bins)
    if config.init_from:
        check_model_source(config.init_from)
    check_output_path(output_folder(config), "folder")


def resolve_defaults(config: TrainingConfig) -> TrainingConfig:
    """Fill the optimizer, LR, scale and margin left unset, by recipe (see the module docstring); in place."""
    if config.optimizer is None:
        config.optimizer = "sgd" if config.init_from else "adamw"
    adamw = config.optimizer == "adamw"
    if config.lr is None:
        config.lr = (1e-4 if config.init_from else 2e-3) if adamw else (0.01 if config.init_from else 0.1)
    if config.weight_decay is None:
        config.weight_decay = 0.05 if adamw else 5e-4
    if config.scale is None:
        config.scale = 32.0 if adamw else 64.0
    if config.margin is None and adamw and config.loss == "arcface":
        config.margin = 0.3
    return config


def official_stages(config: TrainingConfig, steps_per_epoch: int):
    """`(stages, schedule)`: the official two-stage recipe from scratch, or the fine-tuning recipe.

    Example:
        >>> config = resolve_defaults(TrainingConfig(data="x", optimizer="sgd", epochs=5))
        >>> stages, schedule = official_stages(config, steps_per_epoch=10)
        >>> [(s["epochs"], s["loss"].scale) for s in stages]
        [(1, 32.0), (4, 64.0)]
    """
    from ghostface_keras.train.schedules import HeadFirstSchedule, build_schedule
    from ghostface_keras.train.losses import get_margin_loss
    from ghostface_keras.train.optimizers import build_optimizer

    finetune = bool(config.init_from)
    inner = {"sam": "sgd", "sgdw": "sgd"}.get(config.optimizer, config.optimizer)
    lr = config.lr
    # coupled decay is in the loss (`embedding_model`, the head): the optimizer itself then decays nothing
    decay = 0.0 if config.optimizer in COUPLED_DECAY else config.weight_decay
    rho = config.sam_rho if config.optimizer == "sam" else 0.0
    freeze = config.freeze_backbone_epochs if config.freeze_backbone_epochs is not None else int(finetune)
    freeze = min(freeze, config.epochs)
    partial = {"partial_fc_rate": config.partial_fc_rate}

    def loss(scale):
        return get_margin_loss(config.loss, scale=scale, margin=config.margin)

    stages = []
    if freeze:
        # Head only, at a higher LR: the backbone (and its BatchNorm statistics) stay exactly pretrained.
        stages.append({"epochs": freeze, "loss": loss(config.scale), "freeze_backbone": True,
                       "optimizer": build_optimizer(inner, lr, decay), **partial})
    remaining = config.epochs - freeze
    warm = int(not finetune and remaining >= 3 and config.loss in ("arcface", "cosface") and config.scale > 32)
    if warm:
        stages.append({"epochs": 1, "loss": loss(32.0), "optimizer": build_optimizer(inner, lr, decay),
                       "sam_rho": rho, **partial})
    if remaining - warm > 0:
        stages.append({"epochs": remaining - warm, "loss": loss(config.scale), "sam_rho": rho,
                       "optimizer": None if warm else build_optimizer(inner, lr, decay), **partial})
    # Fine-tuning: the backbone epochs run at a tenth of the head-only LR.
    schedule_lr = lr * 0.1 if finetune else lr
    schedule = build_schedule(config.schedule, schedule_lr, steps_per_epoch, config.epochs,
                              lr_min=min(1e-5, schedule_lr * 0.01), warmup_epochs=config.warmup_epochs)
    if freeze:
        schedule = HeadFirstSchedule(schedule, lr, freeze * steps_per_epoch)
    return stages, schedule


def fine_tuning_model(path: str | os.PathLike):
    """A pretrained embedding model to fine-tune (anything `load_model` reads as Keras: official `.h5`, `.keras`,
    a released checkpoint name), BatchNorm statistics frozen.

    Small, single-domain fine-tuning batches would shift the pretrained BatchNorm statistics.
    """
    import keras

    from ghostface_keras.runtime.loading import load_model

    loaded = load_model(path, identify=False)
    model = loaded.keras_model
    if model is None:
        raise GhostFaceError(f"init_from {path}: a {loaded.format} file cannot be trained; give a .keras or .h5 "
                             "model, or a released checkpoint name", fields=("init_from",))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def embedding_model(config: TrainingConfig):
    """The model a run trains: `init_from` loaded for fine-tuning, else the registry model from scratch, with
    the GDC_conv bias of the official recipe (`official_gdc_bias`) unless `gdc_bias` says otherwise, and the
    coupled L2 weight decay of the official recipe for sgd and sam (`COUPLED_DECAY`)."""
    from ghostface_keras.models.registry import create_model, get_model_spec
    from ghostface_keras.train.optimizers import add_coupled_weight_decay

    if config.init_from:
        model = fine_tuning_model(config.init_from)
    else:
        try:
            spec = get_model_spec(config.model)
            bias = config.gdc_bias if config.gdc_bias is not None else official_gdc_bias(spec.config)
            model = create_model(config.model, weight_decay=0.0,
                                 **({"use_bias": bias} if "use_bias" in spec.config or config.gdc_bias else {}))
        except (KeyError, ValueError, TypeError) as error:
            raise ModelNameError(f"model {config.model}: {error}", fields=("model",)) from error
    if config.optimizer in COUPLED_DECAY and config.weight_decay:
        add_coupled_weight_decay(model, config.weight_decay)
    return model


def official_gdc_bias(model_config: dict) -> bool:
    """Whether the official training recipe gives GDC_conv a bias: `training_scripts.ipynb` builds the stride-1
    GhostFaceNets with `use_bias=True` and the stride-2 ones without. (The released width-1.3 checkpoints, both
    strides, have one: they come from `GhostFaceNets_with_Bias.py`; the registry builds those with it, to load
    them.) Other models keep their registry default.

    Example:
        >>> official_gdc_bias({"width": 1.3, "stem_strides": 2}), official_gdc_bias({"stem_strides": 1})
        (False, True)
    """
    if "stem_strides" not in model_config:
        return bool(model_config.get("use_bias", False))
    return model_config["stem_strides"] == 1


# ----------------------------------------------------------------------------------------------- data
def training_data(config: TrainingConfig, shard: dict | None = None):
    """`(dataset, num_classes, pair_sets)` of a run: this process's shard of the global batches."""
    shard = shard or {}
    if config.demo:
        return demo_data(config.batch_size, config.seed, **shard)
    from ghostface_keras.data import image_folder_dataset, load_bin, recordio_dataset

    path = Path(config.data)
    if not path.exists():
        raise DataError(f"data {path}: no such file or directory", fields=("data",))
    is_rec = path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").is_file())
    reader = recordio_dataset if is_rec else image_folder_dataset
    augment = int(config.augment) if str(config.augment).isdigit() else config.augment
    dataset = reader(path, batch_size=config.batch_size, augment=augment, seed=config.seed, drop_remainder=True,
                     **shard)
    pair_sets = {Path(b).stem: load_bin(b) for b in config.eval_bins}
    return dataset, dataset.num_classes, pair_sets


def demo_data(batch_size: int, seed: int, num_shards: int = 1, shard_index: int = 0):
    """Synthetic identities: DEMO_IDENTITIES for training, DEMO_HELD_OUT other ones as verification pairs."""
    from ghostface_keras.data import ImageSource, build_dataset
    from ghostface_keras.data.synthetic import render_synthetic_faces

    logger.info("drawing %d synthetic identities x %d images", DEMO_IDENTITIES, DEMO_IMAGES)
    images, labels = render_synthetic_faces(DEMO_IDENTITIES, DEMO_IMAGES, seed=seed)
    held_out, held_labels = render_synthetic_faces(DEMO_HELD_OUT, 10, seed=seed, first_identity=DEMO_IDENTITIES)
    pairs = _verification_pairs(held_out, held_labels, np.random.default_rng(seed))
    # through the one input pipeline (sharding, per-image keyed flips): PNG is lossless, so decoding gives
    # back exactly these pixels
    encoded = [_png_bytes(image) for image in images]
    source = ImageSource("synthetic faces", np.asarray(labels), [str(k) for k in range(DEMO_IDENTITIES)],
                         encoded.__getitem__, lambda i: f"synthetic face {i}")
    dataset = build_dataset(source, batch_size, augment="flip", seed=seed, drop_remainder=True,
                            num_shards=num_shards, shard_index=shard_index)
    return dataset, DEMO_IDENTITIES, {"synthetic_held_out": pairs}


def _png_bytes(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _verification_pairs(images, labels, rng):
    """Equal numbers of same / different identity pairs, laid out as rows (2i, 2i+1) like a .bin."""
    by_label = {label: np.flatnonzero(labels == label) for label in np.unique(labels)}
    first, second, issame = [], [], []
    for label, members in by_label.items():
        for _ in range(6):
            a, b = rng.choice(members, 2, replace=False)
            other = rng.choice([k for k in by_label if k != label])
            first += [a, a]
            second += [b, rng.choice(by_label[other])]
            issame += [True, False]
    order = np.stack([first, second], axis=1).reshape(-1)
    return images[order], np.array(issame)


# ----------------------------------------------------------------------------------------------- the run
@dataclass
class TrainingResult:
    """What `train` did: the history records, the output folder, the exported TFLite file (or None)."""

    records: list
    output: Path
    exported: Path | None
    process_id: int = 0
    num_processes: int = 1
    fingerprint: str = ""  # `distribution.weights_fingerprint` of the final weights: equal on every process


def train(config: TrainingConfig) -> TrainingResult:
    """Run a training as `train.py` does (every option is a field of `config`); see the module docstring.

    In a multi-process run (JAX backend: `coordinator`, `num_processes`, `process_id`) call it in every
    process with the same config; `batch_size` is the global batch and process 0 writes every file.
    """
    from ghostface_keras.core.distribution import LostProcessError, setup_cluster, use_cpu_devices

    apply_presets(config)
    validate(config)
    resolve_defaults(config)
    if config.cpu_devices:
        use_cpu_devices(config.cpu_devices)
    cluster = setup_cluster(config.devices, config.coordinator, config.num_processes, config.process_id,
                            config.init_timeout, shard_classes=config.shard_classes)
    from ghostface_keras.data.pipeline import pipeline_errors_in_one_line

    try:
        with pipeline_errors_in_one_line():  # a corrupt dataset found mid-epoch: its one line, not tf.data's
            return _train_in(cluster, config)
    except Exception as error:
        if cluster.num_processes > 1 and _collective_failure(error):
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LostProcessError(
                f"process {cluster.process_id} of {cluster.num_processes}: a step across processes failed, most "
                f"likely another process died or was stopped ({first[:240]}); the last finished epoch is in "
                f"{config.output}: restart every process with resume", fields=("resume",)) from error
        raise


def _collective_failure(error: BaseException) -> bool:
    """An error of a step or transfer between processes (JAX raises XLA runtime errors, and some helpers
    re-raise them as ValueError with the collective library's message)."""
    text = str(error)
    return (type(error).__name__ in ("JaxRuntimeError", "XlaRuntimeError")
            or any(word in text for word in ("Gloo", "NCCL", "UNAVAILABLE:", "DEADLINE_EXCEEDED:")))


def _train_in(cluster, config: TrainingConfig) -> TrainingResult:
    import keras

    from ghostface_keras.core.distribution import agree_on_writer_check, broadcast_from_writer, weights_fingerprint
    from ghostface_keras.train.trainer import STATE_FILE, Trainer, class_mean_embeddings, prepare_output_dir

    cluster.check_batch_size(config.batch_size)
    output = Path(config.output)
    agree_on_writer_check(lambda: prepare_output_dir(output))
    resuming = bool(broadcast_from_writer(config.resume and (output / STATE_FILE).is_file()))
    if config.resume and not resuming:
        logger.warning("resume: no training state in %s, starting from scratch", output)
    if resuming:
        agree_on_writer_check(lambda: _check_same_run(output, config))
    keras.utils.set_random_seed(config.seed)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    train_data, num_classes, pair_sets = training_data(config, cluster.shard)
    steps = int(train_data.cardinality())
    if steps <= 0:
        raise GhostFaceError(f"{config.data}: fewer images than one batch of {config.batch_size}")
    # jit_compile: JAX runs a step op by op without it (thousands of tiny compilations); TensorFlow traces a
    # graph either way and uses XLA only when asked.
    with cluster.scope():
        model = embedding_model(config)
        trainer = Trainer(model, train_data, num_classes, output, schedule=None, steps_per_epoch=steps,
                          pair_sets=pair_sets, eval_every=config.eval_every, sub_centers=config.sub_centers,
                          cluster=cluster, steps_per_execution=config.steps_per_execution,
                          jit_compile=bool(config.jit_compile) or cluster.backend == "jax",
                          stop_at_accuracy=config.stop_at, log_steps=config.log_steps,
                          head_weight_decay=config.weight_decay if config.optimizer in COUPLED_DECAY else 0.0)
        stages, trainer.schedule = official_stages(config, steps)
    if resuming:
        trainer.restore()  # refuses another model before the run's files change
    elif config.init_from:
        logger.info("initializing the head at the class-mean embeddings")
        trainer.initialize_head(class_mean_embeddings(model, train_data, num_classes))
    if cluster.is_writer:
        from ghostface_keras.core.files import write_atomically

        write_atomically(output / CONFIG_FILE, json.dumps(config.to_dict(), indent=1))
    records = trainer.fit(stages)
    exported = None
    if config.export_tflite and cluster.is_writer:
        exported = export_tflite_file(output / "model.keras", output / "model.tflite")
    return TrainingResult(records, output, exported, cluster.process_id, cluster.num_processes,
                          weights_fingerprint(model))


def _check_same_run(output: Path, config: TrainingConfig) -> None:
    """A resumed run must be the same run: the model, data and loss it was started with."""
    path = output / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no readable config: the training state's own shape checks still guard the weights
    changed = [f"{key} {saved.get(key)!r} -> {getattr(config, key)!r}"
               for key in RUN_IDENTITY if key in saved and saved.get(key) != getattr(config, key)]
    if changed:
        raise GhostFaceError(f"resume {output}: the run was started with other settings ({'; '.join(changed)}): "
                             "resume with the same ones, or train into another output",
                             fields=("resume", "output", *RUN_IDENTITY))


_EXPORT_SCRIPT = """
import sys, keras
from ghostface_keras.export import export_tflite
print(export_tflite(keras.saving.load_model(sys.argv[1]), sys.argv[2]))
"""


def export_tflite_file(model_path: Path, tflite_path: Path) -> Path | None:
    """Export a trained `.keras` to TFLite; a failure is logged, not raised (the `.keras` is the deliverable).

    TFLite conversion needs the TensorFlow backend: from another backend it runs in a TensorFlow child process,
    because the in-process route from JAX (jax2tf) writes a file with resource variables and unfolded BatchNorm,
    not the static graph `export_tflite` guarantees (docs/training.md, benchmarks/jax_tflite_export.py).
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        from ghostface_keras.export import export_tflite

        try:
            return export_tflite(keras.saving.load_model(str(model_path)), tflite_path)
        except GhostFaceError as error:
            logger.warning("TFLite export failed (%s is kept): %s", model_path, error)
            return None
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    done = subprocess.run([sys.executable, "-c", _EXPORT_SCRIPT, str(model_path), str(tflite_path)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        logger.warning("TFLite export failed (%s is kept): %s", model_path, lines[-1] if lines else done.returncode)
        return None
    return tflite_path


__all__ = ["TrainingConfig", "TrainingResult", "DEMO_SETTINGS", "apply_presets", "official_stages", "resolve_defaults", "train", "validate",
           "fine_tuning_model", "training_data", "demo_data", "export_tflite_file"]
