"""Photos into a persistent gallery and identification against it (ghostface_keras.faces.enroll), compared with
the in-memory `Gallery` path, which embeds the same photos independently. Tiny model, in-process: default tier."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.core.errors import DataError
from ghostface_keras.data.synthetic import render_synthetic_faces
from ghostface_keras.faces.embedder import FaceEmbedder
from ghostface_keras.faces.enroll import EnrollReport, create_gallery, enroll_photos, model_identity
from ghostface_keras.gallery import GalleryStore


def _model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(32)(features))


@pytest.fixture(scope="module")
def embedder() -> FaceEmbedder:
    return FaceEmbedder(_model(0), detector=None, flip=False)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("people")
    faces, labels = render_synthetic_faces(4, 3)
    for index, (face, label) in enumerate(zip(faces, labels)):
        (root / f"p{label}").mkdir(exist_ok=True)
        Image.fromarray(face).save(root / f"p{label}" / f"{index}.png")
    return root, faces


def test_enroll_a_folder_then_identify_like_the_in_memory_gallery(embedder, photos, tmp_path):
    root, faces = photos
    store = create_gallery(tmp_path / "gallery", embedder)
    assert enroll_photos(store, embedder, root) == EnrollReport(enrolled=12, no_face=0, already_in=0)
    assert enroll_photos(store, embedder, root) == EnrollReport(enrolled=0, no_face=0, already_in=12)  # rerun
    reference = embedder.build_gallery(root)
    for probe in faces[::3]:
        from_store = embedder.identify(probe, tmp_path / "gallery", top_k=3)
        in_memory = embedder.identify(probe, reference, top_k=3)
        assert [match.name for match in from_store] == [match.name for match in in_memory]
        np.testing.assert_allclose([m.similarity for m in from_store], [m.similarity for m in in_memory], atol=1e-5)
        assert [match.path for match in from_store] == [match.path for match in in_memory]


def test_photos_of_one_person_by_name_and_the_progress_bar_path(embedder, photos, tmp_path):
    root, _ = photos
    store = create_gallery(tmp_path / "gallery", embedder)
    report = enroll_photos(store, embedder, [root / "p0", root / "p1" / "3.png"], name="carol", progress=True)
    assert report.enrolled == 4 and store.people() == [("carol", 4)]
    with pytest.raises(DataError, match="need a name"):
        enroll_photos(store, embedder, [root / "p0"])


def test_another_model_is_refused_in_one_line_and_its_photos_never_enter(embedder, photos, tmp_path):
    root, faces = photos
    store = create_gallery(tmp_path / "gallery", embedder)
    enroll_photos(store, embedder, root / "p0", name="alice")
    other = FaceEmbedder(_model(1), detector=None, flip=False)
    assert model_identity(other).embedding_size == model_identity(embedder).embedding_size
    with pytest.raises(DataError, match="different weights") as refused:
        enroll_photos(store, other, root / "p1", name="bob")
    assert "\n" not in str(refused.value) and store.people() == [("alice", 3)]
    with pytest.raises(DataError, match="different weights"):
        other.identify(faces[0], tmp_path / "gallery")
    same_weights = FaceEmbedder(embedder.model.keras_model, detector=None, flip=False)  # another object, same model
    assert same_weights.identify(faces[0], tmp_path / "gallery")[0].name == "alice"


def test_a_model_answering_nan_enrolls_nothing(photos, tmp_path, embedder):
    root, _ = photos
    create_gallery(tmp_path / "gallery", embedder).close()
    broken = FaceEmbedder(lambda batch: np.full((len(batch), 32), np.nan, np.float32), detector=None)
    with pytest.raises(DataError, match="NaN or infinite"):
        enroll_photos(GalleryStore.open(tmp_path / "gallery"), broken, root)
    assert GalleryStore.open(tmp_path / "gallery").photo_count == 0


def test_watch_takes_a_gallery_folder(embedder, photos, tmp_path):
    from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, CallableDetector
    from ghostface_keras.faces.video import watch

    root, faces = photos
    store = create_gallery(tmp_path / "gallery", embedder)
    enroll_photos(store, embedder, root)
    one_face = CallableDetector(lambda image: [((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 0.9)])
    watcher = FaceEmbedder(embedder.model.keras_model, detector=one_face, flip=False)
    expected = watcher.identify(faces[4], store, top_k=1)[0]
    frames = list(watch(watcher, [faces[4]] * 2, tmp_path / "gallery", threshold=-1.0))
    assert frames[0].faces[0].nearest == expected.name
    assert abs(frames[0].faces[0].similarity - expected.similarity) < 1e-5
