"""The fused TensorFlow training kernels (issue #28): `models.batch_norm.BatchNormalization` and
`train.optimizers.FusedSGD` compute what Keras 3's own layer and optimizer compute, checked against those and
against numpy, and the training graph really holds the fused ops."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from ghostface_keras.models.batch_norm import BatchNormalization
from ghostface_keras.train.optimizers import FusedSGD, build_optimizer


def _pair(scale=True, center=True, momentum=0.9, epsilon=1e-5):
    """Our layer and Keras' own, built alike and given the same random weights and statistics."""
    rng = np.random.default_rng(1)
    ours = BatchNormalization(momentum=momentum, epsilon=epsilon, scale=scale, center=center)
    theirs = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon, scale=scale, center=center)
    return ours, theirs, rng


@pytest.mark.parametrize("shape", [(6, 5, 4, 7), (9, 12)])
@pytest.mark.parametrize("scale,center", [(True, True), (False, True), (True, False)])
def test_training_call_equals_keras_and_numpy_outputs_statistics_and_gradients(shape, scale, center):
    ours, theirs, rng = _pair(scale, center)
    x = rng.normal(2.0, 3.0, shape).astype("float32")
    for layer in (ours, theirs):
        layer.build(shape)
    weights = [rng.normal(1.0, 0.3, w.shape).astype("float32") for w in ours.get_weights()]
    weights[-1] = np.abs(weights[-1]) + 0.5  # moving variance
    for layer in (ours, theirs):
        layer.set_weights(weights)

    rng_out = np.random.default_rng(2).normal(size=shape).astype("float32")  # the loss's weights per output

    def run(layer):
        tensor = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(tensor)
            outputs = layer(tensor, training=True)
            loss = tf.reduce_sum(outputs * tf.constant(rng_out))
        grads = tape.gradient(loss, [tensor] + layer.trainable_variables)
        return outputs.numpy(), [g.numpy() for g in grads], [w.copy() for w in layer.get_weights()]

    ours_out, ours_grads, ours_after = run(ours)
    theirs_out, theirs_grads, theirs_after = run(theirs)

    axes = tuple(range(len(shape) - 1))
    mean, variance = x.astype("float64").mean(axes), x.astype("float64").var(axes)  # biased, as Keras 3
    gamma = weights[0] if scale else 1.0
    beta = weights[int(scale)] if center else 0.0
    expected = (x - mean) / np.sqrt(variance + 1e-5) * gamma + beta
    np.testing.assert_allclose(ours_out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(ours_out, theirs_out, rtol=1e-5, atol=1e-5)
    moving_mean, moving_variance = weights[-2], weights[-1]
    np.testing.assert_allclose(ours_after[-2], 0.9 * moving_mean + 0.1 * mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours_after[-1], 0.9 * moving_variance + 0.1 * variance, rtol=1e-5, atol=1e-6)
    for mine, keras_own in zip(ours_grads, theirs_grads):
        np.testing.assert_allclose(mine, keras_own, rtol=1e-4, atol=1e-4 * np.abs(keras_own).max())


def test_inference_and_other_calls_are_keras_own_and_the_layer_saves_and_loads(tmp_path):
    ours, theirs, rng = _pair()
    x = rng.normal(size=(4, 3, 3, 5)).astype("float32")
    ours(x, training=True)
    theirs.build(x.shape)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(ours(x, training=False)),
                                  keras.ops.convert_to_numpy(theirs(x, training=False)))
    inputs = keras.Input((3, 3, 5))
    model = keras.Model(inputs, BatchNormalization(name="bn")(inputs))
    model.layers[-1].set_weights(ours.get_weights())
    model.save(tmp_path / "bn.keras")
    loaded = keras.saving.load_model(tmp_path / "bn.keras")
    assert type(loaded.get_layer("bn")) is BatchNormalization and type(loaded.get_layer("bn")).__name__ == "BatchNormalization"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_the_training_graph_holds_the_fused_kernels_not_keras_primitive_ops():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(BatchNormalization()(x))))
    optimizer = build_optimizer("sgd", 0.1, weight_decay=0.0)
    assert isinstance(optimizer, FusedSGD)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, model(images, training=True),
                                                                              from_logits=True))
        optimizer.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return loss

    graph = step.get_concrete_function(tf.zeros((2, 8, 8, 3)), tf.zeros((2,), tf.int32)).graph
    kinds = {op.type for op in graph.get_operations()}
    assert {"FusedBatchNormV3", "FusedBatchNormGradV3", "ResourceApplyKerasMomentum"} <= kinds
    assert "SquaredDifference" not in kinds  # Keras' moments


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_follows_keras_sgd_and_the_closed_form_step_by_step(nesterov):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4)).astype("float32")
    ours, theirs = keras.Variable(start.copy()), keras.Variable(start.copy())
    fused = FusedSGD(0.05, momentum=0.9, nesterov=nesterov)
    plain = keras.optimizers.SGD(0.05, momentum=0.9, nesterov=nesterov)
    weights, velocity = start.astype("float64"), np.zeros_like(start, dtype="float64")
    for _ in range(4):
        gradient = rng.normal(size=start.shape).astype("float32")
        fused.apply([tf.constant(gradient)], [ours])
        plain.apply([tf.constant(gradient)], [theirs])
        velocity = 0.9 * velocity - 0.05 * gradient
        weights = weights + (0.9 * velocity - 0.05 * gradient if nesterov else velocity)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), rtol=1e-6,
                               atol=1e-7)


def test_fused_sgd_takes_sparse_gradients_through_keras_own_update():
    table = keras.Variable(np.ones((5, 2), "float32"))
    optimizer = FusedSGD(0.5, momentum=0.9)
    optimizer.apply([tf.IndexedSlices(tf.constant([[1.0, 2.0]]), tf.constant([3]), tf.constant([5, 2]))], [table])
    expected = np.ones((5, 2), "float32")
    expected[3] -= 0.5 * np.array([1.0, 2.0])
    np.testing.assert_allclose(keras.ops.convert_to_numpy(table), expected)
