"""Class centers sharded across devices: the model-parallel margin head (arcface_torch's layout), on JAX.

With millions of identities the D x C class centers dominate a data-parallel run: every device holds all of
them, their optimizer slots, and all-reduces their dense gradient every step (2 M classes x 512: 4 GB each).
Here each of the N devices of the run holds C / N classes. `core.distribution.setup_cluster(shard_classes=True)`
builds a `keras.distribution.ModelParallel` over a `DeviceMesh` of axes ("batch", "model") = (1, N): the batch
is split over the N devices of the "model" axis (every device is a data-parallel replica of the backbone),
and a `LayoutMap` puts the class axis of the head's kernel (`norm_dense/kernel`, and so its optimizer slots)
on the "model" axis. A step of `ShardedFaceModel` (the one train step of `ghostface_keras.train.step`) then:

1. all-gathers the embeddings (B x D: small) so that every device sees the global batch;
2. computes the cosines of the global batch to its own classes only (B x C/N, in `jax.shard_map`: the
   layout alone would let XLA gather the kernel for the matmul);
3. applies the margin loss without gathering the logits: the target class's cosine comes from the shard that
   owns it (an all-reduce of B values), the loss's own `target_logit` puts the margin on it (ArcFace,
   CosFace, combined margins, MagFace, AdaFace: the very methods the replicated head uses), and the softmax
   cross-entropy is distributed: an all-reduce of the row max and of the row exp-sum (B values each);
4. differentiates that: the kernel's gradient stays on its shard (no all-reduce of centers), the embeddings'
   gradient is reduce-scattered back to the rows' devices, the backbone's gradients are all-reduced as usual.

Partial FC on the sharded head (`sample_rate < 1`): each shard samples among its own classes, the positives
of the global batch that it owns plus random others (arcface_torch's `partial_fc_v2`), `K_local =
min(C/N, max(ceil(rate x C/N), B))` on every shard (a static shape, big enough for every positive a shard can
own); both SAM passes see the same classes.

C need not divide by N: the kernel is padded to N x ceil(C / N) columns at the end; padded columns are zero,
masked out of every softmax and never sampled, so the loss, gradients and updates are the replicated
head's. The training state holds the padded kernel (resume with the same number of devices);
`dense_kernel()` / `save_class_centers` give the plain D x (C x sub_centers) kernel of a `NormDense`.

Example (KERAS_BACKEND=jax; on one device the same code runs with the collectives reduced to identities;
`train.py --shard-classes` sets up the mesh of several):
    >>> import numpy as np
    >>> from ghostface_keras.train.losses import ArcFace
    >>> embedding = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> model = ShardedFaceModel(embedding, ShardedNormDense(10, num_shards=1))       # doctest: +SKIP
    >>> model.compile(optimizer="sgd", loss=ArcFace(scale=16), metrics=[prediction_accuracy],
    ...               jit_compile=True)                                               # doctest: +SKIP
    >>> _ = model.fit(np.ones((8, 8), "float32"), np.arange(8) % 10, verbose=0)       # doctest: +SKIP
    >>> model.head.dense_kernel().shape                                               # doctest: +SKIP
    (4, 10)
"""

from __future__ import annotations

import functools
import os

import keras
import numpy as np
from keras import ops

from ghostface_keras.core.distribution import CLASS_AXIS, to_numpy
from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.train.heads import NormDense, l2_normalize
from ghostface_keras.train.partial_fc import sampled_class_count
from ghostface_keras.train.step import ComposedTrainStep, SampledHeadConfig

# the loss clips cosines as the replicated margin losses do (`losses._COSINE_EPSILON`)
_COSINE_EPSILON = 1e-7


def class_shard_size(num_classes: int, num_shards: int) -> int:
    """Classes per shard: ceil(C / N) (the last shards hold the padding).

    Example:
        >>> class_shard_size(10, 4), class_shard_size(8, 4)
        (3, 2)
    """
    if num_shards < 1 or num_classes < num_shards:
        raise GhostFaceError(f"shard_classes: {num_classes} classes cannot be split over {num_shards} devices "
                             "(every device must own at least one class)", fields=("shard_classes",))
    return -(-int(num_classes) // int(num_shards))


def class_mesh():
    """The `keras.distribution.DeviceMesh` whose "model" axis the class centers are sharded on, or None."""
    distribution = keras.distribution.distribution()
    if distribution is None or CLASS_AXIS not in distribution.device_mesh.axis_names:
        return None
    return distribution.device_mesh


class _OneShard:
    """The collectives of a run without a class mesh: one shard holds every class."""

    @staticmethod
    def index():
        return 0

    gather = psum = pmax = pmin = vary = staticmethod(lambda value: value)


class _MeshShards:
    """The collectives over the "model" axis, inside `jax.shard_map`."""

    @staticmethod
    def index():
        import jax

        return jax.lax.axis_index(CLASS_AXIS)

    @staticmethod
    def gather(value):
        import jax

        return jax.lax.all_gather(value, CLASS_AXIS, axis=0, tiled=True)

    @staticmethod
    def vary(value):
        """A value equal on every shard, typed as differing per shard before it meets per-shard values: its
        gradient is then all-reduced at its own size (B), not at the size it is broadcast to (B x C/N)."""
        import jax

        return jax.lax.pcast(value, CLASS_AXIS, to="varying")

    @staticmethod
    def psum(value):
        import jax

        return jax.lax.psum(value, CLASS_AXIS)

    @staticmethod
    def pmax(value):
        import jax

        return jax.lax.pmax(value, CLASS_AXIS)

    @staticmethod
    def pmin(value):
        import jax

        return jax.lax.pmin(value, CLASS_AXIS)


def _per_shard(function, in_specs: tuple, out_specs, *args):
    """`function(shards, *local args)` on every shard of the class mesh (specs: tuples of axis names, None for
    a replicated dimension); with no mesh, `function(_OneShard, *args)`."""
    mesh = class_mesh()
    if mesh is None or mesh.shape[mesh.axis_names.index(CLASS_AXIS)] == 1:
        return function(_OneShard, *args)
    import jax
    from jax.sharding import PartitionSpec

    def spec(axes):
        return PartitionSpec(*axes)

    outs = tuple(spec(s) for s in out_specs) if isinstance(out_specs, list) else spec(out_specs)
    mapped = jax.shard_map(functools.partial(function, _MeshShards), mesh=mesh.backend_mesh,
                           in_specs=tuple(spec(s) for s in in_specs), out_specs=outs)
    return mapped(*args)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ShardedNormDense(NormDense):
    """`NormDense` whose class centers are split by class over `num_shards` devices (JAX, `ShardedFaceModel`).

    The kernel has `num_shards x ceil(C / num_shards) x sub_centers` columns: shard r holds classes
    `[r x ceil(C/N), (r+1) x ceil(C/N))` (sub-center j of class c in column `c x k + j`, as in `NormDense`); the
    columns past C x k are padding, kept at zero. Called directly (inference) it gives the cosines to all C
    classes like `NormDense`; training goes through `sharded_cosines`.

    Example:
        >>> import numpy as np
        >>> head = ShardedNormDense(10, num_shards=4); head.build((None, 3))
        >>> tuple(head.kernel.shape), head.shard_size       # 4 shards x 3 classes: 2 padding columns
        ((3, 12), 3)
        >>> tuple(head(np.ones((2, 3), "float32")).shape)
        (2, 10)
    """

    def __init__(self, num_classes: int, num_shards: int = 1, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.num_shards = int(num_shards)
        self.shard_size = class_shard_size(self.num_classes, self.num_shards)

    @property
    def padded_classes(self) -> int:
        return self.num_shards * self.shard_size

    @property
    def stored_classes(self) -> int:
        return self.padded_classes

    def build(self, input_shape):
        super().build(input_shape)
        if self.padded_classes > self.num_classes:
            # zero padding: no L2 term, no gradient, no decay; it stays zero and out of every softmax
            self.kernel.assign(self.kernel * self._real_columns())

    def _real_columns(self):
        return ops.cast(ops.arange(self.padded_classes * self.sub_centers) < self.num_classes * self.sub_centers,
                        self.kernel.dtype)

    def call(self, inputs, class_indices=None):
        """Cosines to every class (or to `class_indices`), as `NormDense` computes them (inference)."""
        inputs = ops.cast(inputs, "float32")
        kernel = self.kernel[:, : self.num_classes * self.sub_centers]
        num_classes = self.num_classes
        if class_indices is not None:
            class_indices = ops.cast(ops.reshape(class_indices, (-1,)), "int32")
            columns = ops.expand_dims(class_indices * self.sub_centers, 1) + ops.arange(self.sub_centers, dtype="int32")
            kernel = ops.take(kernel, ops.reshape(columns, (-1,)), axis=1)
            num_classes = ops.shape(class_indices)[0]
        cosines = ops.matmul(l2_normalize(inputs, axis=1), l2_normalize(kernel, axis=0))
        if self.sub_centers > 1:
            cosines = ops.max(ops.reshape(cosines, (-1, num_classes, self.sub_centers)), axis=2)
        if self.append_norm:
            cosines = ops.concatenate([cosines, -ops.sqrt(ops.sum(ops.square(inputs), axis=1, keepdims=True))], axis=1)
        return cosines

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes + int(self.append_norm))

    def sharded_cosines(self, embeddings, classes=None):
        """`sharded_cosines` of this head's kernel (a training step's forward pass)."""
        return sharded_cosines(embeddings, self.kernel.value, self.shard_size, self.sub_centers, classes)

    def set_class_centers(self, centers) -> None:
        centers = np.asarray(centers, dtype="float32")
        expected = (self.num_classes, int(self.kernel.shape[0]))
        if centers.shape != expected:
            raise ValueError(f"class centers must have shape {expected}, got {centers.shape}")
        self.assign_dense_kernel(np.repeat(centers, self.sub_centers, axis=0).T)

    def assign_dense_kernel(self, kernel) -> None:
        """Set the centers from a `NormDense` kernel (D, C x sub_centers), e.g. `dense_kernel()` of a run."""
        kernel = np.asarray(kernel, dtype="float32")
        expected = (int(self.kernel.shape[0]), self.num_classes * self.sub_centers)
        if kernel.shape != expected:
            raise ValueError(f"a dense kernel of shape {expected} is expected, got {kernel.shape}")
        padded = np.zeros(tuple(self.kernel.shape), "float32")
        padded[:, : expected[1]] = kernel
        self.kernel.assign(padded)

    def dense_kernel(self) -> np.ndarray:
        """The full centers as a `NormDense` kernel (D, C x sub_centers), padding dropped; gathered from every
        device and process (in a multi-process run every process must call it)."""
        return to_numpy(self.kernel)[:, : self.num_classes * self.sub_centers]

    def get_config(self) -> dict:
        config = super().get_config()
        config["num_shards"] = self.num_shards
        return config


def sharded_cosines(embeddings, kernel, shard_size: int, sub_centers: int = 1, classes=None):
    """`(cosines, norms, class_ids)` of a class-sharded head, without moving the kernel.

    `embeddings` (B, D) split by row over the devices, `kernel` (D, N x shard_size x sub_centers) split by
    column (a `ShardedNormDense` kernel). `cosines` (B, W) is split over the shards by column (W = the padded C,
    or N x K_local sampled columns), `norms` (B,) are the raw embedding norms, `class_ids` (W,) the class of
    every column (>= C: padding). `classes` are the sampled class ids of `sharded_sample_classes` (None: every
    class).

    Example:
        >>> import numpy as np
        >>> kernel = np.eye(3, 4, dtype="float32")               # 3-d centers of 4 classes, one shard
        >>> cosines, norms, ids = sharded_cosines(np.eye(2, 3, dtype="float32"), kernel, shard_size=4)
        >>> np.asarray(cosines).round(3).tolist(), np.asarray(ids).tolist()
        ([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], [0, 1, 2, 3])
    """
    embeddings = ops.cast(embeddings, "float32")
    norms = ops.sqrt(ops.sum(ops.square(embeddings), axis=1))

    def shard(shards, x, local_kernel, *sampled):
        x = shards.gather(x)
        first = shards.index() * shard_size
        if sampled:
            ids = sampled[0]
            columns = ops.reshape(ops.expand_dims((ids - first) * sub_centers, 1)
                                  + ops.arange(sub_centers, dtype="int32"), (-1,))
            local_kernel = ops.take(local_kernel, columns, axis=1)
        else:
            ids = first + ops.arange(shard_size, dtype="int32")
        cosines = ops.matmul(l2_normalize(x, axis=1), l2_normalize(local_kernel, axis=0))
        if sub_centers > 1:
            cosines = ops.max(ops.reshape(cosines, (ops.shape(x)[0], -1, sub_centers)), axis=2)
        return cosines, ids

    args = (embeddings, kernel) + (() if classes is None else (classes,))
    in_specs = ((CLASS_AXIS, None), (None, CLASS_AXIS)) + (() if classes is None else ((CLASS_AXIS,),))
    cosines, ids = _per_shard(shard, in_specs, [(None, CLASS_AXIS), (CLASS_AXIS,)], *args)
    return cosines, norms, ids


def save_class_centers(head: ShardedNormDense, path: str | os.PathLike) -> None:
    """Write the full centers, gathered from every device, to one `.npy` (a `NormDense` kernel, D x C x k),
    atomically, from process 0 (every process must call it: the gather is a collective).

    Example:
        >>> import tempfile, numpy as np
        >>> head = ShardedNormDense(5, num_shards=1); head.build((None, 3))
        >>> path = os.path.join(tempfile.mkdtemp(), "class_centers.npy")
        >>> save_class_centers(head, path); np.load(path).shape
        (3, 5)
    """
    from ghostface_keras.core.distribution import is_writer_process
    from ghostface_keras.core.files import write_atomically

    kernel = head.dense_kernel()
    if not is_writer_process():
        return

    def write(target) -> None:
        with open(target, "wb") as handle:
            np.save(handle, kernel)

    write_atomically(os.fspath(path), write)


def sharded_sample_classes(labels, num_classes: int, shard_size: int, num_sampled: int, seed=None):
    """Partial FC on a sharded head: `(class_ids, positions)`.

    Every shard keeps the classes of `labels` (the global batch) that it owns plus random other classes of its
    own, `num_sampled` in all, ascending; padding classes (>= num_classes) only when a shard has no other left.
    `class_ids` (N x num_sampled,) is split over the shards; `positions` (B,) gives each label's column in it.

    Example:
        >>> import numpy as np
        >>> ids, positions = sharded_sample_classes(np.array([7, 3, 7]), 10, shard_size=10, num_sampled=4, seed=0)
        >>> np.asarray(ids)[np.asarray(positions)].tolist()
        [7, 3, 7]
    """
    labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
    mesh = class_mesh()
    shards = 1 if mesh is None else mesh.shape[mesh.axis_names.index(CLASS_AXIS)]
    scores = keras.random.uniform((shards * shard_size,), seed=seed)
    if mesh is not None:
        scores = keras.distribution.distribute_tensor(
            scores, keras.distribution.TensorLayout((CLASS_AXIS,), mesh))

    def shard(shards_, local_labels, local_scores):
        batch = shards_.gather(local_labels)
        first = shards_.index() * shard_size
        local = batch - first
        owned = (local >= 0) & (local < shard_size)
        present = ops.scatter(ops.expand_dims(ops.where(owned, local, 0), 1), ops.cast(owned, "int32"),
                              (shard_size,)) > 0
        real = (first + ops.arange(shard_size, dtype="int32")) < num_classes
        # positives above 2, other real classes in [0, 1), padding -1: top-K keeps every positive
        ranked = ops.where(real, ops.cast(present, "float32") * 2.0 + local_scores, -1.0)
        slots = ops.cast(ops.sort(ops.top_k(ranked, num_sampled, sorted=False)[1]), "int32")
        column = shards_.index() * num_sampled + ops.cast(ops.searchsorted(slots, ops.where(owned, local, 0)), "int32")
        positions = shards_.psum(ops.where(owned, column, 0))
        return first + slots, positions

    return _per_shard(shard, ((CLASS_AXIS,), (CLASS_AXIS,)), [(CLASS_AXIS,), ()], labels, scores)


def _clipped(cosines):
    return ops.clip(cosines, -1.0 + _COSINE_EPSILON, 1.0 - _COSINE_EPSILON)


def sharded_margin_loss(loss: keras.losses.Loss, cosines, norms, class_ids, positions, num_classes: int):
    """Per-sample margin loss (B,) over column-sharded cosines, equal to `loss(positions, cosines)` on the
    gathered, unpadded cosines (with the norm column for MagFace / AdaFace), without gathering them.

    `loss` is one of `ghostface_keras.train.losses`: its `target_logit`, `scale`, `label_smoothing` and
    `norm_regularizer` are used as they are, so the margins mean what they mean on the replicated head.
    """
    width = ops.shape(cosines)[1] // max(1, _shard_count())
    label_smoothing = float(getattr(loss, "label_smoothing", 0.0))
    scale = float(loss.scale)

    def target_of(shards, local_cosines, labels):
        local = labels - shards.index() * width
        owned = (local >= 0) & (local < width)
        picked = ops.take_along_axis(_clipped(local_cosines), ops.expand_dims(ops.clip(local, 0, width - 1), 1), 1)
        return shards.psum(ops.where(owned, picked[:, 0], 0.0))

    target_cosine = _per_shard(target_of, ((None, CLASS_AXIS), ()), (), cosines, positions)
    # the margin acts on B values outside the shards (AdaFace updates its norm statistics here)
    target = loss.target_logit(target_cosine, norms if getattr(loss, "needs_norm", False) else None)

    def cross_entropy(shards, local_cosines, ids, labels, target_logit):
        local = labels - shards.index() * width
        valid = ops.expand_dims(ids < num_classes, 0)
        is_target = ops.expand_dims(ops.arange(width, dtype="int32"), 0) == ops.expand_dims(local, 1)
        logits = scale * ops.where(is_target, ops.expand_dims(shards.vary(target_logit), 1), _clipped(local_cosines))
        masked = ops.where(valid, logits, -np.inf)
        row_max = shards.pmax(ops.stop_gradient(ops.max(masked, axis=1)))
        exp_sum = shards.psum(ops.sum(ops.exp(masked - ops.expand_dims(row_max, 1)), axis=1))
        entropy = row_max + ops.log(exp_sum) - (1.0 - label_smoothing) * scale * target_logit
        if label_smoothing:
            count = shards.psum(ops.sum(ops.cast(valid, "float32")))
            entropy -= label_smoothing / count * shards.psum(ops.sum(ops.where(valid, logits, 0.0), axis=1))
        return entropy

    per_sample = _per_shard(cross_entropy, ((None, CLASS_AXIS), (CLASS_AXIS,), (), ()), (),
                            cosines, class_ids, positions, target)
    regularizer = loss.norm_regularizer(norms) if hasattr(loss, "norm_regularizer") else None
    return per_sample if regularizer is None else per_sample + regularizer


def sharded_predictions(cosines, class_ids, num_classes: int):
    """Each sample's best column (B,) over column-sharded cosines (padding excluded; ties: the first)."""
    width = ops.shape(cosines)[1] // max(1, _shard_count())

    def best(shards, local_cosines, ids):
        masked = ops.where(ops.expand_dims(ids < num_classes, 0), local_cosines, -np.inf)
        local_max = ops.max(masked, axis=1)
        overall = shards.pmax(local_max)
        column = shards.index() * width + ops.cast(ops.argmax(masked, axis=1), "int32")
        return shards.pmin(ops.where(local_max == overall, column, np.iinfo(np.int32).max))

    return _per_shard(best, ((None, CLASS_AXIS), (CLASS_AXIS,)), (), cosines, class_ids)


def _shard_count() -> int:
    mesh = class_mesh()
    return 1 if mesh is None else mesh.shape[mesh.axis_names.index(CLASS_AXIS)]


def prediction_accuracy(y_true, y_pred):
    """Training accuracy of `ShardedFaceModel`, whose metric `y_pred` is each sample's predicted column."""
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.cast(ops.equal(labels, ops.cast(ops.reshape(y_pred, (-1,)), "int32")), "float32")


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ShardedFaceModel(SampledHeadConfig, ComposedTrainStep, keras.Model):
    """`head(embedding_model(x))` trained with class-sharded centers (see the module docstring); JAX only.

    Args:
        embedding_model: image -> embedding model (data parallel).
        head: the `ShardedNormDense` over all classes (shared, not copied).
        sample_rate: partial FC: the fraction of each shard's classes in each step's softmax (1 = every class).
        seed: seed of the class sampling.
        sam_rho: > 0 adds sharpness-aware minimization (both passes over the same sampled classes).

    Compile it with one of the margin losses of `ghostface_keras.train.losses` (and, for an accuracy, the
    metric `prediction_accuracy`: the step's predictions are column indices, not cosines). `fit` reports the
    loss and metrics of the columns a step covers (all classes, or the sampled ones renumbered, as
    `PartialFCModel`); calling the model gives the cosines to every class.
    """

    def __init__(self, embedding_model: keras.Model, head: ShardedNormDense, sample_rate: float = 1.0,
                 seed: int | None = None, sam_rho: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if keras.backend.backend() != "jax":
            raise GhostFaceError(f"class-sharded centers (shard_classes) train on the JAX backend, not "
                                 f"{keras.backend.backend()}: set KERAS_BACKEND=jax", fields=("shard_classes",))
        if not isinstance(head, ShardedNormDense):
            raise TypeError(f"ShardedFaceModel needs a ShardedNormDense head, got {type(head).__name__}")
        if sam_rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {sam_rho}")
        self.embedding_model, self.head = embedding_model, head
        self.sample_rate, self.seed, self.sam_rho = float(sample_rate), seed, float(sam_rho)
        self.num_sampled = sampled_class_count(head.shard_size, self.sample_rate)
        self._sampling_seed = keras.random.SeedGenerator(seed)

    def state_variables(self) -> list:
        """The class sampler's state, saved with a training state (a resumed run draws the same classes)."""
        return [self._sampling_seed.state]

    def call(self, inputs, training=None):
        return self.head(self.embedding_model(inputs, training=training))

    def step_classes(self, y):
        labels = ops.cast(ops.reshape(y, (-1,)), "int32")
        if self.sample_rate >= 1.0:
            return None, labels
        batch = int(labels.shape[0])
        num_sampled = min(self.head.shard_size, max(self.num_sampled, batch))
        return sharded_sample_classes(labels, self.head.num_classes, self.head.shard_size, num_sampled,
                                      seed=self._sampling_seed)

    def step_forward(self, x, classes):
        return self.head.sharded_cosines(self.embedding_model(x, training=True), classes)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not isinstance(y_pred, (tuple, list)):  # the model's own output (Keras' build, evaluate): cosines
            return super().compute_loss(x, y, y_pred, sample_weight, training)
        cosines, norms, class_ids = y_pred
        per_sample = sharded_margin_loss(self.loss, cosines, norms, class_ids, ops.cast(y, "int32"),
                                         self.head.num_classes)
        if sample_weight is not None:
            per_sample = per_sample * ops.cast(ops.reshape(sample_weight, (-1,)), "float32")
        total = ops.mean(per_sample)
        for extra in self.losses:  # the kernel regularizers (coupled weight decay), as Keras adds them
            total = total + ops.cast(extra, "float32")
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        if isinstance(y_pred, (tuple, list)):
            cosines, _, class_ids = y_pred
            y_pred = sharded_predictions(cosines, class_ids, self.head.num_classes)
        elif len(y_pred.shape) == 2:  # the model's own output (Keras builds the metrics with it): cosines
            y_pred = ops.argmax(y_pred[:, : self.head.num_classes], axis=1)
        return super().compute_metrics(x, y, y_pred, sample_weight)



__all__ = ["ShardedFaceModel", "ShardedNormDense", "class_mesh", "class_shard_size", "prediction_accuracy",
           "save_class_centers", "sharded_cosines", "sharded_margin_loss", "sharded_predictions", "sharded_sample_classes"]

