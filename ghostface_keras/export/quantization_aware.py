"""Quantization-aware fine-tuning for full-int8 TFLite: train against the int8 graph's own rounding.

Post-training int8 leaves trained GhostFaceNets short of float (released GhostFaceNetV1-0.5-2: mean
cosine 0.907), because every stored activation is rounded to 256 levels and a per-channel PReLU becomes
three int8 ops. `quantization_aware_model` builds the float model's twin with a TensorFlow FakeQuant op
at every tensor the int8 TFLite graph stores, and nowhere else: after each convolution with its folded
BatchNorm, inside each PReLU at the tensors of its int8 form (`int8_rewrite`, whose per-channel
constants are rounded to the converter's int8 grid too), after adds, multiplies, pools and gates;
concatenated tensors share one range, as the int8 concat requires. Its ranges are calibrated once
(percentiles of real faces) and then frozen. Fine-tuning the twin (`fine_tune_quantization_aware`:
distillation to the float model) teaches the weights to live with that rounding. `export_tflite`
converts a twin through the converter's quantization-aware path: the FakeQuant ranges become the int8
scales as they are and nothing is recalibrated, so the gain carries over to the file (a post-hoc
prototype that let the export recalibrate lost it).

How close the twin is to the file: same ops, same scales (tested), and on small models 30-90 % of the
embedding values are the very same int8 level, the rest a few levels off at most. It is not bit-exact (bias and
weight rounding are left to the converter; a rounding tie decided differently early on spreads through
a deep network), so on GhostFaceNets the twin and the file are two draws of the same int8 noise
(cosine between them about 0.95-0.98), and each is as close to float as the other (measured on real
faces: twin 0.940, file 0.938 after fine-tuning GN_W0.5).

Example:
    >>> import keras, tempfile
    >>> from ghostface_keras.export import export_tflite
    >>> inputs = keras.Input((112, 112, 3))                   # a tiny stand-in for a GhostFaceNet
    >>> x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
    >>> x = keras.layers.PReLU(shared_axes=[1, 2])(keras.layers.BatchNormalization()(x))
    >>> x = keras.layers.Conv2D(32, 1)(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
    >>> model = keras.Model(inputs, keras.layers.Flatten()(x))
    >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
    >>> qat = quantization_aware_model(model, train_faces)       # use a few hundred real faces
    >>> record = fine_tune_quantization_aware(qat, model, train_faces, steps=2, batch_size=4)  # e.g. 600 steps
    >>> export_tflite(qat, f"{tempfile.mkdtemp()}/face_int8.tflite", "int8", representative_data=train_faces[:8])
    PosixPath('.../face_int8.tflite')
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import keras
import numpy as np

from ghostface_keras.core.errors import ExportError
from ghostface_keras.export.int8_rewrite import _average_pool_as_depthwise, folds_into_producer

logger = logging.getLogger(__name__)

# layers whose int8 output keeps its input's scale: no tensor of their own to quantize
_SCALE_PRESERVING = ("ZeroPadding2D", "Flatten", "Reshape", "Dropout")
# a sigmoid's int8 output has the fixed scale 1 / 256 over [0, 1)
_SIGMOID_RANGE = (0.0, 255.0 / 256.0)
# Normalized pixels (p - 127.5) / 128 all lie halfway between the levels of the calibrated input range
# (step 1 / 128), where FakeQuant rounds up and TFLite's QUANTIZE away from zero; with step 2 / 255 no
# pixel is a tie, so training sees the input the int8 file sees
_INPUT_RANGE = (-1.0, 1.0)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class ActivationQuantizer(keras.layers.Layer):
    """Rounds a tensor to the 256 int8 levels of its range, as the int8 TFLite graph stores it.

    The TensorFlow FakeQuant op (straight-through gradient inside the range) is what the TFLite
    converter reads as the tensor's quantization, so a model with these layers converts to int8 with
    exactly these ranges. The range is a pair of non-trainable weights, set by calibration; while
    `enabled` is False (calibration runs eagerly) the layer passes values through.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enabled = True

    def build(self, input_shape):
        self.minimum = self.add_weight(shape=(), initializer="zeros", trainable=False, name="minimum")
        self.maximum = self.add_weight(shape=(), initializer="ones", trainable=False, name="maximum")

    def set_range(self, low: float, high: float) -> None:
        # zero must be a level (padding, ReLU zeros) and the range must not be empty
        low, high = min(float(low), 0.0), max(float(high), 0.0)
        if high - low < 1e-6:
            high = low + 1e-6
        self.minimum.assign(low)
        self.maximum.assign(high)

    def call(self, inputs):
        import tensorflow as tf

        if not self.enabled:
            return inputs
        return tf.quantization.fake_quant_with_min_max_vars(inputs, self.minimum, self.maximum, num_bits=8)


def _int8_constant(values: np.ndarray) -> np.ndarray:
    """`values` on the 256-level grid the converter gives a constant operand of an int8 MUL.

    The converter stores such a constant with one asymmetric scale over [min(v, 0), max(v, 0)], so a
    small per-channel slope next to a large one loses most of its digits; the simulation must see that.
    Rounding values already on the grid again gives them back, so the exported graph can hold these.
    """
    values = np.asarray(values, np.float32)
    low, high = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if high - low <= 0:
        return values
    scale = (high - low) / 255.0
    zero_point = np.round(-low / scale)
    return ((np.clip(np.round(values / scale) + zero_point, 0, 255) - zero_point) * scale).astype(np.float32)


@keras.saving.register_keras_serializable(package="ghostface_keras")
class QuantizedPReLU(keras.layers.Layer):
    """A PReLU computed as its int8 TFLite form, rounding every tensor that form stores.

    Same forms as `int8_rewrite`: with every slope a > -0.5, ``z = (1 + a) / 2 * x`` (folded into the
    convolution before it) and ``z + k |z|``; otherwise ``(1 + a) / 2 * x + (1 - a) / 2 * |x|``.
    The slopes are fixed: the form, chosen from them, must not change under training.
    """

    def __init__(self, alpha, **kwargs):
        super().__init__(**kwargs)
        self.alpha = np.asarray(alpha, np.float32)
        self.folds_into_producer = folds_into_producer(self.alpha)
        names = ("scaled", "absolute", "magnified", "output") if self.folds_into_producer else (
            "absolute", "positive", "negative", "output")
        self.quantizers = {name: ActivationQuantizer(name=f"{self.name}_{name}_quant") for name in names}

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha.tolist()}

    def build(self, input_shape):
        for quantizer in self.quantizers.values():
            quantizer.build(input_shape)

    def stages(self, inputs):
        """The unquantized tensors of the int8 form, by quantizer name (for calibration)."""
        return self._forward(inputs, lambda name, value: value, collect=True)

    def call(self, inputs):
        return self._forward(inputs, lambda name, value: self.quantizers[name](value))

    def _forward(self, inputs, quantize, collect=False):
        ops = keras.ops
        positive, absolute = (1.0 + self.alpha) / 2.0, (1.0 - self.alpha) / 2.0
        # the scaling by `positive` before |z| folds into the float conv weights; the others are int8 MULs
        ratio = _int8_constant(absolute / positive)
        stages = {}

        def store(name, value):
            stages[name] = value
            return quantize(name, value)

        if self.folds_into_producer:
            scaled = store("scaled", positive * inputs)
            magnitude = store("absolute", ops.leaky_relu(scaled, negative_slope=-1.0))
            magnified = store("magnified", ratio * magnitude)
            output = store("output", scaled + magnified)
        else:
            magnitude = store("absolute", ops.leaky_relu(inputs, negative_slope=-1.0))
            positive_part = store("positive", _int8_constant(positive) * inputs)
            output = store("output", positive_part + store("negative", _int8_constant(absolute) * magnitude))
        return stages if collect else output


@keras.saving.register_keras_serializable(package="ghostface_keras")
class QuantizedHardSigmoid(keras.layers.Layer):
    """``relu6(slope * x + 3) / 6`` with its two stored int8 tensors rounded.

    slope 1.2 is the Keras-2 ``clip(0.2 x + 0.5, 0, 1)``, slope 1 Keras 3's hard sigmoid; the converter
    fuses ``slope * x + 3`` and RELU6 into the convolution before it and keeps one MUL by 1/6.
    """

    def __init__(self, slope: float, **kwargs):
        super().__init__(**kwargs)
        self.slope = float(slope)
        self.quantizers = {name: ActivationQuantizer(name=f"{self.name}_{name}_quant") for name in ("relu6", "output")}

    def get_config(self):
        return {**super().get_config(), "slope": self.slope}

    def build(self, input_shape):
        for quantizer in self.quantizers.values():
            quantizer.build(input_shape)

    def stages(self, inputs):
        clipped = keras.ops.relu6(self.slope * inputs + 3.0)
        return {"relu6": clipped, "output": clipped * (1.0 / 6.0)}

    def call(self, inputs):
        clipped = self.quantizers["relu6"](keras.ops.relu6(self.slope * inputs + 3.0))
        return self.quantizers["output"](clipped * (1.0 / 6.0))


def _is_hard_sigmoid(layer) -> float | None:
    """The slope of a hard-sigmoid Activation (1.2 for the Keras-2 form, 1 for Keras 3's), else None."""
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return {"hard_sigmoid_keras2": 1.2, "hard_sigmoid": 1.0}.get(name) if type(layer).__name__ == "Activation" else None


class _Plan:
    """Which layer outputs the int8 graph stores (and so get a quantizer), and which scales it ties."""

    def __init__(self, model):
        from ghostface_keras.export.equalize import _graph_edges

        self.model = model
        self.producers, self.consumers = _graph_edges(model)
        self.types = {layer.name: type(layer).__name__ for layer in model.layers}

    def _sole_consumer(self, name: str):
        consumers = self.consumers.get(name, [])
        return self.model.get_layer(consumers[0]) if len(consumers) == 1 else None

    def _folding_prelu(self, layer) -> bool:
        return type(layer).__name__ == "PReLU" and folds_into_producer(layer.get_weights()[0])

    def _feeds_only_batchnorm(self, name: str) -> bool:
        consumer = self._sole_consumer(name)
        while consumer is not None and type(consumer).__name__ in _SCALE_PRESERVING:
            consumer = self._sole_consumer(consumer.name)
        return consumer is not None and type(consumer).__name__ == "BatchNormalization"

    def stores_output(self, layer) -> bool:
        """False where the converter fuses the layer into the next op or keeps its input's scale."""
        kind = self.types[layer.name]
        if kind in _SCALE_PRESERVING or kind in ("Concatenate", "InputLayer", "PReLU") or _is_hard_sigmoid(layer):
            return False  # the quantized layers and concat groups carry their own quantizers
        if kind == "Activation" and getattr(layer.activation, "__name__", "") == "linear":
            return False
        consumer = self._sole_consumer(layer.name)
        if kind in ("Conv2D", "DepthwiseConv2D"):
            if self._feeds_only_batchnorm(layer.name):
                return False
            if consumer is not None and (self._folding_prelu(consumer) or _is_hard_sigmoid(consumer)):
                return False
        if kind == "BatchNormalization" and consumer is not None and self._folding_prelu(consumer):
            producer = self.types[self.producers[layer.name][0]]
            if producer in ("Conv2D", "DepthwiseConv2D"):
                return False
        return True


def _check_supported(model) -> None:
    supported = {
        "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "PReLU", "Add", "Multiply", "Concatenate",
        "GlobalAveragePooling2D", "AveragePooling2D", "Resizing", "BilinearResize", "Activation", *_SCALE_PRESERVING,
    }
    for layer in model.layers:
        kind = type(layer).__name__
        activation = getattr(getattr(layer, "activation", None), "__name__", "")
        if kind not in supported or (
            kind == "Activation" and activation not in ("linear", "sigmoid") and not _is_hard_sigmoid(layer)
        ) or (kind in ("Conv2D", "DepthwiseConv2D") and activation != "linear"):
            raise ExportError(
                f"quantization-aware model: layer {layer.name!r} ({kind} {activation}) has no int8 simulation; "
                "supported: the layers of GhostFaceNetV1/V2 and MobileFaceNet"
            )
        if len(layer._inbound_nodes) > 1:
            raise ExportError(f"quantization-aware model: layer {layer.name!r} is called more than once")


class _Groups:
    """Quantizers whose tensors the int8 graph gives one scale (concat operands, a resize and its input)."""

    def __init__(self):
        self.parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        while self.parent.get(name, name) != name:
            name = self.parent[name]
        return name

    def tie(self, names: Sequence[str]) -> None:
        roots = [self.find(name) for name in names]
        for root in roots[1:]:
            if root != roots[0]:
                self.parent[root] = roots[0]


def _build(base):
    """The quantization-aware twin of `base`, its quantizers by name, scale groups and fixed ranges."""
    plan = _Plan(base)
    quantizers: dict[str, ActivationQuantizer] = {}
    groups, fixed = _Groups(), {}
    stored: dict[str, str | None] = {}  # layer -> the quantizer holding its int8 output
    outputs = {}

    def quantize(tensor, name):
        quantizers[name] = ActivationQuantizer(name=name)
        return quantizers[name](tensor)

    for layer in base.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            inputs = keras.Input(batch_shape=base.inputs[0].shape, name=layer.name)
            outputs[layer.name] = quantize(inputs, f"{layer.name}_quant")
            stored[layer.name] = f"{layer.name}_quant"
            fixed[stored[layer.name]] = _INPUT_RANGE
            continue
        sources = plan.producers[layer.name]
        args = [outputs[source] for source in sources]
        arg = args[0] if len(args) == 1 else args
        slope = _is_hard_sigmoid(layer)
        if kind == "PReLU":
            replacement = QuantizedPReLU(layer.get_weights()[0], name=layer.name)
        elif slope:
            replacement = QuantizedHardSigmoid(slope, name=layer.name)
        elif kind == "AveragePooling2D" and layer.padding == "valid":
            replacement = _average_pool_as_depthwise(layer)
        else:
            replacement = layer
        if kind == "BatchNormalization":
            layer.trainable = False  # inference statistics: the converter folds them into the conv
        output = replacement(arg)
        own = f"{layer.name}_quant"
        if isinstance(replacement, (QuantizedPReLU, QuantizedHardSigmoid)):
            quantizers.update({q.name: q for q in replacement.quantizers.values()})
            stored[layer.name] = replacement.quantizers["output"].name
        elif kind in _SCALE_PRESERVING or (kind == "Activation" and not plan.stores_output(layer)):
            stored[layer.name] = stored[sources[0]]
        elif kind == "Concatenate":
            members = [stored[source] for source in sources]
            if any(member is None for member in members):
                raise ExportError(f"quantization-aware model: an input of {layer.name!r} has no int8 tensor of its own")
            groups.tie(members)
            stored[layer.name] = members[0]
        elif plan.stores_output(layer):
            output = quantize(output, own)
            stored[layer.name] = own
            if kind in ("Resizing", "BilinearResize"):
                groups.tie([stored[sources[0]], own])
            if kind == "Activation" and layer.activation.__name__ == "sigmoid":
                fixed[own] = _SIGMOID_RANGE
        else:
            stored[layer.name] = None
        outputs[layer.name] = output
    model = keras.Model(inputs, outputs[base.layers[-1].name], name=f"{base.name}_quantization_aware")
    return model, quantizers, groups, fixed


def _observed_values(model, quantizers, images: np.ndarray, batch_size: int = 16):
    """Yield, per batch, every quantizer's unquantized input (float calibration, quantizers off)."""
    composite = [layer for layer in model.layers if isinstance(layer, (QuantizedPReLU, QuantizedHardSigmoid))]
    inner = {q.name for layer in composite for q in layer.quantizers.values()}
    plain = [name for name in quantizers if name not in inner]
    probe = keras.Model(model.input, [quantizers[name].input for name in plain] + [layer.input for layer in composite])
    for quantizer in quantizers.values():
        quantizer.enabled = False
    try:
        for start in range(0, len(images), batch_size):
            values = probe(images[start:start + batch_size], training=False)
            batch = {name: np.asarray(value) for name, value in zip(plain, values)}
            for layer, value in zip(composite, values[len(plain):]):
                for stage, tensor in layer.stages(value).items():
                    batch[layer.quantizers[stage].name] = np.asarray(tensor)
            yield batch
    finally:
        for quantizer in quantizers.values():
            quantizer.enabled = True


def _histograms(model, quantizers, images: np.ndarray):
    """Per quantizer: the calibration values' (min, max) and their histogram over it."""
    from ghostface_keras.export.activation_ranges import HISTOGRAM_BINS, bin_counts

    extremes: dict[str, list[float]] = {}
    for batch in _observed_values(model, quantizers, images):
        for name, values in batch.items():
            low, high = float(values.min()), float(values.max())
            old = extremes.get(name, [low, high])
            extremes[name] = [min(old[0], low), max(old[1], high)]
    counts = {name: np.zeros(HISTOGRAM_BINS, np.int64) for name in extremes}
    for batch in _observed_values(model, quantizers, images):
        for name, values in batch.items():
            counts[name] += bin_counts(values, *extremes[name])
    return extremes, counts


def _set_ranges(quantizers, groups: _Groups, fixed, extremes, counts, percentile: float) -> None:
    from ghostface_keras.export.activation_ranges import percentile_range

    ranges = {}
    for name, (low, high) in extremes.items():
        ranges[name] = percentile_range(low, high, counts[name], percentile)
    merged: dict[str, tuple[float, float]] = {}
    for name, (low, high) in ranges.items():
        root = groups.find(name)
        old = merged.get(root, (low, high))
        merged[root] = (min(old[0], low), max(old[1], high))
    for name in fixed:
        merged[groups.find(name)] = fixed[name]
    for name, quantizer in quantizers.items():
        quantizer.set_range(*merged[groups.find(name)])


def _mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    from ghostface_keras.core.numeric import row_cosines

    return float(row_cosines(np.asarray(a), np.asarray(b)).mean())


def quantization_aware_model(
    model,
    calibration_images: np.ndarray,
    activation_percentile: float | str = "auto",
    equalize: bool = True,
):
    """The twin of `model` that computes what its full-int8 TFLite file computes, ready to fine-tune.

    Args:
        model: a functional GhostFaceNet / MobileFaceNet (not modified).
        calibration_images: normalized real aligned faces ``(N, 112, 112, 3)``, N >= 8; a few hundred.
        activation_percentile: each range spans the (100 - p)th..p-th percentile of its calibration
            values; ``"auto"`` tries `PERCENTILE_CANDIDATES` and keeps the one whose twin is closest to
            `model` on the last ``min(32, N // 4)`` calibration images (held out from the histograms).
        equalize: balance per-channel ranges first (`equalize_channel_ranges`, same function).

    Returns:
        A Keras model with `ActivationQuantizer` layers at every tensor the int8 graph stores (frozen
        ranges), BatchNorms frozen, PReLU slopes fixed; convolution weights train.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))                   # a tiny stand-in for a GhostFaceNet
        >>> x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
        >>> x = keras.layers.PReLU(shared_axes=[1, 2])(keras.layers.BatchNormalization()(x))
        >>> x = keras.layers.Conv2D(32, 1)(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
        >>> model = keras.Model(inputs, keras.layers.Flatten()(x))
        >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
        >>> qat = quantization_aware_model(model, train_faces)       # use a few hundred real faces
        >>> is_quantization_aware(qat), is_quantization_aware(model)
        (True, False)
        >>> export_tflite(qat, f"{tempfile.mkdtemp()}/face_int8.tflite", "int8", representative_data=train_faces[:8])
        PosixPath('.../face_int8.tflite')
    """
    from ghostface_keras.export.activation_ranges import PERCENTILE_CANDIDATES, SELECTION_IMAGES
    from ghostface_keras.export.equalize import equalize_channel_ranges

    images = np.asarray(calibration_images, np.float32)
    if images.ndim != 4 or len(images) < 8:
        raise ExportError(f"quantization-aware model: need at least 8 calibration images (N, H, W, C), got {images.shape}")
    _check_supported(model)
    if equalize:
        base = equalize_channel_ranges(model, images[:64])
    else:
        base = keras.models.clone_model(model)
        base.set_weights(model.get_weights())
    qat, quantizers, groups, fixed = _build(base)
    if activation_percentile != "auto":
        extremes, counts = _histograms(qat, quantizers, images)
        _set_ranges(quantizers, groups, fixed, extremes, counts, float(activation_percentile))
        return qat
    held_out = min(SELECTION_IMAGES, len(images) // 4)
    fit, selection = images[:-held_out], images[-held_out:]
    extremes, counts = _histograms(qat, quantizers, fit)
    reference = np.asarray(model.predict(selection, verbose=0))
    scores = {}
    for percentile in PERCENTILE_CANDIDATES:
        _set_ranges(quantizers, groups, fixed, extremes, counts, percentile)
        scores[percentile] = _mean_cosine(np.asarray(qat(selection, training=False)), reference)
    best = max(scores, key=scores.get)
    _set_ranges(quantizers, groups, fixed, extremes, counts, best)
    logger.info(
        "quantization-aware ranges: percentile %s chosen on %d held-out images (%s)",
        best, held_out, ", ".join(f"{p}: {c:.4f}" for p, c in scores.items()),
    )
    return qat


def is_quantization_aware(model) -> bool:
    """True for a model built by `quantization_aware_model` (it exports only as int8)."""
    return any(isinstance(layer, (ActivationQuantizer, QuantizedPReLU, QuantizedHardSigmoid)) for layer in model.layers)


@dataclasses.dataclass
class FineTuning:
    """What `fine_tune_quantization_aware` did: per-step losses, held-out cosines, the step it kept."""

    losses: list[float]
    held_out_cosine: dict[int, float]  # step -> mean cosine of the twin to the float model (0 = before)
    kept_step: int


def fine_tune_quantization_aware(
    qat_model,
    teacher,
    images: np.ndarray,
    steps: int = 300,
    batch_size: int = 32,
    learning_rate: float = 3e-5,
    held_out: int = 32,
    check_every: int = 50,
    seed: int = 0,
) -> FineTuning:
    """Distil `teacher` (the float model) into `qat_model` under int8 rounding, in place.

    The loss is ``1 - cosine(qat_model(x), teacher(x))`` on random batches of `images` with random
    horizontal flips; Adam on the convolution weights (ranges, BatchNorms and PReLU slopes stay fixed).
    The last `held_out` images are kept out of training: every `check_every` steps the twin's mean
    cosine to the teacher on them is measured, and the weights of the best check (the untouched weights
    included) are restored at the end, so fine-tuning never leaves the twin worse on images it did not
    train on (a model already close to float can lose: the official V2-1.3-1 fixture went 0.980 -> 0.973
    with 150 steps at 1e-4).

    Returns:
        A `FineTuning` record.

    Example:
        >>> inputs = keras.Input((112, 112, 3))                   # a tiny stand-in for a GhostFaceNet
        >>> x = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
        >>> x = keras.layers.PReLU(shared_axes=[1, 2])(keras.layers.BatchNormalization()(x))
        >>> x = keras.layers.Conv2D(32, 1)(keras.layers.GlobalAveragePooling2D(keepdims=True)(x))
        >>> model = keras.Model(inputs, keras.layers.Flatten()(x))
        >>> train_faces = np.random.default_rng(0).uniform(-1, 1, (16, 112, 112, 3)).astype("float32")  # normalized
        >>> qat = quantization_aware_model(model, train_faces)
        >>> record = fine_tune_quantization_aware(qat, model, train_faces, steps=4, batch_size=4, check_every=2)
        >>> len(record.losses), sorted(record.held_out_cosine)          # real use: e.g. steps=600
        (4, [0, 2, 4])
        >>> record.held_out_cosine[record.kept_step] >= record.held_out_cosine[0]   # never worse than before
        True
    """
    import tensorflow as tf

    images = np.asarray(images, np.float32)
    held_out = min(held_out, len(images) // 4)
    if len(images) - held_out < batch_size or held_out < 2:
        raise ExportError(
            f"quantization-aware fine-tuning: {len(images)} images leave fewer than a batch of {batch_size} "
            f"to train on beside {held_out} held out"
        )
    train, check = images[:-held_out], images[-held_out:]
    target = np.asarray(teacher.predict(check, verbose=0))
    optimizer = keras.optimizers.Adam(learning_rate)
    variables = qat_model.trainable_variables

    @tf.function(autograph=False)
    def step(batch):
        goal = tf.math.l2_normalize(teacher(batch, training=False), axis=1)
        with tf.GradientTape() as tape:
            output = tf.math.l2_normalize(qat_model(batch, training=False), axis=1)
            loss = 1.0 - tf.reduce_mean(tf.reduce_sum(output * goal, axis=1))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def held_out_cosine() -> float:
        return _mean_cosine(np.asarray(qat_model(check, training=False)), target)

    scores = {0: held_out_cosine()}
    best = [variable.numpy() for variable in variables]
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    for number in range(1, steps + 1):
        batch = train[rng.choice(len(train), batch_size, replace=False)]
        flip = rng.random(batch_size) < 0.5
        batch[flip] = batch[flip, :, ::-1]
        losses.append(float(step(batch)))
        if number % check_every == 0 or number == steps:
            scores[number] = held_out_cosine()
            if scores[number] > max(score for key, score in scores.items() if key != number):
                best = [variable.numpy() for variable in variables]
            logger.info(
                "quantization-aware fine-tuning: step %d/%d, loss %.4f, held-out cosine %.4f",
                number, steps, np.mean(losses[-check_every:]), scores[number],
            )
    kept = max(scores, key=scores.get)
    for variable, value in zip(variables, best):
        variable.assign(value)
    logger.info("quantization-aware fine-tuning: kept the weights of step %d (held-out cosine %.4f, before %.4f)",
                kept, scores[kept], scores[0])
    return FineTuning(losses, scores, kept)
