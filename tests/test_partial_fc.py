"""Partial FC: sampled-class cosines, the class sampler, one training step against a plain K-class step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.losses import ArcFace, CosFace
from ghostface_keras.train.partial_fc import PartialFCModel, sample_classes, sampled_class_count
from ghostface_keras.train.trainer import Stage, Trainer


def _numpy_cosines(x, kernel, sub_centers):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    kernel = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    cosines = x @ kernel
    return cosines.reshape(len(x), -1, sub_centers).max(axis=2)


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_norm_dense_on_class_indices_gives_those_classes_cosines_and_the_norm(sub_centers):
    rng = np.random.default_rng(0)
    head = NormDense(12, sub_centers=sub_centers, append_norm=True)
    head.build((None, 5))
    head.kernel.assign(rng.normal(size=(5, 12 * sub_centers)).astype("float32"))
    x = rng.normal(size=(4, 5)).astype("float32")
    classes = np.array([2, 5, 11, 0], dtype="int32")
    got = np.asarray(head(x, class_indices=classes))
    expected = _numpy_cosines(x, head.kernel.numpy(), sub_centers)[:, classes]
    np.testing.assert_allclose(got[:, :-1], expected, atol=1e-5)
    np.testing.assert_allclose(got[:, -1], -np.linalg.norm(x, axis=1), rtol=1e-5)


def test_sample_classes_keeps_every_label_renumbers_them_and_varies_the_others():
    labels = np.array([40, 3, 40, 17, 99, 3], dtype="int32")
    draws = []
    seed = keras.random.SeedGenerator(1)
    for _ in range(3):
        sampled, positions = (np.asarray(t) for t in sample_classes(labels, 100, 10, seed=seed))
        assert sampled.shape == (10,) and np.all(np.diff(sampled) > 0) and sampled.max() < 100
        np.testing.assert_array_equal(sampled[positions], labels)
        draws.append(tuple(sampled))
    assert len(set(draws)) > 1  # the negatives are redrawn every step
    assert sampled_class_count(1000, 0.1) == 100 and sampled_class_count(7, 0.1) == 1
    with pytest.raises(ValueError, match="sample_rate"):
        sampled_class_count(10, 0.0)
    with pytest.raises(ValueError, match="distinct classes"):
        sample_classes(labels, 100, 3, seed=0)


def test_a_batch_with_more_classes_than_the_rate_gives_samples_the_batch_size():
    # 80 classes at rate 0.1 -> K = 8, but a batch of 16 holds up to 16 classes: K grows to 16
    embedding = _embedding()
    head = NormDense(80)
    head.build((None, 4))
    kernel_before = head.kernel.numpy().copy()
    model = PartialFCModel(embedding, head, sample_rate=0.1, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=ArcFace(scale=16), jit_compile=True)
    labels = np.arange(16, dtype="int32") * 5
    model.fit(np.random.default_rng(0).normal(size=(16, 6)).astype("float32"), labels, batch_size=16, verbose=0)
    changed = np.flatnonzero(np.any(head.kernel.numpy() != kernel_before, axis=0))
    assert len(changed) == 16 and set(labels) == set(changed)


def _embedding(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    return keras.Model(inputs, keras.layers.Dense(4, name="embed")(keras.layers.Dense(8, activation="tanh")(inputs)))


def test_partial_fc_step_equals_a_plain_step_on_the_sampled_classes():
    classes, rate = 50, 0.2  # K = 10 sampled of 50
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    labels = np.array([3, 7, 7, 21, 30, 3, 44, 12], dtype="int32")
    loss = ArcFace(scale=16, margin=0.3)

    embedding = _embedding()
    head = NormDense(classes)
    head.build((None, 4))
    kernel_before = head.kernel.numpy().copy()
    partial = PartialFCModel(embedding, head, sample_rate=rate, seed=0)
    partial.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    partial_loss = partial.fit(x, labels, batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"][0]

    changed = np.flatnonzero(np.any(head.kernel.numpy() != kernel_before, axis=0))
    assert len(changed) == sampled_class_count(classes, rate) and set(labels) <= set(changed)

    # the same step written independently: a plain model over only those K classes, labels renumbered
    reference_embedding = _embedding()
    reference_head = NormDense(len(changed))
    reference_head.build((None, 4))
    reference_head.kernel.assign(kernel_before[:, changed])
    inputs = keras.Input((6,))
    reference = keras.Model(inputs, reference_head(reference_embedding(inputs)))
    reference.compile(optimizer=keras.optimizers.SGD(0.5), loss=ArcFace(scale=16, margin=0.3))
    renumbered = np.searchsorted(changed, labels)
    reference_loss = reference.fit(x, renumbered, batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"][0]

    assert partial_loss == pytest.approx(reference_loss, rel=1e-5)
    np.testing.assert_allclose(head.kernel.numpy()[:, changed], reference_head.kernel.numpy(), atol=1e-6)
    for got, expected in zip(embedding.get_weights(), reference_embedding.get_weights()):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    # inference still scores every class
    assert partial.predict(x, verbose=0).shape == (8, classes)


def _many_class_data(classes=32, images=128, side=12):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, images).astype("int32")
    x = rng.normal(size=(images, side, side, 3)).astype("float32") * 0.5
    x[..., 0] += (labels[:, None, None] % 8) * 0.3
    x[..., 1] += (labels[:, None, None] // 8) * 0.3
    return tf.data.Dataset.from_tensor_slices((x, labels)).batch(8)


def _conv_embedding():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, activation="relu")(inputs))
    return keras.Model(inputs, keras.layers.Dense(8)(hidden))


def test_trainer_partial_fc_stage_lowers_the_loss_alone_and_with_sam(tmp_path):
    for name, rho in (("pfc", 0.0), ("sam", 0.05)):
        trainer = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / name, verbose=0)
        records = trainer.fit([Stage(4, ArcFace(scale=16, margin=0.2), keras.optimizers.Adam(0.01),
                                     partial_fc_rate=0.5, sam_rho=rho)])
        losses = [r["loss"] for r in records]
        assert all(np.isfinite(losses)) and losses[-1] < losses[0], name
        assert isinstance(trainer.model, PartialFCModel) and trainer.model.num_sampled == 16
        assert trainer.model.sam_rho == rho


# ------------------------------------------------------------------ SAM + partial FC in one step, vs numpy
SAM_PFC = {"classes": 10, "rate": 0.5, "scale": 8.0, "margin": 0.2, "rho": 0.05, "lr": 0.5}


def one_sam_partial_fc_step() -> dict:
    """One SAM + partial FC step of a linear embedding on the current Keras backend: the weights before and
    after and the reported loss (the JAX case runs this same function in a child process)."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 6)).astype("float32")
    labels = np.array([1, 4, 4, 7], dtype="int32")
    embedding = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, use_bias=False)])
    head = NormDense(SAM_PFC["classes"])
    head.build((None, 4))
    before = {"embedding": np.asarray(embedding.weights[0].numpy(), "float64").tolist(),
              "head": np.asarray(head.kernel.numpy(), "float64").tolist()}
    model = PartialFCModel(embedding, head, sample_rate=SAM_PFC["rate"], seed=3, sam_rho=SAM_PFC["rho"])
    model.compile(optimizer=keras.optimizers.SGD(SAM_PFC["lr"]),
                  loss=CosFace(scale=SAM_PFC["scale"], margin=SAM_PFC["margin"]))
    loss = model.fit(x, labels, batch_size=4, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    return {"x": x.tolist(), "labels": labels.tolist(), "before": before, "loss": float(loss),
            "after": {"embedding": np.asarray(embedding.weights[0].numpy(), "float64").tolist(),
                      "head": np.asarray(head.kernel.numpy(), "float64").tolist()}}


def _cosface_loss(params, x, labels, sampled):
    """CosFace over the sampled head columns, in float64 numpy: the independent reference."""
    embedding, head = params
    e = x @ embedding
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    columns = head[:, sampled] / np.linalg.norm(head[:, sampled], axis=0, keepdims=True)
    cosines = e @ columns
    targets = np.searchsorted(sampled, labels)
    logits = SAM_PFC["scale"] * cosines
    logits[np.arange(len(x)), targets] -= SAM_PFC["scale"] * SAM_PFC["margin"]
    top = logits.max(axis=1, keepdims=True)
    log_sum = np.log(np.exp(logits - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_sum - logits[np.arange(len(x)), targets]))


def _numeric_gradient(function, params, step=1e-6):
    gradients = []
    for index, param in enumerate(params):
        gradient = np.zeros_like(param)
        for position in np.ndindex(param.shape):
            shifted = [p.copy() for p in params]
            shifted[index][position] += step
            up = function(shifted)
            shifted[index][position] -= 2 * step
            gradient[position] = (up - function(shifted)) / (2 * step)
        gradients.append(gradient)
    return gradients


def check_sam_partial_fc_step(result: dict) -> None:
    """SAM over the sampled classes, recomputed in numpy from the weights before the step: g at w, ascent to
    w + rho g / ||g|| (norm over every trainable weight), g there, SGD; unsampled columns must not move."""
    x, labels = np.array(result["x"], "float64"), np.array(result["labels"])
    params = [np.array(result["before"]["embedding"]), np.array(result["before"]["head"])]
    after = [np.array(result["after"]["embedding"]), np.array(result["after"]["head"])]
    sampled = np.flatnonzero(np.abs(after[1] - params[1]).max(axis=0) > 0)
    assert set(labels.tolist()) <= set(sampled.tolist())
    assert len(sampled) == sampled_class_count(SAM_PFC["classes"], SAM_PFC["rate"])

    def loss(p):
        return _cosface_loss(p, x, labels, sampled)

    assert result["loss"] == pytest.approx(loss(params), rel=1e-5)
    gradient = _numeric_gradient(loss, params)
    norm = np.sqrt(sum(float(np.sum(g ** 2)) for g in gradient))
    perturbed = [p + SAM_PFC["rho"] * g / norm for p, g in zip(params, gradient)]
    sharp = _numeric_gradient(loss, perturbed)
    expected = [p - SAM_PFC["lr"] * g for p, g in zip(params, sharp)]
    np.testing.assert_allclose(after[0], expected[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(after[1], expected[1], rtol=1e-4, atol=1e-5)
    # and it is SAM: the plain gradient step lands elsewhere
    plain = params[0] - SAM_PFC["lr"] * gradient[0]
    assert np.abs(plain - after[0]).max() > 1e-4


def test_sam_and_partial_fc_compose_in_one_tensorflow_step():
    check_sam_partial_fc_step(one_sam_partial_fc_step())


def test_sam_and_partial_fc_compose_in_one_jax_step(tmp_path):
    pytest.importorskip("jax")
    script = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
              "from test_partial_fc import one_sam_partial_fc_step\n"
              "print(json.dumps(one_sam_partial_fc_step()))\n")
    env = dict(os.environ, KERAS_BACKEND="jax")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    check_sam_partial_fc_step(json.loads(done.stdout.strip().splitlines()[-1]))


def test_train_cli_checks_the_partial_fc_rate(tmp_path, capsys):
    from ghostface_keras.cli import train as cli

    assert cli.main(["--demo", "--partial-fc-rate", "1.5", "--output", str(tmp_path / "run")]) == 2
    assert "--partial-fc-rate must be in (0, 1]" in capsys.readouterr().err
    from ghostface_keras.train.recipes import official_stages, resolve_defaults, validate

    sam = resolve_defaults(cli.training_config(["--demo", "--optimizer", "sam", "--partial-fc-rate", "0.5"]))
    validate(sam)  # SAM and partial FC combine
    assert all(Stage.coerce(stage).sam_rho > 0 and Stage.coerce(stage).partial_fc_rate == 0.5
               for stage in official_stages(sam, steps_per_epoch=10)[0])

    config = resolve_defaults(cli.training_config(["--demo", "--partial-fc-rate", "0.25"]))
    stages, _ = official_stages(config, steps_per_epoch=10)
    assert stages and all(Stage.coerce(stage).partial_fc_rate == 0.25 for stage in stages)


def test_benchmark_script_reports_one_row_per_rate_with_its_sampled_classes():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "partial_fc.py"), "--classes", "300", "--rates", "1", "0.25", "0.1",
         "--batch", "8", "--dim", "16", "--steps", "2", "--rounds", "2"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "PYTHONPATH": str(root)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [float(row[0]) for row in rows] == [1.0, 0.25, 0.1]
    assert [int(row[1]) for row in rows] == [300, sampled_class_count(300, 0.25), sampled_class_count(300, 0.1)]
    assert float(rows[0][3]) == 1.0 and all(float(row[2]) > 0 for row in rows)


@pytest.mark.large  # trains three runs end to end (~15 s); the sampling itself is checked in the default tier
def test_resume_inside_a_partial_fc_stage_draws_the_same_classes_as_an_uninterrupted_run(tmp_path):
    def stages(epochs):
        return [Stage(epochs, ArcFace(scale=16, margin=0.2), keras.optimizers.SGD(0.05, momentum=0.9),
                      partial_fc_rate=0.5)]

    keras.utils.set_random_seed(7)
    straight = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / "straight", verbose=0)
    straight.fit(stages(3))
    keras.utils.set_random_seed(7)
    first = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / "split", verbose=0)
    first.fit(stages(1))  # interrupted after epoch 1 of 3
    sampler = np.load(tmp_path / "split" / "training_state.npz")["sampler_0"]
    assert sampler[1] > 0  # the sampler advanced: restoring it is observable

    keras.utils.set_random_seed(99)  # a different sampler seed unless the saved state overrides it
    resumed = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / "split", verbose=0)
    resumed.fit(stages(3), resume=True)
    for a, b in zip(straight.embedding_model.weights + straight.head.weights,
                    resumed.embedding_model.weights + resumed.head.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_training_accuracy_ignores_the_norm_column_of_partial_cosines(tmp_path):
    trainer = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path, verbose=0)
    partial_cosines_with_norm = np.array([[0.1, 0.5, -0.2, -0.3],    # K = 3 cosines, then -||x|| = -0.3
                                          [-0.9, -0.8, -0.7, -0.5]], "float32")  # here -||x|| is the largest
    trainer.head.append_norm = True
    accuracy = trainer._accuracy()
    np.testing.assert_array_equal(np.asarray(accuracy(np.array([1, 2]), partial_cosines_with_norm)), [1.0, 1.0])
    trainer.head.append_norm = False
    accuracy = trainer._accuracy()
    np.testing.assert_array_equal(np.asarray(accuracy(np.array([1, 3]), partial_cosines_with_norm)), [1.0, 1.0])


def test_a_saved_partial_fc_model_loads_with_its_settings_and_weights(tmp_path):
    inputs = keras.Input((6,))
    embedding_model = keras.Model(inputs, keras.layers.Dense(4, name="embedding")(inputs))
    model = PartialFCModel(embedding_model, NormDense(9, name="norm_dense"), sample_rate=0.4, seed=3, sam_rho=0.05)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    want = np.asarray(model(x))
    model.save(tmp_path / "partial_fc.keras")
    loaded = keras.saving.load_model(tmp_path / "partial_fc.keras", compile=False)
    assert type(loaded) is PartialFCModel
    assert (loaded.sample_rate, loaded.seed, loaded.sam_rho, loaded.head.num_classes) == (0.4, 3, 0.05, 9)
    assert loaded.embedding_model is not embedding_model
    np.testing.assert_allclose(np.asarray(loaded(x)), want, rtol=1e-6)
