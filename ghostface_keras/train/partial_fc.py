"""Partial FC: margin-loss training whose softmax sees only a sampled subset of the classes each step.

An, Zhu et al., "Killing Two Birds with One Stone: Efficient and Robust Training of Face Recognition CNNs
by Partial FC" (CVPR 2022). With millions of identities the `B x C` cosine logits of `NormDense` (and
their softmax and gradient) dominate each step. Partial FC keeps every class center but, per step,
computes the logits of every class present in the batch plus random other classes, `K = ceil(rate x C)`
in all, or the batch size when that is larger, so that every class of a batch fits (rate 0.1 keeps
accuracy on MS1M / WebFace in the paper; 0.3 is safer on noisy data). The sampled columns get the
gradient; like insightface's PartialFC v2, the optimizer still steps every column (momentum and weight
decay go on for the unsampled ones).

The train step is `ghostface_keras.train.step`'s (TensorFlow and JAX; `sam_rho > 0` adds SAM over the same
sampled classes). Under a `tf.distribute`
strategy every replica draws its own sample for its share of the batch; under `keras.distribution` (JAX,
several devices or processes) one sample covers the classes of the global batch. Either way the gradients
are all-reduced as usual (data parallel), the full C x D head replicated on every device; the class-sharded,
model-parallel head (each device holds C / N centers and samples among them) is `ghostface_keras.train.sharded`.

Example:
    >>> import numpy as np
    >>> from ghostface_keras.train.heads import NormDense
    >>> from ghostface_keras.train.losses import ArcFace
    >>> embedding = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model = PartialFCModel(embedding, NormDense(1000), sample_rate=0.1)
    >>> model.compile(optimizer="sgd", loss=ArcFace(scale=16))
    >>> _ = model.fit(np.ones((32, 8), "float32"), np.arange(32) % 1000, verbose=0)
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from ghostface_keras.train.heads import NormDense
from ghostface_keras.train.step import ComposedTrainStep, SampledHeadConfig


def sampled_class_count(num_classes: int, sample_rate: float) -> int:
    """K = ceil(sample_rate x num_classes), at least 1 and at most num_classes."""
    if not 0.0 < sample_rate <= 1.0:
        raise ValueError(f"partial-FC sample_rate must be in (0, 1], got {sample_rate}")
    return max(1, min(int(num_classes), math.ceil(sample_rate * num_classes)))


def sample_classes(labels, num_classes: int, num_sampled, seed=None):
    """The classes a partial-FC step computes, and the labels renumbered into them.

    Returns `(sampled, positions)`: `sampled` (K,) int32 holds every class of `labels` plus random
    other classes, in ascending order; `positions` (B,) int32 gives each label's index in `sampled`,
    so `sampled[positions] == labels`. `num_sampled` (K, an int or a scalar tensor) must be at least
    the number of distinct labels.

    Example:
        >>> import numpy as np
        >>> sampled, positions = sample_classes(np.array([7, 3, 7]), num_classes=10, num_sampled=4, seed=0)
        >>> np.asarray(sampled)[np.asarray(positions)].tolist()
        [7, 3, 7]
    """
    if isinstance(labels, np.ndarray) and isinstance(num_sampled, int) and len(np.unique(labels)) > num_sampled:
        raise ValueError(f"partial FC: the batch holds {len(np.unique(labels))} distinct classes, more than the "
                         f"{num_sampled} sampled")
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    present = ops.cast(ops.scatter(ops.expand_dims(labels, 1), ops.ones_like(labels), (num_classes,)) > 0, "float32")
    # present classes score above 1, the others uniformly in [0, 1): top-K keeps all present + random others
    scores = present * 2.0 + keras.random.uniform((num_classes,), seed=seed)
    sampled = ops.sort(ops.top_k(scores, num_sampled, sorted=False)[1])
    positions = ops.cast(ops.searchsorted(sampled, labels), "int32")
    return ops.cast(sampled, "int32"), positions


@keras.saving.register_keras_serializable(package="ghostface_keras")
class PartialFCModel(SampledHeadConfig, ComposedTrainStep, keras.Model):
    """`head(embedding_model(x))` whose `fit` computes the margin loss on sampled classes only.

    Args:
        embedding_model: image -> embedding model.
        head: the `NormDense` over all classes (its weights are shared, not copied).
        sample_rate: fraction of the classes in each step's softmax (positives always included; at
            least the batch size of classes, at most all).
        seed: seed of the class sampling.
        sam_rho: > 0 trains with sharpness-aware minimization as well: both passes of a step over the same
            sampled classes (`ghostface_keras.train.step`).

    Calling the model (predict / evaluate) gives the cosines to *all* classes; only `train_step`
    samples. The loss and the metrics of a step see the K sampled classes and the labels renumbered
    into them (a training accuracy over K classes reads higher than over all C). Label smoothing then
    spreads over K classes.
    """

    def __init__(self, embedding_model: keras.Model, head: NormDense, sample_rate: float = 0.1,
                 seed: int | None = None, sam_rho: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if sam_rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {sam_rho}")
        self.sam_rho = float(sam_rho)
        if not isinstance(head, NormDense):
            raise TypeError(f"PartialFCModel needs a NormDense head, got {type(head).__name__}")
        self.embedding_model, self.head = embedding_model, head
        self.sample_rate = float(sample_rate)
        self.num_sampled = sampled_class_count(head.num_classes, self.sample_rate)
        self.seed = seed
        self._sampling_seed = keras.random.SeedGenerator(seed)

    def state_variables(self) -> list:
        """The class sampler's state (seed and step counter): saved with a training state so a resumed
        run draws the same classes as an uninterrupted one."""
        return [self._sampling_seed.state]

    def call(self, inputs, training=None):
        return self.head(self.embedding_model(inputs, training=training))

    def step_classes(self, y):
        """Every class of the batch plus random others, `max(batch, K)` in all (a shape, hence static under
        XLA), and the labels renumbered into them."""
        batch = ops.shape(ops.reshape(y, (-1,)))[0]
        if isinstance(batch, int):
            num_sampled = min(max(batch, self.num_sampled), self.head.num_classes)
        else:
            num_sampled = ops.minimum(ops.maximum(batch, self.num_sampled), self.head.num_classes)
        return sample_classes(y, self.head.num_classes, num_sampled, seed=self._sampling_seed)

    def step_forward(self, x, classes):
        return self.head(self.embedding_model(x, training=True), class_indices=classes)

