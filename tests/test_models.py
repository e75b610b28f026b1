"""Architectures: parameter counts and MACs against the official code and the papers, layer names,
shapes, determinism, and the exact functions of the quirky layers."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import keras
import numpy as np
import pytest

import ghostface_keras as g
from ghostface_keras.models.blocks import BilinearResize, LayerSettings, dfc_attention, make_divisible

OFFICIAL_BUILDS = {
    "ghostfacenetv1-w1.0-s2": lambda: g.GhostFaceNetV1(width=1.0, stem_strides=2),
    "ghostfacenetv1-w1.3-s2": lambda: g.GhostFaceNetV1(width=1.3, stem_strides=2),
    "ghostfacenetv1-w1.3-s1": lambda: g.GhostFaceNetV1(width=1.3, stem_strides=1, use_bias=True),
    "ghostfacenetv2-w1.3-s2": lambda: g.GhostFaceNetV2(width=1.3, stem_strides=2),
    "ghostfacenetv2-w1.3-s1": lambda: g.GhostFaceNetV2(width=1.3, stem_strides=1),
}


@pytest.mark.parametrize("variant", sorted(OFFICIAL_BUILDS))
def test_params_and_macs_equal_official(variant, reference_dir: Path):
    summary = json.loads((reference_dir / variant / "summary.json").read_text())
    flops = json.loads((reference_dir / variant / "flops.json").read_text())
    model = OFFICIAL_BUILDS[variant]()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert model.count_params() == summary["total_params"]
    assert trainable == summary["trainable_params"]
    assert g.count_flops(model) == flops["analytic_macs_conv_dense"]
    assert model.output_shape == (None, 512)
    # same multiset of weight shapes per layer class as the official model
    ours = sorted((type(layer).__name__, tuple(tuple(w.shape) for w in layer.weights))
                  for layer in model.layers if layer.weights)
    theirs = sorted((layer["class"], tuple(tuple(w["shape"]) for w in layer["weights"]))
                    for layer in summary["layers"] if layer["weights"])
    assert ours == theirs


def test_registry_names_match_official_builds(reference_dir: Path):
    summary = json.loads((reference_dir / "ghostfacenetv1-w1.3-s2" / "summary.json").read_text())
    model = g.create_model("ghostfacenetv1-1.3-2", use_bias=summary["build"]["use_bias"])
    assert model.count_params() == summary["total_params"]


@pytest.mark.parametrize("width, params_m, macs_m", [(0.5, 2.6, 42), (1.0, 5.2, 141), (1.3, 7.3, 226)])
def test_ghostnet_imagenet_sizes_match_paper_table7(width, params_m, macs_m):
    model = g.GhostNetV1(width=width, input_shape=(224, 224, 3))
    assert model.output_shape == (None, 1000)
    assert model.count_params() / 1e6 == pytest.approx(params_m, rel=0.05)
    assert g.count_flops(model) / 1e6 == pytest.approx(macs_m, rel=0.05)


@pytest.mark.parametrize("build, params_m, macs_m", [
    (g.MobileFaceNet, 1.1, 236.75),
    (g.MMobileFaceNet, 2.1, 456.89),
])
def test_mobilefacenet_family_sizes_match_paper(build, params_m, macs_m):
    model = build()
    assert model.output_shape == (None, 512)
    assert model.count_params() / 1e6 == pytest.approx(params_m, rel=0.15)
    assert g.count_flops(model) / 1e6 == pytest.approx(macs_m, rel=0.15)


def test_mmobilefacenet_doubles_only_the_expansion_channels():
    base, doubled = g.MobileFaceNet(), g.MMobileFaceNet()
    assert base.get_layer("block1_expand_conv").filters * 2 == doubled.get_layer("block1_expand_conv").filters
    assert base.get_layer("block1_project_conv").filters == doubled.get_layer("block1_project_conv").filters
    assert base.get_layer("stem_conv").filters == doubled.get_layer("stem_conv").filters


def test_count_flops_matches_hand_count_on_a_tiny_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs)          # 3*3*3*4 * 4*4 = 1728
    x = keras.layers.DepthwiseConv2D(3, padding="valid")(x)                    # 3*3*4 * 2*2 = 144
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5)(x)                                               # 16*5 = 80
    assert g.count_flops(keras.Model(inputs, x)) == 1728 + 144 + 80


def test_make_divisible_matches_official_channel_plan():
    widths = [make_divisible(c * 1.3) for c in (16, 48, 72, 120, 240, 200, 184, 480, 672, 960, 512)]
    assert widths == [20, 64, 92, 156, 312, 260, 240, 624, 872, 1248, 664]
    assert make_divisible(1) == 4


def test_keras2_hard_sigmoid_differs_from_keras3():
    x = np.linspace(-4, 4, 81).astype("float32")
    ours = keras.ops.convert_to_numpy(g.hard_sigmoid_keras2(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(ours, np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)
    keras3 = keras.ops.convert_to_numpy(keras.activations.hard_sigmoid(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(keras3, np.clip(x / 6 + 0.5, 0, 1), atol=1e-6)


def test_dfc_resize_is_half_pixel_bilinear():
    """Resizing a 3x3 ramp to 7x7 must give the official (TF2 half-pixel) values."""
    ramp = np.arange(9, dtype="float32").reshape(1, 3, 3, 1)
    resized = BilinearResize(7, 7)(ramp)
    first_row = keras.ops.convert_to_numpy(resized)[0, 0, :, 0]
    np.testing.assert_allclose(first_row, [0, 1 / 7, 4 / 7, 1, 10 / 7, 13 / 7, 2], atol=1e-5)


def test_dfc_attention_floors_odd_sizes_and_restores_them():
    inputs = keras.Input((7, 7, 8))
    gate = dfc_attention(inputs, 8, LayerSettings(padding="symmetric"), "dfc")
    model = keras.Model(inputs, gate)
    assert model.get_layer("dfc_pool").output.shape[1:3] == (3, 3)
    assert model.output_shape == (None, 7, 7, 8)
    out = model(np.random.default_rng(0).normal(size=(2, 7, 7, 8)).astype("float32"))
    assert np.all((keras.ops.convert_to_numpy(out) > 0) & (keras.ops.convert_to_numpy(out) < 1))


def test_v2_eager_call_uses_inference_batchnorm():
    """`model(x)` must equal `model(x, training=False)`: keras.layers.Resizing (a preprocessing layer whose
    call defaults to training=True) used to switch every later BatchNorm of an eager call to batch statistics."""
    model = g.GhostFaceNetV2(width=0.5, input_shape=(64, 64, 3), stem_strides=1)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights([gamma, beta, rng.normal(0, 0.3, mean.shape), rng.uniform(0.5, 2.0, variance.shape)])
    batch = rng.uniform(-1, 1, size=(4, 64, 64, 3)).astype("float32")
    eager = keras.ops.convert_to_numpy(model(batch))
    np.testing.assert_allclose(eager, keras.ops.convert_to_numpy(model(batch, training=False)), atol=1e-5)
    np.testing.assert_allclose(eager, model.predict(batch, verbose=0), atol=1e-4)


def test_v1_stride2_uses_tensorflow_same_padding_and_v2_symmetric_padding():
    v1 = g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3))
    v2 = g.GhostFaceNetV2(width=0.5, input_shape=(64, 64, 3))
    assert v1.get_layer("stem_conv").padding == "same"
    assert v2.get_layer("stem_conv").padding == "valid"
    assert v2.get_layer("stem_conv_pad").padding == ((1, 1), (1, 1))
    assert v2.get_layer("stack4_down_dw_pad").padding == ((2, 2), (2, 2))


@pytest.mark.parametrize("build", [
    lambda: g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3)),
    lambda: g.GhostFaceNetV2(width=0.5, input_shape=(64, 64, 3), stem_strides=1),
    lambda: g.MobileFaceNet(width=0.25, input_shape=(64, 64, 3)),
    lambda: g.GhostNetV1(width=0.5, input_shape=(64, 64, 3), num_classes=7),
])
def test_small_variants_forward_pass(build):
    model = build()
    batch = np.random.default_rng(1).uniform(-1, 1, size=(2, 64, 64, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(model(batch, training=False))
    assert out.shape == (2, model.output_shape[-1])
    assert np.all(np.isfinite(out))
    if "probabilities" in [layer.name for layer in model.layers]:
        # an untrained classifier with GhostNet's He (fan-out) initializer saturates its softmax: look at the logits
        logits = keras.Model(model.inputs, model.get_layer("predictions").output)
        out = keras.ops.convert_to_numpy(logits(batch, training=False))
    assert not np.allclose(out[0], out[1])  # depends on the input


def test_every_layer_is_named_from_a_stable_prefix():
    model = g.GhostFaceNetV2(width=0.5, input_shape=(64, 64, 3))
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    allowed = ("input", "stem", "stack", "final", "GDC_", "pre_embedding", "embedding")
    assert all(name.startswith(allowed) for name in names), [n for n in names if not n.startswith(allowed)]
    prelus = [layer for layer in model.layers if isinstance(layer, keras.layers.PReLU)]
    assert prelus and all(layer.shared_axes == [1, 2] for layer in prelus)
    assert model.get_layer("embedding").dtype_policy.compute_dtype == "float32"


def test_same_seed_builds_identical_weights_and_names():
    def build():
        keras.utils.set_random_seed(7)
        return g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3))

    first, second = build(), build()
    assert [layer.name for layer in first.layers] == [layer.name for layer in second.layers]
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_weight_decay_is_l2_of_half_on_kernels_only():
    model = g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3), weight_decay=5e-4)
    conv = model.get_layer("stem_conv")
    assert conv.kernel_regularizer.l2 == pytest.approx(2.5e-4)
    assert model.get_layer("stack1_ghost1_cheap_dw").depthwise_regularizer.l2 == pytest.approx(2.5e-4)
    assert model.get_layer("stack4_se_reduce").bias_regularizer is None
    assert model.get_layer("stem_bn").gamma_regularizer is None
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    model(np.zeros((1, 64, 64, 3), "float32"))
    expected = sum(2.5e-4 * float(np.sum(keras.ops.convert_to_numpy(layer.kernel) ** 2)) for layer in kernels)
    assert float(sum(keras.ops.convert_to_numpy(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-4)
    assert not g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3), weight_decay=0).losses


def test_registry_lookup_overrides_and_errors():
    assert g.get_model_spec("GHOSTFACENETV1-1.0-2").name == "GhostFaceNetV1-1-2"
    assert g.get_model_spec("GhostFaceNetV1-1.3-1").config["use_bias"] is True
    model = g.create_model("GhostFaceNetV1-0.5-2", input_shape=(64, 64, 3), embedding_size=128)
    assert model.output_shape == (None, 128)
    with pytest.raises(g.ModelNameError, match="GhostFaceNetV7.*known models"):
        g.create_model("GhostFaceNetV7-1-2")
    assert {"MobileFaceNet", "MMobileFaceNet", "GhostNetV1-1"} <= set(g.list_models())
    for name in g.list_models():
        spec = g.get_model_spec(name)
        assert spec.input_shape[-1] == 3 and spec.normalization


def test_model_code_uses_keras_only():
    """Builders must run on every Keras backend: no TensorFlow import in model or weight-file code. The one
    TensorFlow-only piece, the fused batch-norm kernel, lives in `core.tensorflow_kernels`, and
    `models.batch_norm` imports it only after checking that Keras runs on TensorFlow."""
    package = Path(g.__file__).parent
    paths = sorted((package / "models").glob("*.py")) + sorted((package / "weights").glob("*.py"))
    assert package / "models" / "blocks.py" in paths
    for path in paths:
        tree = ast.parse(path.read_text())
        imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        imported += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [name for name in imported if name.split(".")[0] == "tensorflow"], path
    guarded = (package / "models" / "batch_norm.py").read_text()
    assert guarded.index('keras.backend.backend() == "tensorflow"') < guarded.index("import tensorflow_kernels")


def test_readme_model_zoo_table_is_the_registry():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in readme.splitlines()
            if line.startswith("| GhostFaceNet") or line.startswith("| GhostNet") or "MobileFaceNet |" in line[:20]]
    table = {cells[0].strip(): int(cells[1].strip().replace(",", "")) for cells in rows if cells[1].strip()[0].isdigit()}
    assert sorted(table) == sorted(g.list_models())
    assert table["MobileFaceNet"] == g.MobileFaceNet().count_params()
    assert table["GhostFaceNetV2-1.3-2"] == 6839104
    # the reported and weights columns are the registry's (which reads them from the checkpoint table)
    for cells in (cells for cells in rows if cells[1].strip()[0].isdigit()):
        spec = g.get_model_spec(cells[0].strip())
        reported = ", ".join(f"{k} {v:g}" for k, v in spec.reported.items()) or "-"
        assert (cells[4].strip(), cells[5].strip()) == (reported, spec.pretrained or "-"), cells[0]


def test_zoo_command_prints_the_registry_rows(capsys):
    from ghostface_keras.cli import zoo

    assert zoo.main(["MobileFaceNet", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| name | params | MFLOPs | input | reported | weights |"
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in lines[2:]}
    assert rows["MobileFaceNet"] == f"{g.MobileFaceNet().count_params():,}"
    assert zoo.main(["NoSuchModel"]) == 2
    assert capsys.readouterr().err.strip() == "ghostface-zoo: error: no model matches 'NoSuchModel'"


def _conv_recipe(layers: list[tuple[str, dict]]) -> list[tuple]:
    """(class, initializer, mode, distribution, scale, L2) of every conv / depthwise kernel, in model order."""
    rows = []
    for class_name, config in layers:
        if class_name not in ("Conv2D", "DepthwiseConv2D"):
            continue
        key = "depthwise" if class_name == "DepthwiseConv2D" else "kernel"
        initializer, regularizer = config[f"{key}_initializer"], config[f"{key}_regularizer"]
        init_config = initializer.get("config") or {}
        rows.append((class_name, initializer["class_name"], init_config.get("mode"), init_config.get("distribution"),
                     init_config.get("scale"), round(float(regularizer["config"]["l2"]), 8) if regularizer else None))
    return rows


@pytest.mark.parametrize("variant, builder", [
    ("ghostfacenetv1-w1.3-s2", lambda: g.GhostFaceNetV1(width=1.3, stem_strides=2, weight_decay=5e-4)),
    pytest.param("ghostfacenetv1-w1.3-s1", lambda: g.GhostFaceNetV1(width=1.3, stem_strides=1, weight_decay=5e-4),
                 marks=pytest.mark.large),
    pytest.param("ghostfacenetv2-w1.3-s1", lambda: g.GhostFaceNetV2(width=1.3, stem_strides=1, weight_decay=5e-4),
                 marks=pytest.mark.large),
])
def test_initializers_and_regularized_kernels_are_the_official_ones(variant, builder, reference_dir: Path):
    """Read from the official code's own saved model: V1's VarianceScaling(2, fan_out, truncated normal) backbone,
    Glorot for V2 and the GDC head, L2(2.5e-4) on every conv and depthwise kernel, layer by layer."""
    import h5py

    with h5py.File(reference_dir / variant / "model.h5", "r") as file:
        official = json.loads(file.attrs["model_config"])["config"]["layers"]
    expected = _conv_recipe([(layer["class_name"], layer["config"]) for layer in official])
    ours = _conv_recipe([(type(layer).__name__, json.loads(json.dumps(layer.get_config(), default=str)))
                         for layer in builder().layers])
    assert len(ours) == len(expected) > 90
    assert ours == expected


# ------------------------------------------------------------------------------------ initial weights on the host
@pytest.mark.parametrize("config, shape, expected_std, bound", [
    # He fan-out truncated normal (GhostNetV1): std sqrt(2 / (3*3*32)), nothing beyond 2 std of the untruncated
    ({"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"}, (3, 3, 16, 32),
     np.sqrt(2 / 288), 2 * np.sqrt(2 / 288) / 0.87962566103423978),
    # Glorot uniform: U(-l, l), l = sqrt(6 / (fan_in + fan_out)), std l / sqrt(3)
    ({"scale": 1.0, "mode": "fan_avg", "distribution": "uniform"}, (5, 7, 24, 40),
     np.sqrt(6 / (35 * 64)) / np.sqrt(3), np.sqrt(6 / (35 * 64))),
    # Glorot normal (GDC_conv, the head), which Keras draws truncated: a dense (512, 1000) kernel
    ({"scale": 1.0, "mode": "fan_avg", "distribution": "truncated_normal"}, (512, 1000),
     np.sqrt(2 / 1512), 2 * np.sqrt(2 / 1512) / 0.87962566103423978),
    ({"scale": 1.0, "mode": "fan_in", "distribution": "untruncated_normal"}, (256, 300), np.sqrt(1 / 256), None),
])
def test_host_drawn_values_follow_the_keras_variance_scaling_formula(config, shape, expected_std, bound):
    from ghostface_keras.models.blocks import variance_scaling_values

    values = variance_scaling_values(config, shape, np.random.default_rng(0))
    assert values.shape == shape
    assert abs(values.mean()) < 0.05 * expected_std
    assert values.std() == pytest.approx(expected_std, rel=0.03)
    if bound is not None:
        assert np.abs(values).max() <= bound + 1e-12 and np.abs(values).max() > 0.95 * bound


def test_builders_draw_on_the_host_and_keep_the_builtin_initializers_in_their_configs():
    from ghostface_keras.models.blocks import HostDrawn

    keras.utils.set_random_seed(3)
    model = g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3))
    keras.utils.set_random_seed(4)
    other = g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3))
    kernels = [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D,
                                                                    keras.layers.DepthwiseConv2D))]
    assert kernels and not any(isinstance(getattr(layer, name, None), HostDrawn) for layer in model.layers
                               for name in ("kernel_initializer", "depthwise_initializer"))
    stem = model.get_layer("stem_conv")
    assert type(stem.kernel_initializer).__name__ == "VarianceScaling"
    assert keras.ops.convert_to_numpy(stem.kernel).std() == pytest.approx(np.sqrt(2 / (3 * 3 * stem.filters)), rel=0.2)
    assert not np.array_equal(keras.ops.convert_to_numpy(stem.kernel),
                              keras.ops.convert_to_numpy(other.get_layer("stem_conv").kernel))
    # a HostDrawn left in a config (block builders used directly) still saves and loads
    config = keras.initializers.serialize(HostDrawn("he_normal"))
    assert type(keras.initializers.deserialize(config).initializer).__name__ == "HeNormal"


def test_one_seed_gives_the_same_initial_weights_on_tensorflow_and_jax(tmp_path):
    pytest.importorskip("jax")
    import os
    import subprocess
    import sys

    script = ("import sys, numpy as np, keras\n"
              "import ghostface_keras as g\n"
              "keras.utils.set_random_seed(11)\n"
              "model = g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3))\n"
              "np.savez(sys.argv[1], *[keras.ops.convert_to_numpy(w) for w in model.weights])\n")
    root = Path(__file__).resolve().parents[1]
    files = {}
    for backend in ("tensorflow", "jax"):
        files[backend] = tmp_path / f"{backend}.npz"
        done = subprocess.run([sys.executable, "-c", script, str(files[backend])], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(root),
                                                "TF_CPP_MIN_LOG_LEVEL": "3"})
        assert done.returncode == 0, done.stderr[-2000:]
    tf_weights, jax_weights = np.load(files["tensorflow"]), np.load(files["jax"])
    assert len(tf_weights.files) > 100
    for name in tf_weights.files:
        np.testing.assert_array_equal(tf_weights[name], jax_weights[name])


@pytest.mark.parametrize("name, shape, expected_std", [
    ("glorot_uniform", (4, 4, 664, 1), np.sqrt(2 / (664 * 16 + 16))),   # GDC_dw: fan_avg of a depthwise kernel
    ("glorot_normal", (1, 1, 664, 512), np.sqrt(2 / (664 + 512))),       # GDC_conv
    ("he_normal", (3, 3, 64, 128), np.sqrt(2 / (9 * 64))),
])
def test_host_drawn_reads_the_builtin_initializers_settings(name, shape, expected_std):
    """Glorot / He configs hold only their seed: the draw must use the initializer's own scale, mode, distribution."""
    from ghostface_keras.models.blocks import HostDrawn

    keras.utils.set_random_seed(0)
    values = keras.ops.convert_to_numpy(HostDrawn(name)(shape))
    assert values.std() == pytest.approx(expected_std, rel=0.03)
