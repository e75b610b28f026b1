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
                                 option_flag, run_reporting_errors, settings_as_flags)

PROG = "ghostface-train"

BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow"}  # the backends train.py is tested on


_TYPES = {"int": int, "float": float, "str": str, "Any": str, "list": str}


def build_parser() -> argparse.ArgumentParser:
    """The options are `TrainingConfig`'s fields, generated: name, type, default, choices and help come from
    the one definition in `ghostface_keras.train.recipes`; only `--config` (a file of defaults) is the CLI's."""
    import dataclasses

    from ghostface_keras.train.recipes import TrainingConfig

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                     formatter_class=_HelpFormatter)
    for option in dataclasses.fields(TrainingConfig):
        flag = option_flag(option.name)
        details = dict(option.metadata)
        help_text = _flag_spelling(details.pop("help", ""))
        if "choices" in details:
            details["choices"] = list(details["choices"])
        kind = str(option.type).replace(" | None", "")
        if kind == "bool":
            parser.add_argument(flag, action="store_true", default=option.default, help=help_text)
            continue
        default = option.default_factory() if option.default_factory is not dataclasses.MISSING else option.default
        parser.add_argument(flag, type=_TYPES[kind], default=default, help=help_text, **details)
    parser.add_argument("--config", help="JSON file of option defaults (keys as the long options, with _)")
    return parser


def _flag_spelling(text: str) -> str:
    """Help texts name other settings in backticks (`init_from`); the command line shows its options."""
    import re

    return re.sub(r"`([a-z_]+)`", lambda match: option_flag(match.group(1)), text)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown where there is one: an unset option's help says what the recipe picks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == [] or action.help is None:
            return action.help or ""
        return super()._get_help_string(action)


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
        if not isinstance(overrides, dict):
            raise GhostFaceError(f"{args.config}: a JSON object of option defaults is expected")
        unknown = set(overrides) - set(vars(args))
        if unknown:
            raise GhostFaceError(f"{args.config}: unknown options {sorted(unknown)}")
        parser.set_defaults(**overrides)
        args = parser.parse_args(argv)
    return args


def training_config(argv: list[str] | None = None):
    """The `TrainingConfig` a command line stands for, presets applied (demo settings, default output)."""
    from ghostface_keras.train.recipes import TrainingConfig, apply_presets

    fields = {key: value for key, value in vars(parse_args(argv)).items() if key != "config"}
    return apply_presets(TrainingConfig.from_dict(fields))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: returns the exit status (one line on stderr and 2 for bad input, see ghostface_keras.cli)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_tensorflow_logs()
    return run_reporting_errors(PROG, lambda: _run(argv))


def _run(argv: list[str] | None) -> int:
    from ghostface_keras.core.errors import GhostFaceError
    from ghostface_keras.train.recipes import validate

    config = training_config(argv)  # before any backend import: `--help` answers at once
    # options, files and --output checked in seconds, before the backend (and TensorFlow) loads
    validate(config)
    problem = _backend_problem()
    if problem:
        raise GhostFaceError(problem)
    from ghostface_keras.core.memory import keep_freed_memory

    keep_freed_memory()  # before the backend's threads start: fewer page faults per step (core/memory.py)
    import_backend_quietly()
    from ghostface_keras.core.distribution import LostProcessError
    from ghostface_keras.train.recipes import train

    started = time.time()
    try:
        result = train(config)
    except LostProcessError as error:
        # Exit now: JAX's shutdown would wait for the lost process until its heartbeat times out, then abort.
        print(error_line(PROG, settings_as_flags(error)), file=sys.stderr)
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
