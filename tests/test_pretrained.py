"""Released-checkpoint registry and load_pretrained, with local files only (never the network)."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

import ghostface_keras as g
from ghostface_keras.weights.checkpoints import CHECKPOINTS, list_pretrained
from ghostface_keras.models.pretrained import PretrainedError, get_checkpoint, load_pretrained


def test_every_checkpoint_names_a_registry_model_and_an_official_release_url():
    for checkpoint in CHECKPOINTS.values():
        spec = g.get_model_spec(checkpoint.model)
        assert spec.name == checkpoint.model
        assert checkpoint.url.startswith("https://github.com/HamadYA/GhostFaceNets/releases/download/v1.")
        assert checkpoint.url.endswith(checkpoint.filename)
        assert checkpoint.reported["LFW"] > 99
    released = {g.get_model_spec(name).pretrained for name in g.list_models()} - {None}
    assert released <= set(list_pretrained())


def test_registry_reports_what_the_checkpoint_table_says_for_the_weights_it_loads():
    # V1-1.3-2 once listed MS1MV2 figures while `pretrained=True` loaded the MS1MV3 weights: the registry now
    # reads both from the one table, so a model's figures are those of the checkpoint it loads.
    for name in g.list_models():
        spec = g.get_model_spec(name)
        if spec.pretrained is None:
            continue
        checkpoint = get_checkpoint(spec.pretrained)
        assert checkpoint.model == spec.name
        assert dict(spec.reported) == dict(checkpoint.reported)
        assert checkpoint.training_set in spec.source
        assert spec.config["use_bias"] == checkpoint.gdc_bias
    spec = g.get_model_spec("GhostFaceNetV1-1.3-2")
    assert spec.reported["LFW"] == 99.68 and "MS1MV3" in spec.source
    assert g.get_model_spec("GhostFaceNetV2-1.3-2").reported["IJB-B"] == 91.7624


def test_model_names_pick_the_default_checkpoint():
    assert get_checkpoint("ghostfacenetv1-1.3-1").training_set == "MS1MV3"
    assert get_checkpoint("GhostFaceNetV1-1.0-2").filename == "GN_W1_S2_ArcFace_epoch18.h5"
    with pytest.raises(g.ModelNameError, match="no released checkpoint"):
        get_checkpoint("GhostFaceNetV2-1.3-2")



def test_load_pretrained_from_file_url_checks_hash_converts_and_caches(released, reference_dir, tmp_path):
    checkpoint = get_checkpoint("GhostFaceNetV1-0.5-2")
    assert hashlib.sha256(released.read_bytes()).hexdigest() == checkpoint.sha256
    model = load_pretrained("GhostFaceNetV1-0.5-2", cache_dir=str(tmp_path), origin=released.as_uri())
    inputs = np.load(reference_dir / "ghostfacenetv1-w1.3-s2" / "input.npy")
    want = np.load(released.parent / "reference_output_fp32.npy")
    got = np.asarray(model(inputs, training=False))
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    cached = tmp_path / "ghostface_keras" / "v1.0"
    assert (cached / "GN_W0.5_S2_ArcFace_epoch16.keras").exists()
    # second call: no download (an unreachable origin would fail) and the same function
    again = load_pretrained("GhostFaceNetV1-0.5-2", cache_dir=str(tmp_path), origin="file:///nonexistent/x.h5")
    np.testing.assert_allclose(np.asarray(again(inputs, training=False)), got, atol=1e-5)


def test_offline_error_says_where_to_put_the_file(tmp_path):
    with pytest.raises(PretrainedError, match=r"put it at .*ghostface_keras.*GN_W1_S2_ArcFace_epoch18\.h5"):
        load_pretrained("GhostFaceNetV1-1-2", cache_dir=str(tmp_path), origin=(tmp_path / "absent.h5").as_uri())


def test_wrong_hash_is_refused(released, tmp_path):
    target = tmp_path / "ghostface_keras" / "v1.0"
    target.mkdir(parents=True)
    tampered = target / "GN_W0.5_S2_ArcFace_epoch16.h5"
    shutil.copy(released, tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(PretrainedError):
        load_pretrained("GhostFaceNetV1-0.5-2", cache_dir=str(tmp_path), origin=(tmp_path / "absent.h5").as_uri())
