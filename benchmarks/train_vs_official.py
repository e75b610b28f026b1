#!/usr/bin/env python
"""train.py against the official GhostFaceNets training code, side by side on one real folder set.

    python benchmarks/train_vs_official.py --official-repo PATH [--official-python PY]
        [--data ../shared/data/celeba_aligned112/train] [--pairs ../shared/data/celeba_aligned112/val_pairs.bin]
        [--model GhostFaceNetV1-1.3-2] [--epochs 8] [--batch-size 64] [--seeds 0 1]
        [--markdown benchmarks/results/train_vs_official.md]

PATH is a checkout of https://github.com/HamadYA/GhostFaceNets (not part of this project); PY an interpreter
with tensorflow 2.15.1 (Keras 2) and the official code's imports (the default, ~/.cache/ghostface_tf215, is
the venv `../shared/acceptance/train_step_vs_official.sh` makes; add, in one pip command that keeps `"tensorflow==2.15.1" "keras==2.15.0" "numpy<2"` pinned (unpinned, pip upgrades TensorFlow to 2.2x), `keras-cv-attention-models==1.3.20 glob2
pandas scikit-image scikit-learn tqdm` to it).

For each seed, both trainings run one after the other, the order alternating between seeds so that a change
of load hits both alike:
- official: `benchmarks/official_train_driver.py`, the notebook's `train.Train` recipe (SGD 0.1 momentum 0.9,
  coupled L2 5e-4, ArcFace m 0.5 with s 32 for the first epoch then 64, cosine LR, flip);
- ours: `train.py --optimizer sgd --lr 0.1 --weight-decay 5e-4 --schedule cosine --warmup-epochs 0 --loss
  arcface --margin 0.5 --scale 64 --augment flip` (its first epoch also uses s 32).
Each is one child process; wall, user and system CPU seconds come from `os.wait4` (the process and all its
threads, start-up, data listing, tracing and saving included). The first step of each stage costs what its
epoch takes beyond a warm epoch: `epoch seconds - median(seconds of epochs 3..N)` for epochs 1 and 2 (both
sides write per-epoch seconds). Both final embedding models are scored by one evaluator: this project's
`eval.py` on the held-out pairs (10-fold accuracy, flip TTA), and the last epoch's training accuracy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_PYTHON = Path.home() / ".cache" / "ghostface_tf215" / "bin" / "python"
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"}


def timed_process(command: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run `command` to its end (output to `log`); its wall, user and system seconds (all threads)."""
    started = time.perf_counter()
    with log.open("w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                   cwd=cwd)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{command[1]} failed (exit {code}); the end of {log}:\n" + "\n".join(tail))
    return {"wall_s": wall, "user_s": usage.ru_utime, "system_s": usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "minor_faults_m": usage.ru_minflt / 1e6}


def first_step_costs(epochs: list[dict]) -> list[float]:
    """Seconds that epochs 1 and 2 (the two stages' first steps: tracing, retracing at s 64) took beyond a warm
    epoch, the median of epochs 3..N."""
    warm = statistics.median(record["seconds"] for record in epochs[2:])
    return [epochs[0]["seconds"] - warm, epochs[1]["seconds"] - warm]


def run_official(args: argparse.Namespace, seed: int, work: Path) -> dict:
    folder = work / f"official_seed{seed}"
    folder.mkdir()
    report = folder / "report.json"
    timing = timed_process([str(args.official_python), str(REPO / "benchmarks" / "official_train_driver.py"),
                            str(args.official_repo), str(args.data), str(report), "--epochs", str(args.epochs),
                            "--batch-size", str(args.batch_size), "--width", args.model.split("-")[1],
                            "--strides", args.model.split("-")[2], "--seed", str(seed)],
                           folder / "train.log", env={**QUIET, "CUDA_VISIBLE_DEVICES": ""})
    result = json.loads(report.read_text())
    return {**timing, "epochs": result["epochs"], "model": result["model"]}


def run_ours(args: argparse.Namespace, seed: int, work: Path) -> dict:
    folder = work / f"ours_seed{seed}"
    timing = timed_process([sys.executable, str(REPO / "train.py"), "--data", str(args.data), "--model", args.model,
                            "--optimizer", "sgd", "--lr", "0.1", "--weight-decay", "5e-4", "--schedule", "cosine",
                            "--warmup-epochs", "0", "--loss", "arcface", "--margin", "0.5", "--scale", "64",
                            "--augment", "flip", "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
                            "--seed", str(seed), "--output", str(folder)],
                           work / f"ours_seed{seed}.log", env={**QUIET, "KERAS_BACKEND": "tensorflow"})
    epochs = json.loads((folder / "history.json").read_text())
    return {**timing, "epochs": epochs, "model": str(folder / "model.keras")}


def pairs_accuracy(model: str, pairs: Path, work: Path) -> float:
    """10-fold accuracy on `pairs` by this project's eval.py (the one evaluator of both models)."""
    output = Path(tempfile.mkdtemp(dir=work))
    done = subprocess.run([sys.executable, str(REPO / "eval.py"), "--model", model, "--bins", str(pairs),
                           "--output", str(output), "--no-plots", "--quiet"], capture_output=True, text=True,
                          env={**os.environ, **QUIET})
    if done.returncode != 0:
        raise SystemExit(f"eval.py failed on {model}: {done.stderr.strip().splitlines()[-1:]}")
    results = json.loads((output / "results.json").read_text())
    return float(results[0]["accuracy"])


def summary(side: dict, pairs: Path, work: Path) -> dict:
    costs = first_step_costs(side["epochs"])
    return {"wall_s": side["wall_s"], "user_s": side["user_s"], "system_s": side["system_s"],
            "peak_rss_mb": side["peak_rss_mb"], "minor_faults_m": side["minor_faults_m"],
            "first_step_s": costs[0], "second_stage_first_step_s": costs[1],
            "warm_epoch_s": statistics.median(record["seconds"] for record in side["epochs"][2:]),
            "train_accuracy": side["epochs"][-1]["accuracy"], "pairs_accuracy": pairs_accuracy(side["model"], pairs,
                                                                                               work)}


def markdown(args: argparse.Namespace, rows: list[dict], minutes: float) -> str:
    def ratio(key: str) -> str:
        values = [row["ours"][key] / row["official"][key] for row in rows]
        return f"{statistics.median(values):.2f}x" + (f" ({', '.join(f'{v:.2f}' for v in values)})" if len(values) > 1
                                                       else "")

    lines = [f"Run: `python benchmarks/train_vs_official.py --epochs {args.epochs} --batch-size {args.batch_size} "
             f"--seeds {' '.join(map(str, args.seeds))}` on {datetime.datetime.now():%Y-%m-%d %H:%M}, "
             f"{minutes:.0f} min; {args.model} from scratch on `{args.data.name}` of {args.data.parent.name}, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average at the start "
             f"{rows[0]['load']:.1f}.", "",
             "| seed | side | wall s | user CPU s | system CPU s | minor page faults | peak RSS MB | first step s "
             "| stage-2 first step s | warm epoch s | train accuracy | held-out pairs 10-fold |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for side in ("official", "ours"):
            values = row[side]
            lines.append(f"| {row['seed']} | {side} | {values['wall_s']:.0f} | {values['user_s']:.0f} | "
                         f"{values['system_s']:.0f} | {values['minor_faults_m']:.2f} M | {values['peak_rss_mb']:.0f} | "
                         f"{values['first_step_s']:.1f} | "
                         f"{values['second_stage_first_step_s']:.1f} | {values['warm_epoch_s']:.1f} | "
                         f"{values['train_accuracy']:.3f} | {values['pairs_accuracy']:.3f} |")
    lines += ["", "| ours / official (median over seeds) | value | goal |", "|---|---|---|",
              f"| wall time | {ratio('wall_s')} | <= 1.0 |", f"| system CPU time | {ratio('system_s')} | <= 1.5 |",
              f"| user CPU time | {ratio('user_s')} | |", f"| minor page faults | {ratio('minor_faults_m')} | |",
              f"| peak resident memory | {ratio('peak_rss_mb')} | |", f"| first step | {ratio('first_step_s')} | <= 1.0 |",
              f"| warm epoch | {ratio('warm_epoch_s')} | |"]
    differences = [(row["ours"]["train_accuracy"] - row["official"]["train_accuracy"],
                    row["ours"]["pairs_accuracy"] - row["official"]["pairs_accuracy"]) for row in rows]
    lines += ["", "Accuracy, ours - official per seed: training " +
              ", ".join(f"{train:+.3f}" for train, _ in differences) + "; held-out pairs " +
              ", ".join(f"{held:+.3f}" for _, held in differences) + " (goal: within 0.02)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official-repo", type=Path, required=True, help="a checkout of HamadYA/GhostFaceNets")
    parser.add_argument("--official-python", type=Path, default=DEFAULT_PYTHON, help="a TF 2.15 interpreter")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "celeba_aligned112" / "train")
    parser.add_argument("--pairs", type=Path, default=SHARED / "data" / "celeba_aligned112" / "val_pairs.bin")
    parser.add_argument("--model", default="GhostFaceNetV1-1.3-2", help="a GhostFaceNetV1-<width>-<stride> name")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "results" / "train_vs_official.md")
    parser.add_argument("--work", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    if not args.model.startswith("GhostFaceNetV1-") or args.epochs < 3:
        parser.error("--model must be a GhostFaceNetV1-<width>-<stride> name and --epochs >= 3")
    for path, what in ((args.official_repo / "train.py", "official checkout"), (args.official_python, "interpreter"),
                       (args.data, "data folder"), (args.pairs, "pairs .bin")):
        if not path.exists():
            parser.error(f"{path}: {what} not found")
    work = args.work or Path(tempfile.mkdtemp(prefix="train_vs_official_"))
    work.mkdir(parents=True, exist_ok=True)
    started, rows = time.perf_counter(), []
    for index, seed in enumerate(args.seeds):
        row = {"seed": seed, "load": os.getloadavg()[0]}
        order = ("official", "ours") if index % 2 == 0 else ("ours", "official")
        for side in order:
            print(f"seed {seed}: training {side} ...", flush=True)
            run = run_official if side == "official" else run_ours
            row[side] = summary(run(args, seed, work), args.pairs, work)
            print(f"seed {seed} {side}: " + ", ".join(f"{k} {v:.3f}" for k, v in row[side].items()), flush=True)
        rows.append(row)
    text = markdown(args, rows, (time.perf_counter() - started) / 60)
    args.markdown.write_text(text)
    (args.markdown.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
