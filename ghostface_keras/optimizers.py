"""Sharpness-aware minimization (SAM) as a Keras model whose `train_step` does SAM, plus optimizer helpers.

SAM (Foret et al. 2021) minimizes the loss at the worst nearby point of weight space:
  1. g = grad L(w)                          (first forward/backward pass)
  2. e = rho * g / ||g||                    (ascent step to the locally worst point)
  3. g_sam = grad L(w + e)                  (second pass, at the perturbed weights)
  4. the wrapped optimizer applies g_sam to w (not to w + e).
The perturbed weights are never written to the variables: the second pass is a `stateless_call` with
`w + e` as values, so it works unchanged under mixed precision (the loss-scaled gradients give the same
direction g / ||g||) and under `tf.distribute` (each replica perturbs with its own gradient, the
"m-sharpness" variant the SAM paper found to work best; the final gradients are all-reduced as usual).
"""

from __future__ import annotations

import keras
import tensorflow as tf

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


def track_training_loss(model: keras.Model, loss, x) -> None:
    """What Keras' own `train_step` does with the step's loss: feed the `loss` metric that `fit` reports
    (undoing the division by the replica count). For models with a custom `train_step`."""
    model._loss_tracker.update_state(
        keras.src.losses.loss.unscale_loss_for_distribution(loss),
        sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
    )


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

    def _perturbed_values(self, gradients):
        squared = [tf.reduce_sum(tf.square(tf.cast(g, "float32"))) for g in gradients if g is not None]
        norm = tf.sqrt(tf.add_n(squared))
        # Under loss scaling a gradient may overflow; then skip the ascent and let the optimizer's scale
        # logic handle the (also non-finite) second gradient.
        factor = tf.where(tf.math.is_finite(norm), self.rho / (norm + 1e-12), 0.0)
        perturbed = []
        for variable, gradient in zip(self.trainable_variables, gradients):
            value = tf.convert_to_tensor(variable.value)
            if gradient is not None:
                value = value + tf.cast(factor * tf.cast(gradient, "float32"), value.dtype)
            perturbed.append(value)
        return perturbed

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        trainable = self.trainable_variables
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            track_training_loss(self, loss, x)
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, trainable)

        perturbed = self._perturbed_values(gradients)
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

    def get_config(self) -> dict:
        config = super().get_config()
        config["rho"] = self.rho
        return config
