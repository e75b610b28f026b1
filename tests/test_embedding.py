"""The one embedding path: flip TTA, batching and every model format against a plain model.predict."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ghostface_keras.core.errors import DataError, ModelLoadError  # noqa: E402
from ghostface_keras.runtime import embedding as e  # noqa: E402
from ghostface_keras.runtime.loading import load_model  # noqa: E402
from ghostface_keras.core.preprocessing import normalize_images  # noqa: E402

SIZE = 32


def _tiny_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)  # position-dependent, so a mirrored image gives another embedding
    outputs = keras.layers.Dense(32, name="embedding")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="module")
def model():
    return _tiny_model()


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, size=(21, SIZE, SIZE, 3), dtype=np.uint8)


def _expected(model, images, flip: bool) -> np.ndarray:
    """Independent reference: plain predict on the image (and its mirror), summed, then L2-normalized."""
    inputs = normalize_images(images)
    raw = model.predict(inputs, verbose=0)
    if flip:
        raw = raw + model.predict(inputs[:, :, ::-1], verbose=0)
    return raw / np.linalg.norm(raw, axis=1, keepdims=True)


@pytest.mark.parametrize("flip", [True, False])
def test_keras_model_matches_predict_with_short_last_batch(model, images, flip):
    result = e.extract_embeddings(model, images, batch_size=8, flip=flip, progress=False)
    np.testing.assert_allclose(result, _expected(model, images, flip), atol=1e-5)


def test_flip_changes_embeddings_and_raw_sums_are_kept_without_normalize(model, images):
    flipped = e.extract_embeddings(model, images, batch_size=8, flip=True, progress=False)
    plain = e.extract_embeddings(model, images, batch_size=8, flip=False, progress=False)
    assert not np.allclose(flipped, plain, atol=1e-3)
    raw = e.extract_embeddings(model, images, batch_size=8, flip=True, normalize=False, progress=False)
    inputs = normalize_images(images)
    expected = model.predict(inputs, verbose=0) + model.predict(inputs[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(raw, expected, rtol=1e-4, atol=1e-5)


def test_iterable_of_batches_and_plain_callable(model, images):
    def plain(inputs):
        return model.predict(inputs, verbose=0)

    batches = (images[start:start + 5] for start in range(0, len(images), 5))
    result = e.extract_embeddings(plain, batches, batch_size=4, flip=True, progress=False, total=len(images))
    np.testing.assert_allclose(result, _expected(model, images, True), atol=1e-5)


def test_keras_file_round_trip(model, images, tmp_path):
    path = tmp_path / "tiny.keras"
    model.save(path)
    result = e.extract_embeddings(str(path), images, batch_size=16, progress=False)
    np.testing.assert_allclose(result, _expected(model, images, True), atol=1e-5)


def test_saved_model_folder(model, images, tmp_path):
    folder = tmp_path / "saved"
    model.export(str(folder), verbose=False)
    result = e.extract_embeddings(str(folder), images, batch_size=16, progress=False)
    np.testing.assert_allclose(result, _expected(model, images, True), atol=1e-5)


def test_tflite_file(model, images, tmp_path):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    path = tmp_path / "tiny.tflite"
    path.write_bytes(converter.convert())
    result = e.extract_embeddings(str(path), images, batch_size=16, progress=False)
    np.testing.assert_allclose(result, _expected(model, images, True), atol=1e-4)


def test_static_batch_tflite_export_is_fed_in_chunks(model, images, tmp_path):
    """Our phone exports have a static batch of 1 that XNNPACK cannot resize: evaluation must still work."""
    from ghostface_keras.export import export_tflite

    path = export_tflite(model, tmp_path / "static.tflite")
    result = e.extract_embeddings(str(path), images[:5], batch_size=4, progress=False)
    np.testing.assert_allclose(result, _expected(model, images[:5], True), atol=1e-4)


def test_wrong_paths_and_inputs_give_clear_errors(tmp_path, model):
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "missing.keras")
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="broken.keras"):
        load_model(broken)
    with pytest.raises(ModelLoadError, match="unknown model format"):
        (tmp_path / "weights.txt").write_text("x")
        load_model(tmp_path / "weights.txt")
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_model(tmp_path)
    with pytest.raises(DataError, match="expects 32x32"):
        e.extract_embeddings(model, np.zeros((2, 40, 40, 3), np.uint8), progress=False)


def test_nan_embeddings_are_reported(images):
    with pytest.raises(DataError, match="NaN"):
        e.extract_embeddings(lambda x: np.full((len(x), 4), np.nan), images, progress=False)


def test_embedding_function_built_once_follows_weight_updates(images):
    model = _tiny_model(seed=1)
    embed = e.EmbeddingFunction(model, batch_size=8, flip=True)
    before = e.extract_embeddings(embed, images, progress=False)
    model.set_weights([weight * 0.5 + 0.1 for weight in model.get_weights()])  # as a training step would
    after = e.extract_embeddings(embed, images, progress=False)
    assert not np.allclose(before, after, atol=1e-3)
    np.testing.assert_allclose(after, _expected(model, images, True), atol=1e-5)
