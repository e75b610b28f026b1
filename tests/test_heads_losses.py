"""NormDense and the margin losses against independent numpy computations."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.losses import AdaFace, ArcFace, CosFace, MagFace, get_margin_loss

RNG = np.random.default_rng(7)


def _numpy_cross_entropy(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return -(targets * log_softmax).sum(axis=1)


def _onehot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[labels]


def _cosines(batch: int = 6, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    return RNG.uniform(-0.95, 0.95, size=(batch, classes)).astype("float32"), RNG.integers(0, classes, batch)


# ------------------------------------------------------------------------------------------- NormDense
def test_norm_dense_outputs_cosines_of_inputs_and_class_columns():
    head = NormDense(4)
    x = RNG.normal(size=(3, 6)).astype("float32")
    out = np.asarray(head(x))
    w = head.kernel.numpy()
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_norm_dense_sub_centers_take_the_max_over_each_class_block():
    head = NormDense(3, sub_centers=2)
    x = RNG.normal(size=(5, 4)).astype("float32")
    out = np.asarray(head(x))
    w = head.kernel.numpy()
    all_cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    expected = np.stack([all_cos[:, 2 * c:2 * c + 2].max(axis=1) for c in range(3)], axis=1)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_norm_dense_appends_negative_embedding_norm():
    head = NormDense(2, append_norm=True)
    x = RNG.normal(size=(3, 4)).astype("float32") * 7
    out = np.asarray(head(x))
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out[:, -1], -np.linalg.norm(x, axis=1), rtol=1e-5)


def test_norm_dense_is_float32_under_mixed_precision_and_serializable(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((8,))
        hidden = keras.layers.Dense(8)(inputs)
        outputs = NormDense(3, sub_centers=2, name="head")(hidden)
        model = keras.Model(inputs, outputs)
        assert model.output.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x = RNG.normal(size=(2, 8)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=2e-3)
    assert loaded.get_layer("head").sub_centers == 2


def test_set_class_centers_gives_cosine_one_for_the_center_itself():
    head = NormDense(3, sub_centers=2)
    head.build((None, 4))
    centers = RNG.normal(size=(3, 4)).astype("float32")
    head.set_class_centers(centers)
    np.testing.assert_allclose(np.diag(np.asarray(head(centers))), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------------------- losses
def _numpy_arcface(cos, labels, s, m1, m2, m3):
    onehot = _onehot(labels, cos.shape[1])
    clipped = np.clip(cos.astype(np.float64), -1 + 1e-7, 1 - 1e-7)
    target = clipped[np.arange(len(labels)), labels]
    theta = np.arccos(target)
    phi = np.cos(m1 * theta + m2) - m3
    threshold = math.cos((math.pi - m2) / m1)
    phi = np.where(target > threshold, phi, -2 * (1 + m3) - phi)
    logits = clipped.copy()
    logits[np.arange(len(labels)), labels] = phi
    return _numpy_cross_entropy(s * logits, onehot)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 0.3, 0.2), (1.2, 0.3, 0.1)])
def test_arcface_matches_numpy(m1, m2, m3):
    cos, labels = _cosines()
    cos[0, labels[0]] = -0.99  # beyond the threshold: the monotonic continuation
    loss = ArcFace(scale=32.0, margin=m2, multiplicative_margin=m1, cosine_margin=m3, reduction=None)
    np.testing.assert_allclose(np.asarray(loss(labels, cos)), _numpy_arcface(cos, labels, 32.0, m1, m2, m3),
                               rtol=1e-4, atol=1e-4)


def test_arcface_target_logit_is_continuous_and_monotonic_through_the_threshold():
    loss = ArcFace(margin=0.5)
    cos = np.linspace(-1, 1, 2001).astype("float32")
    target = np.asarray(loss.target_logit(keras.ops.convert_to_tensor(np.clip(cos, -1 + 1e-7, 1 - 1e-7)), None))
    assert np.all(np.diff(target) >= -1e-6)
    near_threshold = np.abs(cos - math.cos(math.pi - 0.5)) < 2e-3
    np.testing.assert_allclose(target[near_threshold], -1.0, atol=0.01)  # both pieces meet at -1 - m3


def test_cosface_matches_numpy():
    cos, labels = _cosines()
    logits = cos.astype(np.float64).copy()
    logits[np.arange(len(labels)), labels] -= 0.35
    expected = _numpy_cross_entropy(30 * logits, _onehot(labels, cos.shape[1]))
    got = CosFace(scale=30.0, margin=0.35, reduction=None)(labels, cos)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_label_smoothing_matches_numpy():
    cos, labels = _cosines()
    smoothing, classes = 0.1, cos.shape[1]
    logits = cos.astype(np.float64).copy()
    logits[np.arange(len(labels)), labels] -= 0.35
    targets = _onehot(labels, classes) * (1 - smoothing) + smoothing / classes
    expected = _numpy_cross_entropy(64 * logits, targets)
    got = CosFace(label_smoothing=smoothing, reduction=None)(labels, cos)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_magface_matches_numpy():
    cos, labels = _cosines()
    norms = np.array([5.0, 10.0, 30.0, 60.0, 110.0, 150.0], dtype="float32")
    y_pred = np.concatenate([cos, -norms[:, None]], axis=1)
    a = np.clip(norms.astype(np.float64), 10, 110)
    margin = (0.8 - 0.45) / 100 * (a - 10) + 0.45
    target = np.clip(cos.astype(np.float64), -1 + 1e-7, 1 - 1e-7)[np.arange(6), labels]
    phi = np.minimum(np.cos(np.arccos(target) + margin), target)
    logits = np.clip(cos.astype(np.float64), -1 + 1e-7, 1 - 1e-7)
    logits[np.arange(6), labels] = phi
    expected = _numpy_cross_entropy(64 * logits, _onehot(labels, 5)) + 35 * (a / 110**2 + 1 / a)
    got = MagFace(reduction=None)(labels, y_pred)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_adaface_matches_numpy_and_updates_its_norm_statistics():
    cos, labels = _cosines()
    norms = np.array([5.0, 10.0, 20.0, 25.0, 40.0, 90.0], dtype="float32")
    y_pred = np.concatenate([cos, -norms[:, None]], axis=1)
    mean = 0.01 * norms.mean() + 0.99 * 20
    std = 0.01 * norms.std(ddof=1) + 0.99 * 100
    z = np.clip(0.333 * (norms - mean) / (std + 1e-3), -1, 1)
    clipped = np.clip(cos.astype(np.float64), -1 + 1e-7, 1 - 1e-7)
    theta = np.arccos(clipped[np.arange(6), labels])
    target = np.cos(np.clip(theta - 0.4 * z, 1e-3, np.pi - 1e-3)) - (0.4 + 0.4 * z)
    logits = clipped.copy()
    logits[np.arange(6), labels] = target
    expected = _numpy_cross_entropy(64 * logits, _onehot(labels, 5))
    loss = AdaFace(reduction=None)
    np.testing.assert_allclose(np.asarray(loss(labels, y_pred)), expected, rtol=1e-4)
    np.testing.assert_allclose(float(loss.running_mean.numpy()), mean, rtol=1e-5)
    np.testing.assert_allclose(float(loss.running_std.numpy()), std, rtol=1e-5)


@pytest.mark.parametrize("name", ["arcface", "cosface", "magface", "adaface"])
def test_losses_have_finite_values_and_gradients_at_cosine_plus_minus_one(name):
    import tensorflow as tf

    loss = get_margin_loss(name)
    cos = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [1.0000001, -1.0000001, 0.5]], dtype="float32")
    if loss.needs_norm:
        cos = np.concatenate([cos, -np.full((3, 1), 30.0, "float32")], axis=1)
    variable = tf.Variable(cos)
    with tf.GradientTape() as tape:
        value = loss(np.array([0, 0, 1]), variable)
    gradient = tape.gradient(value, variable)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(gradient.numpy()))


def test_unknown_loss_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss"):
        get_margin_loss("triplet")


def test_losses_round_trip_through_config():
    for loss in (ArcFace(scale=32, margin=0.4), CosFace(margin=0.3), MagFace(min_margin=0.4), AdaFace(margin=0.3)):
        clone = loss.__class__.from_config(loss.get_config())
        assert clone.get_config() == loss.get_config()
