#!/usr/bin/env python
"""train.py on the TensorFlow and JAX backends side by side, and 1 vs 2 JAX processes as a correctness run.

    python benchmarks/train_backends.py [--model GhostFaceNetV1-1.3-2] [--batch-size 64] [--identities 40]
                                        [--rounds 2] [--skip-processes] [--markdown benchmarks/results/train_backends.md]

Throughput: `train.py --data <first N CelebA identities> --epochs 2` under KERAS_BACKEND=tensorflow and =jax,
alternating (TF, JAX, TF, JAX, ...) so that load from other processes hits both alike. The warm epoch is the
second: images trained / its `seconds` (wall) and / its `cpu_seconds` (all threads of the process) from
history.json. Reported: images/s per backend (median over rounds) and the JAX/TF ratios.

Processes: the same small run (GhostFaceNetV1-0.5-2, global batch 16, 1 epoch, --log-steps) in 1 process
and in 2 processes on 127.0.0.1 (1 CPU device each): the largest relative difference of the per-step
losses and whether both processes end with the 1-process run's weights fingerprint. On 2 shared cores this
shows correctness, not speed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_throughput import CELEBA_TRAIN, count_images, subset_folder  # noqa: E402


def run_train(backend: str, args: list[str], timeout: float = 3600) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def warm_epoch(backend: str, data: Path, model: str, batch: int, output: Path) -> dict:
    done = run_train(backend, ["--data", str(data), "--model", model, "--epochs", "2", "--batch-size", str(batch),
                               "--optimizer", "sgd", "--output", str(output)])
    if done.returncode != 0:
        raise SystemExit(f"{backend}: train.py failed: {done.stderr.strip().splitlines()[-1:]}")
    last = json.loads((output / "history.json").read_text())[-1]
    images = count_images(data)[1] // batch * batch  # the full batches an epoch trains
    return {"images_per_s": images / last["seconds"], "images_per_cpu_s": images / last["cpu_seconds"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def processes_check(data: Path, work: Path) -> dict:
    # SGD at a modest LR: the comparison is of the arithmetic, and a from-scratch run at LR 0.1 / s 64 is
    # chaotic enough that float32 reduction-order differences (~1e-6) grow to percents within 3 steps.
    common = ["--data", str(data), "--model", "GhostFaceNetV1-0.5-2", "--epochs", "1", "--batch-size", "16",
              "--optimizer", "sgd", "--lr", "0.01", "--log-steps", "--seed", "3"]
    single = run_train("jax", [*common, "--output", str(work / "one")])
    split = run_train("jax", [*common, "--output", str(work / "split"), "--cpu-devices", "2", "--devices", "2"])
    if single.returncode or split.returncode:
        raise SystemExit(f"1 process failed: {(single.stderr + split.stderr).strip().splitlines()[-1:]}")
    port = free_port()
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    workers = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *common, "--output", str(work / f"two{i}"),
                                 "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outputs = [worker.communicate(timeout=3600) for worker in workers]
    if any(worker.returncode for worker in workers):
        raise SystemExit(f"2 processes failed: {[o[1].strip().splitlines()[-1:] for o in outputs]}")

    def fingerprint(text: str) -> str:
        return next(line.split(": ")[1] for line in text.splitlines() if line.startswith("weights fingerprint"))

    def losses(name: str) -> list[float]:
        return [r["loss"] for r in json.loads((work / name / "steps.json").read_text())]

    one, two = losses("one"), losses("two0")
    differences = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(one, two)]
    prints = [fingerprint(single.stdout), fingerprint(split.stdout)] + [fingerprint(o[0]) for o in outputs]
    return {"steps": len(one), "max_rel_loss_diff": max(differences), "per_step": differences, "fingerprints": prints,
            "two_devices_equal": losses("split") == two,
            "process_1_wrote_nothing": not (work / "two1").exists()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GhostFaceNetV1-1.3-2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-processes", action="store_true")
    parser.add_argument("--markdown", help="also write the result table here")
    args = parser.parse_args()
    if not CELEBA_TRAIN.is_dir():
        raise SystemExit(f"{CELEBA_TRAIN} is not available")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = subset_folder(CELEBA_TRAIN, args.identities, work / "data")
        results = {"tensorflow": [], "jax": []}
        for round_index in range(args.rounds):
            for backend in results:
                row = warm_epoch(backend, data, args.model, args.batch_size, work / f"{backend}{round_index}")
                results[backend].append(row)
                print(f"round {round_index + 1} {backend}: {row['images_per_s']:.1f} img/s, "
                      f"{row['images_per_cpu_s']:.1f} img/CPU-s", flush=True)
        median = {b: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for b, rows in results.items()}
        lines = [f"# train.py warm epoch, {args.model}, batch {args.batch_size}, {args.identities} CelebA identities",
                 "", "| backend | images/s (wall) | images per CPU-second |", "|---|---|---|"]
        lines += [f"| {b} | {m['images_per_s']:.1f} | {m['images_per_cpu_s']:.1f} |" for b, m in median.items()]
        lines += ["", f"JAX / TensorFlow: wall {median['jax']['images_per_s'] / median['tensorflow']['images_per_s']:.2f}x,"
                      f" CPU {median['jax']['images_per_cpu_s'] / median['tensorflow']['images_per_cpu_s']:.2f}x "
                      f"(median of {args.rounds} alternating rounds)"]
        if not args.skip_processes:
            check = processes_check(subset_folder(CELEBA_TRAIN, 4, work / "small"), work)
            lines += ["", "## 1 vs 2 JAX processes (correctness, not speed)", "",
                      f"{check['steps']} steps at global batch 16 (SGD, LR 0.01): relative difference of each step's "
                      f"loss {', '.join(f'{d:.1e}' for d in check['per_step'])} (2 processes vs 1 process, 1 device). "
                      f"1 process with 2 CPU devices has the same per-step losses as 2 processes bit for bit: "
                      f"{check['two_devices_equal']}. Weights fingerprints (1 process 1 device, 1 process 2 devices, "
                      f"process 0, process 1): {', '.join(check['fingerprints'])}; process 1 wrote nothing: "
                      f"{check['process_1_wrote_nothing']}. The difference to 1 device is float32 reduction order (the "
                      "batch split over 2 devices), which ArcFace's arccos gradient near cos = 1 amplifies step by step."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
