"""Export: SavedModel / TFLite / ONNX give the Keras embeddings, with builtin, static, delegable graphs.

The fast tests use tiny 32x32 models made of exactly the layer types GhostFaceNets use (TF-"same"
convs, PReLU shared over H,W, squeeze-excite with the Keras-2 hard sigmoid, V2's ZeroPadding2D /
AveragePooling2D / bilinear Resizing / sigmoid gate, the GDC head). Every numeric check compares the
exported file with the Keras model (or a numpy formula), never with itself.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from ghostface_keras import export  # noqa: E402
from ghostface_keras.cli import export as export_cli  # noqa: E402
from ghostface_keras.core.errors import ExportError  # noqa: E402
from ghostface_keras.export.int8_rewrite import _decomposed_prelu_layer  # noqa: E402
from ghostface_keras.core.preprocessing import denormalize_images, normalize_images  # noqa: E402

try:
    from ghostface_keras.models.blocks import hard_sigmoid_keras2
except ImportError:  # models not landed: same name, same function

    def hard_sigmoid_keras2(x):
        return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


SIZE = 32


def _randomize(model: keras.Model, seed: int = 0) -> keras.Model:
    """Non-trivial BN statistics and PReLU slopes (including negative ones), so folding is exercised."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([
                rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 1.5, variance.shape),
            ])
        if isinstance(layer, keras.layers.PReLU):
            layer.set_weights([rng.uniform(-0.3, 0.6, layer.get_weights()[0].shape)])
    return model


def tiny_face_model(version: int = 1, size: int = SIZE) -> keras.Model:
    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.PReLU(shared_axes=[1, 2])(x)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = layers.BatchNormalization()(y)
    squeeze = layers.GlobalAveragePooling2D(keepdims=True)(y)
    squeeze = layers.Conv2D(4, 1)(squeeze)
    squeeze = layers.PReLU(shared_axes=[1, 2])(squeeze)
    squeeze = layers.Conv2D(8, 1)(squeeze)
    y = layers.Multiply()([y, layers.Activation(hard_sigmoid_keras2)(squeeze)])
    if version == 2:
        gate = layers.AveragePooling2D(2, strides=2, padding="valid")(x)
        gate = layers.Conv2D(8, 1, use_bias=False)(gate)
        gate = layers.BatchNormalization()(gate)
        gate = layers.ZeroPadding2D(((0, 0), (2, 2)))(gate)
        gate = layers.DepthwiseConv2D((1, 5), use_bias=False)(gate)
        gate = layers.Activation("sigmoid")(gate)
        gate = layers.Resizing(size // 2, size // 2, interpolation="bilinear")(gate)
        y = layers.Multiply()([y, gate])
    x = layers.Add()([x, y])
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.PReLU(shared_axes=[1, 2])(x)
    x = layers.DepthwiseConv2D(x.shape[1], padding="valid", use_bias=False)(x)
    x = layers.BatchNormalization()(x)
    x = layers.Conv2D(32, 1, use_bias=False)(x)
    x = layers.Flatten()(x)
    x = layers.BatchNormalization()(x)
    outputs = layers.Activation("linear", dtype="float32")(x)
    keras.utils.set_random_seed(version)
    return _randomize(keras.Model(inputs, outputs), seed=version)


def face_like_images(count: int = 12, size: int = SIZE, seed: int = 3) -> np.ndarray:
    """Smooth random fields (natural-image-like statistics), normalized."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 4, 4, 3)).astype(np.float32)
    smooth = keras.ops.image.resize(coarse, (size, size), interpolation="bilinear")
    noise = rng.normal(0, 8, (count, size, size, 3))
    return normalize_images(np.clip(np.asarray(smooth) + noise, 0, 255))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def models():
    return {1: tiny_face_model(1), 2: tiny_face_model(2)}


@pytest.fixture(scope="module")
def images():
    return face_like_images()


class _Conversions(dict):
    """TFLite files made on first use, so the default run converts only what its tests need."""

    def __init__(self, models, images, folder):
        super().__init__()
        self.models, self.images, self.folder = models, images, folder

    def __missing__(self, key):
        version, quantization = key
        path = export.export_tflite(self.models[version], self.folder / f"v{version}_{quantization}.tflite",
                                    quantization, representative_data=self.images)
        self[key] = path
        return path


@pytest.fixture(scope="module")
def converted(models, images, tmp_path_factory):
    return _Conversions(models, images, tmp_path_factory.mktemp("tflite"))


@pytest.mark.parametrize("version", [1, 2])
def test_fp32_tflite_equals_keras(models, images, converted, version):
    keras_out = np.asarray(models[version](images, training=False))
    tflite_out = export.run_tflite(converted[version, "none"], images)
    relative = np.abs(tflite_out - keras_out).max() / np.abs(keras_out).max()
    assert relative < 1e-4


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("quantization", ["none", pytest.param("float16", marks=pytest.mark.slow),
                                          pytest.param("int8", marks=pytest.mark.slow)])
def test_graph_is_builtin_static_and_one_xnnpack_partition(converted, version, quantization):
    path = converted[version, quantization]
    ops = export.tflite_op_names(path)
    assert not [op for op in ops if op.startswith("Flex") or op in {"SHAPE", "STRIDED_SLICE", "PACK"}]
    assert export.dynamic_tensor_names(path) == []
    assert export.count_delegate_nodes(path) == 1
    assert "BATCH_NORM" not in " ".join(ops)  # folded into the convolutions
    if version == 2:
        assert "RESIZE_BILINEAR" in ops


@pytest.mark.slow
def test_int8_graph_avoids_ops_xnnpack_cannot_run_in_int8(converted):
    ops = set(export.tflite_op_names(converted[2, "int8"]))
    assert not ops & {"PRELU", "MINIMUM", "MAXIMUM", "AVERAGE_POOL_2D", "RELU"}
    assert {"LEAKY_RELU", "CONV_2D", "DEPTHWISE_CONV_2D"} <= ops


def test_int8_rewrite_is_the_same_function(models, images):
    for model in models.values():
        twin = export.xnnpack_int8_equivalent(model)
        np.testing.assert_allclose(np.asarray(twin(images)), np.asarray(model(images)), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("alpha_range", [(-0.4, 0.9), (-1.5, 2.0)])
def test_decomposed_prelu_matches_numpy_formula(alpha_range):
    alpha = np.linspace(*alpha_range, 6).astype(np.float32).reshape(1, 1, 6)
    prelu = keras.layers.PReLU(shared_axes=[1, 2])
    prelu.build((None, 5, 5, 6))
    prelu.set_weights([alpha])
    x = np.random.default_rng(0).normal(0, 2, (2, 5, 5, 6)).astype(np.float32)
    expected = np.where(x > 0, x, alpha * x)
    np.testing.assert_allclose(np.asarray(_decomposed_prelu_layer(prelu)(x)), expected, atol=1e-5)


@pytest.mark.slow
def test_quantized_exports_keep_the_embedding_direction(models, images, converted):
    for version, model in models.items():
        keras_out = np.asarray(model(images, training=False))
        assert cosines(export.run_tflite(converted[version, "float16"], images), keras_out).min() >= 0.999
        assert cosines(export.run_tflite(converted[version, "int8"], images), keras_out).mean() >= 0.98


@pytest.mark.slow
def test_int8_files_are_smaller(converted):
    sizes = {q: converted[2, q].stat().st_size for q in ("none", "float16", "int8")}
    assert sizes["int8"] < sizes["float16"] < sizes["none"]


@pytest.mark.slow
def test_int8_with_integer_io(models, images, tmp_path):
    path = export.export_tflite(models[1], tmp_path / "io.tflite", "int8", images, int8_io=True)
    interpreter = export.make_interpreter(path)
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    keras_out = np.asarray(models[1](images, training=False))
    assert cosines(export.run_tflite(interpreter, images), keras_out).mean() >= 0.98


def test_an_unloadable_tflite_file_is_a_one_line_load_error(tmp_path):
    from ghostface_keras.core.errors import ModelLoadError

    path = tmp_path / "truncated.tflite"
    path.write_bytes(b"TFL3" + bytes(60))
    for open_file in (export.make_interpreter, export.TFLiteEmbedder):
        with pytest.raises(ModelLoadError, match="truncated.tflite: not a loadable TFLite model") as raised:
            open_file(path)
        assert "\n" not in str(raised.value)


def test_int8_needs_representative_data(models, tmp_path):
    with pytest.raises(ExportError, match="representative_data"):
        export.export_tflite(models[1], tmp_path / "x.tflite", "int8")
    with pytest.raises(ExportError, match="unknown quantization"):
        export.export_tflite(models[1], tmp_path / "x.tflite", "int4")


def test_saved_model_signatures(models, images, tmp_path):
    import tensorflow as tf

    directory = export.export_saved_model(models[2], tmp_path / "saved")
    loaded = tf.saved_model.load(str(directory))
    keras_out = np.asarray(models[2](images, training=False))
    np.testing.assert_allclose(export.run_saved_model(directory, images), keras_out, atol=1e-4)
    pixels = np.random.default_rng(0).integers(0, 256, (3, SIZE, SIZE, 3)).astype(np.uint8)
    from_pixels = next(iter(loaded.signatures["serving_uint8"](pixels=tf.constant(pixels)).values())).numpy()
    expected = np.asarray(models[2]((pixels.astype(np.float32) - 127.5) / 128.0, training=False))
    np.testing.assert_allclose(from_pixels, expected, atol=1e-4)
    with pytest.raises(ExportError, match="not empty"):
        export.export_saved_model(models[2], directory)


def test_parity_report_and_thresholds(models, images, converted):
    report = export.check_parity(models[1], converted[1, "none"], images, "none", latency_threads=(1,),
                                 latency_repeats=3)
    keras_out = np.asarray(models[1](images, training=False))
    tflite_out = export.run_tflite(converted[1, "none"], images)
    assert report.max_abs_diff == pytest.approx(np.abs(tflite_out - keras_out).max(), rel=1e-5)
    assert report.min_cosine == pytest.approx(cosines(tflite_out, keras_out).min(), abs=1e-6)
    assert report.passed and report.latency_ms[1] > 0
    assert "| size |" in report.to_markdown() and "PASS" in report.to_markdown()
    report.thresholds = {"min_cosine": 1.5}
    assert not report.passed and "min_cosine" in report.failures[0]


@pytest.mark.parametrize("version", [1, 2])
def test_onnx_matches_keras(models, images, tmp_path, version):
    if not export.onnx_available():
        pytest.skip("tf2onnx / onnxruntime not installed (extra 'onnx')")
    path = export.export_onnx(models[version], tmp_path / "m.onnx")
    keras_out = np.asarray(models[version](images, training=False))
    relative = np.abs(export.run_onnx(path, images) - keras_out).max() / np.abs(keras_out).max()
    assert relative < 1e-4


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_keras_file(models, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.keras"
    models[1].save(path)
    return path


def _image_folder(root, images):
    from PIL import Image

    for index, image in enumerate(denormalize_images(images)):
        folder = root / f"id{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")
    return root


def test_cli_int8_with_calibration_folder(saved_keras_file, images, tmp_path, capsys):
    faces = _image_folder(tmp_path / "faces", images)
    output = tmp_path / "out.tflite"
    code = export_cli.main(["--model", str(saved_keras_file), "--format", "tflite", "--quantization", "int8",
                        "--calibration-data", str(faces), "--calibration-size", "8", "--parity-size", "4",
                        "--threads", "1", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0 and output.exists()
    assert "| parity | PASS |" in printed and "LiteRT latency, 1 thread(s)" in printed


@pytest.mark.parametrize("quantization", ["float16", "dynamic"])
def test_cli_exits_1_when_parity_fails(saved_keras_file, tmp_path, monkeypatch, capsys, quantization):
    monkeypatch.setitem(export.PARITY_THRESHOLDS, quantization, {"min_cosine": 1.5})
    code = export_cli.main(["--model", str(saved_keras_file), "--quantization", quantization, "--parity-size", "2",
                        "--threads", "1", "--output", str(tmp_path / "q.tflite")])
    error = capsys.readouterr().err
    assert code == 1 and "parity FAILED" in error
    # a lossy integer format points to the float16 alternative; float16 itself has none to offer
    assert ("--quantization float16 keeps cosine" in error) == (quantization == "dynamic")


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "missing/model.keras"], "not found"),
        (["--quantization", "int8"], "--calibration-data"),
        (["--format", "savedmodel", "--quantization", "float16"], "applies to --format tflite"),
        (["--quantization", "int8", "--calibration-data", "no_such_dir"], "image folder not found"),
    ],
)
def test_cli_errors_are_one_line(saved_keras_file, tmp_path, capsys, arguments, message):
    argv = ["--model", str(saved_keras_file), "--output", str(tmp_path / "o.tflite")] + arguments
    assert export_cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and error.startswith("ghostface-export: error:")


def test_equalization_keeps_the_function_and_balances_channel_ranges(images):
    from ghostface_keras.export.equalize import equalize_channel_ranges

    model = tiny_face_model(1)
    # the PReLU before the GDC depthwise conv: two channels get trained-model-like slopes of -12 and +9
    prelu = [layer for layer in model.layers if isinstance(layer, keras.layers.PReLU)][-1]
    alpha = prelu.get_weights()[0]
    alpha[..., :2] = [-12.0, 9.0]
    prelu.set_weights([alpha])
    balanced = equalize_channel_ranges(model, images, min_range_ratio=2.0)
    np.testing.assert_allclose(np.asarray(balanced(images)), np.asarray(model(images)), rtol=1e-4, atol=1e-4)

    def range_ratio(m):
        out = np.abs(np.asarray(keras.Model(m.input, m.get_layer(prelu.name).output)(images))).reshape(-1, 16).max(0)
        return out.max() / np.median(out)

    assert range_ratio(balanced) < range_ratio(model) / 2


def _residual_stream_model(boost: float = 30.0) -> keras.Model:
    """Stem -> two residual blocks summed into one stream -> conv head, with two loud channels."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.PReLU(shared_axes=[1, 2], name="stem_act")(x)
    for block in (1, 2):
        branch = layers.Conv2D(8, 1, use_bias=False, name=f"b{block}_conv")(x)
        branch = layers.BatchNormalization(name=f"b{block}_bn")(branch)
        x = layers.Add(name=f"b{block}_add")([x, branch])
    head = layers.Conv2D(4, 1, name="head")(x)
    model = keras.Model(inputs, layers.Flatten()(head))
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            gamma = rng.uniform(0.5, 1.5, 8).astype(np.float32)
            gamma[:2] *= boost
            layer.set_weights([gamma, rng.normal(0, 0.1, 8).astype(np.float32), mean, variance])
    return model


def test_equalization_rescales_a_whole_residual_stream(images):
    from ghostface_keras.export.equalize import equalize_channel_ranges

    model = _residual_stream_model()
    faces = images[:, :8, :8, :]
    balanced = equalize_channel_ranges(model, faces)
    np.testing.assert_allclose(np.asarray(balanced(faces)), np.asarray(model(faces)), rtol=1e-4, atol=1e-4)

    def range_ratio(m, name):
        out = np.abs(np.asarray(keras.Model(m.input, m.get_layer(name).output)(faces))).reshape(-1, 8).max(0)
        return out.max() / np.median(out)

    for add in ("b1_add", "b2_add"):  # both Adds of the stream carry the same scale
        assert range_ratio(model, add) > 10
        assert range_ratio(balanced, add) < 3
    # the stream's start (stem) and the branch BNs were divided; the head conv multiplies back
    assert not np.allclose(balanced.get_layer("head").get_weights()[0], model.get_layer("head").get_weights()[0])


def test_equalization_refuses_a_tensor_reached_twice(images):
    from ghostface_keras.export.equalize import _candidates, _graph_edges

    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.BatchNormalization(name="bn")(layers.Conv2D(4, 1, name="conv")(inputs))
    doubled = layers.Add(name="twice")([x, x])  # dividing `bn` once per path would scale it twice
    model = keras.Model(inputs, layers.Conv2D(2, 1, name="head")(doubled))
    groups = _candidates(model, *_graph_edges(model))
    assert "twice" not in groups


def test_percentile_range_matches_numpy_quantiles():
    from ghostface_keras.export.activation_ranges import percentile_range

    values = np.concatenate([np.random.default_rng(0).normal(0.5, 1.0, 200_000), [80.0, -60.0]])
    low, high = values.min(), values.max()
    counts = np.histogram(values, bins=4096, range=(low, high))[0]
    bin_width = (high - low) / 4096
    clipped = percentile_range(low, high, counts, 99.9)
    expected = np.quantile(values, [0.001, 0.999])
    np.testing.assert_allclose(clipped, expected, atol=2 * bin_width)
    assert percentile_range(0.5, 2.0, np.ones(10), 99.0)[0] == 0.0  # zero stays inside the range


def test_percentile_clipping_cuts_an_outlier_channel_range(tmp_path):
    """The int8 output scale follows the 99.99th percentile of the activations, not one outlier."""
    inputs = keras.Input((8, 8, 1))
    scaled = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(inputs)
    model = keras.Model(inputs, keras.layers.Flatten()(scaled))
    model.get_layer("conv").set_weights([np.ones((1, 1, 1, 4), np.float32)])
    images = np.random.default_rng(1).uniform(-1, 1, (200, 8, 8, 1)).astype(np.float32)
    images[0, 0, 0, 0] = 50.0  # 4 output values of 51200 far outside the bulk
    clipped = export.export_tflite(model, tmp_path / "p.tflite", "int8", images, equalize=False,
                                   int8_io=True, activation_percentile=99.99)
    plain = export.export_tflite(model, tmp_path / "m.tflite", "int8", images, equalize=False, int8_io=True,
                                 activation_percentile=None)
    scale = {name: export.make_interpreter(path).get_output_details()[0]["quantization"][0]
             for name, path in (("clipped", clipped), ("plain", plain))}
    np.testing.assert_allclose(scale["plain"], (50.0 - images.min()) / 255, rtol=0.02)
    low, high = np.quantile(np.asarray(model(images)), [0.0001, 0.9999])
    np.testing.assert_allclose(scale["clipped"], (high - low) / 255, rtol=0.02)


def test_auto_percentile_keeps_the_candidate_closest_to_float(tmp_path):
    """'auto' scores every candidate on held-out calibration images; re-scoring the chosen file agrees."""
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize
    from ghostface_keras.export import activation_ranges
    from ghostface_keras.export.saved_model import _write_saved_model

    model = tiny_face_model(1)
    calibration = face_like_images(count=16, seed=5)
    staging = tmp_path / "saved"
    _write_saved_model(model, staging, 1, uint8_signature=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(staging), signature_keys=["serving_default"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()

    flatbuffer, chosen, scores = activation_ranges.quantize_with_best_percentile(
        calibrated, calibration, lambda content: mlir_quantize(content), candidates=(99.0, 99.99, 100.0)
    )
    assert set(scores) == {99.0, 99.99, 100.0} and chosen == max(scores, key=scores.get)
    path = tmp_path / "chosen.tflite"
    path.write_bytes(flatbuffer)
    held_out = calibration[-4:]  # min(32, 16 // 4) images held out of the histograms
    ours, reference = export.run_tflite(path, held_out), np.asarray(model(held_out, training=False))
    cosine = (ours * reference).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.mean() == pytest.approx(scores[chosen], abs=1e-3)


def test_auto_percentile_needs_enough_calibration_images(tmp_path):
    with pytest.raises(ExportError, match="at least 8 calibration images"):
        export.export_tflite(tiny_face_model(1), tmp_path / "m.tflite", "int8", face_like_images(count=4))
