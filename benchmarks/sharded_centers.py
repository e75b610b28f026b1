"""Per-device center memory and bytes communicated per step, class-sharded vs replicated head, read from the
compiled program (nothing of C x D is allocated: abstract shapes, `jax.jit(...).lower(...).compile()`).

    python benchmarks/sharded_centers.py [--devices 8] [--classes 100000 1000000 2000000] [--batch 512]
        [--dim 512] [--partial-fc-rate 1] [--output benchmarks/results/sharded_centers.md]

The step compiled is the head's part of a training step: cosines of the global batch (embeddings given, split
by row over the devices), ArcFace (s 64, m 0.5), its gradients to the centers and to the embeddings, and SGD with
momentum on the centers. Replicated = today's data-parallel head (`NormDense` math and the Keras `ArcFace` loss,
centers replicated: XLA all-reduces their dense gradient); sharded = `ghostface_keras.train.sharded` on the
("batch" 1, "model" N) mesh of `--shard-classes`. The backbone's own gradient all-reduce is the same in both and
left out. Memory: the centers and their momentum on one device, from the shapes (float32), and XLA's
per-device temporary buffers of the compiled step (`memory_analysis`). Communication: every collective in the
compiled HLO (all-reduce, all-gather, reduce-scatter, all-to-all, collective-permute), counted at its largest
buffer (result, or operand for a reduce-scatter) in bytes per device; a ring all-reduce moves about twice that
over the links.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=8, help="virtual CPU devices (the N of the mesh)")
    parser.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000, 2_000_000])
    parser.add_argument("--batch", type=int, default=512, help="batch per device")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--partial-fc-rate", type=float, default=1.0)
    parser.add_argument("--output", help="also write the table (Markdown) here")
    return parser.parse_args()


ARGS = _parse() if __name__ == "__main__" else None
if ARGS is not None:  # before JAX starts: the device count is fixed then
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={ARGS.devices}").strip()

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from ghostface_keras.core.distribution import CLASS_AXIS, class_sharded_distribution  # noqa: E402
from ghostface_keras.train.heads import l2_normalize  # noqa: E402
from ghostface_keras.train.losses import ArcFace  # noqa: E402
from ghostface_keras.train.partial_fc import sampled_class_count, sample_classes  # noqa: E402
from ghostface_keras.train.sharded import (class_shard_size, sharded_cosines, sharded_margin_loss,  # noqa: E402
                                           sharded_sample_classes)

_COLLECTIVE = re.compile(r"=\s*\(?\s*(\w+)\[([\d,]*)\][^=]*?\s(all-gather|all-reduce|reduce-scatter|all-to-all|"
                         r"collective-permute)(?:-start)?\(")
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}


def collectives(hlo: str, devices: int) -> list[tuple[str, int]]:
    """(op, bytes per device) of every collective of a compiled HLO module."""
    found = []
    for dtype, dims, op in _COLLECTIVE.findall(hlo):
        size = int(np.prod([int(d) for d in dims.split(",") if d])) * _BYTES.get(dtype, 4)
        found.append((op, size * devices if op == "reduce-scatter" else size))
    return found


def compiled_step(mode: str, classes: int, devices: int, batch: int, dim: int, rate: float):
    mesh_devices = jax.devices()[:devices]
    distribution = class_sharded_distribution(mesh_devices)
    mesh = distribution.device_mesh.backend_mesh
    rows = NamedSharding(mesh, PartitionSpec(CLASS_AXIS))
    global_batch = batch * devices
    loss = ArcFace(scale=64.0, margin=0.5)
    if mode == "sharded":
        keras.distribution.set_distribution(distribution)
        shard = class_shard_size(classes, devices)
        kernel_shape, kernel_sharding = (dim, shard * devices), NamedSharding(mesh, PartitionSpec(None, CLASS_AXIS))
        sampled = min(shard, max(sampled_class_count(shard, rate), global_batch))
    else:
        keras.distribution.set_distribution(None)
        kernel_shape, kernel_sharding = (dim, classes), NamedSharding(mesh, PartitionSpec())
        sampled = min(classes, max(sampled_class_count(classes, rate), global_batch))
    seed = keras.random.SeedGenerator(0)

    def step(kernel, momentum, embeddings, labels, seed_state):
        with keras.StatelessScope(state_mapping=[(seed.state, seed_state)]) as scope:
            if mode == "sharded":
                ids, positions = (None, labels) if rate >= 1 else sharded_sample_classes(
                    labels, classes, shard, sampled, seed=seed)
            else:
                ids, positions = (None, labels) if rate >= 1 else sample_classes(labels, classes, sampled, seed=seed)

            def objective(kernel, embeddings):
                if mode == "sharded":
                    cosines, norms, class_ids = sharded_cosines(embeddings, kernel, shard, classes=ids)
                    return keras.ops.mean(sharded_margin_loss(loss, cosines, norms, class_ids, positions, classes))
                columns = kernel if ids is None else keras.ops.take(kernel, ids, axis=1)
                cosines = keras.ops.matmul(l2_normalize(embeddings, 1), l2_normalize(columns, 0))
                return keras.ops.mean(loss.call(positions, cosines))

            value, (kernel_gradient, embedding_gradient) = jax.value_and_grad(objective, argnums=(0, 1))(
                kernel, embeddings)
        momentum = 0.9 * momentum - 0.1 * kernel_gradient
        return kernel + momentum, momentum, embedding_gradient, value, scope.get_current_value(seed.state)

    abstract = (jax.ShapeDtypeStruct(kernel_shape, "float32", sharding=kernel_sharding),
                jax.ShapeDtypeStruct(kernel_shape, "float32", sharding=kernel_sharding),
                jax.ShapeDtypeStruct((global_batch, dim), "float32", sharding=rows),
                jax.ShapeDtypeStruct((global_batch,), "int32", sharding=rows),
                jax.ShapeDtypeStruct(seed.state.shape, seed.state.dtype, sharding=NamedSharding(mesh, PartitionSpec())))
    jitted = jax.jit(step, out_shardings=(kernel_sharding, kernel_sharding, rows, None, None), donate_argnums=(0, 1))
    compiled = jitted.lower(*abstract).compile()
    per_device_columns = kernel_shape[1] // (devices if mode == "sharded" else 1)
    return compiled, 2 * dim * per_device_columns * 4, sampled


def main() -> int:
    args = ARGS
    started = time.time()
    head = ("| classes | head | centers + momentum / device | XLA temporaries / device | collectives / step "
            "(bytes / device) | largest collective | softmax columns |")
    lines = [f"{args.devices} devices (virtual CPU), batch {args.batch} per device (global "
             f"{args.batch * args.devices}), embedding {args.dim}, ArcFace, SGD momentum, partial FC rate "
             f"{args.partial_fc_rate:g}", "", head, "| --- | --- | --- | --- | --- | --- | --- |"]
    for classes in args.classes:
        for mode in ("replicated", "sharded"):
            compiled, center_bytes, sampled = compiled_step(mode, classes, args.devices, args.batch, args.dim,
                                                            args.partial_fc_rate)
            found = collectives(compiled.as_text(), args.devices)
            total = sum(size for _, size in found)
            largest = max(found, key=lambda item: item[1]) if found else ("none", 0)
            temporaries = compiled.memory_analysis().temp_size_in_bytes
            columns = sampled if mode == "replicated" else f"{sampled} x {args.devices} shards"
            lines.append(f"| {classes:,} | {mode} | {_size(center_bytes)} | {_size(temporaries)} | {_size(total)} | "
                         f"{largest[0]} {_size(largest[1])} | {columns} |")
            print(lines[-1], flush=True)
    lines += ["", f"({time.time() - started:.0f} s; JAX {jax.__version__}, Keras {keras.__version__})"]
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n")
    return 0


def _size(count: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= factor:
            return f"{count / factor:.2f} {unit}"
    return f"{int(count)} B"


if __name__ == "__main__":
    sys.exit(main())
