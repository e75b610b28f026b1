"""The one model loader: every format runs the same function, non-embedders are refused at every door, and a
checkpoint's threshold follows its weights (not its file name) through conversion and export."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.weights.checkpoints import FALLBACK_THRESHOLD, get_checkpoint
from ghostface_keras.core.errors import ModelLoadError
from ghostface_keras.runtime.loading import load_model
from ghostface_keras.core.preprocessing import normalize_images


def _embedder(size: int = 112, dimension: int = 64, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(8, 5, strides=4, activation="relu")(inputs)
    features = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(dimension)(features), name="tiny_embedder")


def _classifier() -> keras.Model:
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(40, activation="softmax")(features), name="classifier")


def _two_inputs() -> keras.Model:
    first, second = keras.Input((112, 112, 3)), keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.Concatenate()([first, second]))
    return keras.Model([first, second], keras.layers.Dense(64)(pooled))


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return normalize_images(np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def embedder() -> keras.Model:
    return _embedder()


def test_every_file_format_runs_the_same_function(embedder, batch, tmp_path):
    from ghostface_keras.export import export_saved_model, export_tflite

    expected = np.asarray(embedder(batch, training=False))
    embedder.save(tmp_path / "m.keras")
    embedder.save(tmp_path / "m.h5")
    files = {"keras": tmp_path / "m.keras", "keras-3 h5": tmp_path / "m.h5",
             "savedmodel": export_saved_model(embedder, tmp_path / "sm"),
             "tflite": export_tflite(embedder, tmp_path / "m.tflite")}
    if importlib.util.find_spec("tf2onnx") and importlib.util.find_spec("onnxruntime"):
        from ghostface_keras.export import export_onnx

        files["onnx"] = export_onnx(embedder, tmp_path / "m.onnx")
    for kind, path in files.items():
        loaded = load_model(path)
        assert (loaded.input_size, loaded.embedding_size, loaded.checkpoint) == (112, 64, None), kind
        assert loaded.threshold == FALLBACK_THRESHOLD
        np.testing.assert_allclose(loaded(batch), expected, atol=1e-5, err_msg=kind)
    assert load_model(embedder).keras_model is embedder


@pytest.mark.parametrize("build, found", [
    (_classifier, "softmax"),
    (lambda: _embedder(dimension=10), "outputs [(None, 10)]"),
    (_two_inputs, "inputs [(None, 112, 112, 3), (None, 112, 112, 3)]"),
    (lambda: keras.Sequential([keras.Input((20,)), keras.layers.Dense(64)]), "inputs [(None, 20)]"),
])
def test_models_that_are_not_face_embedders_are_refused_in_one_line(build, found, tmp_path):
    path = tmp_path / "not_an_embedder.keras"
    build().save(path)
    with pytest.raises(ModelLoadError) as raised:
        load_model(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not a face-embedding model") and found in message and "\n" not in message


def test_a_tflite_classifier_is_refused_too(tmp_path):
    from ghostface_keras.export import export_tflite

    path = export_tflite(_classifier(), tmp_path / "classifier.tflite")
    with pytest.raises(ModelLoadError, match=r"classifier.tflite: not a face-embedding model: .*softmax"):
        load_model(path)


def test_missing_unknown_and_damaged_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="missing.tflite: model file not found"):
        load_model(tmp_path / "missing.tflite")
    with pytest.raises(ModelLoadError, match="no released checkpoint has that name"):
        load_model("NoSuchCheckpoint-9")
    for name, content in (("random.keras", b"\x93" * 100), ("random.tflite", b"\x00" * 100),
                          ("random.h5", b"\x89HDF" + b"\x00" * 60)):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ModelLoadError, match=name.replace(".", r"\.")) as raised:
            load_model(tmp_path / name)
        assert "\n" not in str(raised.value)


# -- every command refuses a classifier with one line and exit status 2 -----------------------------------
@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("classifier") / "classifier.keras"
    _classifier().save(path)
    return path


def _run(main, argv, capsys) -> tuple[int, str]:
    status = main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, captured.err.strip()


def test_every_command_refuses_a_classifier(classifier_file, tmp_path, capsys):
    from ghostface_keras.cli import evaluate, export, face, train

    photo = tmp_path / "face.png"
    Image.fromarray(np.zeros((112, 112, 3), np.uint8)).save(photo)
    from ghostface_keras.data import save_bin

    pairs = save_bin(tmp_path / "pairs.bin", np.zeros((4, 112, 112, 3), np.uint8), np.array([True, False]))
    commands = {
        "ghostface": (face.main, ["verify", str(photo), str(photo), "--model", str(classifier_file),
                                  "--detector", "none"]),
        "ghostface-eval": (evaluate.main, ["--model", str(classifier_file), "--bins", str(pairs),
                                           "--output", str(tmp_path / "eval"), "--quiet"]),
        "ghostface-export": (export.main, ["--model", str(classifier_file), "--output", str(tmp_path / "c.tflite")]),
        "ghostface-train": (train.main, ["--demo", "--init-from", str(classifier_file), "--epochs", "1",
                                         "--output", str(tmp_path / "run")]),
    }
    for program, (main, argv) in commands.items():
        status, error = _run(main, argv, capsys)
        lines = error.splitlines()
        assert status == 2, program
        assert lines[-1].startswith(f"{program}: error: {classifier_file}: not a face-embedding model"), lines
    assert not (tmp_path / "c.tflite").exists()


# -- the threshold follows the weights ----------------------------------------------------------------------
def _same_person_pair(data_dir: Path) -> list[Path]:
    folder = data_dir / "celeba_aligned112" / "val"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    identity = sorted(path for path in folder.iterdir() if path.is_dir())[0]
    return sorted(identity.iterdir())[:2]


def test_the_same_checkpoint_in_every_format_gets_the_same_threshold_and_verdict(released, data_dir, tmp_path,
                                                                                    capsys):
    from ghostface_keras.cli import face
    from ghostface_keras.export import export_tflite
    from ghostface_keras.export.images import sample_images

    first, second = _same_person_pair(data_dir)
    threshold = get_checkpoint("GhostFaceNetV1-0.5-2").threshold
    official = load_model(released)
    assert official.checkpoint is not None and official.checkpoint.name == "GhostFaceNetV1-0.5-2-ArcFace-MS1MV2"
    official.keras_model.save(tmp_path / "my_model.keras")      # converted, and renamed
    calibration = sample_images(data_dir / "celeba_aligned112" / "train", 64)
    files = [released, tmp_path / "my_model.keras",
             export_tflite(official.keras_model, tmp_path / "phone_fp16.tflite", "float16"),
             export_tflite(official.keras_model, tmp_path / "phone_int8.tflite", "int8", calibration,
                           activation_percentile=None)]
    verdicts = set()
    for path in files:
        assert load_model(path).threshold == threshold, path
        assert face.main(["verify", str(first), str(second), "--model", str(path), "--detector", "none"]) == 0
        line = capsys.readouterr().out.strip()
        assert f"threshold {threshold:.2f}" in line, (path, line)
        verdicts.add(line.rsplit("->", 1)[1].strip())
    assert verdicts == {"same person"}

    # other weights under the official file name do not inherit the checkpoint's threshold
    impostor = tmp_path / "GN_W0.5_S2_ArcFace_epoch16.keras"
    from ghostface_keras import create_model

    create_model("GhostFaceNetV1-0.5-2").save(impostor)
    assert load_model(impostor).checkpoint is None and load_model(impostor).threshold == FALLBACK_THRESHOLD
    shutil.rmtree(tmp_path, ignore_errors=True)
