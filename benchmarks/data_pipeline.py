#!/usr/bin/env python
"""Does the input pipeline outrun training? Images/s of the data pipeline vs a GhostFaceNetV1-1.3-2 step.

    python benchmarks/data_pipeline.py [--data FOLDER] [--batch-size 64] [--augment 1] [--json out.json]

Both are measured in this one process, one after the other, on the same machine:
- pipeline: `image_folder_dataset(..., augment=level, cache=False)`: read + decode + augment + batch +
  normalize every image every time (the uncached, worst case), plus the cached variant for reference;
- model: one compiled training step (forward, softmax cross-entropy on a dense classifier over the
  embedding, backward, SGD update) of `create_model("GhostFaceNetV1-1.3-2")` on random batches.
The claim to check: pipeline images/s >= 2x the images/s the training step consumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ghostface_keras.data import image_folder_dataset, synthetic_faces  # noqa: E402

MODEL_NAME = "GhostFaceNetV1-1.3-2"


def default_data(workdir: Path) -> Path:
    celeba = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba_aligned112" / "train"
    if celeba.is_dir():
        return celeba
    return synthetic_faces(workdir / "synthetic", num_identities=100, images_per_identity=20, seed=0)


def pipeline_rate(folder: Path, batch_size: int, augment, cache: bool, batches: int) -> float:
    """Images/s delivered by the pipeline alone, after a warm-up of 3 batches."""
    dataset = image_folder_dataset(folder, batch_size, augment=augment, cache=cache, drop_remainder=True, seed=0).repeat()
    iterator = iter(dataset)
    for _ in range(3):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    images.numpy()
    return batches * batch_size / (time.perf_counter() - start)


def training_rate(batch_size: int, steps: int, num_classes: int = 1000) -> float | None:
    """Images/s consumed by one GhostFaceNetV1-1.3-2 training step (None if the model zoo is missing)."""
    try:
        from ghostface_keras import create_model
    except ImportError:
        print(f"ghostface_keras.create_model is not available yet: cannot time a {MODEL_NAME} step")
        return None
    import keras

    backbone = create_model(MODEL_NAME)
    classifier = keras.layers.Dense(num_classes)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = None

    @tf.function(jit_compile=False)
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, classifier(backbone(images, training=True)))
        gradients = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(gradients, variables))
        return loss

    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(-1, 1, (batch_size, 112, 112, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, num_classes, batch_size).astype(np.int32))
    classifier.build((None, backbone.output_shape[-1]))
    variables = backbone.trainable_variables + classifier.trainable_variables
    for _ in range(2):
        step(images, labels).numpy()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(images, labels)
    loss.numpy()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="identity folder (default: shared CelebA train, else synthetic)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--augment", default="1", help="augmentation level (default 1: flip + brightness)")
    parser.add_argument("--batches", type=int, default=30, help="pipeline batches timed")
    parser.add_argument("--steps", type=int, default=5, help="training steps timed")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    augment = int(args.augment) if args.augment.lstrip("-").isdigit() else args.augment
    with tempfile.TemporaryDirectory() as workdir:
        folder = args.data or default_data(Path(workdir))
        uncached = pipeline_rate(folder, args.batch_size, augment, cache=False, batches=args.batches)
        cached = pipeline_rate(folder, args.batch_size, augment, cache=True, batches=args.batches)
    model = training_rate(args.batch_size, args.steps)
    figures = {
        "data": str(folder),
        "batch_size": args.batch_size,
        "augment": augment,
        "cpu_count": os.cpu_count(),
        "devices": [device.device_type for device in tf.config.list_physical_devices()],
        "pipeline_uncached_images_per_s": round(uncached, 1),
        "pipeline_cached_images_per_s": round(cached, 1),
        "training_step_images_per_s": None if model is None else round(model, 1),
        "ratio_uncached_pipeline_to_training": None if model is None else round(uncached / model, 2),
    }
    print(f"pipeline (decode + augment {augment} + batch {args.batch_size}, uncached): {uncached:9.1f} images/s")
    print(f"pipeline (cached in memory):                        {cached:9.1f} images/s")
    if model is not None:
        verdict = "OK" if uncached >= 2 * model else "SHORT of the 2x target"
        print(f"{MODEL_NAME} training step:                  {model:9.1f} images/s")
        print(f"ratio pipeline / training step: {uncached / model:.1f}x ({verdict})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
