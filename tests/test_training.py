"""Schedules, SAM, the staged Trainer (history, resume, NaN guard) on tiny models, against independent math."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from ghostface_keras.train.callbacks import (
    VerificationCallback,
    load_history,
)
from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.train.schedules import CosineRestarts, ExponentialEpochDecay, StepDecay
from ghostface_keras.train.losses import AdaFace, ArcFace, MagFace
from ghostface_keras.train.optimizers import SAMModel
from ghostface_keras.train.trainer import Stage, Trainer

CLASSES, IMAGES, SIDE = 4, 64, 12


# ------------------------------------------------------------------------------------------- schedules
def test_cosine_restarts_without_cooldown_equals_keras_cosine_decay_restarts():
    spe = 7
    ours = CosineRestarts(0.1, first_restart_epochs=3, steps_per_epoch=spe, m_mul=0.5, lr_min=1e-3,
                          cooldown_epochs=0)
    keras_schedule = keras.optimizers.schedules.CosineDecayRestarts(0.1, 3 * spe, t_mul=2.0, m_mul=0.5, alpha=1e-2)
    for step in range(0, 21 * spe, 5):
        assert float(ours(step)) == pytest.approx(float(keras_schedule(step)), rel=1e-4, abs=1e-7)


def test_cosine_restarts_reproduces_the_official_recipe_per_epoch():
    spe = 50
    schedule = CosineRestarts(0.1, first_restart_epochs=45, steps_per_epoch=spe, m_mul=0.5, lr_min=1e-5)

    def official(epoch):  # closed form of the inventory's description, evaluated at each epoch's first batch
        if epoch < 45:
            return 1e-5 + (0.1 - 1e-5) * 0.5 * (1 + math.cos(math.pi * epoch / 45))
        if epoch == 45:
            return 1e-5
        return 1e-5 + (0.1 - 1e-5) * 0.5 * 0.5 * (1 + math.cos(math.pi * (epoch - 46) / 90))

    for epoch in range(0, 51):
        assert float(schedule(epoch * spe)) == pytest.approx(official(epoch), rel=1e-4)
    assert float(schedule(44 * spe)) == pytest.approx(1.3e-4, rel=0.05)
    assert float(schedule(46 * spe)) == pytest.approx(0.05, rel=1e-3)


def test_cosine_warmup_is_linear_from_lr_min():
    schedule = CosineRestarts(0.1, first_restart_epochs=10, steps_per_epoch=10, lr_min=1e-4, warmup_epochs=2)
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(10)) == pytest.approx(1e-4 + (0.1 - 1e-4) / 2, rel=1e-5)
    assert float(schedule(20)) == pytest.approx(0.1, rel=1e-5)


def test_exponential_and_step_schedules_match_closed_forms():
    exponential = ExponentialEpochDecay(0.1, gamma=0.998, steps_per_epoch=10, lr_min=1e-6)
    for step in (0, 9, 10, 555, 10000):
        assert float(exponential(step)) == pytest.approx(max(0.1 * 0.998 ** (step // 10), 1e-6), rel=1e-4)
    step_decay = StepDecay(0.1, boundaries=[3, 5], rate=0.1, steps_per_epoch=4)
    for step in range(0, 32):
        epoch = step // 4
        assert float(step_decay(step)) == pytest.approx(0.1 * 0.1 ** ((epoch >= 3) + (epoch >= 5)), rel=1e-5)


# ------------------------------------------------------------------------------------------- SAM
def test_sam_step_matches_numpy_for_linear_least_squares():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    w0 = rng.normal(size=(3, 1)).astype("float32")
    inputs = keras.Input((3,))
    model = SAMModel(inputs, keras.layers.Dense(1, use_bias=False)(inputs), rho=0.05)
    model.layers[-1].kernel.assign(w0)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)

    def gradient(w):  # d/dw mean((xw - y)^2)
        return 2 * x.T @ (x @ w - y) / len(x)

    g = gradient(w0.astype(np.float64))
    expected = w0 - 0.1 * gradient(w0 + 0.05 * g / np.linalg.norm(g))
    np.testing.assert_allclose(model.layers[-1].kernel.numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- Trainer
def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(IMAGES) % CLASSES
    images = rng.normal(size=(IMAGES, SIDE, SIDE, 3)).astype("float32") * 0.5
    images[..., 0] += labels[:, None, None] * 0.5
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)


def _embedding_model(seed: int = 0, batch_norm: bool = True):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 3))
    hidden = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    if batch_norm:
        hidden = keras.layers.BatchNormalization()(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    return keras.Model(inputs, keras.layers.Dense(8)(hidden))


def _stages():
    return [Stage(1, ArcFace(scale=16, margin=0.2), keras.optimizers.SGD(0.05, momentum=0.9)),
            Stage(3, ArcFace(scale=32, margin=0.2))]


def _trainer(path, seed=0):
    schedule = CosineRestarts(0.05, first_restart_epochs=2, steps_per_epoch=4, lr_min=1e-3)
    return Trainer(_embedding_model(seed), _data(), CLASSES, path, schedule=schedule, verbose=0)


def test_trainer_writes_history_models_and_state(tmp_path):
    records = _trainer(tmp_path).fit(_stages())
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "history.json").read_text()) == records
    expected_lr = [float(CosineRestarts(0.05, 2, 4, lr_min=1e-3)(e * 4)) for e in range(4)]
    np.testing.assert_allclose([r["lr"] for r in records], expected_lr, rtol=1e-5)
    assert all(np.isfinite(r["loss"]) and r["seconds"] > 0 for r in records)
    for name in ("model.keras", "history.png", "training_state.npz"):
        assert (tmp_path / name).stat().st_size > 0
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.output_shape == (None, 8)


@pytest.mark.large  # two runs end to end (~8 s); test_resume_restores_adaface_running_statistics stays default
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    straight = _trainer(tmp_path / "straight")
    straight.fit(_stages())

    first = _trainer(tmp_path / "split")
    short = [_stages()[0], Stage(1, ArcFace(scale=32, margin=0.2))]  # stop after epoch 2 of 4
    first.fit(short)
    resumed = _trainer(tmp_path / "split", seed=123)  # different initial weights: the state must override them
    records = resumed.fit(_stages(), resume=True)

    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    straight_records = load_history(tmp_path / "straight" / "history.json")
    np.testing.assert_allclose([r["lr"] for r in records], [r["lr"] for r in straight_records], rtol=1e-6)
    for a, b in zip(straight.embedding_model.weights + straight.head.weights,
                    resumed.embedding_model.weights + resumed.head.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_resume_restores_adaface_running_statistics(tmp_path):
    def stages(adaface_epochs):
        return [Stage(1, ArcFace(scale=16, margin=0.2), keras.optimizers.SGD(0.05, momentum=0.9)),
                Stage(adaface_epochs, AdaFace(scale=16, margin=0.2))]

    straight = _trainer(tmp_path / "straight")
    straight_stages = stages(2)
    straight.fit(straight_stages)
    first = _trainer(tmp_path / "split")
    first.fit(stages(1))  # stop inside the AdaFace stage, after epoch 2 of 3
    saved = np.load(tmp_path / "split" / "training_state.npz")
    first_loss = first._current_loss
    np.testing.assert_allclose([saved["loss_0"], saved["loss_1"]],
                               [float(first_loss.running_mean.numpy()), float(first_loss.running_std.numpy())])
    assert abs(float(saved["loss_0"]) - 20.0) > 0.05  # the statistics moved: restoring them is observable

    resumed_stages = stages(2)  # a fresh AdaFace starts at mean 20 / std 100 again
    _trainer(tmp_path / "split", seed=5).fit(resumed_stages, resume=True)
    for name in ("running_mean", "running_std"):
        np.testing.assert_allclose(getattr(resumed_stages[1].loss, name).numpy(),
                                   getattr(straight_stages[1].loss, name).numpy(), rtol=1e-5)


class _NaNAfterFirstEpochLoss(keras.losses.Loss):
    def call(self, y_true, y_pred):
        return keras.ops.mean(y_pred, axis=1) * np.nan


def test_nan_guard_stops_and_keeps_the_last_good_state(tmp_path):
    trainer = _trainer(tmp_path)
    good = trainer.embedding_model.get_weights()
    stages = [Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.05)), Stage(2, _NaNAfterFirstEpochLoss())]
    with pytest.raises(GhostFaceError, match="NaN"):
        trainer.fit(stages)
    assert [r["epoch"] for r in load_history(tmp_path / "history.json")] == [1]
    with np.load(tmp_path / "training_state.npz") as state:
        assert json.loads(str(state["meta"]))["epoch"] == 1
    weights = trainer.embedding_model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    assert any(not np.allclose(a, b) for a, b in zip(good, weights))  # epoch 1 did train


@pytest.mark.parametrize("stage", [
    # SAM trains twice per step (~14 s): the large tier; its step is checked against numpy in the default tier
    pytest.param(Stage(6, ArcFace(scale=16, margin=0.2), keras.optimizers.SGD(0.05, momentum=0.9), sam_rho=0.05),
                 marks=pytest.mark.large),
    Stage(6, MagFace(scale=16), keras.optimizers.SGD(0.05, momentum=0.9)),
], ids=["sam", "magface"])
def test_sam_and_magface_train_without_nan_and_lower_the_loss(tmp_path, stage):
    records = Trainer(_embedding_model(), _data(), CLASSES, tmp_path, verbose=0).fit([stage])
    losses = [r["loss"] for r in records]
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0]


def test_freeze_backbone_stage_changes_only_the_head(tmp_path):
    trainer = Trainer(_embedding_model(), _data(), CLASSES, tmp_path, verbose=0)
    before = [w.copy() for w in trainer.embedding_model.get_weights()]
    head_before = trainer.head.kernel.numpy().copy()
    trainer.fit([Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.1), freeze_backbone=True)])
    for a, b in zip(before, trainer.embedding_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(head_before, trainer.head.kernel.numpy())


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GhostFaceError, match="not writable"):
        Trainer(_embedding_model(), _data(), CLASSES, blocker / "run", verbose=0)


# ------------------------------------------------------------------------------------------- verification
def test_verification_callback_uses_the_one_embedding_path_and_the_evaluation_protocol():
    """The callback's score equals the evaluation's 10-fold protocol on embeddings computed here by hand."""
    from ghostface_keras.evaluation import k_fold_accuracy
    from ghostface_keras.core.preprocessing import normalize_images

    model = _embedding_model()
    size = model.input_shape[1]
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(80, size, size, 3), dtype=np.uint8)
    images[1::4] = images[0::4]  # half of the pairs are the same image: a score the protocol can separate
    issame = np.arange(40) % 2 == 0
    for flip in (False, True):
        callback = VerificationCallback(model, {"toy": (images, issame)}, batch_size=16, flip=flip)
        inputs = normalize_images(images)
        raw = model.predict(inputs, verbose=0) + (model.predict(inputs[:, :, ::-1], verbose=0) if flip else 0)
        unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
        cosines = np.sum(unit[0::2] * unit[1::2], axis=1)
        expected = float(np.mean(k_fold_accuracy(cosines, issame)[0]))
        assert callback.evaluate()["toy"] == pytest.approx(expected, abs=1e-12)
        assert expected > 0.5


# ------------------------------------------------------------------------------------------- distribution
_MIRRORED_SCRIPT = r"""
import json, sys
import numpy as np, tensorflow as tf
import keras
from ghostface_keras.core.distribution import setup_cluster, use_cpu_devices
from ghostface_keras.train.losses import ArcFace
from ghostface_keras.train.trainer import Stage, Trainer

use_cpu_devices(2)
devices = int(sys.argv[1])
cluster = setup_cluster(devices)
strategy = cluster.strategy
rng = np.random.default_rng(0)
images = rng.normal(size=(16, 12, 12, 3)).astype("float32")
labels = np.arange(16) % 4
data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)  # one global batch of 16
with strategy.scope():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    hidden = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(6, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(8)(hidden))
    trainer = Trainer(model, data, 4, sys.argv[2], cluster=cluster, verbose=0)
    stage = Stage(1, ArcFace(scale=16, margin=0.3), keras.optimizers.SGD(0.5), sam_rho=float(sys.argv[3]))
records = trainer.fit([stage])
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": records[0]["loss"],
                  "weights": [w.tolist() for w in model.get_weights()]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.0, 0.05], ids=["sgd", "sam"])
def test_two_device_mirrored_first_step_equals_one_device(tmp_path, rho):
    """Same global batch on 1 and on 2 logical CPU devices: same loss, same updated weights (no BatchNorm)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), TF_CPP_MIN_LOG_LEVEL="3")
    results = {}
    for devices in (1, 2):
        done = subprocess.run([sys.executable, str(script), str(devices), str(tmp_path / f"run{devices}"), str(rho)],
                              capture_output=True, text=True, env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        results[devices] = json.loads(done.stdout.strip().splitlines()[-1])
    assert results[2]["replicas"] == 2
    assert results[2]["loss"] == pytest.approx(results[1]["loss"], rel=1e-5)
    for one, two in zip(results[1]["weights"], results[2]["weights"]):
        if rho == 0.0:  # SAM perturbs each replica with its own gradient (m-sharpness): close, not equal
            np.testing.assert_allclose(np.array(two), np.array(one), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------- in-graph LR, early stop
def test_shifted_and_head_first_schedules_match_closed_forms():
    from ghostface_keras.train.schedules import HeadFirstSchedule, ShiftedSchedule

    step_decay = StepDecay(0.1, boundaries=[2], rate=0.1, steps_per_epoch=5)  # 0.1 before step 10, then 0.01
    shifted = ShiftedSchedule(step_decay, offset=7)
    assert [round(float(shifted(s)), 6) for s in (0, 2, 3, 10)] == [0.1, 0.1, 0.01, 0.01]
    head_first = HeadFirstSchedule(step_decay, head_lr=0.5, head_steps=3)
    assert [round(float(head_first(s)), 6) for s in (0, 2, 3, 9, 10)] == [0.5, 0.5, 0.1, 0.1, 0.01]
    restored = ShiftedSchedule.from_config(shifted.get_config())
    assert float(restored(3)) == pytest.approx(0.01)


def test_trainer_evaluates_the_schedule_in_graph_at_the_global_batch_index(tmp_path):
    schedule = CosineRestarts(0.05, first_restart_epochs=3, steps_per_epoch=4, lr_min=1e-3)
    trainer = Trainer(_embedding_model(), _data(), CLASSES, tmp_path, schedule=schedule, verbose=0)
    # the freeze change gives stage 2 a fresh optimizer whose own counter restarts at 0
    trainer.fit([Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.05), freeze_backbone=True),
                 Stage(2, ArcFace(scale=16))])
    optimizer = trainer.model.optimizer
    assert int(optimizer.iterations) == 2 * 4
    # 12 batches ran in all: the optimizer's next LR is the schedule at global index 12
    assert float(optimizer.learning_rate) == pytest.approx(float(schedule(12)), rel=1e-6)
    # no per-batch Python work: no callback of the Trainer overrides a batch hook
    callbacks = [c for c in trainer._callbacks(None, None, None, None, 0) if c is not None]
    for callback in callbacks:
        for hook in ("on_train_batch_begin", "on_train_batch_end", "on_batch_end"):
            assert getattr(type(callback), hook) is getattr(keras.callbacks.Callback, hook), (callback, hook)


def test_stop_at_accuracy_ends_training_after_the_target_epoch(tmp_path):
    rng = np.random.default_rng(0)
    pairs = (rng.integers(0, 255, (20, SIDE, SIDE, 3)).astype(np.uint8), np.arange(10) % 2 == 0)
    trainer = Trainer(_embedding_model(), _data(), CLASSES, tmp_path, pair_sets={"toy": pairs},
                      stop_at_accuracy=0.0, verbose=0)
    records = trainer.fit([Stage(3, ArcFace(scale=16), keras.optimizers.SGD(0.05))])
    assert [r["epoch"] for r in records] == [1]
    assert 0.0 <= records[0]["toy"] <= 1.0


# ------------------------------------------------------------------------------------------------- CLI
def _train_cli():
    from ghostface_keras.cli import train

    return train


def test_cli_defaults_by_recipe_and_demo_settings_yield_to_explicit_options():
    from ghostface_keras.train.recipes import resolve_defaults

    cli = _train_cli()

    def parse(argv):
        return resolve_defaults(cli.training_config(argv))

    scratch = parse(["--data", "faces"])
    assert (scratch.optimizer, scratch.lr, scratch.scale, scratch.margin) == ("adamw", 2e-3, 32.0, 0.3)
    assert scratch.output == "runs/train"
    finetune = parse(["--data", "faces", "--init-from", "model.h5"])
    assert (finetune.optimizer, finetune.lr, finetune.scale, finetune.margin) == ("sgd", 0.01, 64.0, None)
    official = parse(["--data", "faces", "--optimizer", "sgd"])
    assert (official.lr, official.scale) == (0.1, 64.0)
    demo = parse(["--demo"])
    assert demo.output == "runs/demo" and demo.model == "GhostFaceNetV1-0.5-2" and demo.stop_at == 0.96
    explicit = parse(["--demo", "--epochs", "3", "--output", "elsewhere", "--model", "MobileFaceNet"])
    assert (explicit.epochs, explicit.output, explicit.model) == (3, "elsewhere", "MobileFaceNet")


def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    cli = _train_cli()
    assert cli.main(["--data", str(tmp_path / "missing"), "--output", str(tmp_path / "run")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert cli.main(["--output", str(tmp_path / "run")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_steps_per_execution_trains_every_batch_and_keeps_the_schedule(tmp_path):
    schedule = CosineRestarts(0.05, first_restart_epochs=2, steps_per_epoch=4, lr_min=1e-3)
    trainer = Trainer(_embedding_model(), _data(), CLASSES, tmp_path, schedule=schedule, verbose=0,
                      steps_per_execution=3)  # 4 batches per epoch: executions of 3 then 1
    records = trainer.fit([Stage(2, ArcFace(scale=16), keras.optimizers.SGD(0.05))])
    assert int(trainer.model.optimizer.iterations) == 8
    np.testing.assert_allclose([r["lr"] for r in records], [float(schedule(0)), float(schedule(4))], rtol=1e-6)


@pytest.mark.large  # three stages and their saves end to end (~8 s)
def test_layers_frozen_by_the_caller_stay_frozen_through_stages_and_saves(tmp_path):
    model = _embedding_model()
    batch_norm = next(layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization))
    batch_norm.trainable = False  # fine-tuning keeps pretrained BatchNorm statistics
    moving_mean = batch_norm.moving_mean.numpy().copy()
    trainer = Trainer(model, _data(), CLASSES, tmp_path, verbose=0)
    trainer.fit([Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.05), freeze_backbone=True),
                 Stage(1, ArcFace(scale=16), keras.optimizers.SGD(0.05))])
    assert not batch_norm.trainable
    np.testing.assert_array_equal(batch_norm.moving_mean.numpy(), moving_mean)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.trainable


def test_cli_refuses_impossible_numbers_and_a_resume_of_another_run_before_writing(tmp_path, capsys):
    cli = _train_cli()
    out = tmp_path / "run"
    assert cli.main(["--data", str(tmp_path), "--epochs", "0", "--output", str(out)]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert cli.main(["--data", str(tmp_path), "--lr", "-1", "--output", str(out)]) == 2
    assert "--lr must be > 0" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    config = json.dumps({"model": "GhostFaceNetV1-0.5-2", "data": str(tmp_path), "loss": "arcface"})
    (out / "train_config.json").write_text(config)
    (out / "training_state.npz").write_bytes(b"saved state")
    assert cli.main(["--data", str(tmp_path), "--model", "MobileFaceNet", "--resume", "--output", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "--model 'GhostFaceNetV1-0.5-2' -> 'MobileFaceNet'" in error
    assert (out / "train_config.json").read_text() == config  # untouched by the refused run


def test_the_cli_options_are_the_training_config_fields_with_their_defaults_and_help():
    import dataclasses

    from ghostface_keras.train.recipes import TrainingConfig

    parser = _train_cli().build_parser()
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    fields = {f.name: f for f in dataclasses.fields(TrainingConfig)}
    assert set(actions) == set(fields)
    defaults = TrainingConfig()
    for name, action in actions.items():
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert action.default == getattr(defaults, name), name
        assert action.help and fields[name].metadata["help"], name
        assert "`" not in action.help, name  # settings named in a help text are shown as options
    assert actions["loss"].choices == list(fields["loss"].metadata["choices"])


def test_the_demo_preset_is_the_library_s_and_yields_to_fields_set_by_the_caller():
    from ghostface_keras.train.recipes import DEMO_SETTINGS, TrainingConfig, apply_presets

    cli = _train_cli()
    library = apply_presets(TrainingConfig(demo=True))
    assert cli.training_config(["--demo"]) == library
    assert {key: getattr(library, key) for key in DEMO_SETTINGS} == DEMO_SETTINGS
    assert library.output == "runs/demo"
    mine = apply_presets(TrainingConfig(demo=True, epochs=2, model="MobileFaceNet", output="mine"))
    assert (mine.epochs, mine.model, mine.output, mine.batch_size) == (2, "MobileFaceNet", "mine", 32)
    assert apply_presets(apply_presets(TrainingConfig(demo=True))) == library  # idempotent
    assert apply_presets(TrainingConfig(data="faces")).model == TrainingConfig().model


def test_library_errors_name_fields_and_the_cli_names_its_options(tmp_path, capsys):
    from ghostface_keras.core.errors import GhostFaceError
    from ghostface_keras.train.recipes import TrainingConfig, validate

    with pytest.raises(GhostFaceError, match=r"^batch_size must be >= 1, got 0$") as raised:
        validate(TrainingConfig(data=str(tmp_path), batch_size=0))
    assert raised.value.fields == ("batch_size",)
    with pytest.raises(GhostFaceError, match=r"^data is required \(or use demo\)$"):
        validate(TrainingConfig())
    with pytest.raises(GhostFaceError, match=r"^data .*missing: no such file or directory$"):
        validate(TrainingConfig(data=str(tmp_path / "missing")))
    cli = _train_cli()
    assert cli.main(["--data", str(tmp_path), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ghostface-train: error: --batch-size must be >= 1, got 0"
    assert cli.main([]) == 2
    assert capsys.readouterr().err.strip() == "ghostface-train: error: --data is required (or use --demo)"


def test_sgd_is_the_official_recipe_coupled_l2_no_stride_2_bias_and_sgdw_decays_decoupled(tmp_path):
    from ghostface_keras.train.recipes import (TrainingConfig, apply_presets, embedding_model, official_stages,
                                                resolve_defaults)

    def config(**fields):
        fields = {"model": "GhostFaceNetV1-0.5-2", **fields}
        return resolve_defaults(apply_presets(TrainingConfig(data=str(tmp_path), epochs=3, **fields)))

    sgd = config(optimizer="sgd")
    model = embedding_model(sgd)
    kernels = [layer for layer in model.layers
               if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    regularized = [layer for layer in kernels if layer.kernel.regularizer is not None]
    assert regularized == kernels and len(kernels) > 40
    assert all(layer.kernel.regularizer.l2 == pytest.approx(2.5e-4) for layer in kernels)
    assert not any(getattr(layer, "bias", None) is not None and layer.bias.regularizer for layer in model.layers)
    assert model.get_layer("GDC_conv").bias is None  # stride 2: no GDC_conv bias, as the official recipe
    stages, _ = official_stages(sgd, steps_per_epoch=4)
    assert all(not stage["optimizer"].weight_decay for stage in stages if stage.get("optimizer"))
    assert embedding_model(config(optimizer="sgd", model="GhostFaceNetV1-1.3-1")).get_layer("GDC_conv").bias is not None
    assert embedding_model(config(optimizer="sgd", gdc_bias=True)).get_layer("GDC_conv").bias is not None

    sgdw = config(optimizer="sgdw")
    assert not embedding_model(sgdw).losses
    stages, _ = official_stages(sgdw, steps_per_epoch=4)
    assert stages[0]["optimizer"].weight_decay == pytest.approx(5e-4)
    assert isinstance(stages[0]["optimizer"], keras.optimizers.SGD)


def test_coupled_weight_decay_goes_through_momentum_like_the_official_l2():
    """One layer, two SGD(momentum 0.9) steps on loss L: the update is numpy's v = 0.9 v - lr (g + wd w)."""
    from ghostface_keras.train.optimizers import add_coupled_weight_decay

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 3)).astype("float32"), rng.normal(size=(8, 1)).astype("float32")
    w0 = rng.normal(size=(3, 1)).astype("float32")
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(inputs))
    model.layers[-1].kernel.assign(w0)
    assert add_coupled_weight_decay(model, 0.1) == 1
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    w, velocity = w0.astype("float64"), np.zeros((3, 1))
    for _ in range(2):
        gradient = 2 * x.T @ (x @ w - y) / len(x) + 0.1 * w
        velocity = 0.9 * velocity - 0.05 * gradient
        w = w + velocity
    np.testing.assert_allclose(model.layers[-1].kernel.numpy(), w, rtol=1e-5, atol=1e-6)
