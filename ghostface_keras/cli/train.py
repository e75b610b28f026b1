"""Train a face-recognition embedding model with a margin loss: `python train.py --data DIR --output RUN`.

Installed as the `ghostface-train` console script; `python train.py` at the project root runs it too. `python train.py --demo` trains a small GhostFaceNet
on synthetic identities for a few CPU minutes and verifies it on held-out synthetic identities.

Examples:
    python train.py --data faces/ --model GhostFaceNetV1-1.3-2 --epochs 50 --batch-size 128 --output run
    python train.py --data faces/ --init-from GN_W0.5_S2_ArcFace_epoch16.h5 --epochs 2 --output finetune
    python train.py --data faces/ --output run --resume          # continue an interrupted run
    python train.py --demo --output demo
    # two processes (hosts) on the JAX backend, global batch 256, process 0 writes the files:
    KERAS_BACKEND=jax python train.py --data faces/ --batch-size 256 --coordinator host0:7777 \
        --num-processes 2 --process-id 0 --output run       # and --process-id 1 on the other host

Exit status: 0 done; 1 the run failed after it started (a process of a multi-process run was lost);
2 bad input (options, data, model, output), one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from ghostface_keras.cli import (EXIT_CHECK_FAILED, error_line, import_backend_quietly, quiet_tensorflow_logs,
                                 run_reporting_errors)

PROG = "ghostface-train"

BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow"}  # the backends train.py is tested on


def build_parser() -> argparse.ArgumentParser:
    from ghostface_keras.train.recipes import LOSSES, OPTIMIZERS, SCHEDULES

    parser = argparse.ArgumentParser(prog="ghostface-train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", help="identity folders ROOT/<id>/<img>, or a RecordIO train.rec / its folder")
    parser.add_argument("--model", default="GhostFaceNetV1-1.3-2", help="registered model name (see ghostface-zoo)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128, help="global batch size (over all devices)")
    parser.add_argument("--output", help="output directory (default: runs/train, or runs/demo with --demo)")
    parser.add_argument("--loss", default="arcface", choices=list(LOSSES))
    parser.add_argument("--margin", type=float,
                        help="loss margin (default: the loss's paper default; ArcFace 0.3 with adamw)")
    parser.add_argument("--scale", type=float,
                        help="logit scale s (default 64 with sgd/sam, whose first epoch uses 32; 32 with adamw)")
    parser.add_argument("--sub-centers", type=int, default=1, help="sub-centers per class (Sub-center ArcFace)")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS),
                        help="default adamw from scratch (SGD 0.1 diverges on small datasets), sgd with --init-from;"
                             " sam = SGD with sharpness-aware minimization (--sam-rho)")
    parser.add_argument("--sam-rho", type=float, default=0.05)
    parser.add_argument("--partial-fc-rate", type=float, default=1.0,
                        help="partial FC: each step's softmax covers this fraction of the classes (batch classes +"
                             " random others), e.g. 0.1 for 1 M identities; 1 = full softmax")
    parser.add_argument("--lr", type=float,
                        help="base LR (default sgd 0.1 from scratch, 0.01 fine-tuning; adamw 2e-3 / 1e-4)")
    parser.add_argument("--weight-decay", type=float, help="decoupled weight decay (default 5e-4 sgd, 0.05 adamw)")
    parser.add_argument("--schedule", default="cosine", choices=list(SCHEDULES))
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
    parser.add_argument("--devices", type=int,
                        help="local devices per process (default: every accelerator on JAX, one on TensorFlow, where"
                             " N > 1 means MirroredStrategy)")
    parser.add_argument("--cpu-devices", type=int,
                        help="split the CPU into N logical devices (testing data parallel without GPUs)")
    parser.add_argument("--coordinator", help="HOST:PORT of process 0: multi-process / multi-host training (JAX)")
    parser.add_argument("--num-processes", type=int, default=1, help="processes of the run (with --coordinator)")
    parser.add_argument("--process-id", type=int, default=0, help="this process's rank, 0..N-1 (0 writes the files)")
    parser.add_argument("--init-timeout", type=float, default=300.0,
                        help="seconds to wait for every process to join the coordinator")
    parser.add_argument("--resume", action="store_true", help="continue the run in --output where it stopped")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="batches per call of the compiled train step (fewer host round trips on GPUs)")
    parser.add_argument("--jit-compile", action="store_true", help="compile the train step with XLA")
    parser.add_argument("--log-steps", action="store_true", help="also write every step's loss to DIR/steps.json")
    parser.add_argument("--config", help="JSON file of option defaults (keys as the long options, with _)")
    parser.add_argument("--demo", action="store_true", help="train on generated synthetic identities (CPU minutes)")
    parser.add_argument("--export-tflite", action="store_true", help="also export DIR/model.tflite at the end")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, with `--config FILE` supplying defaults that explicit options override."""
    parser = build_parser()
    from ghostface_keras.core.errors import GhostFaceError

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
    return args


DEMO_SETTINGS = {"model": "GhostFaceNetV1-0.5-2", "epochs": 10, "batch_size": 32, "optimizer": "adamw", "lr": 2e-3,
                 "scale": 32.0, "margin": 0.3, "stop_at": 0.96, "export_tflite": True}


def apply_demo_defaults(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Settings of `--demo` that finish in a few CPU minutes; options set explicitly (or by --config) win."""
    for key, value in DEMO_SETTINGS.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: returns the exit status (one line on stderr and 2 for bad input, see ghostface_keras.cli)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()
    return run_reporting_errors(PROG, lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    from ghostface_keras.core.errors import GhostFaceError
    from ghostface_keras.train.recipes import TrainingConfig, validate

    args = parse_args(argv)  # before any backend import: `--help` answers at once
    # options, files and --output checked in seconds, before the backend (and TensorFlow) loads
    validate(TrainingConfig.from_dict(_config_fields(args)))
    problem = _backend_problem()
    if problem:
        raise GhostFaceError(problem)
    import_backend_quietly()
    from ghostface_keras.core.distribution import LostProcessError
    from ghostface_keras.train.recipes import train

    config = TrainingConfig.from_dict(_config_fields(args))
    started = time.time()
    try:
        result = train(config)
    except LostProcessError as error:
        # Exit now: JAX's shutdown would wait for the lost process until its heartbeat times out, then abort.
        print(error_line(PROG, error), file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_CHECK_FAILED)
    if result.process_id == 0:
        print(_report(config, result, time.time() - started))
    else:
        print(f"process {result.process_id} of {result.num_processes}: trained {len(result.records)} epochs "
              f"(process 0 wrote the files)")
    print(f"weights fingerprint: {result.fingerprint}")
    return 0


def _backend_problem() -> str | None:
    """Keras imports its backend's package at start-up: name a missing one in a line, not a traceback."""
    import importlib

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    package = BACKEND_PACKAGES.get(backend)
    if package is None:
        return f"KERAS_BACKEND={backend} is not a backend this project trains on (tensorflow, jax)"
    try:
        importlib.import_module(package)  # keras imports it next anyway
    except ImportError:
        extra = {"jax": "pip install 'ghostface_keras[jax]'"}.get(backend, f"pip install {package}")
        return f"KERAS_BACKEND={backend} needs the {package} package, which is not installed: {extra}"
    return None


def _config_fields(args: argparse.Namespace) -> dict:
    """The parsed options that are training settings (not --config, the file of defaults)."""
    return {key: value for key, value in vars(args).items() if key != "config"}


def _report(config, result, seconds: float) -> str:
    records, output = result.records, result.output
    last = records[-1] if records else {}
    scores = {k: v for k, v in last.items() if k not in ("epoch", "lr", "loss", "accuracy", "seconds", "cpu_seconds")}
    stopped = config.stop_at is not None and scores and list(scores.values())[-1] >= config.stop_at
    lines = [f"trained {len(records)} epochs in {seconds / 60:.1f} min" +
             (f" (stopped early: verification reached --stop-at {config.stop_at})" if stopped else "") +
             f" -> {output / 'model.keras'}",
             f"last epoch: loss {last.get('loss', float('nan')):.3f}, training accuracy {last.get('accuracy', 0):.3f}"]
    lines += [f"verification {name}: {value:.4f}" + (" (held-out identities)" if config.demo else "")
              for name, value in scores.items()]
    if result.exported is not None:
        lines.append(f"exported: {result.exported}")
    lines.append(f"history: {output / 'history.json'} and {output / 'history.png'}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
