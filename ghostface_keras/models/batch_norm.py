"""Batch normalization whose training step is one fused kernel on the TensorFlow backend.

Keras 3 writes `BatchNormalization` from primitive ops on every backend (moments, then
`(x - mean) * rsqrt(var + eps) * gamma + beta`): a TensorFlow training step of GhostFaceNetV1-1.3-2 then holds
~3,300 more graph nodes than with Keras 2's fused `FusedBatchNormV3` kernel, which TensorFlow traces and
optimizes again at every stage's first step, and each step makes several passes over every activation instead
of one. This subclass calls the fused kernel (`core.tensorflow_kernels`) for a training-mode call on
TensorFlow, and the parent everywhere else (inference, other backends, masks, renorm, synchronized
statistics), with the parent's arithmetic: same weights, same moving-statistics update (the biased batch
variance, as Keras 3), outputs and gradients equal to float32 rounding (tested against the parent and numpy).
Its class name stays `BatchNormalization` because weight conversion and the int8 export read layer kinds
from class names, and to them it is the same layer.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="ghostface_keras")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` with a fused kernel for training-mode calls on TensorFlow.

    Example:
        >>> import numpy as np
        >>> layer = BatchNormalization(momentum=0.9, epsilon=1e-5)
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 5)).astype("float32")
        >>> y = keras.ops.convert_to_numpy(layer(x, training=True))
        >>> bool(np.allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)), bool(np.allclose(y.std(axis=(0, 1, 2)), 1, atol=1e-3))
        (True, True)
        >>> bool(np.allclose(keras.ops.convert_to_numpy(layer.moving_mean), 0.1 * x.mean(axis=(0, 1, 2)), atol=1e-5))
        True
    """

    def _fused_kernels(self, inputs, training, mask):
        """The kernels module when this call can use them, else None."""
        rank = len(inputs.shape)
        if not (training and self.trainable and mask is None and rank in (2, 4) and self.axis in (-1, rank - 1)
                and not getattr(self, "renorm", False) and not getattr(self, "synchronized", False)
                and keras.backend.backend() == "tensorflow"):
            return None
        from ghostface_keras.core import tensorflow_kernels

        if self.epsilon < tensorflow_kernels.CUDNN_MIN_EPSILON and tensorflow_kernels.gpus_visible():
            return None
        return tensorflow_kernels

    def call(self, inputs, training=None, mask=None):
        kernels = self._fused_kernels(inputs, training, mask)
        if kernels is None:
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = kernels.batch_norm_training(
            inputs, self.gamma if self.scale else None, self.beta if self.center else None, self.epsilon)
        for statistic, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
            statistic.assign(keras.ops.cast(statistic, "float32") * self.momentum + value * (1.0 - self.momentum))
        return keras.ops.cast(outputs, self.compute_dtype)
