#!/usr/bin/env python
"""The benchmark suite: where training, input and evaluation time goes, as side-by-side ratios in one process.

    python benchmarks/run.py [--quick] [--json PATH] [--readme]

Sections (each measured in this process, its two sides interleaved or back to back, so that load from other
processes on a shared machine hits both sides alike; a ratio is therefore more trustworthy than either
absolute number):
  (a) bare step   `tf.function` SGD step of model + NormDense + ArcFace on in-memory tensors: the limit;
  (b) train.py    its real loop on an identity folder (warm epoch, history.json `seconds`)   -> (b)/(a);
  (c) pipeline    `image_folder_dataset` alone, decoded-in-memory cache and uncached          -> (c)/(a);
  (d) evaluation  eval.py's `.bin` path vs a bare `model.predict` (benchmarks/eval_throughput.py);
  (e) LiteRT      latency per quantization vs a measured compute bound (benchmarks/tflite_latency.py).
Sections (c)-(e) call the other benchmark scripts' functions; a script that is missing is reported as such.
`--quick` (< 10 minutes on 2 busy cores) trains on the first 40 CelebA identities and uses fewer images;
the full run uses all of CelebA train (the issue's acceptance setting). `--readme` rewrites the results
block of benchmarks/README.md and benchmarks/throughput.png.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import train_throughput  # noqa: E402

MODEL = "GhostFaceNetV1-1.0-2"
BATCH = 64
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def machine() -> dict:
    """CPU model, cores usable by this process, memory, load, library versions."""
    import keras
    import tensorflow as tf

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    memory = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) if Path("/proc/meminfo").exists() else 0
    return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "memory_mb": memory,
            "load_average_1min": os.getloadavg()[0], "gpus": len(tf.config.list_physical_devices("GPU")),
            "tensorflow": tf.__version__, "keras": keras.__version__, "python": platform.python_version()}


def section_training(data: Path, quick: bool) -> dict:
    """(a) and (b)."""
    return train_throughput.measure_throughput(data, MODEL, BATCH)


def section_pipeline(data: Path, bare_images_per_s: float, quick: bool) -> dict:
    """(c): the pipeline alone, with the training default augmentation (flip)."""
    try:
        import data_pipeline
    except ImportError:
        return {"missing": "benchmarks/data_pipeline.py"}
    batches = 10 if quick else 40
    cached = data_pipeline.pipeline_rate(data, BATCH, "flip", cache=True, batches=batches)
    uncached = data_pipeline.pipeline_rate(data, BATCH, "flip", cache=False, batches=batches)
    return {"cached_images_per_s": cached, "uncached_images_per_s": uncached,
            "cached_over_bare": cached / bare_images_per_s, "uncached_over_bare": uncached / bare_images_per_s}


def section_evaluation(quick: bool) -> dict:
    """(d): eval_throughput.main's printed ratios (it runs its paths interleaved in this process)."""
    try:
        import eval_throughput
    except ImportError:
        return {"missing": "benchmarks/eval_throughput.py"}
    images = 600 if quick else 4000
    argv = ["eval_throughput.py", "--images", str(images), "--repeats", "2" if quick else "3", "--batch-size", "64"]
    buffer, saved = io.StringIO(), sys.argv
    try:
        sys.argv = argv
        with contextlib.redirect_stdout(buffer):
            eval_throughput.main()
    finally:
        sys.argv = saved
    text = buffer.getvalue()
    ratios = dict(re.findall(r"ratio (.+?): ([0-9.]+)", text))
    rates = {m[0].strip(): float(m[2]) for m in re.findall(r"^(\S.{0,27}?)\s+([0-9.]+)\s+([0-9.]+)$", text, re.M)}
    return {"images": images, "ratios_time_over_predict": {k: float(v) for k, v in ratios.items()},
            "forwards_per_s": rates}


def section_litert(quick: bool) -> dict:
    """(e): tflite_latency.main for one model (quick) or the V1/V2 1.3-2 pair, its CSV read back."""
    try:
        import tflite_latency
    except ImportError as error:
        return {"missing": f"benchmarks/tflite_latency.py ({error})"}
    models = ["GhostFaceNetV1-1.3-2"] if quick else ["GhostFaceNetV1-1.3-2", "GhostFaceNetV2-1.3-2"]
    with tempfile.TemporaryDirectory(prefix="litert_") as out, contextlib.redirect_stdout(io.StringIO()):
        tflite_latency.main(["--models", *models, "--rounds", "3" if quick else "5", "--repeats",
                             "15" if quick else "30", "--calibration-size", "32" if quick else "100", "--out", out])
        with open(Path(out) / "tflite_latency.csv") as stream:
            rows = list(csv.DictReader(stream))
    keep = ("model", "quantization", "size_mib", "min_cosine", "ms_1", "bound_ms", "ratio_to_bound")
    return {"rows": [{k: row.get(k) for k in keep} for row in rows]}


def guarded(name: str, function, *args) -> dict:
    """Run one section; a failure is recorded in the results instead of ending the suite."""
    started = time.perf_counter()
    try:
        result = function(*args)
    except Exception as error:  # noqa: BLE001 - one broken section must not hide the others
        logging.getLogger("benchmarks").exception("section %s failed", name)
        result = {"error": f"{type(error).__name__}: {error}"}
    result["section_seconds"] = round(time.perf_counter() - started, 1)
    return result


def markdown(results: dict) -> str:
    """The results table: ratios first, then absolute numbers, then the machine."""
    m, t = results["machine"], results["training"]
    lines = [f"Run: `python benchmarks/run.py{' --quick' if results['quick'] else ''}` on {results['date']}, "
             f"{results['total_seconds'] / 60:.1f} min. All rows of one section ran in one process, back to back "
             "or interleaved; the machine was shared with other jobs (load average "
             f"{m['load_average_1min']:.1f} on {m['cores']} cores at the start), which slows both sides of a "
             "ratio alike but makes absolute numbers noisy.", "", "| ratio | value | meaning |", "|---|---|---|"]
    if "ratio" in t:
        lines.append(f"| (b)/(a) train.py warm epoch / bare step, images per wall-second | **{t['ratio']:.2f}** | goal >= 0.80 |")
        if "ratio_cpu" in t:
            lines.append(f"| (b)/(a) the same, images per CPU-second of the process | {t['ratio_cpu']:.2f} | "
                         "less sensitive to other jobs' load |")
    p = results["pipeline"]
    if "cached_over_bare" in p:
        lines.append(f"| (c)/(a) pipeline, decoded cache / bare step | {p['cached_over_bare']:.1f} | >= 2: input never waits |")
        lines.append(f"| (c)/(a) pipeline, uncached (JPEG decode) / bare step | {p['uncached_over_bare']:.1f} | datasets too big to cache |")
    e = results["evaluation"]
    for name, value in e.get("ratios_time_over_predict", {}).items():
        lines.append(f"| (d) time {name} | {value:.2f} | 1.0 = evaluation costs only the forward passes |")
    for row in results["litert"].get("rows", []):
        lines.append(f"| (e) LiteRT {row['model']} {row['quantization']}: latency / compute bound | "
                     f"{float(row['ratio_to_bound']):.1f} | 1 thread, bound = MACs / measured peak |")
    lines += ["", "| absolute | value |", "|---|---|"]
    if "ratio" in t:
        lines += [f"| model, batch, identities, images | {t['model']}, {t['batch_size']}, {t['identities']}, {t['images']} |",
                  f"| (a) bare step, before / after train.py | {t['bare_images_per_s_before']:.1f} / "
                  f"{t['bare_images_per_s_after']:.1f} images/s |",
                  f"| (b) train.py warm epoch | {t['images_per_s']:.1f} images/s ({t['seconds']:.1f} s; "
                  f"first epoch with tracing {t['first_epoch_seconds']:.1f} s) |"]
    if "cached_images_per_s" in p:
        lines.append(f"| (c) pipeline cached / uncached | {p['cached_images_per_s']:.0f} / {p['uncached_images_per_s']:.0f} images/s |")
    for name, value in e.get("forwards_per_s", {}).items():
        lines.append(f"| (d) {name} | {value:.1f} forwards/s |")
    for row in results["litert"].get("rows", []):
        lines.append(f"| (e) {row['model']} {row['quantization']} | {float(row['ms_1']):.2f} ms, "
                     f"{float(row['size_mib']):.2f} MiB, min cosine to Keras {float(row['min_cosine']):.4f} |")
    for name in ("training", "pipeline", "evaluation", "litert"):
        problem = results[name].get("error") or results[name].get("missing")
        if problem:
            lines.append(f"| section {name} | not measured: {problem} |")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_mb'] / 1024:.0f} GiB, GPUs {m['gpus']}, "
              f"TensorFlow {m['tensorflow']}, Keras {m['keras']}, Python {m['python']}.", "",
              "![throughput](throughput.png)"]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, p = results["training"], results["pipeline"]
    bars = {"(a) bare step": t.get("bare_images_per_s"), "(b) train.py": t.get("images_per_s"),
            "(c) pipeline cached": p.get("cached_images_per_s"), "(c) pipeline uncached": p.get("uncached_images_per_s")}
    bars = {k: v for k, v in bars.items() if v}
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.barh(list(bars)[::-1], list(bars.values())[::-1])
    axis.set_xscale("log")
    axis.set_xlabel(f"images/s ({t.get('model', MODEL)}, batch {BATCH}; log scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def update_readme(results: dict) -> None:
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{README_START}\n{README_END}\n"
    if README_START not in text:
        text += f"\n{README_START}\n{README_END}\n"
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1] if README_END in rest else ""
    readme.write_text(f"{head}{README_START}\n{markdown(results)}\n{README_END}{tail}")
    plot(results, HERE / "throughput.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (< 10 minutes on 2 CPU cores)")
    parser.add_argument("--json", help="write all figures here")
    parser.add_argument("--readme", action="store_true", help="rewrite the results block of benchmarks/README.md")
    parser.add_argument("--data", default=str(train_throughput.CELEBA_TRAIN), help="identity folders")
    parser.add_argument("--skip", nargs="*", default=[], choices=["pipeline", "evaluation", "litert"])
    parser.add_argument("--from-json", help="only rewrite benchmarks/README.md from a previous --json file")
    args = parser.parse_args(argv)
    if args.from_json:
        update_readme(json.loads(Path(args.from_json).read_text()))
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()
    results = {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine()}
    print(json.dumps(results["machine"]))
    with tempfile.TemporaryDirectory(prefix="bench_") as scratch:
        data = Path(args.data)
        if args.quick:
            data = train_throughput.subset_folder(data, 40, Path(scratch) / "subset")
        results["training"] = guarded("training", section_training, data, args.quick)
        bare = results["training"].get("bare_images_per_s") or float("nan")
        skipped = {"skipped": "--skip"}
        results["pipeline"] = skipped if "pipeline" in args.skip else guarded("pipeline", section_pipeline, data, bare, args.quick)
    results["evaluation"] = skipped if "evaluation" in args.skip else guarded("evaluation", section_evaluation, args.quick)
    results["litert"] = skipped if "litert" in args.skip else guarded("litert", section_litert, args.quick)
    results["total_seconds"] = time.perf_counter() - started
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    if args.readme:
        update_readme(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
