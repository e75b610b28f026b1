"""The one training step of the library: plain, sharpness-aware (SAM), over sampled classes (partial FC), or
SAM over sampled classes, on the TensorFlow and JAX backends.

A model that trains with it (`ComposedTrainStep` first among its bases) says two things: which classes a
step's softmax covers (`step_classes(y)`: None and the labels for all of them; partial FC returns the sampled
class indices and the labels renumbered into them) and how it computes logits for those
(`step_forward(x, classes)`). The step then:
  1. draws the classes once per step (both SAM passes see the same ones);
  2. g = grad L(w)                          (first forward/backward pass; BatchNorm statistics update here)
  3. with `sam_rho > 0`: e = rho * g / ||g|| and g <- grad L(w + e) (second pass at the perturbed weights,
     its BatchNorm updates discarded);
  4. the optimizer applies g to w (not to w + e).
SAM (Foret et al. 2021) minimizes the loss at the worst nearby point of weight space. The perturbed weights
are never written to the variables: the second pass runs with `w + e` as values, so it works unchanged under
mixed precision (the loss-scaled gradients give the same direction g / ||g||). On TensorFlow under
`tf.distribute` each replica perturbs with its own gradient (the "m-sharpness" variant the SAM paper found
to work best); on JAX under `keras.distribution` the gradient, hence the perturbation, is the global batch's.
"""

from __future__ import annotations

import keras

from ghostface_keras.core.errors import GhostFaceError


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


class SampledHeadConfig:
    """`get_config` / `from_config` of a training model built as ``Model(embedding_model, head, sample_rate,
    seed, sam_rho)`` (partial FC, the class-sharded head): the two models are saved as nested Keras objects."""

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(embedding_model=keras.saving.serialize_keras_object(self.embedding_model),
                      head=keras.saving.serialize_keras_object(self.head), sample_rate=self.sample_rate,
                      seed=self.seed, sam_rho=self.sam_rho)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["embedding_model"] = keras.saving.deserialize_keras_object(config["embedding_model"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


class ComposedTrainStep:
    """Mixin (first base, before `keras.Model`) giving a model the composed `train_step` of this module.

    Subclasses may override `step_classes` and `step_forward`; `sam_rho` (0 = no SAM) is read each step.
    """

    sam_rho: float = 0.0

    def step_classes(self, y):
        """`(classes, labels)` of a step's softmax: None and `y` for every class."""
        return None, y

    def step_forward(self, x, classes):
        """The step's logits over `classes` (None: all of them)."""
        return self(x, training=True)

    def train_step(self, *args):
        return backend_train_step(self, args, self._tensorflow_train_step, self._jax_train_step)

    def _tensorflow_train_step(self, data):
        import tensorflow as tf

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        classes, labels = self.step_classes(y)

        def loss_of(y_pred):
            return self.compute_loss(x=x, y=labels, y_pred=y_pred, sample_weight=sample_weight, training=True)

        with tf.GradientTape() as tape:
            y_pred = self.step_forward(x, classes)
            loss = loss_of(y_pred)
            track_training_loss(self, loss, x)
            scaled = self.optimizer.scale_loss(loss)
        trainable = self.trainable_variables  # after the first call, which builds a lazily built head
        gradients = tape.gradient(scaled, trainable)
        if self.sam_rho > 0:
            # partial FC gathers columns of the head: its gradient arrives as IndexedSlices; the ascent needs
            # the whole gradient's norm and direction
            gradients = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in gradients]
            perturbed = sam_perturbation([tf.convert_to_tensor(v.value) for v in trainable], gradients, self.sam_rho)
            with tf.GradientTape() as tape:
                tape.watch(perturbed)
                # variables read as the perturbed values; BatchNorm updates of this pass stay in the scope
                with keras.StatelessScope(state_mapping=list(zip(trainable, perturbed))):
                    sharp_loss = self.optimizer.scale_loss(loss_of(self.step_forward(x, classes)))
            gradients = tape.gradient(sharp_loss, perturbed)
        self.optimizer.apply_gradients(zip(gradients, trainable))
        return self.compute_metrics(x, labels, y_pred, sample_weight=sample_weight)

    def _jax_train_step(self, state, data):
        import jax

        trainable, non_trainable, optimizer_values = state[:3]
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # the classes are drawn once, outside the differentiated passes; the sampler's seed state advances here
        with keras.StatelessScope(state_mapping=list(zip(self.non_trainable_variables, non_trainable))) as scope:
            classes, labels = self.step_classes(y)
        non_trainable = [old if new is None else new for old, new in
                         zip(non_trainable, (scope.get_current_value(v) for v in self.non_trainable_variables))]
        step = JaxStep(self)

        def forward():
            y_pred = self.step_forward(x, classes)
            loss = self.compute_loss(x=x, y=labels, y_pred=y_pred, sample_weight=sample_weight, training=True)
            return loss, y_pred, labels

        def scaled_loss(values):
            return step.loss_and_updates(forward, values, non_trainable, optimizer_values)

        (_, (loss, y_pred, _, updated)), gradients = jax.value_and_grad(scaled_loss, has_aux=True)(trainable)
        if self.sam_rho > 0:
            # second pass at the perturbed weights; its BatchNorm updates are discarded (the first pass made them)
            _, gradients = jax.value_and_grad(scaled_loss, has_aux=True)(
                sam_perturbation(trainable, gradients, self.sam_rho))
        return step.finish(gradients, state, loss, updated, x, labels, y_pred, sample_weight)
