"""Sharpness-aware minimization (SAM) as a Keras model whose `train_step` does SAM, plus optimizer helpers.

SAM (Foret et al. 2021) minimizes the loss at the worst nearby point of weight space:
  1. g = grad L(w)                          (first forward/backward pass)
  2. e = rho * g / ||g||                    (ascent step to the locally worst point)
  3. g_sam = grad L(w + e)                  (second pass, at the perturbed weights)
  4. the wrapped optimizer applies g_sam to w (not to w + e).
The perturbed weights are never written to the variables: the second pass runs with `w + e` as values,
so it works unchanged under mixed precision (the loss-scaled gradients give the same direction g / ||g||).
The step exists twice, chosen by the Keras backend: TensorFlow (`tf.GradientTape`; under `tf.distribute`
each replica perturbs with its own gradient, the "m-sharpness" variant the SAM paper found to work best)
and JAX (`jax.value_and_grad` on the stateless step; under `keras.distribution` the gradient, hence the
perturbation, is that of the global batch).
"""

from __future__ import annotations

import keras

from ghostface_keras.core.errors import GhostFaceError

# Variables that decoupled weight decay should leave alone: BatchNorm scale/shift, biases, PReLU slopes.
NO_DECAY_NAMES = ("gamma", "beta", "bias", "alpha", "moving_mean", "moving_variance")


def build_optimizer(name: str, learning_rate: float, weight_decay: float = 5e-4, momentum: float = 0.9):
    """A Keras 3 optimizer by name (`sgd`, `adamw`, `adam`) with decoupled weight decay on kernels only.

    Keras 3 applies `weight_decay` as `w <- w - lr * weight_decay * w` (decoupled and proportional to the
    current LR, like tensorflow-addons' SGDW with `wd_sgdw = lr_base * weight_decay`). BatchNorm parameters,
    biases and PReLU slopes are excluded, matching the official L2 regularizers' scope.

    Example:
        >>> optimizer = build_optimizer("sgd", 0.1, weight_decay=5e-4)
        >>> round(float(optimizer.learning_rate), 3)
        0.1
    """
    key = name.lower()
    decay = float(weight_decay) or None
    if key == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=momentum, weight_decay=decay)
    elif key == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=decay or 0.0)
    elif key == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or adam (sam wraps any of them)")
    if decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


def loss_metric(model: keras.Model) -> keras.metrics.Metric:
    """The `loss` mean that `fit` reports (found by name among the model's public metrics)."""
    for metric in model.metrics:
        if metric.name == "loss":
            return metric
    raise GhostFaceError(f"{model.name}: compile the model before training (no loss metric)")


def track_training_loss(model: keras.Model, loss, x) -> None:
    """What Keras' own TensorFlow `train_step` does with a step's loss: feed the `loss` metric `fit` reports.

    Under a `tf.distribute` strategy `compute_loss` divides the loss by the replica count (the replicas'
    gradients are summed); the metric gets the undivided loss.
    """
    import tensorflow as tf

    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    loss_metric(model).update_state(loss * replicas, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])


def backend_train_step(model: keras.Model, args: tuple, tensorflow_step, jax_step):
    """Dispatch a custom `train_step`: Keras calls `train_step(data)` on TensorFlow, `train_step(state, data)`
    (stateless) on JAX. Other backends are refused with one line."""
    name = keras.backend.backend()
    if name == "tensorflow":
        return tensorflow_step(*args)
    if name == "jax":
        return jax_step(*args)
    raise GhostFaceError(f"{type(model).__name__} trains on the TensorFlow and JAX backends, not {name}")


class JaxStep:
    """The stateless pieces of a custom JAX `train_step`, written with Keras' public stateless API.

    `loss_and_updates(forward, trainable, non_trainable, optimizer)` runs `forward()` (ordinary Keras calls
    on the model's variables, returning `(loss, y_pred, y_for_metrics)`) with the given variable values;
    it returns the (loss-scaled) loss and, as auxiliary output, the loss, predictions, metric labels and
    the updated non-trainable values (BatchNorm statistics, seed states): differentiable with `jax.grad`.
    `finish` applies the gradients and updates the metrics, as Keras' own JAX step does.
    """

    def __init__(self, model: keras.Model):
        self.model = model

    def loss_and_updates(self, forward, trainable, non_trainable, optimizer_values):
        model = self.model
        mapping = list(zip(model.trainable_variables, trainable))
        mapping += list(zip(model.non_trainable_variables, non_trainable))
        mapping += list(zip(model.optimizer.variables, optimizer_values))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss, y_pred, y_metric = forward()
            scaled = model.optimizer.scale_loss(loss)
        updated = [scope.get_current_value(v) for v in model.non_trainable_variables]
        updated = [old if new is None else new for old, new in zip(non_trainable, updated)]
        return scaled, (loss, y_pred, y_metric, updated)

    def finish(self, gradients, state, loss, non_trainable, x, y_metric, y_pred, sample_weight):
        model = self.model
        trainable, _, optimizer_values, metric_values = state
        trainable, optimizer_values = model.optimizer.stateless_apply(optimizer_values, gradients, trainable)
        with keras.StatelessScope(state_mapping=list(zip(model.metrics_variables, metric_values))) as scope:
            loss_metric(model).update_state(loss, sample_weight=keras.ops.shape(keras.tree.flatten(x)[0])[0])
            logs = model.compute_metrics(x, y_metric, y_pred, sample_weight)
        metric_values = [scope.get_current_value(v) for v in model.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_values, metric_values)


def sam_perturbation(values: list, gradients: list, rho: float) -> list:
    """`w + rho * g / ||g||` for every variable value (SAM's ascent step), in keras.ops.

    A non-finite gradient norm (an overflow under loss scaling) skips the ascent, so the optimizer's
    loss-scale logic sees the (also non-finite) second gradient and skips the step.
    """
    ops = keras.ops
    squared = [ops.sum(ops.square(ops.cast(g, "float32"))) for g in gradients if g is not None]
    norm = ops.sqrt(sum(squared[1:], squared[0]))
    factor = ops.where(ops.isfinite(norm), rho / (norm + 1e-12), 0.0)
    return [value if gradient is None else value + ops.cast(factor * ops.cast(gradient, "float32"), value.dtype)
            for value, gradient in zip(values, gradients)]


@keras.saving.register_keras_serializable(package="ghostface_keras")
class SAMModel(keras.Model):
    """A functional Keras model trained with sharpness-aware minimization by `fit`.

    Build it like a functional model, `SAMModel(inputs, outputs, rho=0.05)`, or wrap an existing functional
    model's graph with `SAMModel.wrap(model, rho)` (the layers and weights are shared, not copied). Then
    `compile` with any optimizer and loss and call `fit`. rho = 0.05 is the SAM paper's default; the
    improved-MobileFaceNet paper uses 0.02. Each step costs two forward/backward passes.

    Example:
        >>> inputs = keras.Input((4,))
        >>> model = SAMModel(inputs, keras.layers.Dense(2)(inputs), rho=0.05)
        >>> model.compile(optimizer="sgd", loss="mse")
        >>> import numpy as np
        >>> _ = model.fit(np.ones((8, 4)), np.zeros((8, 2)), verbose=0)
    """

    def __init__(self, *args, rho: float = 0.05, **kwargs):
        super().__init__(*args, **kwargs)
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        self.rho = float(rho)

    @classmethod
    def wrap(cls, model: keras.Model, rho: float = 0.05) -> "SAMModel":
        """A SAMModel over the same layers and weights as the functional `model`."""
        return cls(inputs=model.inputs, outputs=model.outputs, rho=rho, name=model.name)

    def train_step(self, *args):
        return backend_train_step(self, args, self._tensorflow_train_step, self._jax_train_step)

    def _tensorflow_train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        trainable = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            track_training_loss(self, loss, x)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, trainable)

        perturbed = sam_perturbation([tf.convert_to_tensor(v.value) for v in trainable], gradients, self.rho)
        non_trainable = [tf.convert_to_tensor(v.value) for v in self.non_trainable_variables]
        with tf.GradientTape() as tape:
            tape.watch(perturbed)
            # The BatchNorm statistics returned by the second pass are discarded: the first pass already
            # updated them once for this batch.
            y_sharp, _ = self.stateless_call(perturbed, non_trainable, x, training=True)
            sharp_loss = self.compute_loss(x=x, y=y, y_pred=y_sharp, sample_weight=sample_weight, training=True)
            sharp_loss = self.optimizer.scale_loss(sharp_loss)
        sharp_gradients = tape.gradient(sharp_loss, perturbed)
        self.optimizer.apply_gradients(zip(sharp_gradients, trainable))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values = state[:3]
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        step = JaxStep(self)

        def forward():
            y_pred = self(x, training=True)
            return self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True), y_pred, y

        def scaled_loss(values):
            return step.loss_and_updates(forward, values, non_trainable, optimizer_values)

        (_, (loss, y_pred, _, updated)), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(trainable)
        # Second pass at the perturbed weights; its BatchNorm updates are discarded (the first pass made them).
        _, sharp_gradients = jax.value_and_grad(scaled_loss, has_aux=True)(
            sam_perturbation(trainable, gradients, self.rho))
        return step.finish(sharp_gradients, state, loss, updated, x, y, y_pred, sample_weight)

    def get_config(self) -> dict:
        config = super().get_config()
        config["rho"] = self.rho
        return config
