"""Class-sharded centers (`ghostface_keras.train.sharded`): against the replicated head, on virtual CPU devices.

The numeric checks run in child processes (the device count is fixed when JAX starts), many per start: one run
of 2 JAX processes x 2 CPU devices on 127.0.0.1 (4 shards) compares, for every margin loss, full softmax and
partial FC (with SAM), the sharded step's loss, gradients and updated weights with the replicated head's (the
existing `NormDense` + Keras-loss path, on each process alone), checks the kernel's shard shapes and the
compiled step's collectives, and trains a small `Trainer` run whose state and centers file gather the shards.
One `train.py --shard-classes` run on 2 devices is killed after its first epoch and resumed (slow tier).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLASSES, DIM, INPUTS, BATCH, SHARDS = 42, 8, 6, 8, 4  # 42 classes on 4 shards: 11 each, 2 padding columns
# two global batches; no label in [11, 22): shard 1 owns no class of either batch
LABELS = np.array([[0, 5, 5, 23, 30, 41, 33, 10], [1, 2, 24, 40, 36, 7, 7, 32]], "int32")


# ------------------------------------------------------------------------------------------ default tier
def test_shard_classes_is_refused_on_tensorflow_in_one_line(tmp_path, capsys):
    from ghostface_keras.cli import train as cli
    from ghostface_keras.core.distribution import DistributionError, setup_cluster

    with pytest.raises(DistributionError, match="JAX backend") as error:
        setup_cluster(shard_classes=True)
    assert error.value.fields == ("shard_classes",)
    assert cli.main(["--demo", "--shard-classes", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ghostface-train: error: --shard-classes splits the class centers") and len(err) == 1


def test_more_shards_than_classes_is_one_line_and_the_padding_is_at_the_end():
    from ghostface_keras.core.errors import GhostFaceError
    from ghostface_keras.train.sharded import ShardedNormDense, class_shard_size

    with pytest.raises(GhostFaceError, match="3 classes cannot be split over 4 devices") as error:
        ShardedNormDense(3, num_shards=4)
    assert error.value.fields == ("shard_classes",)
    assert [class_shard_size(c, 4) for c in (4, 5, 8, 42)] == [1, 2, 2, 11]
    head = ShardedNormDense(10, num_shards=4, sub_centers=2)
    head.build((None, 3))
    kernel = np.asarray(head.kernel.numpy())
    assert kernel.shape == (3, 24) and not kernel[:, 20:].any() and np.abs(kernel[:, :20]).min(axis=0).max() > 0
    centers = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    head.set_class_centers(centers)
    np.testing.assert_array_equal(head.dense_kernel(), np.repeat(centers, 2, axis=0).T)
    assert not np.asarray(head.kernel.numpy())[:, 20:].any()


def test_the_sampler_keeps_every_positive_per_shard_and_skips_the_padding():
    from ghostface_keras.train.sharded import sharded_sample_classes

    # one shard (no mesh) holding 12 slots of which 10 are classes: 6 sampled, never 10 or 11
    import keras

    seed = keras.random.SeedGenerator(3)
    labels = np.array([9, 0, 9, 4])
    draws = set()
    for _ in range(4):
        ids, positions = (np.asarray(t) for t in sharded_sample_classes(labels, 10, 12, 6, seed=seed))
        assert ids.shape == (6,) and np.all(np.diff(ids) > 0) and ids.max() < 10
        np.testing.assert_array_equal(ids[positions], labels)
        draws.add(tuple(ids))
    assert len(draws) > 1
    ids, _ = (np.asarray(t) for t in sharded_sample_classes(labels, 10, 12, 12, seed=seed))
    assert ids.tolist() == list(range(12))  # more slots asked than classes: the padding comes last


def test_shard_classes_is_a_training_option_and_part_of_the_run_identity():
    from ghostface_keras.cli import train as cli
    from ghostface_keras.train.recipes import RUN_IDENTITY

    assert cli.training_config(["--demo", "--shard-classes"]).shard_classes is True
    assert cli.training_config(["--demo"]).shard_classes is False
    assert "shard_classes" in RUN_IDENTITY
    assert "--shard-classes" in cli.build_parser().format_help()


# ------------------------------------------------------------------------------------------ the child run
def _reference_model(embedding, kernel, loss, sub_centers, sam_rho, table):
    """The replicated head: `NormDense` (its kernel = the sharded one's dense kernel) and the Keras loss; over
    `table[step]` classes when given (partial FC with the same sampled classes)."""
    import keras

    from ghostface_keras.train.heads import NormDense
    from ghostface_keras.train.step import ComposedTrainStep

    head = NormDense(CLASSES, sub_centers=sub_centers, append_norm=getattr(loss, "needs_norm", False))
    head.build((None, DIM))
    head.kernel.assign(kernel)

    class Replicated(ComposedTrainStep, keras.Model):
        def __init__(self):
            super().__init__()
            self.embedding, self.head, self.sam_rho = embedding, head, sam_rho
            self.steps_drawn = keras.Variable(0, dtype="int32", trainable=False, name="steps_drawn")

        def call(self, x, training=None):
            return self.head(self.embedding(x, training=training))

        def step_classes(self, y):
            if table is None:
                return None, y
            classes = keras.ops.take(keras.ops.convert_to_tensor(table), self.steps_drawn, axis=0)
            self.steps_drawn.assign(self.steps_drawn + 1)
            return classes, keras.ops.cast(keras.ops.searchsorted(classes, keras.ops.reshape(y, (-1,))), "int32")

        def step_forward(self, x, classes):
            return self.head(self.embedding(x, training=True), class_indices=classes)

    return Replicated(), head


CONFIGS = [  # name, loss, kwargs, sub_centers, sample_rate, sam_rho: every loss, full softmax and partial FC
    ("arcface", "arcface", {"scale": 16.0, "margin": 0.3}, 1, 1.0, 0.0),
    ("cosface_smoothed_subcenters", "cosface", {"scale": 16.0, "label_smoothing": 0.1}, 2, 1.0, 0.0),
    ("magface", "magface", {"scale": 16.0, "min_norm": 0.5, "max_norm": 5.0}, 1, 1.0, 0.0),
    ("adaface_partial", "adaface", {"scale": 16.0}, 1, 0.5, 0.0),
    ("arcface_partial_sam_subcenters", "arcface", {"scale": 16.0}, 2, 0.5, 0.05),
]


def _collectives(hlo: str) -> list[tuple[str, int]]:
    """(op, elements) of every collective in an HLO module's text."""
    found = []
    pattern = r"=\s*\(?\s*(\w+)\[([\d,]*)\][^=]*?\s(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)(?:-start)?\("
    for dtype, dims, op in re.findall(pattern, hlo):
        found.append((op, int(np.prod([int(d) for d in dims.split(",") if d]))))
    return found


def sharded_checks(output: str) -> dict:
    """Run in every process of the child run (KERAS_BACKEND=jax, 4 devices in all): each check asserts; the
    measured differences are returned (process 0 prints them)."""
    import jax
    import keras

    from ghostface_keras.core.distribution import current_cluster, to_numpy
    from ghostface_keras.train.losses import get_margin_loss
    from ghostface_keras.train.sharded import ShardedFaceModel, ShardedNormDense, prediction_accuracy, \
        sharded_sample_classes

    cluster = current_cluster()
    distribution = keras.distribution.distribution()
    assert cluster.class_shards == SHARDS, cluster
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2 * BATCH, INPUTS)).astype("float32")
    y = LABELS.reshape(-1)
    local_rows = slice(cluster.process_id * BATCH // cluster.num_processes,
                       (cluster.process_id + 1) * BATCH // cluster.num_processes)
    local = (np.concatenate([x[:BATCH][local_rows], x[BATCH:][local_rows]]),
             np.concatenate([y[:BATCH][local_rows], y[BATCH:][local_rows]]))
    report = {}

    def two_steps(model, weights, x_steps, y_steps):
        """One `fit` per batch (the optimizer and the sampler carry on): the weights and loss after each."""
        seen = []
        for x_step, y_step in zip(x_steps, y_steps):
            loss = model.fit(x_step, y_step, batch_size=len(x_step), epochs=1, shuffle=False,
                             verbose=0).history["loss"][0]
            seen.append([to_numpy(w).astype("float64") for w in weights()] + [float(loss)])
        return seen

    for name, loss_name, loss_kwargs, sub_centers, rate, rho in CONFIGS:
        keras.distribution.set_distribution(distribution)
        keras.utils.set_random_seed(1)
        embedding = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(DIM, use_bias=False)])
        head = ShardedNormDense(CLASSES, num_shards=SHARDS, sub_centers=sub_centers, name="norm_dense",
                                kernel_regularizer=keras.regularizers.L2(1e-3))
        head.build((None, DIM))
        shard_shapes = {tuple(s.data.shape) for s in head.kernel.value.addressable_shards}
        assert shard_shapes == {(DIM, 11 * sub_centers)}, shard_shapes  # each device: 11 classes' columns
        start = [to_numpy(embedding.weights[0]), head.dense_kernel()]
        model = ShardedFaceModel(embedding, head, sample_rate=rate, seed=5, sam_rho=rho)
        loss = get_margin_loss(loss_name, **loss_kwargs)
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9), loss=loss, metrics=[prediction_accuracy],
                      jit_compile=True)
        half = BATCH // cluster.num_processes
        sharded = two_steps(model, lambda e=embedding, h=head: [e.weights[0], h.dense_kernel()],
                            np.split(local[0], 2), np.split(local[1], 2))
        momentum = [v for v in model.optimizer.variables if "norm_dense_kernel" in v.path]
        assert {tuple(s.data.shape) for s in momentum[0].value.addressable_shards} == {(DIM, 11 * sub_centers)}
        table = None
        if rate < 1:
            # the same draws the step made (its sampler replayed from the seed), valid classes only
            seed = keras.random.SeedGenerator(5)

            @jax.jit
            def draw(seed_state, labels):
                with keras.StatelessScope(state_mapping=[(seed.state, seed_state)]) as scope:
                    ids = sharded_sample_classes(labels, CLASSES, 11, 8, seed=seed)[0]
                return ids, scope.get_current_value(seed.state)

            table, seed_state = [], seed.state.value
            for step in range(2):
                labels = jax.make_array_from_process_local_data(
                    distribution.get_data_layout((BATCH,)).backend_layout, LABELS[step][local_rows])
                ids, seed_state = draw(seed_state, labels)
                ids = to_numpy(ids)
                assert set(LABELS[step]) <= set(ids.tolist()) and len(ids) == SHARDS * 8
                assert (ids >= CLASSES).sum() == 0  # 9 real classes on the last shard: no padding needed
                table.append(ids)
            table = np.stack(table).astype("int32")
        if name.startswith("arcface"):
            state = ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                     [v.value for v in model.optimizer.variables], [v.value for v in model.metrics_variables])
            data = tuple(jax.make_array_from_process_local_data(
                distribution.get_data_layout(d[:half].shape).backend_layout, d[:half]) for d in local)
            hlo = jax.jit(model.train_step).lower(state, data).compile().as_text()
            collectives = _collectives(hlo)
            # nothing kernel-sized, nor B x C/N logits, crosses devices: the largest collective is the global
            # batch's embeddings (all-gathered forward, reduce-scattered backward)
            assert max(size for _, size in collectives) == BATCH * DIM < DIM * 11 * sub_centers, collectives
            assert ("all-gather", BATCH * DIM) in collectives and ("reduce-scatter", BATCH * DIM // SHARDS) in collectives
            assert ("all-reduce", BATCH) in collectives  # the distributed softmax: B row sums / maxima
            report[f"{name}_collectives"] = sorted(set(collectives))

        keras.distribution.set_distribution(None)  # the reference runs on this process alone
        keras.utils.set_random_seed(1)
        reference_embedding = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(DIM, use_bias=False)])
        reference_embedding.set_weights([start[0]])
        reference, reference_head = _reference_model(reference_embedding, start[1], get_margin_loss(
            loss_name, **loss_kwargs), sub_centers, rho, table)
        reference_head.kernel.regularizer = keras.regularizers.L2(1e-3)
        reference.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                          loss=get_margin_loss(loss_name, **loss_kwargs), jit_compile=True)
        replicated = two_steps(reference, lambda e=reference_embedding, h=reference_head: [e.weights[0], h.kernel],
                               np.split(x, 2), np.split(y, 2))
        differences = {}
        for step, (got, expected) in enumerate(zip(sharded, replicated)):
            # step 0: the update is -lr x the gradient (momentum starts at zero): the gradients match
            what = "gradient" if step == 0 else "weights"
            scale = 0.5 if step == 0 else 1.0
            before = start if step == 0 else [None, None]
            for label, g, e, b in zip(("embedding", "centers"), got[:2], expected[:2], before):
                if b is not None:
                    g, e = (b - g) / scale, (b - e) / scale
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=2e-5, err_msg=f"{name} step {step} {label} {what}")
                differences[f"step{step}_{label}_{what}"] = float(np.abs(g - e).max())
            assert got[2] == pytest.approx(expected[2], rel=2e-5), (name, step, got[2], expected[2])
            differences[f"step{step}_loss_rel"] = abs(got[2] - expected[2]) / abs(expected[2])
        if loss_name == "adaface":
            np.testing.assert_allclose([float(v) for v in loss.state_variables()],
                                       [float(v) for v in reference.loss.state_variables()], rtol=1e-5)
        report[name] = differences
    keras.distribution.set_distribution(distribution)
    report["trainer"] = _trainer_checks(Path(output))
    return report


def _trainer_checks(output: Path) -> dict:
    """A small `Trainer` run on the sharded head: its state file and class_centers.npy hold the gathered centers,
    and a resumed run continues from them."""
    import keras
    import tensorflow as tf

    from ghostface_keras.core.distribution import current_cluster
    from ghostface_keras.train.losses import CosFace
    from ghostface_keras.train.sharded import ShardedNormDense
    from ghostface_keras.train.trainer import CENTERS_FILE, STATE_FILE, Stage, Trainer

    cluster = current_cluster()
    rng = np.random.default_rng(1)
    labels = rng.integers(0, CLASSES, 64).astype("int32")
    images = (rng.normal(size=(64, INPUTS)) + labels[:, None] % 7).astype("float32")
    per_process = 16 // cluster.num_processes
    rows = np.concatenate([np.arange(start, start + per_process) + cluster.process_id * per_process
                           for start in range(0, 64, 16)])
    data = tf.data.Dataset.from_tensor_slices((images[rows], labels[rows])).batch(per_process)

    def trainer():
        keras.utils.set_random_seed(2)
        embedding = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(DIM)])
        return Trainer(embedding, data, CLASSES, output, cluster=cluster, verbose=0, jit_compile=True,
                       head_weight_decay=1e-3)

    def stages(epochs):
        return [Stage(epochs, CosFace(scale=16.0), keras.optimizers.SGD(0.1, momentum=0.9), partial_fc_rate=0.5)]

    first = trainer()
    assert isinstance(first.head, ShardedNormDense) and first.sharded
    first.fit(stages(1))
    resumed = trainer()
    records = resumed.fit(stages(2), resume=True)
    assert all(np.isfinite(r["loss"]) for r in records)
    centers = resumed.head.dense_kernel()
    if cluster.is_writer:  # the history (process 0's) holds both epochs once
        assert [r["epoch"] for r in records] == [1, 2]
        saved = np.load(output / CENTERS_FILE)
        np.testing.assert_array_equal(saved, centers)
        state = np.load(output / STATE_FILE)
        kernels = [state[k] for k in state.files if k.startswith("weight_") and state[k].shape == (DIM, 44)]
        assert len(kernels) == 1
        np.testing.assert_array_equal(kernels[0][:, :CLASSES], saved)
        assert not kernels[0][:, CLASSES:].any()  # the padding stayed zero
    return {"epochs": [r["epoch"] for r in records], "losses": [r["loss"] for r in records],
            "centers": list(centers.shape)}


CHILD = """
import json, os, sys
sys.path.insert(0, {tests!r})
process, processes, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
from ghostface_keras.core.distribution import setup_cluster, use_cpu_devices
use_cpu_devices({devices})
setup_cluster(coordinator=f"127.0.0.1:{{port}}" if processes > 1 else None, num_processes=processes,
              process_id=process, init_timeout=120, shard_classes=True)
from test_sharded_head import sharded_checks
report = sharded_checks(sys.argv[4])
if process == 0:
    print("REPORT " + json.dumps(report))
"""


def _env() -> dict:
    return dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                PYTHONPATH=str(ROOT))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_processes_of_two_devices_match_the_replicated_head_for_every_loss(tmp_path):
    pytest.importorskip("jax")
    script = CHILD.format(tests=str(Path(__file__).parent), devices=2)
    port = str(_free_port())
    workers = [subprocess.Popen([sys.executable, "-c", script, str(i), "2", port, str(tmp_path / f"run{i}")],
                                env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in (0, 1)]
    results = [worker.communicate(timeout=600) for worker in workers]
    for worker, (_, err) in zip(workers, results):
        assert worker.returncode == 0, err[-4000:]
    report = json.loads(next(line for line in results[0][0].splitlines() if line.startswith("REPORT "))[7:])
    assert set(report) >= {name for name, *_ in CONFIGS} | {"trainer"}
    assert report["trainer"]["epochs"] == [1, 2] and report["trainer"]["centers"] == [DIM, CLASSES]
    assert not (tmp_path / "run1").exists()  # process 1 wrote nothing
    print(json.dumps(report, indent=1))


# ------------------------------------------------------------------------------------------ train.py
@pytest.mark.slow
def test_train_cli_shard_classes_resumes_after_sigkill(tmp_path):
    # ~2 min here (GhostFaceNet compiled twice on 2 cores): the slow tier, which CI runs with the large one
    pytest.importorskip("jax")
    from PIL import Image

    from ghostface_keras.data.synthetic import render_synthetic_faces

    faces = tmp_path / "faces"
    images, labels = render_synthetic_faces(4, 8, seed=1)
    for index, (image, label) in enumerate(zip(images, labels)):
        (faces / f"id{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(faces / f"id{label}" / f"{index}.png")
    out = tmp_path / "run"
    args = [sys.executable, str(ROOT / "train.py"), "--data", str(faces), "--model", "GhostFaceNetV1-0.5-2",
            "--epochs", "3", "--batch-size", "16", "--output", str(out), "--shard-classes", "--cpu-devices", "2",
            "--devices", "2", "--loss", "cosface"]
    process = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    while time.monotonic() - started < 400 and process.poll() is None:
        try:  # the state is written right after the history of an epoch
            if len(json.loads((out / "history.json").read_text())) >= 1 and (out / "training_state.npz").is_file():
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert (out / "training_state.npz").is_file(), err[-3000:]
    assert len(json.loads((out / "history.json").read_text())) < 3
    done = subprocess.run(args + ["--resume"], env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert {"model.keras", "class_centers.npy", "training_state.npz"} <= {p.name for p in out.iterdir()}
    centers = np.load(out / "class_centers.npy")
    assert centers.shape == (512, 4) and np.isfinite(centers).all()
    assert json.loads((out / "train_config.json").read_text())["shard_classes"] is True
