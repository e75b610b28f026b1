"""Optimizers by name, and sharpness-aware minimization (SAM) for any functional Keras model (`SAMModel`).

SAM's step itself (two passes, the ascent to `w + rho * g / ||g||`) is `ghostface_keras.train.step`, the one
training step that SAM and partial FC share.
"""

from __future__ import annotations

import keras

from ghostface_keras.train.step import ComposedTrainStep

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
        optimizer = FusedSGD(learning_rate, momentum=momentum, weight_decay=decay)
    elif key == "adamw":
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=decay or 0.0)
    elif key == "adam":
        optimizer = keras.optimizers.Adam(learning_rate, weight_decay=decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; choose sgd, adamw or adam (sam wraps any of them)")
    if decay:
        optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
    return optimizer


@keras.saving.register_keras_serializable(package="ghostface_keras")
class FusedSGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one TensorFlow kernel per variable on that backend.

    Keras 3's SGD writes `m <- momentum * m - lr * g; w <- w + m` as ~11 graph ops per variable (casts,
    reads, products, assignments inside a distribution update): ~3,500 nodes for GhostFaceNetV1's 316
    variables, which TensorFlow traces and optimizes again at every stage's first step. Keras 2 called
    `ResourceApplyKerasMomentum`, which computes the same two lines (Nesterov too); so does this class on
    TensorFlow for dense float gradients, and the parent everywhere else (other backends, sparse gradients).

    Example:
        >>> variable = keras.Variable([1.0, 2.0])
        >>> optimizer = FusedSGD(0.1, momentum=0.9)
        >>> optimizer.apply([keras.ops.convert_to_tensor([1.0, 1.0])], [variable])
        >>> optimizer.apply([keras.ops.convert_to_tensor([1.0, 1.0])], [variable])
        >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(variable)]  # m = -0.1, then -0.19
        [0.71, 1.71]
    """

    def update_step(self, gradient, variable, learning_rate):
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        from ghostface_keras.core.tensorflow_kernels import keras_momentum_update

        if isinstance(gradient, tf.IndexedSlices) or not hasattr(variable, "handle"):
            return super().update_step(gradient, variable, learning_rate)
        accumulator = self.momentums[self._get_variable_index(variable)]
        keras_momentum_update(variable, getattr(accumulator, "value", accumulator), learning_rate, gradient,
                              self.momentum, self.nesterov)


# The layers whose kernels the official recipe regularizes (`add_l2_regularizer_2_model`): conv, depthwise and
# dense kernels; not biases, BatchNorm or PReLU.
_KERNELS = {"Conv2D": ("kernel",), "DepthwiseConv2D": ("kernel",), "Dense": ("kernel",),
            "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel")}


def _all_layers(model: keras.Model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def add_coupled_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Coupled weight decay as the official recipe has it: `L2(weight_decay / 2)` added to the loss for the
    kernel of every conv, depthwise and dense layer (nested models too), so SGD's gradient gets
    `weight_decay * w` and momentum carries it. Returns how many kernels it regularizes.

    Keras' L2(l) adds l * sum(w^2), whose gradient is 2 l w: hence the half. Unlike decoupled decay
    (`build_optimizer(weight_decay=)`, SGDW-style), this decay goes through momentum, so at momentum 0.9 it is
    about 10 times stronger at steady state.

    Example:
        >>> inputs = keras.Input((8, 8, 3))
        >>> model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="conv")(inputs))
        >>> add_coupled_weight_decay(model, 5e-4), len(model.losses)
        (1, 1)
    """
    classes = {getattr(keras.layers, name): attributes for name, attributes in _KERNELS.items()}
    count = 0
    for layer in _all_layers(model):
        attributes = classes.get(type(layer), ())
        for attribute in attributes:
            variable = getattr(layer, attribute, None)
            if variable is not None and layer.trainable:
                variable.regularizer = keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None
                count += 1
    return count


@keras.saving.register_keras_serializable(package="ghostface_keras")
class SAMModel(ComposedTrainStep, keras.Model):
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
    def wrap(cls, model: keras.Model, rho: float = 0.05) -> SAMModel:
        """A SAMModel over the same layers and weights as the functional `model`."""
        return cls(inputs=model.inputs, outputs=model.outputs, rho=rho, name=model.name)

    @property
    def sam_rho(self) -> float:  # what the shared step reads
        return self.rho

    def get_config(self) -> dict:
        config = super().get_config()
        config["rho"] = self.rho
        return config
