"""FaceEmbedder and the `ghostface` CLI with a tiny Keras model, checked against hand computations."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, CallableDetector
from ghostface_keras.weights.checkpoints import FALLBACK_THRESHOLD
from ghostface_keras.cli.face import main
from ghostface_keras.core.errors import DataError, ModelLoadError, NoFaceError
from ghostface_keras.runtime.litert import TFLiteEmbedder
from ghostface_keras.faces.embedder import FaceEmbedder, Gallery


@pytest.fixture(scope="module")
def tiny_model() -> keras.Model:
    keras.utils.set_random_seed(7)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.Conv2D(6, 5, strides=4, activation="relu")(inputs)
    features = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(32)(features)
    return keras.Model(inputs, outputs, name="tiny_embedder")


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Five distinct random 'aligned faces' (uint8 RGB 112x112)."""
    return np.random.default_rng(3).integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)


def _reference_embeddings(model: keras.Model, crops: np.ndarray, flip: bool) -> np.ndarray:
    """Independent pipeline: normalize by hand, run the model, add the mirror, L2-normalize."""
    batch = (crops.astype(np.float64) - 127.5) / 128.0
    embeddings = model.predict(batch.astype(np.float32), verbose=0).astype(np.float64)
    if flip:
        embeddings += model.predict(batch[:, :, ::-1, :].astype(np.float32), verbose=0)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


def _template_detector(faces_found: int = 1) -> CallableDetector:
    """A detector that reports one face whose landmarks sit exactly on the template (identity alignment)."""
    return CallableDetector(lambda image: [((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 0.99)] * faces_found)


@pytest.mark.parametrize("flip", [True, False])
def test_embed_aligned_matches_hand_computation(tiny_model, faces, flip):
    embedder = FaceEmbedder(tiny_model, detector=None, flip=flip, batch_size=2)
    np.testing.assert_allclose(embedder.embed_aligned(faces), _reference_embeddings(tiny_model, faces, flip),
                               atol=1e-5)


def test_embed_from_a_photo_aligns_then_embeds(tiny_model, faces, tmp_path):
    path = tmp_path / "face.png"
    Image.fromarray(faces[0]).save(path)
    embedder = FaceEmbedder(tiny_model, detector=_template_detector())
    expected = _reference_embeddings(tiny_model, faces[:1], flip=True)[0]
    for source in (path, str(path), Image.open(path), faces[0]):
        vector = embedder.embed(source)
        assert vector.shape == (32,)
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_precropped_inputs_of_another_size_are_resized(tiny_model, faces):
    embedder = FaceEmbedder(tiny_model, detector=None)
    big = np.asarray(Image.fromarray(faces[1]).resize((224, 224), Image.BILINEAR))
    expected_crop = np.asarray(Image.fromarray(big).resize((112, 112), Image.BILINEAR))
    np.testing.assert_allclose(embedder.embed(big), _reference_embeddings(tiny_model, expected_crop[None], True)[0],
                               atol=1e-5)


def test_no_face_error_names_the_file(tiny_model, tmp_path):
    path = tmp_path / "empty_room.jpg"
    Image.new("RGB", (64, 64)).save(path)
    embedder = FaceEmbedder(tiny_model, detector=CallableDetector(lambda image: []))
    with pytest.raises(NoFaceError, match="empty_room.jpg: no face found"):
        embedder.embed(path)
    with pytest.raises(DataError, match="nowhere.jpg: file not found"):
        embedder.embed(tmp_path / "nowhere.jpg")


def test_embed_batch_keeps_rows_aligned_and_marks_missing(tiny_model, faces):
    def detector(image: np.ndarray):
        return [] if image.mean() < 1 else [((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 0.9)]

    embedder = FaceEmbedder(tiny_model, detector=CallableDetector(detector))
    blank = np.zeros((112, 112, 3), np.uint8)
    rows = embedder.embed_batch([faces[0], blank, faces[2]], skip_missing=True)
    assert np.isnan(rows[1]).all()
    np.testing.assert_allclose(rows[[0, 2]], _reference_embeddings(tiny_model, faces[[0, 2]], True), atol=1e-5)
    with pytest.raises(NoFaceError):
        embedder.embed_batch([faces[0], blank])


def test_largest_face_is_used(tiny_model, faces):
    small_box_landmarks = ARCFACE_TEMPLATE_112 * 0.5  # a half-size face in the top-left corner
    detector = CallableDetector(lambda image: [((0, 0, 56, 56), small_box_landmarks, 1.0),
                                               ((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 0.8)])
    embedder = FaceEmbedder(tiny_model, detector=detector)
    aligned = embedder.align(faces[3])
    assert [face.score for face in aligned] == [0.8, 1.0]
    np.testing.assert_array_equal(aligned[0].image, faces[3])


def test_verify_is_the_cosine_of_the_two_embeddings(tiny_model, faces):
    embedder = FaceEmbedder(tiny_model, detector=None, threshold=0.5)
    reference = _reference_embeddings(tiny_model, faces[:2], True)
    similarity, same = embedder.verify(faces[0], faces[1])
    assert similarity == pytest.approx(float(reference[0] @ reference[1]), abs=1e-5)
    assert same == (similarity >= 0.5)
    self_similarity, self_same = embedder.verify(faces[0], faces[0].copy())
    assert self_similarity == pytest.approx(1.0, abs=1e-5) and self_same
    _, strict = embedder.verify(faces[0], faces[1], threshold=similarity + 1e-3)
    assert not strict


def test_identify_ranks_identities_by_their_closest_photo(tiny_model, faces, tmp_path):
    for identity, indices in {"ann": [0, 1], "bob": [2], "cyd": [3]}.items():
        (tmp_path / identity).mkdir()
        for index in indices:
            Image.fromarray(faces[index]).save(tmp_path / identity / f"{index}.png")
    embedder = FaceEmbedder(tiny_model, detector=None)
    gallery = embedder.build_gallery(tmp_path)
    assert sorted(gallery.names) == ["ann", "ann", "bob", "cyd"]

    matches = embedder.identify(faces[1], gallery, top_k=3)
    reference = _reference_embeddings(tiny_model, faces[:4], True)
    probe = reference[1]
    expected = sorted({"ann": max(reference[0] @ probe, reference[1] @ probe), "bob": reference[2] @ probe,
                       "cyd": reference[3] @ probe}.items(), key=lambda item: -item[1])
    assert [match.name for match in matches] == [name for name, _ in expected]
    np.testing.assert_allclose([match.similarity for match in matches], [value for _, value in expected], atol=1e-5)
    assert matches[0].path.endswith("ann/1.png")

    gallery.save(tmp_path / "gallery.npz")
    loaded = Gallery.load(tmp_path / "gallery.npz")
    assert loaded.names == gallery.names and loaded.paths == gallery.paths
    np.testing.assert_array_equal(loaded.embeddings, gallery.embeddings)


def test_keras_file_and_default_threshold(tiny_model, faces, tmp_path):
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    embedder = FaceEmbedder(str(path), detector=None)
    np.testing.assert_allclose(embedder.embed_aligned(faces[:2]), _reference_embeddings(tiny_model, faces[:2], True),
                               atol=1e-5)
    assert embedder.threshold == FALLBACK_THRESHOLD  # not a released checkpoint: whatever the file is named
    with pytest.raises(ModelLoadError, match="model file not found"):
        FaceEmbedder(tmp_path / "absent.keras")


def _tflite_file(model: keras.Model, path: Path, batch: int | None) -> Path:
    import tensorflow as tf

    saved_model = path.with_suffix("")
    model.export(str(saved_model), format="tf_saved_model", verbose=False,
                 input_signature=[tf.TensorSpec([batch, 112, 112, 3], tf.float32)])
    path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved_model)).convert())
    return path


@pytest.mark.parametrize("batch", [None, 1])
def test_tflite_model_behind_the_same_api(tiny_model, faces, tmp_path, batch):
    path = _tflite_file(tiny_model, tmp_path / "tiny.tflite", batch)
    embedder = FaceEmbedder(str(path), detector=None)
    assert isinstance(embedder.model.runner, TFLiteEmbedder)
    np.testing.assert_allclose(embedder.embed_aligned(faces), _reference_embeddings(tiny_model, faces, True),
                               atol=1e-4)


# -- the `ghostface` command line ------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_file(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny_model.save(path)
    return path


def test_cli_embed_writes_npy_in_input_order(model_file, tiny_model, faces, tmp_path, capsys):
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"face{index}.png")
        Image.fromarray(faces[index]).save(paths[-1])
    output = tmp_path / "out" / "emb.npy"
    status = main(["embed", *map(str, paths), "--model", str(model_file), "--detector", "none",
                   "--output", str(output)])
    assert status == 0
    np.testing.assert_allclose(np.load(output), _reference_embeddings(tiny_model, faces[:3], True), atol=1e-5)
    assert output.with_suffix(".txt").read_text().split() == [str(path) for path in paths]
    assert "wrote 3 x 32 embeddings" in capsys.readouterr().out


def test_cli_verify_prints_the_decision(model_file, faces, tmp_path, capsys):
    Image.fromarray(faces[0]).save(tmp_path / "a.png")
    status = main(["verify", str(tmp_path / "a.png"), str(tmp_path / "a.png"), "--model", str(model_file),
                   "--detector", "none", "--threshold", "0.5"])
    assert status == 0
    assert capsys.readouterr().out.strip() == "similarity 1.0000  threshold 0.50  ->  same person"


def test_cli_identify_lists_the_ranking(model_file, faces, tmp_path, capsys):
    for name, index in (("ann", 0), ("bob", 1)):
        Image.fromarray(faces[index]).save(tmp_path / f"{name}.png")
    probe = tmp_path / "probe" / "who.png"
    probe.parent.mkdir()
    Image.fromarray(faces[1]).save(probe)
    gallery_dir = tmp_path
    status = main(["identify", str(probe), "--gallery", str(gallery_dir), "--model", str(model_file),
                   "--detector", "none", "--top-k", "2"])
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"^\d+\. ", line)]
    assert status == 0 and len(lines) == 2
    # the probe folder sits inside the gallery folder, so 'probe' is an identity too (its own photo)
    assert lines[0].split()[1] in ("bob", "probe") and "similarity 1.0000" in lines[0]


def test_cli_errors_are_one_clean_line(model_file, tmp_path, capsys):
    status = main(["verify", str(tmp_path / "missing.jpg"), str(tmp_path / "missing.jpg"),
                   "--model", str(model_file), "--detector", "none"])
    error = capsys.readouterr().err
    assert status == 2
    assert error.strip() == f"ghostface: error: {tmp_path / 'missing.jpg'}: file not found"

    Image.new("RGB", (112, 112)).save(tmp_path / "x.jpg")
    status = main(["embed", str(tmp_path / "x.jpg"), "--model", str(tmp_path / "no_model.keras"),
                   "--output", str(tmp_path / "e.npy")])
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and "no_model.keras: model file not found" in error
