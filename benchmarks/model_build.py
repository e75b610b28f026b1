#!/usr/bin/env python
"""Building a model on TensorFlow and JAX: Keras' own initializers vs the builders' numpy draws (`HostDrawn`).

    python benchmarks/model_build.py [--model GhostFaceNetV1-0.5-2] [--markdown benchmarks/results/model_build.md]

For each backend (one child process each, since Keras fixes its backend at import): the seconds of
`create_model(MODEL)`, then the model's kernel shapes drawn one by one with Keras' built-in initializer of each
layer and with `HostDrawn` of the same initializer, side by side in that process (each kernel shape once, as a
build draws them). On JAX each eager draw of a new shape is an XLA compilation of its own, which is what the
numpy draws avoid.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
start = time.perf_counter()
import keras
from ghostface_keras.models.registry import create_model
from ghostface_keras.models.blocks import HostDrawn
imported = time.perf_counter()
model = create_model(sys.argv[1])
built = time.perf_counter()
kernels = []
for layer in model.layers:
    for attribute, weight in (("kernel_initializer", "kernel"), ("depthwise_initializer", "depthwise_kernel")):
        if hasattr(layer, attribute) and hasattr(layer, weight):
            kernels.append((getattr(layer, attribute), tuple(getattr(layer, weight).shape)))
def draw_all(make):
    started = time.perf_counter()
    for initializer, shape in kernels:
        keras.ops.convert_to_numpy(make(initializer)(shape, "float32"))
    return time.perf_counter() - started
builtin = draw_all(lambda initializer: initializer.__class__.from_config(initializer.get_config()))
host = draw_all(HostDrawn)
print(json.dumps({"backend": keras.backend.backend(), "import_s": imported - start, "build_s": built - imported,
                  "kernels": len(kernels), "shapes": len({shape for _, shape in kernels}),
                  "builtin_draws_s": builtin, "host_draws_s": host}))
"""


def measure(backend: str, model: str) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, model], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
                               "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"{backend}: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GhostFaceNetV1-0.5-2")
    parser.add_argument("--markdown", type=Path, default=REPO / "benchmarks" / "results" / "model_build.md")
    args = parser.parse_args(argv)
    rows = [measure(backend, args.model) for backend in ("tensorflow", "jax")]
    lines = [f"Run: `python benchmarks/model_build.py --model {args.model}` on {datetime.datetime.now():%Y-%m-%d %H:%M}, "
             f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}.", "",
             "| backend | create_model s | kernels (shapes) | Keras' initializers, all kernels s | numpy draws (HostDrawn) s "
             "| ratio |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['build_s']:.1f} | {row['kernels']} ({row['shapes']}) | "
                     f"{row['builtin_draws_s']:.2f} | {row['host_draws_s']:.2f} | "
                     f"{row['builtin_draws_s'] / row['host_draws_s']:.0f}x |")
    text = "\n".join(lines) + "\n"
    args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
