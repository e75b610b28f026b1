"""Builder conventions (keras.applications style): `stem_strides` / `embedding_bn_scale` with their
deprecated aliases, `weights=` on every builder, and `create_model(name, pretrained=...)`."""

from __future__ import annotations

import inspect
import re
import shutil
import warnings

import keras
import numpy as np
import pytest

import ghostface_keras as g
from ghostface_keras.models.blocks import LayerSettings, gdc_head
from ghostface_keras.models.official import inspect_official, load_official
from ghostface_keras.core.errors import GhostFaceError, ModelLoadError, ModelNameError
from ghostface_keras.models import ghostnet_features

SMALL = {"width": 0.25, "input_shape": (64, 64, 3)}
PROBE = np.random.default_rng(3).uniform(-1, 1, size=(2, 112, 112, 3)).astype("float32")


def _randomize(model, seed=0):
    """Random values for every weight, BN statistics included (variances positive), so copies are checked."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        values = rng.normal(0, 0.2, size=weight.shape)
        if "variance" in weight.path:
            values = np.abs(values) + 0.5
        weight.assign(values.astype("float32"))
    return model


def _weights_of(model):
    return {f"{layer.name}/{i}": np.asarray(w) for layer in model.layers for i, w in enumerate(layer.get_weights())}


def _assert_same_weights(a, b):
    first, second = _weights_of(a), _weights_of(b)
    assert sorted(first) == sorted(second)
    for key, value in first.items():
        np.testing.assert_array_equal(value, second[key], err_msg=key)


def _rename_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and "is deprecated; use" in str(w.message)]


# ------------------------------------------------------------------------------------------ renamed arguments

@pytest.mark.parametrize("builder, old, new", [
    (g.GhostFaceNetV1, {"strides": 1}, {"stem_strides": 1}),
    (g.GhostFaceNetV1, {"scale": False}, {"embedding_bn_scale": False}),
    (g.GhostFaceNetV2, {"strides": 1, "scale": False}, {"stem_strides": 1, "embedding_bn_scale": False}),
    (g.MobileFaceNet, {"scale": False}, {"embedding_bn_scale": False}),
    (g.MMobileFaceNet, {"scale": False}, {"embedding_bn_scale": False}),
])
def test_deprecated_aliases_warn_and_build_identical_models(builder, old, new):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        legacy = builder(**SMALL, **old)
    messages = _rename_warnings(caught)
    assert len(messages) == len(old)
    for (old_name, _), new_name in zip(sorted(old.items()), sorted(new)):
        assert any(f"({old_name}=...)" in m and f"use {new_name}=" in m for m in messages), messages
    assert all(w.filename == __file__ for w in caught if "is deprecated; use" in str(w.message))  # points at caller
    current = builder(**SMALL, **new)
    assert legacy.name == current.name
    assert [layer.name for layer in legacy.layers] == [layer.name for layer in current.layers]
    assert legacy.count_params() == current.count_params()
    assert legacy.get_layer("pre_embedding").scale is current.get_layer("pre_embedding").scale


def test_new_names_keep_model_names_positions_and_defaults():
    signature = inspect.signature(g.GhostFaceNetV1)
    assert list(signature.parameters)[:4] == ["width", "stem_strides", "use_bias", "embedding_bn_scale"]
    assert "strides" not in signature.parameters and "scale" not in signature.parameters
    assert signature.parameters["weights"].default is None
    for builder in (g.GhostFaceNetV2, g.GhostNetV1, g.GhostNetV2, g.MobileFaceNet):
        assert inspect.signature(builder).parameters["weights"].default is None
    model = g.GhostFaceNetV1(0.25, 1, input_shape=(64, 64, 3))   # positional calls keep working
    assert model.name == "GhostFaceNetV1-0.25-1" and model.get_layer("stem_conv").strides == (1, 1)
    assert g.get_model_spec("GhostFaceNetV1-1.3-1").config["stem_strides"] == 1


def test_old_and_new_name_together_raise_type_error():
    with pytest.raises(TypeError, match="both strides= .*and stem_strides="):
        g.GhostFaceNetV1(strides=1, stem_strides=1)
    with pytest.raises(TypeError, match="both strides="):
        g.GhostFaceNetV2(0.5, 2, strides=2)                          # new name given positionally
    with pytest.raises(TypeError, match="both scale= .*and embedding_bn_scale="):
        g.MobileFaceNet(scale=True, embedding_bn_scale=True)
    with pytest.raises(TypeError, match="both scale="):
        g.MMobileFaceNet(scale=True, embedding_bn_scale=False)
    with pytest.raises(TypeError, match="unexpected keyword argument 'stride'"):
        g.GhostFaceNetV1(stride=1)                                  # a typo is still an error


def test_blocks_and_create_model_accept_the_old_names():
    inputs = keras.Input((64, 64, 3))
    with pytest.warns(DeprecationWarning, match="use stem_strides="):
        features = ghostnet_features(inputs, width=0.25, strides=1)
    assert features.shape[1] == 4
    with pytest.warns(DeprecationWarning, match="use embedding_bn_scale="):
        embedding = gdc_head(features, LayerSettings(), embedding_size=8, scale=False)
    assert not keras.Model(inputs, embedding).get_layer("pre_embedding").scale
    with pytest.warns(DeprecationWarning, match="use stem_strides="):
        model = g.create_model("GhostFaceNetV1-0.5-2", input_shape=(64, 64, 3), strides=1)
    assert model.name == "GhostFaceNetV1-0.5-1"


# ------------------------------------------------------------------------------------------ weights= from files

# MobileFaceNet in the default tier; the GhostFaceNetV2 and GhostNet cases (10-13 s each) in the large tier
@pytest.mark.parametrize("builder, suffix", [
    pytest.param(g.GhostFaceNetV2, ".keras", marks=pytest.mark.large),
    pytest.param(g.GhostFaceNetV2, ".weights.h5", marks=pytest.mark.large),
    (g.MobileFaceNet, ".weights.h5"),
    pytest.param(lambda **kw: g.GhostNetV1(num_classes=7, **kw), ".keras", marks=pytest.mark.large),
])
def test_weights_file_round_trips_exact_weights(builder, suffix, tmp_path):
    original = _randomize(builder(**SMALL))
    path = tmp_path / f"model{suffix}"
    original.save_weights(path) if suffix == ".weights.h5" else original.save(path)
    for given in (path, str(path)):
        loaded = builder(**SMALL, weights=given)
        _assert_same_weights(original, loaded)
    batch = PROBE[:, :64, :64]
    np.testing.assert_array_equal(np.asarray(original(batch, training=False)),
                                  np.asarray(loaded(batch, training=False)))


def test_weights_from_a_training_model_take_its_embedding_model(tmp_path):
    embedding = _randomize(g.GhostFaceNetV1(**SMALL))
    inputs = keras.Input(SMALL["input_shape"])
    training = keras.Model(inputs, keras.layers.Dense(5, name="head")(embedding(inputs)))
    training.save(tmp_path / "training.keras")
    _assert_same_weights(embedding, g.GhostFaceNetV1(**SMALL, weights=tmp_path / "training.keras"))


@pytest.mark.parametrize("suffix", [".keras", ".weights.h5"])
@pytest.mark.parametrize("other, layer, shapes", [
    ({"width": 0.5}, "stem_conv", r"\[\(3, 3, 3, 8\)\] in the file, GhostFaceNetV1-0.25-2 expects \[\(3, 3, 3, 4\)\]"),
    ({"embedding_size": 64}, "GDC_conv", r"\[\(1, 1, 128, 64\)\] in the file, .* expects \[\(1, 1, 128, 512\)\]"),
    ({"use_bias": True}, "GDC_conv", r"\(512,\)\] in the file"),
])
def test_weights_that_do_not_fit_raise_model_load_error_naming_file_and_layer(suffix, other, layer, shapes,
                                                                               tmp_path):
    path = tmp_path / f"other{suffix}"
    source = g.GhostFaceNetV1(**{**SMALL, **other})
    source.save_weights(path) if suffix == ".weights.h5" else source.save(path)
    with pytest.raises(ModelLoadError) as raised:
        g.GhostFaceNetV1(**SMALL, weights=path)
    message = str(raised.value)
    assert isinstance(raised.value, GhostFaceError)
    assert message.startswith(str(path)) and "\n" not in message
    assert f"layer {layer!r}" in message
    assert re.search(shapes, message), message


def test_weights_of_another_architecture_raise_model_load_error(tmp_path):
    g.MobileFaceNet(**SMALL).save(tmp_path / "mobilefacenet.keras")
    with pytest.raises(ModelLoadError, match=r"mobilefacenet\.keras: layer 'stem_conv' has weight shapes"):
        g.GhostFaceNetV2(**SMALL, weights=tmp_path / "mobilefacenet.keras")
    g.GhostFaceNetV1(**SMALL).save_weights(tmp_path / "v1.weights.h5")
    with pytest.raises(ModelLoadError, match=r"v1\.weights\.h5: layer '\w+' \(entry 'layers/\w+'\) has weight shapes"):
        g.GhostFaceNetV2(**SMALL, weights=tmp_path / "v1.weights.h5")


def test_missing_damaged_and_unknown_weights(tmp_path):
    with pytest.raises(ModelLoadError, match=r"absent\.keras: model file not found"):
        g.GhostFaceNetV1(**SMALL, weights=tmp_path / "absent.keras")
    damaged = tmp_path / "damaged.keras"
    damaged.write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError, match=r"damaged\.keras: not a \.keras file") as raised:
        g.MobileFaceNet(**SMALL, weights=damaged)
    assert "\n" not in str(raised.value)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match=r"garbage\.h5: not a readable HDF5 model file"):
        g.GhostFaceNetV1(**SMALL, weights=garbage)
    with pytest.raises(ModelLoadError, match="imagenet: no such model file, and no released checkpoint has that name"):
        g.GhostNetV1(width=0.25, input_shape=(64, 64, 3), weights="imagenet")
    with pytest.raises(TypeError, match="weights must be None"):
        g.GhostFaceNetV1(**SMALL, weights=3)


def test_create_model_pretrained_from_a_local_file_and_errors(tmp_path):
    original = _randomize(g.create_model("MobileFaceNet", **SMALL))
    original.save(tmp_path / "mine.keras")
    loaded = g.create_model("mobilefacenet", pretrained=str(tmp_path / "mine.keras"), **SMALL)
    _assert_same_weights(original, loaded)
    with pytest.raises(ModelLoadError, match="mine.keras: layer 'stem_conv'"):
        g.create_model("MobileFaceNet", pretrained=tmp_path / "mine.keras", width=0.5, input_shape=(64, 64, 3))
    with pytest.raises(ModelNameError, match="^no released checkpoint for GhostFaceNetV2-1.3-2; models with "
                                             "released weights: GhostFaceNetV1-0.5-2"):
        g.create_model("GhostFaceNetV2-1.3-2", pretrained=True)
    with pytest.raises(TypeError, match="both pretrained= and weights="):
        g.create_model("MobileFaceNet", pretrained=True, weights=None)
    assert g.create_model("MobileFaceNet", pretrained=False, **SMALL).count_params() == original.count_params()


# ------------------------------------------------------------------------------------------ the released checkpoint

@pytest.fixture(scope="module")
def official(released):
    """`load_official` on the released GN_W0.5_S2 checkpoint and its embeddings of PROBE."""
    model = load_official(str(released))
    return model, np.asarray(model(PROBE, training=False))


def test_weights_official_h5_equals_load_official(released, official):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert inspect_official(str(released)).build().count_params() == official[0].count_params()
    assert not _rename_warnings(caught)   # the converter uses the new names
    model = g.GhostFaceNetV1(width=0.5, weights=released)
    assert model.name == "GhostFaceNetV1-0.5-2"
    _assert_same_weights(official[0], model)
    np.testing.assert_array_equal(np.asarray(model(PROBE, training=False)), official[1])
    local = g.create_model("GhostFaceNetV1-0.5-2", pretrained=str(released))
    np.testing.assert_array_equal(np.asarray(local(PROBE, training=False)), official[1])


def test_official_h5_into_a_different_architecture_names_file_and_layer(released):
    with pytest.raises(ModelLoadError) as raised:
        g.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3), weights=released)
    message = str(raised.value)
    assert message.startswith(str(released)) and "\n" not in message
    assert "layer 'GDC_dw' has weight shapes [(4, 4, 256, 1)] in the file" in message
    assert "GhostFaceNetV1-0.5-2 expects [(2, 2, 256, 1)]" in message


def test_create_model_pretrained_true_uses_the_cached_release(released, official, tmp_path, monkeypatch):
    """The download is faked as in test_pretrained: the checked file already sits in $GHOSTFACE_HOME's cache."""
    monkeypatch.setenv("GHOSTFACE_HOME", str(tmp_path))
    cache = tmp_path / "ghostface_keras" / "v1.0"
    cache.mkdir(parents=True)
    shutil.copy(released, cache / released.name)
    model = g.create_model("ghostfacenetv1-0.5-2", pretrained=True)
    np.testing.assert_allclose(np.asarray(model(PROBE, training=False)), official[1], rtol=0, atol=1e-5)
    assert (cache / "GN_W0.5_S2_ArcFace_epoch16.keras").exists()     # converted once, then reused
    by_name = g.GhostFaceNetV1(width=0.5, weights="GhostFaceNetV1-0.5-2-ArcFace-MS1MV2")
    _assert_same_weights(model, by_name)
    with pytest.raises(ModelLoadError, match="GhostFaceNetV1-0.5-2: layer "
                                             "'stem_conv'"):
        g.GhostFaceNetV1(width=1.0, weights="GhostFaceNetV1-0.5-2")
