"""The MTCNN adapter and `align_folder` on real photos (needs the `mtcnn` package and ../shared)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mtcnn")
skimage_transform = pytest.importorskip("skimage.transform")

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, load_rgb_image
from ghostface_keras.faces.mtcnn import MTCNNDetector
from ghostface_keras.faces.align_folder import align_folder  # noqa: E402

# small, native-resolution photos (no downscaling inside the detector) of two people
SMALL_PHOTOS = {"person_a": ["img10.jpg", "img5.jpg"], "person_b": ["img25.jpg"]}


@pytest.fixture(scope="module")
def detector() -> MTCNNDetector:
    return MTCNNDetector()


@pytest.fixture(scope="module")
def deepface_dir(data_dir: Path) -> Path:
    folder = data_dir / "deepface_verification_pairs"
    if not folder.is_dir():
        pytest.skip(f"{folder} is not available")
    return folder


def _csv_landmarks(folder: Path) -> dict[str, np.ndarray]:
    names = [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
             for axis in "xy"]
    with open(folder / "landmarks_mtcnn.csv", newline="") as handle:
        return {row["image"]: np.array([float(row[name]) for name in names]).reshape(5, 2)
                for row in csv.DictReader(handle)}


def _skimage_crop(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    if hasattr(skimage_transform.SimilarityTransform, "from_estimate"):
        transform = skimage_transform.SimilarityTransform.from_estimate(landmarks, ARCFACE_TEMPLATE_112)
    else:
        transform = skimage_transform.SimilarityTransform()
        transform.estimate(landmarks, ARCFACE_TEMPLATE_112)
    warped = skimage_transform.warp(image.astype(np.float64), transform.inverse, output_shape=(112, 112), order=1,
                                    mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


def test_landmark_layout_on_a_real_photo(detector, deepface_dir):
    """ArcFace order: eye on the image's left first; values agree with the dataset's own MTCNN run."""
    faces = detector.detect(load_rgb_image(deepface_dir / "img10.jpg"))
    assert len(faces) == 1
    left_eye, right_eye, nose, mouth_left, mouth_right = faces[0].landmarks
    assert left_eye[0] < nose[0] < right_eye[0]
    assert mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    # the shared CSV stores mtcnn's integer-rounded output for this image (no downscaling)
    np.testing.assert_allclose(faces[0].landmarks, _csv_landmarks(deepface_dir)["img10.jpg"], atol=0.51)
    x1, y1, x2, y2 = faces[0].box
    assert x1 < left_eye[0] and right_eye[0] < x2 and y1 < left_eye[1] and mouth_left[1] < y2


def test_blank_and_noise_images_have_no_face(detector):
    assert detector.detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_downscaled_detection_maps_back_to_original_pixels(deepface_dir):
    image = load_rgb_image(deepface_dir / "img10.jpg")  # 594 x 408
    full = MTCNNDetector(max_side=None).detect(image)[0]
    half = MTCNNDetector(max_side=297).detect(image)[0]
    # a half-resolution detection is coarser, but must land on the same face points
    assert np.abs(full.landmarks - half.landmarks).max() < 6.0


def test_align_folder_keeps_identities_and_lists_skips(tmp_path, deepface_dir):
    source = tmp_path / "photos"
    for identity, names in SMALL_PHOTOS.items():
        (source / identity).mkdir(parents=True)
        for name in names:
            shutil.copy(deepface_dir / name, source / identity / name)
    Image.new("RGB", (200, 160), (90, 90, 90)).save(source / "person_b" / "blank.jpg")
    (source / "person_b" / "broken.jpg").write_bytes(b"not an image")

    output = tmp_path / "aligned"
    report = align_folder(source, output, progress=False)

    assert sorted(p.relative_to(output).as_posix() for p in report.written) == [
        "person_a/img10.png", "person_a/img5.png", "person_b/img25.png"]
    assert report.no_face == [source / "person_b" / "blank.jpg"]
    assert [path for path, _ in report.unreadable] == [source / "person_b" / "broken.jpg"]
    skipped = (output / "skipped.txt").read_text()
    assert "blank.jpg\tno face found" in skipped and "broken.jpg" in skipped

    with open(output / "landmarks.csv", newline="") as handle:
        rows = {row["crop"]: row for row in csv.DictReader(handle)}
    for crop_path in report.written:
        row = rows[crop_path.relative_to(output).as_posix()]
        landmarks = np.array([float(row[f"{name}_{axis}"]) for name in
                              ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                              for axis in "xy"]).reshape(5, 2)
        crop = np.asarray(Image.open(crop_path))
        assert crop.shape == (112, 112, 3)
        independent = _skimage_crop(load_rgb_image(row["source"]), landmarks)
        # landmarks.csv rounds to 0.01 px, so allow a little interpolation noise
        assert np.abs(crop.astype(int) - independent).mean() < 0.5


@pytest.mark.slow
def test_align_folder_on_the_whole_deepface_folder(tmp_path, deepface_dir):
    """Must-show: crops from align_folder vs an independent (scikit-image) similarity-transform crop."""
    source = tmp_path / "deepface"
    shutil.copytree(deepface_dir, source)
    output = tmp_path / "aligned"
    report = align_folder(source, output, progress=False)
    assert len(report.written) == 25 and not report.no_face

    with open(output / "landmarks.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    differences = []
    for row in rows:
        landmarks = np.array([float(row[f"{name}_{axis}"]) for name in
                              ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                              for axis in "xy"]).reshape(5, 2)
        crop = np.asarray(Image.open(output / row["crop"])).astype(int)
        differences.append(np.abs(crop - _skimage_crop(load_rgb_image(row["source"]), landmarks)).mean())
    print(f"align_folder vs scikit-image crops: mean {np.mean(differences):.4f}, max {np.max(differences):.4f} "
          "grey levels")
    assert np.mean(differences) < 2.0
