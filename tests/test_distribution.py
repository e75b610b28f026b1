"""The cluster set-up (devices, processes, coordinator) and its one-line refusals; the JAX train steps.

Backend-specific checks run in child processes, since the Keras backend is fixed when keras is imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ghostface_keras.core.distribution import (
    DistributionError,
    agree_on_writer_check,
    broadcast_arrays_from_writer,
    broadcast_from_writer,
    current_cluster,
    setup_cluster,
    weights_fingerprint,
)
from ghostface_keras.core.errors import GhostFaceError

ROOT = Path(__file__).resolve().parents[1]
jax = pytest.importorskip("jax")


def child_env(backend: str, **extra) -> dict:
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                PYTHONPATH=str(ROOT), **extra)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("kwargs, message", [
    ({"num_processes": 2, "process_id": 2, "coordinator": "127.0.0.1:1234"}, "out of range"),
    ({"num_processes": 2, "process_id": -1, "coordinator": "127.0.0.1:1234"}, "out of range"),
    ({"num_processes": 2}, "needs --coordinator"),
    ({"num_processes": 0}, "must be >= 1"),
    ({"coordinator": "no-port", "num_processes": 2}, "not HOST:PORT"),
    ({"devices": 0}, "must be >= 1"),
    ({"devices": 64}, "only"),
])
def test_bad_cluster_arguments_are_refused_in_one_line(kwargs, message):
    with pytest.raises(DistributionError, match=message) as caught:
        setup_cluster(**kwargs)
    assert "\n" not in str(caught.value)


def test_tf_config_is_refused_naming_the_supported_way(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"index": 0}}))
    with pytest.raises(DistributionError, match="KERAS_BACKEND=jax with --coordinator"):
        setup_cluster()


def test_several_processes_need_the_jax_backend():
    with pytest.raises(DistributionError, match="KERAS_BACKEND=jax"):
        setup_cluster(coordinator="127.0.0.1:1234", num_processes=2, process_id=0)


def test_single_process_helpers_are_identities_and_process_0_writes(tmp_path):
    cluster = current_cluster()
    assert (cluster.num_processes, cluster.process_id, cluster.is_writer) == (1, 0, True)
    assert cluster.shard == {"num_shards": 1, "shard_index": 0}
    assert broadcast_from_writer({"a": [1, 2]}) == {"a": [1, 2]}
    arrays = {"w": np.arange(3.0)}
    assert broadcast_arrays_from_writer(arrays) is arrays
    with pytest.raises(GhostFaceError, match="bad output"):
        agree_on_writer_check(lambda: (_ for _ in ()).throw(GhostFaceError("bad output")))
    agree_on_writer_check(lambda: None)


def test_weights_fingerprint_changes_with_any_weight():
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    before = weights_fingerprint(model)
    kernel = model.layers[0].kernel
    kernel.assign(kernel.numpy() + np.eye(3, 2, dtype="float32") * 1e-6)
    assert weights_fingerprint(model) != before and weights_fingerprint(model) == weights_fingerprint(model)


# ------------------------------------------------------------------------------------- train.py refusals
def run_cli(args, backend="tensorflow", timeout=120, **env):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True,
                          env=child_env(backend, **env), timeout=timeout)


def assert_one_line_exit_2(done, *fragments):
    assert done.returncode == 2, done.stderr[-1500:]
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("ghostface-train: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-1500:]
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_refuses_bad_process_options_before_loading_anything(tmp_path):
    out = str(tmp_path / "run")
    assert_one_line_exit_2(run_cli(["--demo", "--output", out, "--coordinator", "127.0.0.1:1234", "--num-processes",
                                    "2", "--process-id", "2"], backend="jax"), "--process-id 2 is out of range")
    assert_one_line_exit_2(run_cli(["--demo", "--output", out, "--num-processes", "2"], backend="jax"),
                           "needs --coordinator")
    assert_one_line_exit_2(run_cli(["--demo", "--output", out], TF_CONFIG='{"cluster": {}}'), "TF_CONFIG")
    assert not Path(out).exists()


def test_cli_names_a_missing_jax_in_one_line(tmp_path):
    """A Python where `import jax` fails (a shadowing package that raises ImportError)."""
    fake = tmp_path / "site"
    (fake / "jax").mkdir(parents=True)
    (fake / "jax" / "__init__.py").write_text("raise ImportError('No module named jax')\n")
    env = child_env("jax")
    env["PYTHONPATH"] = f"{fake}{os.pathsep}{ROOT}"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--demo", "--output", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    assert "jax" in done.stderr.strip().splitlines()[-1]
    env["KERAS_BACKEND"] = "tensorflow"
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--demo", "--output", str(tmp_path / "r"),
                           "--coordinator", "127.0.0.1:1234", "--num-processes", "2"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert_one_line_exit_2(done, "jax is not installed")


def test_a_coordinator_that_never_answers_times_out_with_one_line(tmp_path):
    started = time.monotonic()
    done = run_cli(["--demo", "--output", str(tmp_path / "r"), "--coordinator", f"127.0.0.1:{free_port()}",
                    "--num-processes", "2", "--process-id", "1", "--init-timeout", "5"], backend="jax", timeout=180)
    assert_one_line_exit_2(done, "could not join the coordinator", "within 5 s")
    assert time.monotonic() - started < 120


# ------------------------------------------------------------------------------------- JAX train steps
_JAX_STEPS = r"""
import json, sys
import numpy as np, keras
from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.losses import ArcFace
from ghostface_keras.train.optimizers import SAMModel
from ghostface_keras.train.partial_fc import PartialFCModel

rng = np.random.default_rng(1)
x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
w0 = rng.normal(size=(3, 1)).astype("float32")
inputs = keras.Input((3,))
sam = SAMModel(inputs, keras.layers.Dense(1, use_bias=False)(inputs), rho=0.05)
sam.layers[-1].kernel.assign(w0)
sam.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
history = sam.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

keras.utils.set_random_seed(0)
embedding = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, use_bias=False)])
head = NormDense(10)
head.build((None, 4))
partial = PartialFCModel(embedding, head, sample_rate=0.5, seed=3)
partial.compile(optimizer=keras.optimizers.SGD(0.5), loss=ArcFace(scale=8, margin=0.2))
px = rng.normal(size=(4, 6)).astype("float32")
py = np.array([1, 4, 4, 7])
kernel0, head0 = [w.numpy().copy() for w in embedding.weights], head.kernel.numpy().copy()
partial_history = partial.fit(px, py, batch_size=4, epochs=1, verbose=0, shuffle=False)
print(json.dumps({"sam_w": sam.layers[-1].kernel.numpy().tolist(), "sam_loss": history.history["loss"][0],
                  "pfc_loss": partial_history.history["loss"][0], "kernel0": kernel0[0].tolist(),
                  "head0": head0.tolist(), "kernel1": embedding.weights[0].numpy().tolist(),
                  "head1": head.kernel.numpy().tolist()}))
"""


def test_jax_sam_and_partial_fc_steps_match_independent_math(tmp_path):
    script = tmp_path / "steps.py"
    script.write_text(_JAX_STEPS)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=child_env("jax"),
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    # SAM on linear least squares, in numpy: gradient, ascent to w + rho g/|g|, gradient there, SGD step
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 1))
    w = rng.normal(size=(3, 1))

    def gradient(weights):
        return 2 * x.T @ (x @ weights - y) / len(x)

    g = gradient(w)
    expected = w - 0.1 * gradient(w + 0.05 * g / np.linalg.norm(g))
    np.testing.assert_allclose(result["sam_w"], expected, rtol=1e-5, atol=1e-6)
    assert result["sam_loss"] == pytest.approx(float(np.mean((x @ w - y) ** 2)), rel=1e-5)

    # Partial FC: the loss equals ArcFace over the sampled columns only; unsampled columns keep their weights
    # (plain SGD: no momentum, no decay), the sampled ones (every batch class among them) move.
    head0, head1 = np.array(result["head0"]), np.array(result["head1"])
    moved = np.flatnonzero(np.abs(head1 - head0).max(axis=0) > 0)
    assert {1, 4, 7} <= set(moved.tolist()) and len(moved) == 5  # K = ceil(0.5 x 10) columns
    embeddings = rng.normal(size=(4, 6)) @ np.array(result["kernel0"])
    e = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    columns = head0[:, moved] / np.linalg.norm(head0[:, moved], axis=0, keepdims=True)
    cosines = np.clip(e @ columns, -1, 1)
    labels = np.searchsorted(moved, [1, 4, 4, 7])  # the batch labels renumbered into the sampled columns
    target = np.cos(np.arccos(cosines[np.arange(4), labels]) + 0.2)
    logits = 8 * cosines
    logits[np.arange(4), labels] = 8 * target
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert result["pfc_loss"] == pytest.approx(float(-log_softmax[np.arange(4), labels].mean()), rel=1e-4)
