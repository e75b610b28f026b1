"""Partial FC: sampled-class cosines, the class sampler, one training step against a plain K-class step."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.losses import ArcFace
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


def test_trainer_partial_fc_stage_lowers_the_loss_and_refuses_sam(tmp_path):
    trainer = Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / "run", verbose=0)
    records = trainer.fit([Stage(4, ArcFace(scale=16, margin=0.2), keras.optimizers.Adam(0.01), partial_fc_rate=0.5)])
    losses = [r["loss"] for r in records]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert isinstance(trainer.model, PartialFCModel) and trainer.model.num_sampled == 16
    with pytest.raises(GhostFaceError, match="partial FC"):
        Trainer(_conv_embedding(), _many_class_data(), 32, tmp_path / "sam", verbose=0).fit(
            [Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.1), sam_rho=0.05, partial_fc_rate=0.5)])


def test_train_cli_checks_the_partial_fc_rate(tmp_path, capsys):
    from ghostface_keras.cli import train as cli

    assert cli.main(["--demo", "--partial-fc-rate", "1.5", "--output", str(tmp_path / "run")]) == 2
    assert "--partial-fc-rate must be in (0, 1]" in capsys.readouterr().err
    assert cli.main(["--demo", "--optimizer", "sam", "--partial-fc-rate", "0.5", "--output", str(tmp_path / "r")]) == 2
    assert "cannot be combined" in capsys.readouterr().err
    from ghostface_keras.train.recipes import TrainingConfig, official_stages, resolve_defaults

    config = resolve_defaults(TrainingConfig.from_dict(cli._config_fields(cli.parse_args(["--demo", "--partial-fc-rate", "0.25"]))))
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
