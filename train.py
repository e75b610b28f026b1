"""Train a face-recognition embedding model with a margin loss: `python train.py --data DIR --output RUN`.

Also installed as the `ghostface-train` console script. `python train.py --demo` trains a small GhostFaceNet
on synthetic identities for a few CPU minutes and verifies it on held-out synthetic identities.

Examples:
    python train.py --data faces/ --model GhostFaceNetV1-1.3-2 --epochs 50 --batch-size 128 --output run
    python train.py --data faces/ --init-from GN_W0.5_S2_ArcFace_epoch16.h5 --epochs 2 --output finetune
    python train.py --data faces/ --output run --resume          # continue an interrupted run
    python train.py --demo --output demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

DEMO_IDENTITIES, DEMO_IMAGES, DEMO_HELD_OUT = 80, 16, 40
CONFIG_FILE = "train_config.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="identity folders ROOT/<id>/<img>, or a RecordIO train.rec / its folder")
    parser.add_argument("--model", default="GhostFaceNetV1-1.3-2", help="registered model name (see ghostface-zoo)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size (over all devices)")
    parser.add_argument("--output", help="output directory (default: runs/train, or runs/demo with --demo)")
    parser.add_argument("--loss", default="arcface", choices=["arcface", "cosface", "magface", "adaface"])
    parser.add_argument("--margin", type=float,
                        help="loss margin (default: the loss's paper default; ArcFace 0.3 with adamw)")
    parser.add_argument("--scale", type=float,
                        help="logit scale s (default 64 with sgd/sam, whose first epoch uses 32; 32 with adamw)")
    parser.add_argument("--sub-centers", type=int, default=1, help="sub-centers per class (Sub-center ArcFace)")
    parser.add_argument("--optimizer", choices=["sgd", "adamw", "sam"],
                        help="default adamw from scratch (SGD 0.1 diverges on small datasets), sgd with --init-from;"
                             " sam = SGD with sharpness-aware minimization (--sam-rho)")
    parser.add_argument("--sam-rho", type=float, default=0.05)
    parser.add_argument("--partial-fc-rate", type=float, default=1.0,
                        help="partial FC: each step's softmax covers this fraction of the classes (batch classes +"
                             " random others), e.g. 0.1 for 1 M identities; 1 = full softmax")
    parser.add_argument("--lr", type=float,
                        help="base LR (default sgd 0.1 from scratch, 0.01 fine-tuning; adamw 2e-3 / 1e-4)")
    parser.add_argument("--weight-decay", type=float, help="decoupled weight decay (default 5e-4 sgd, 0.05 adamw)")
    parser.add_argument("--schedule", default="cosine", choices=["cosine", "exponential", "step", "constant"])
    parser.add_argument("--warmup-epochs", type=float, default=0.0)
    parser.add_argument("--augment", default="flip", help="augmentation level 0-3 or a name (see ghostface_keras.data)")
    parser.add_argument("--eval-bins", nargs="*", default=[], help="verification .bin files evaluated every epoch")
    parser.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs")
    parser.add_argument("--stop-at", type=float,
                        help="stop once the last --eval-bins set reaches this accuracy (--demo: 0.96)")
    parser.add_argument("--mixed-precision", action="store_true", help="mixed_float16 (GPUs)")
    parser.add_argument("--init-from", help="start from weights: an official .h5 or a .keras embedding model")
    parser.add_argument("--freeze-backbone-epochs", type=int,
                        help="train only the head first for N epochs (default 1 with --init-from, else 0)")
    parser.add_argument("--devices", type=int, help="train on N local GPUs (MirroredStrategy); TF_CONFIG: multi-host")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output where it stopped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="batches per call of the compiled train step (fewer host round trips on GPUs)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--config", help="JSON file of option defaults (keys as the long options, with _)")
    parser.add_argument("--demo", action="store_true", help="train on generated synthetic identities (CPU minutes)")
    parser.add_argument("--export-tflite", action="store_true", help="also export DIR/model.tflite at the end")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with `--config FILE` supplying defaults that explicit options override."""
    parser = build_parser()
    from ghostface_keras.errors import GhostFaceError

    args = parser.parse_args(argv)
    if args.config:
        try:
            overrides = json.loads(Path(args.config).read_text())
        except (OSError, ValueError) as error:
            raise GhostFaceError(f"cannot read --config {args.config}: {error}") from error
        unknown = set(overrides) - set(vars(args))
        if unknown:
            raise GhostFaceError(f"{args.config}: unknown options {sorted(unknown)}")
        parser.set_defaults(**overrides)
        args = parser.parse_args(argv)
    if args.demo:
        apply_demo_defaults(args, parser)
    if args.output is None:
        args.output = os.path.join("runs", "demo" if args.demo else "train")
    resolve_recipe_defaults(args)
    if not 0.0 < args.partial_fc_rate <= 1.0:
        raise GhostFaceError(f"--partial-fc-rate must be in (0, 1], got {args.partial_fc_rate}")
    if args.partial_fc_rate < 1.0 and args.optimizer == "sam":
        raise GhostFaceError("--partial-fc-rate < 1 cannot be combined with --optimizer sam")
    return args


def resolve_recipe_defaults(args: argparse.Namespace) -> None:
    """Fill the optimizer, LR, scale and margin left unset, by recipe.

    From scratch the default is AdamW 2e-3 with ArcFace s 32, m 0.3: the official SGD 0.1 / s 64 / m 0.5
    recipe is meant for millions of images and diverges on small datasets (see docs/training.md). With
    `--init-from` it is SGD (head-only epoch at 0.01, then 0.001), which keeps pretrained features.
    """
    if args.optimizer is None:
        args.optimizer = "sgd" if args.init_from else "adamw"
    adamw = args.optimizer == "adamw"
    if args.lr is None:
        args.lr = (1e-4 if args.init_from else 2e-3) if adamw else (0.01 if args.init_from else 0.1)
    if args.scale is None:
        args.scale = 32.0 if adamw else 64.0
    if args.margin is None and adamw and args.loss == "arcface":
        args.margin = 0.3


DEMO_SETTINGS = {"model": "GhostFaceNetV1-0.5-2", "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3,
                 "scale": 32.0, "margin": 0.3, "stop_at": 0.96, "export_tflite": True}


def apply_demo_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Settings of `--demo` that finish in a few CPU minutes; options set explicitly (or by --config) win."""
    for key, value in DEMO_SETTINGS.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: returns the exit status (prints one line and exits 2 on a GhostFaceError)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ghostface_keras.errors import GhostFaceError

    try:
        args = parse_args(argv)
        report = run(args)
    except GhostFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(report)
    return 0


def run(args: argparse.Namespace) -> str:
    """Train as configured by `args`; returns a short text report."""
    import keras

    from ghostface_keras.errors import GhostFaceError
    from ghostface_keras.training import Trainer, make_strategy

    started = time.time()
    output = Path(args.output)
    if not args.demo and not args.data:
        raise GhostFaceError("--data is required (or use --demo)")
    _check_output_dir(output, args.resume)
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = make_strategy(args.devices)
    train_data, num_classes, pair_sets = (_demo_data if args.demo else _real_data)(args)
    steps = int(train_data.cardinality())
    if steps <= 0:
        raise GhostFaceError(f"{args.data}: fewer images than one batch of {args.batch_size}")
    with strategy.scope():
        embedding_model = _embedding_model(args)
        trainer = Trainer(embedding_model, train_data, num_classes, output, schedule=None, steps_per_epoch=steps,
                          pair_sets=pair_sets, eval_every=args.eval_every, sub_centers=args.sub_centers,
                          strategy=strategy, steps_per_execution=args.steps_per_execution,
                          jit_compile=bool(args.jit_compile), stop_at_accuracy=args.stop_at)
        stages, schedule = _stages(args, steps)
    trainer.schedule = schedule
    if args.init_from and not (args.resume and (output / "training_state.npz").is_file()):
        from ghostface_keras.training import class_mean_embeddings

        logging.getLogger("train").info("initializing the head at the class-mean embeddings")
        trainer.initialize_head(class_mean_embeddings(embedding_model, train_data, num_classes))
    _save_config(output, args)
    records = trainer.fit(stages, resume=args.resume)
    return _report(args, output, records, time.time() - started)


def _check_output_dir(output: Path, resume: bool) -> None:
    from ghostface_keras.errors import GhostFaceError

    if resume and not (output / "training_state.npz").is_file():
        logging.getLogger("train").warning("--resume: no training state in %s, starting from scratch", output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GhostFaceError(f"cannot create output directory {output}: {error}") from error
    if not os.access(output, os.W_OK):
        raise GhostFaceError(f"output directory {output} is not writable")


def _real_data(args):
    from ghostface_keras.data import image_folder_dataset, load_bin, recordio_dataset
    from ghostface_keras.errors import DataError

    path = Path(args.data)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or directory")
    is_rec = path.suffix == ".rec" or (path.is_dir() and (path / "train.rec").is_file())
    reader = recordio_dataset if is_rec else image_folder_dataset
    augment = int(args.augment) if str(args.augment).isdigit() else args.augment
    dataset = reader(path, batch_size=args.batch_size, augment=augment, seed=args.seed, drop_remainder=True)
    pair_sets = {Path(b).stem: load_bin(b) for b in args.eval_bins}
    return dataset, dataset.num_classes, pair_sets


def _demo_data(args):
    """Synthetic identities: DEMO_IDENTITIES for training, DEMO_HELD_OUT other ones as verification pairs."""
    import numpy as np
    import tensorflow as tf

    from ghostface_keras.data.synthetic import render_synthetic_faces
    from ghostface_keras.preprocessing import normalize_images

    logger = logging.getLogger("train")
    logger.info("drawing %d synthetic identities x %d images", DEMO_IDENTITIES, DEMO_IMAGES)
    images, labels = render_synthetic_faces(DEMO_IDENTITIES, DEMO_IMAGES, seed=args.seed)
    held_out, held_labels = render_synthetic_faces(DEMO_HELD_OUT, 10, seed=args.seed, first_identity=DEMO_IDENTITIES)
    pairs = _verification_pairs(held_out, held_labels, np.random.default_rng(args.seed))
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).shuffle(len(images), seed=args.seed)
    dataset = dataset.batch(args.batch_size, drop_remainder=True)

    def to_input(batch, batch_labels):
        batch = normalize_images(batch)
        mirror = tf.random.uniform([tf.shape(batch)[0], 1, 1, 1]) < 0.5
        return tf.where(mirror, batch[:, :, ::-1], batch), batch_labels

    dataset = dataset.map(to_input, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
    return dataset, DEMO_IDENTITIES, {"synthetic_held_out": pairs}


def _verification_pairs(images, labels, rng):
    """Equal numbers of same / different identity pairs, laid out as rows (2i, 2i+1) like a .bin."""
    import numpy as np

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


def _embedding_model(args):
    import keras

    from ghostface_keras import create_model
    from ghostface_keras.errors import GhostFaceError, ModelNameError

    if args.init_from:
        path = Path(args.init_from)
        if not path.is_file():
            raise GhostFaceError(f"--init-from {path}: no such file")
        if path.suffix == ".h5":
            from ghostface_keras.convert import load_official

            model = load_official(str(path))
        else:
            model = keras.saving.load_model(str(path), compile=False)
        # Fine-tuning keeps BatchNorm statistics: small, single-domain batches would shift them.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        return model
    try:
        return create_model(args.model, weight_decay=0.0)
    except (KeyError, ValueError) as error:
        raise ModelNameError(f"--model {args.model}: {error}") from error


def _stages(args, steps_per_epoch: int):
    """The official two-stage recipe (1 epoch at s = min(s, 32), then s) or the fine-tuning recipe."""
    from ghostface_keras.callbacks import HeadFirstSchedule, build_schedule
    from ghostface_keras.losses import get_margin_loss
    from ghostface_keras.optimizers import build_optimizer

    finetune = bool(args.init_from)
    inner = "sgd" if args.optimizer == "sam" else args.optimizer
    lr = args.lr
    decay = args.weight_decay if args.weight_decay is not None else (0.05 if inner == "adamw" else 5e-4)
    rho = args.sam_rho if args.optimizer == "sam" else 0.0
    freeze = args.freeze_backbone_epochs if args.freeze_backbone_epochs is not None else int(finetune)
    freeze = min(freeze, args.epochs)
    stages = []
    partial = {"partial_fc_rate": args.partial_fc_rate}

    def loss(scale):
        return get_margin_loss(args.loss, scale=scale, margin=args.margin)

    if freeze:
        # Head only, at a higher LR: the backbone (and its BatchNorm statistics) stay exactly pretrained.
        stages.append({"epochs": freeze, "loss": loss(args.scale), "freeze_backbone": True,
                       "optimizer": build_optimizer(inner, lr, decay), **partial})
    remaining = args.epochs - freeze
    warm = 1 if (not finetune and remaining >= 3 and args.loss in ("arcface", "cosface") and args.scale > 32) else 0
    if warm:
        stages.append({"epochs": 1, "loss": loss(32.0), "optimizer": build_optimizer(inner, lr, decay), "sam_rho": rho,
                       **partial})
    if remaining - warm > 0:
        stages.append({"epochs": remaining - warm, "loss": loss(args.scale), "sam_rho": rho,
                       "optimizer": None if warm else build_optimizer(inner, lr, decay), **partial})
    # Fine-tuning: the backbone epochs run at a tenth of the head-only LR.
    schedule_lr = lr * 0.1 if finetune else lr
    schedule = build_schedule(args.schedule, schedule_lr, steps_per_epoch, args.epochs,
                              lr_min=min(1e-5, schedule_lr * 0.01), warmup_epochs=args.warmup_epochs)
    if freeze:
        schedule = HeadFirstSchedule(schedule, lr, freeze * steps_per_epoch)
    return stages, schedule


def _save_config(output: Path, args) -> None:
    from ghostface_keras.callbacks import write_atomically

    write_atomically(output / CONFIG_FILE, lambda p: Path(p).write_text(json.dumps(vars(args), indent=1)))


def _report(args, output: Path, records: list[dict], seconds: float) -> str:
    exported = _export_tflite(output) if args.export_tflite else None
    last = records[-1] if records else {}
    scores = {k: v for k, v in last.items() if k not in ("epoch", "lr", "loss", "accuracy", "seconds", "cpu_seconds")}
    stopped = args.stop_at is not None and scores and list(scores.values())[-1] >= args.stop_at
    lines = [f"trained {len(records)} epochs in {seconds / 60:.1f} min" +
             (f" (stopped early: verification reached --stop-at {args.stop_at})" if stopped else "") +
             f" -> {output / 'model.keras'}",
             f"last epoch: loss {last.get('loss', float('nan')):.3f}, training accuracy {last.get('accuracy', 0):.3f}"]
    lines += [f"verification {name}: {value:.4f}" + (" (held-out identities)" if args.demo else "")
              for name, value in scores.items()]
    if exported is not None:
        lines.append(f"exported: {exported}")
    lines.append(f"history: {output / 'history.json'} and {output / 'history.png'}")
    return "\n".join(lines)


def _export_tflite(output: Path) -> Path | None:
    try:
        from ghostface_keras.export import export_tflite
    except ImportError:
        logging.getLogger("train").warning("ghostface_keras.export is not available: no TFLite export")
        return
    import keras

    from ghostface_keras.errors import GhostFaceError

    try:
        return export_tflite(keras.saving.load_model(str(output / "model.keras")), output / "model.tflite")
    except GhostFaceError as error:  # the trained model.keras is the deliverable; an export failure is not fatal
        logging.getLogger("train").warning("TFLite export failed (model.keras is kept): %s", error)
        return None


if __name__ == "__main__":
    sys.exit(main())
