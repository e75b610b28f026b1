"""Why a JAX training run exports its TFLite file from a TensorFlow child process: the in-process path, measured.

    KERAS_BACKEND=jax python benchmarks/jax_tflite_export.py [--out benchmarks/results/jax_tflite_export.md]

Keras 3 fixes one backend per process. From JAX, the only in-process way to TFLite is jax2tf
(`model.export(format="tf_saved_model")`, then the TFLite converter). This script builds GhostFaceNetV1-0.5-2
(BatchNorm statistics set away from their initial values), converts it that way, and prints the ops of the
file, whether it holds resource variables, and its largest relative error against the JAX model. Run it under
KERAS_BACKEND=tensorflow as well to see the graph `ghostface_keras.export.export_tflite` writes for the same
model (what the child process of `recipes.export_tflite_file` produces).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from ghostface_keras import GhostFaceNetV1
from ghostface_keras.runtime.litert import run_tflite, tflite_op_names

RESOURCE_OPS = {"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"}


def convert(model: keras.Model, folder: Path) -> Path:
    backend = keras.backend.backend()
    path = folder / f"{backend}.tflite"
    if backend == "tensorflow":
        from ghostface_keras.export import export_tflite

        return Path(export_tflite(model, path))
    import tensorflow as tf

    model.export(str(folder / "saved_model"), format="tf_saved_model", verbose=False)
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(folder / "saved_model")).convert())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    model = GhostFaceNetV1(width=0.5, stem_strides=2)
    rng = np.random.default_rng(1)
    for weight in model.weights:
        if "moving_variance" in weight.path:
            weight.assign(rng.uniform(0.5, 2.0, weight.shape).astype("float32"))
        elif "moving_mean" in weight.path:
            weight.assign(rng.normal(0, 0.1, weight.shape).astype("float32"))
    images = rng.uniform(-1, 1, (2, 112, 112, 3)).astype("float32")
    want = np.asarray(model.predict(images, verbose=0))
    started = time.perf_counter()
    path = convert(model, Path(tempfile.mkdtemp()))
    seconds = time.perf_counter() - started
    ops = sorted(set(tflite_op_names(path)))
    got = np.concatenate([run_tflite(path, images[i:i + 1]) for i in range(len(images))])
    error = float(np.abs(got - want).max() / np.abs(want).max())
    rows = [f"| {keras.backend.backend()} | {seconds:.1f} | {path.stat().st_size / 1e6:.2f} | "
            f"{'yes' if RESOURCE_OPS & set(ops) else 'no'} | {error:.1e} | {' '.join(ops)} |"]
    table = "\n".join(["| backend | convert s | MB | resource variables | max rel. error | ops |",
                       "| --- | --- | --- | --- | --- | --- |", *rows])
    print(table)
    if args.out:
        out = Path(args.out)
        previous = out.read_text().splitlines()[2:] if out.exists() else []
        kept = [line for line in previous if not line.startswith(f"| {keras.backend.backend()} |")]
        out.write_text("\n".join(table.splitlines()[:2] + kept + rows) + "\n")


if __name__ == "__main__":
    main()
