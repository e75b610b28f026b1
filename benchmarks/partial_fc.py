"""Step time of a margin-loss head over many identities: full softmax vs partial FC, side by side.

    python benchmarks/partial_fc.py [--classes 100000] [--rates 1 0.3 0.1] [--batch 128] [--rounds 5]

The embedding model is one Dense layer on fixed 512-d inputs, so the head (NormDense + ArcFace + SGD with
momentum) is what is timed, as it dominates past ~1 M identities. Rate 1 is the plain Keras model that
the Trainer builds; the others are `PartialFCModel`. Each round times every variant in turn (order
rotated per round), a round's figure being the median of its steps (`train_on_batch`); the ratio is
the median of per-round ratios to rate 1.
"""
import argparse
import time

import keras
import numpy as np

from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.losses import ArcFace
from ghostface_keras.train.partial_fc import PartialFCModel


def build(rate: float, classes: int, dim: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((dim,))
    embedding = keras.Model(inputs, keras.layers.Dense(dim)(inputs))
    head = NormDense(classes)
    if rate >= 1.0:
        model = keras.Model(inputs, head(embedding(inputs)))
    else:
        model = PartialFCModel(embedding, head, sample_rate=rate, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=ArcFace(scale=64))
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.3, 0.1])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.batch * args.steps, args.dim)).astype("float32")
    y = rng.integers(0, args.classes, len(x)).astype("int32")
    models = {rate: build(rate, args.classes, args.dim) for rate in args.rates}
    for model in models.values():  # trace and warm up
        for _ in range(2):
            model.train_on_batch(x[: args.batch], y[: args.batch])
    times = {rate: [] for rate in args.rates}
    for round_index in range(args.rounds):
        order = args.rates[round_index % len(args.rates):] + args.rates[: round_index % len(args.rates)]
        for rate in order:
            steps = []
            for step in range(args.steps):
                batch = slice(step * args.batch, (step + 1) * args.batch)
                start = time.perf_counter()
                models[rate].train_on_batch(x[batch], y[batch])
                steps.append((time.perf_counter() - start) * 1e3)
            times[rate].append(float(np.median(steps)))
    base = np.array(times[args.rates[0]])
    print(f"{args.classes} classes, batch {args.batch}, embedding {args.dim}, {args.rounds} rounds of {args.steps} steps")
    print("| sample rate | classes in the softmax | ms / step (median) | x rate " f"{args.rates[0]:g} |")
    print("| --- | --- | --- | --- |")
    for rate in args.rates:
        sampled = getattr(models[rate], "num_sampled", args.classes)
        ratio = np.median(np.array(times[rate]) / base)
        print(f"| {rate:g} | {sampled} | {np.median(times[rate]):.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
