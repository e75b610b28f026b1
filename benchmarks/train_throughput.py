#!/usr/bin/env python
"""How close is train.py to the machine's limit? train.py's warm epoch vs a bare tf.function step, one process.

    python benchmarks/train_throughput.py [--model GhostFaceNetV1-1.0-2] [--batch-size 64] [--data FOLDER]
                                          [--identities N] [--json out.json] [--memory 1000,100000]

Measured in this one process, interleaved so that load from other processes hits both sides alike:
- bare:     a `tf.function` SGD(momentum 0.9) step of `create_model(model)` + `NormDense` + `ArcFace` on
            in-memory random tensors: the model's own arithmetic, nothing else (measured before AND after);
- train.py: `train.py --data FOLDER --epochs 2` in-process; the warm epoch is the second one
            (images trained / its `seconds` in history.json: training time without evaluation/checkpoints).
Both are also reported per CPU-second of this process (all threads, input pipeline included), which a busy
machine disturbs less than wall time. `--memory` runs one subprocess per identity count training GhostFaceNetV1-1.3-2 at the batch size with the
real Trainer (3 steps) and reports its peak RSS (`ru_maxrss`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CELEBA_TRAIN = REPO.parent / "shared" / "data" / "celeba_aligned112" / "train"


def subset_folder(source: Path, identities: int, target: Path) -> Path:
    """A folder of symlinks to the first `identities` identity folders of `source` (a smaller, real dataset)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in sorted(os.listdir(source))[:identities]:
        os.symlink(source / name, target / name)
    return target


def count_images(folder: Path) -> tuple[int, int]:
    """(identities, images) of an identity-folder dataset."""
    classes = [c for c in os.listdir(folder) if (folder / c).is_dir()]
    return len(classes), sum(len(os.listdir(folder / c)) for c in classes)


def make_bare_step(model_name: str, batch_size: int, num_classes: int, jit_compile: bool = False):
    """A `() -> loss` callable running one bare SGD step of model + NormDense + ArcFace on fixed tensors."""
    import keras
    import tensorflow as tf

    from ghostface_keras import create_model
    from ghostface_keras.train.heads import NormDense
    from ghostface_keras.train.losses import ArcFace

    keras.utils.set_random_seed(0)
    model = create_model(model_name, weight_decay=0.0)
    head = NormDense(num_classes)
    head.build((None, int(model.output_shape[-1])))
    loss_function = ArcFace(scale=64.0, margin=0.5)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    variables = model.trainable_variables + head.trainable_variables
    optimizer.build(variables)
    images = tf.random.uniform([batch_size, 112, 112, 3], -1, 1)
    labels = tf.random.uniform([batch_size], 0, num_classes, dtype=tf.int32)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_function(y, head(model(x, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda: step(images, labels).numpy()


def time_steps(step, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(wall, process CPU) seconds for `steps` calls of `step` after `warmup` untimed calls (tracing)."""
    for _ in range(warmup):
        step()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    return time.perf_counter() - start, time.process_time() - cpu_start


def run_train_py(data: Path, model_name: str, batch_size: int, output: Path, extra: list[str] = ()) -> dict:
    """Run train.py's real loop in this process for 2 epochs; the warm (second) epoch's figures."""
    import train

    argv = ["--data", str(data), "--model", model_name, "--epochs", "2", "--batch-size", str(batch_size),
            "--output", str(output), *extra]
    status = train.main(argv)
    if status != 0:
        raise RuntimeError(f"train.py {' '.join(argv)} exited with {status}")
    records = json.loads((output / "history.json").read_text())
    records = records["epochs"] if isinstance(records, dict) else records
    _, images = count_images(data)
    trained = images // batch_size * batch_size
    seconds, cpu_seconds = float(records[-1]["seconds"]), float(records[-1]["cpu_seconds"])
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "images_trained": trained, "images_in_folder": images,
            "images_per_s": trained / seconds, "images_per_cpu_s": trained / cpu_seconds,
            "images_per_s_acceptance": images / seconds, "first_epoch_seconds": float(records[0]["seconds"])}


def measure_throughput(data: Path, model_name: str, batch_size: int, extra: list[str] = (),
                       bare_steps: int | None = None) -> dict:
    """Bare step before, train.py, bare step after (same process); ratios against the mean bare rate."""
    num_classes, images = count_images(data)
    steps = bare_steps or max(4, min(20, images // batch_size // 3))
    step = make_bare_step(model_name, batch_size, num_classes)
    wall_before, cpu_before = time_steps(step, steps)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as scratch:
        loop = run_train_py(data, model_name, batch_size, Path(scratch) / "run", list(extra))
    wall_after, cpu_after = time_steps(step, steps, warmup=1)
    images_timed = steps * batch_size
    before, after = images_timed / wall_before, images_timed / wall_after
    bare = (before + after) / 2
    bare_cpu = 2 * images_timed / (cpu_before + cpu_after)
    return {"model": model_name, "batch_size": batch_size, "identities": num_classes, "images": images,
            "train_py_options": " ".join(extra), "bare_images_per_s_before": before,
            "bare_images_per_s_after": after, "bare_images_per_s": bare, "bare_images_per_cpu_s": bare_cpu, **loop,
            "ratio": loop["images_per_s"] / bare, "ratio_cpu": loop["images_per_cpu_s"] / bare_cpu,
            "ratio_acceptance_formula": loop["images_per_s_acceptance"] / bare}


def compare_xla(model_name: str, batch_size: int, num_classes: int, steps: int, rounds: int = 3) -> dict:
    """Bare step images/s without and with XLA (`jit_compile`), interleaved round by round; best round each."""
    plain = make_bare_step(model_name, batch_size, num_classes, jit_compile=False)
    started = time.perf_counter()
    xla = make_bare_step(model_name, batch_size, num_classes, jit_compile=True)
    time_steps(xla, 0, warmup=1)
    compile_seconds = time.perf_counter() - started
    best = {"plain": 0.0, "xla": 0.0}
    for _ in range(rounds):
        for name, step in (("plain", plain), ("xla", xla)):
            wall, _ = time_steps(step, steps, warmup=1)
            best[name] = max(best[name], steps * batch_size / wall)
    return {"plain_images_per_s": best["plain"], "xla_images_per_s": best["xla"],
            "xla_over_plain": best["xla"] / best["plain"], "xla_first_call_seconds": compile_seconds}


def peak_rss_mb(num_classes: int, model_name: str = "GhostFaceNetV1-1.3-2", batch_size: int = 64) -> float:
    """Peak RSS (MB) of a subprocess training `model_name` with a `num_classes` head for 3 steps."""
    command = [sys.executable, __file__, "--memory-worker", str(num_classes), "--model", model_name,
               "--batch-size", str(batch_size)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise RuntimeError(f"memory worker for {num_classes} identities failed: {result.stderr[-500:]}")
    return float(result.stdout.strip().splitlines()[-1])


def memory_worker(num_classes: int, model_name: str, batch_size: int) -> None:
    """Train 3 steps with the real Trainer on random in-memory batches; print peak RSS in MB."""
    import keras
    import tensorflow as tf

    from ghostface_keras import create_model
    from ghostface_keras.train.losses import ArcFace
    from ghostface_keras.train.trainer import Trainer

    images = tf.random.uniform([batch_size, 112, 112, 3], -1, 1)
    labels = tf.random.uniform([batch_size], 0, num_classes, dtype=tf.int32)
    data = tf.data.Dataset.from_tensors((images, labels)).repeat(3)
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(create_model(model_name, weight_decay=0.0), data, num_classes, scratch, verbose=0)
        trainer.fit([{"epochs": 1, "loss": ArcFace(), "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}])
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def measure_memory(class_counts: list[int], model_name: str, batch_size: int) -> list[dict]:
    """Peak RSS per identity count, with the head's analytic share (weights + momentum + gradient, float32)."""
    rows = []
    for count in class_counts:
        rss = peak_rss_mb(count, model_name, batch_size)
        head_mb = 512 * count * 4 * 3 / 1e6
        rows.append({"identities": count, "peak_rss_mb": rss, "head_weights_mb": 512 * count * 4 / 1e6,
                     "head_with_momentum_and_gradient_mb": head_mb})
        print(f"{count:>9d} identities: peak RSS {rss:8.0f} MB (NormDense weights {512 * count * 4 / 1e6:.0f} MB)")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GhostFaceNetV1-1.0-2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", default=str(CELEBA_TRAIN), help="identity folders (default: CelebA train)")
    parser.add_argument("--identities", type=int, help="use only the first N identities (a quicker run)")
    parser.add_argument("--train-options", default="", help="extra train.py options, e.g. '--steps-per-execution 4'")
    parser.add_argument("--memory", default="", help="comma-separated identity counts for the peak-RSS rows")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--xla", action="store_true", help="only compare the bare step with and without XLA")
    parser.add_argument("--memory-only", action="store_true", help="only the --memory rows")
    parser.add_argument("--memory-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        memory_worker(args.memory_worker, args.model, args.batch_size)
        return 0
    results: dict = {}
    if args.xla:
        results["xla"] = compare_xla(args.model, args.batch_size, 219, steps=4)
        print(json.dumps(results["xla"]))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return 0
    if not args.memory_only:
        with tempfile.TemporaryDirectory(prefix="subset_") as scratch:
            data = Path(args.data)
            if args.identities:
                data = subset_folder(data, args.identities, Path(scratch) / "subset")
            results["throughput"] = measure_throughput(data, args.model, args.batch_size, args.train_options.split())
        print_throughput(results["throughput"])
    if args.memory:
        results["memory"] = measure_memory([int(c) for c in args.memory.split(",")], "GhostFaceNetV1-1.3-2",
                                           args.batch_size)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


def print_throughput(row: dict) -> None:
    print(f"train.py / bare step: {row['ratio']:.3f} wall ({row['images_per_s']:.1f} vs {row['bare_images_per_s']:.1f} "
          f"img/s; bare before {row['bare_images_per_s_before']:.1f}, after {row['bare_images_per_s_after']:.1f}), "
          f"{row['ratio_cpu']:.3f} CPU time ({row['images_per_cpu_s']:.2f} vs {row['bare_images_per_cpu_s']:.2f} "
          "images per CPU-second)")


if __name__ == "__main__":
    sys.exit(main())
