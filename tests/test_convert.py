"""Official Keras-2 .h5 -> our models: exact embeddings, all save layouts, clear errors, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from ghostface_keras import ConversionError
from ghostface_keras.models.official import convert_file, inspect_official, load_official

# real-size official checkpoints: V1-1.3-2 in the default tier, V2-1.3-1 (~10 s) in the large tier
FIXTURES_WITH_WEIGHTS = ["ghostfacenetv1-w1.3-s2", pytest.param("ghostfacenetv2-w1.3-s1", marks=pytest.mark.large),
                         pytest.param("ghostfacenetv1-w1.3-s1", marks=pytest.mark.slow)]


def _relative_error(got, want) -> float:
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())



@pytest.mark.parametrize("variant", FIXTURES_WITH_WEIGHTS)
def test_fixture_reproduces_official_embeddings(variant, reference_dir: Path):
    folder = reference_dir / variant
    summary = json.loads((folder / "summary.json").read_text())
    model = load_official(folder / "model.h5")
    assert model.count_params() == summary["total_params"]
    got = model(np.load(folder / "input.npy"), training=False)
    assert _relative_error(got, np.load(folder / "output.npy")) < 1e-4


def test_released_checkpoint_reproduces_official_fp32_output(released: Path, reference_dir: Path):
    variant = inspect_official(released)
    assert (variant.version, variant.width, variant.strides) == (1, 0.5, 2)
    assert not variant.use_bias and variant.scale and variant.se_gate == "hard_sigmoid_keras2"
    model = load_official(released)
    inputs = np.load(reference_dir / "ghostfacenetv1-w1.3-s2" / "input.npy")
    want = np.load(released.parent / "reference_output_fp32.npy")
    assert _relative_error(model(inputs, training=False), want) < 1e-4
    # the Keras 3 hard_sigmoid would not be exact: the gate choice matters
    keras3_gate = load_official(released, se_gate="hard_sigmoid")
    assert _relative_error(keras3_gate(inputs, training=False), want) > 1e-3


def _write_weights_only(source: Path, destination: Path) -> None:
    """What Keras 2's `save_weights(...h5)` writes: the model_weights group at the file root."""
    with h5py.File(source, "r") as full, h5py.File(destination, "w") as out:
        for key, value in full["model_weights"].attrs.items():
            out.attrs[key] = value
        for name in full["model_weights"]:
            full.copy(full["model_weights"][name], out, name=name)


@pytest.mark.parametrize("variant", ["ghostfacenetv2-w1.3-s1", "ghostfacenetv1-w1.3-s2"])
def test_weights_only_save_converts(variant, reference_dir: Path, tmp_path: Path):
    folder = reference_dir / variant
    weights_only = tmp_path / "weights.h5"
    _write_weights_only(folder / "model.h5", weights_only)
    model = load_official(weights_only)
    got = model(np.load(folder / "input.npy"), training=False)
    assert _relative_error(got, np.load(folder / "output.npy")) < 1e-4


def _write_nested_training_model(source: Path, destination: Path) -> None:
    """A Keras-2-style save of a training model whose first layer is the embedding model."""
    with h5py.File(source, "r") as full, h5py.File(destination, "w") as out:
        inner = json.loads(full.attrs["model_config"])
        outer = {"class_name": "Functional", "config": {"name": "train_model", "layers": [
            {"class_name": "InputLayer", "name": "input_1", "config": {"name": "input_1",
             "batch_input_shape": [None, 112, 112, 3]}, "inbound_nodes": []},
            {"class_name": "Functional", "name": "GhostNet", "config": inner["config"],
             "inbound_nodes": [[["input_1", 0, 0, {}]]]},
            {"class_name": "NormDense", "name": "NormDense", "config": {"name": "NormDense", "units": 10},
             "inbound_nodes": [[["GhostNet", 0, 0, {}]]]}],
            "input_layers": [["input_1", 0, 0]], "output_layers": [["NormDense", 0, 0]]}}
        out.attrs["model_config"] = json.dumps(outer)
        out.attrs["keras_version"] = full.attrs["keras_version"]
        group = out.create_group("model_weights")
        nested = group.create_group("GhostNet")
        names = []
        for layer_name in full["model_weights"]:
            layer = full["model_weights"][layer_name]
            for weight_name in layer.attrs.get("weight_names", []):
                weight_name = weight_name.decode() if isinstance(weight_name, bytes) else weight_name
                nested.create_dataset(weight_name, data=np.asarray(layer[weight_name]))
                names.append(weight_name)
        nested.attrs["weight_names"] = names
        head = group.create_group("NormDense")
        head.create_dataset("NormDense/kernel:0", data=np.zeros((512, 10), "float32"))
        head.attrs["weight_names"] = ["NormDense/kernel:0"]
        group.attrs["layer_names"] = ["input_1", "GhostNet", "NormDense"]
        for key in ("input_1",):
            group.create_group(key).attrs["weight_names"] = []


def test_training_model_with_nested_embedding_model_converts(released: Path, reference_dir: Path, tmp_path: Path):
    nested = tmp_path / "train_model.h5"
    _write_nested_training_model(released, nested)
    model = load_official(nested)
    inputs = np.load(reference_dir / "ghostfacenetv1-w1.3-s2" / "input.npy")
    want = np.load(released.parent / "reference_output_fp32.npy")
    assert _relative_error(model(inputs, training=False), want) < 1e-4


def test_garbage_and_foreign_files_raise_conversion_error_naming_the_file(tmp_path: Path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ConversionError, match="garbage.h5"):
        load_official(garbage)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as handle:
        handle.create_dataset("data", data=np.arange(3))
    with pytest.raises(ConversionError, match="foreign.h5"):
        load_official(foreign)
    with pytest.raises(ConversionError, match="missing.h5"):
        load_official(tmp_path / "missing.h5")


def test_other_keras_model_is_rejected(tmp_path: Path):
    """A Keras-2-layout file of a model without a GDC head is not silently half-loaded."""
    path = tmp_path / "classifier.h5"
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "InputLayer", "name": "x", "config": {"name": "x"}, "inbound_nodes": []},
        {"class_name": "Dense", "name": "dense", "config": {"name": "dense"}, "inbound_nodes": [[["x", 0, 0, {}]]]}],
        "input_layers": [["x", 0, 0]], "output_layers": [["dense", 0, 0]]}}
    with h5py.File(path, "w") as handle:
        handle.attrs["model_config"] = json.dumps(config)
        group = handle.create_group("model_weights")
        group.attrs["layer_names"] = ["x", "dense"]
        group.create_group("x").attrs["weight_names"] = []
        dense = group.create_group("dense")
        dense.create_dataset("dense/kernel:0", data=np.zeros((3, 2), "float32"))
        dense.attrs["weight_names"] = ["dense/kernel:0"]
    with pytest.raises(ConversionError, match="classifier.h5.*GDC"):
        load_official(path)


def test_cli_round_trip_reproduces_embeddings(released: Path, reference_dir: Path, tmp_path: Path):
    destination = tmp_path / "gn_w05.keras"
    result = subprocess.run([sys.executable, "-m", "ghostface_keras.cli.convert", str(released), str(destination)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "GhostFaceNetV1-0.5-2" in result.stdout and "max abs difference" in result.stdout
    reloaded = keras.models.load_model(destination, compile=False)
    inputs = np.load(reference_dir / "ghostfacenetv1-w1.3-s2" / "input.npy")
    want = np.load(released.parent / "reference_output_fp32.npy")
    assert _relative_error(reloaded(inputs, training=False), want) < 1e-4


def test_cli_reports_bad_input_in_one_line(tmp_path: Path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x00" * 10)
    result = subprocess.run([sys.executable, "-m", "ghostface_keras.cli.convert", str(bad), str(tmp_path / "o.keras")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "bad.h5" in result.stderr and "Traceback" not in result.stderr


def test_convert_file_requires_keras_suffix(released: Path, tmp_path: Path):
    with pytest.raises(ConversionError, match="out.h5"):
        convert_file(str(released), str(tmp_path / "out.h5"))
