"""The classification head of margin-based face training: cosine logits between embeddings and class centers.

`NormDense` L2-normalizes its input embeddings and each class's weight column, so its outputs are cosines
in [-1, 1]. The margin losses in `ghostface_keras.train.losses` turn those cosines into scaled, margined logits.
Margins are hyperparameters of the loss, never of the head.
"""

from __future__ import annotations

import keras
from keras import ops

# tf.nn.l2_normalize clamps the *squared* norm at this epsilon; the official head uses 1e-5.
_SQUARED_NORM_EPSILON = 1e-5


def l2_normalize(values, axis: int):
    """`values / max(||values||, sqrt(1e-5))` along `axis` (the official head's epsilon convention)."""
    squared = ops.sum(ops.square(values), axis=axis, keepdims=True)
    return values * ops.rsqrt(ops.maximum(squared, _SQUARED_NORM_EPSILON))


@keras.saving.register_keras_serializable(package="ghostface_keras")
class NormDense(keras.layers.Layer):
    """Cosine-similarity classifier: `cos(theta_c) = <x / ||x||, W_c / ||W_c||>` for every class c.

    Args:
        num_classes: number of identities C.
        sub_centers: k sub-centers per class (Sub-center ArcFace). The weight has C*k columns; column
            `c*k + j` is sub-center j of class c and the output for class c is the max over its k cosines.
        append_norm: also output `-||x||` (the raw embedding norm, negated so it never wins an argmax) as
            an extra last column: MagFace and AdaFace need it. The Trainer flips this attribute between
            stages (it changes no weight), then rebuilds its functional model.
        kernel_initializer: initializer of the (embedding_dim, C*k) weight; glorot_normal as officially.
        kernel_regularizer: optional regularizer acting on the raw (unnormalized) weight.

    The layer always computes in float32 (also under a `mixed_float16` policy), because margins are applied
    to cosines near +-1 where float16 has no resolution.

    Example:
        >>> import numpy as np
        >>> head = NormDense(10)
        >>> cosines = head(np.random.rand(4, 128).astype("float32"))
        >>> tuple(cosines.shape)
        (4, 10)
    """

    def __init__(
        self,
        num_classes: int,
        sub_centers: int = 1,
        append_norm: bool = False,
        kernel_initializer="glorot_normal",
        kernel_regularizer=None,
        **kwargs,
    ):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if int(num_classes) < 1 or int(sub_centers) < 1:
            raise ValueError(f"NormDense needs num_classes >= 1 and sub_centers >= 1, got {num_classes}, {sub_centers}")
        self.num_classes = int(num_classes)
        self.sub_centers = int(sub_centers)
        self.append_norm = bool(append_norm)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    @property
    def stored_classes(self) -> int:
        """Classes the kernel has columns for (a subclass may pad them: `train.sharded.ShardedNormDense`)."""
        return self.num_classes

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(input_shape[-1]), self.stored_classes * self.sub_centers),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            trainable=True,
        )

    def call(self, inputs, class_indices=None):
        """Cosines to every class, or only to the classes `class_indices` (K,) in that order (partial FC)."""
        inputs = ops.cast(inputs, "float32")
        kernel, num_classes = self.kernel, self.num_classes
        if class_indices is not None:
            class_indices = ops.cast(ops.reshape(class_indices, (-1,)), "int32")
            columns = ops.expand_dims(class_indices * self.sub_centers, 1) + ops.arange(self.sub_centers, dtype="int32")
            kernel = ops.take(kernel, ops.reshape(columns, (-1,)), axis=1)
            num_classes = ops.shape(class_indices)[0]
        cosines = ops.matmul(l2_normalize(inputs, axis=1), l2_normalize(kernel, axis=0))
        if self.sub_centers > 1:
            cosines = ops.reshape(cosines, (-1, num_classes, self.sub_centers))
            cosines = ops.max(cosines, axis=2)
        if self.append_norm:
            norms = ops.sqrt(ops.sum(ops.square(inputs), axis=1, keepdims=True))
            cosines = ops.concatenate([cosines, -norms], axis=1)
        return cosines

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + int(self.append_norm))

    def set_class_centers(self, centers) -> None:
        """Initialize every class column (and all its sub-centers) to `centers` (C x embedding_dim).

        Fine-tuning starts the head at the class-mean embeddings of a pretrained model, so the first
        gradients refine the backbone instead of dragging it toward random class directions.

        Example:
            >>> import numpy as np
            >>> head = NormDense(3); head.build((None, 4))
            >>> head.set_class_centers(np.eye(3, 4, dtype="float32"))
        """
        import numpy as np

        centers = np.asarray(centers, dtype="float32")
        expected = (self.num_classes, int(self.kernel.shape[0]))
        if centers.shape != expected:
            raise ValueError(f"class centers must have shape {expected}, got {centers.shape}")
        columns = np.repeat(centers, self.sub_centers, axis=0).T
        self.kernel.assign(columns)

    def get_config(self) -> dict:
        config = super().get_config()
        config.pop("dtype", None)
        config.update(
            num_classes=self.num_classes,
            sub_centers=self.sub_centers,
            append_norm=self.append_norm,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
        )
        return config
