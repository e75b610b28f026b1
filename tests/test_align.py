"""Image loading and 5-point alignment, checked against scikit-image and hand-built transforms."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, align_face, arcface_template, estimate_similarity_transform, landmarks_from_sequence, load_rgb_image, warp_affine
from ghostface_keras.core.errors import DataError

skimage_transform = pytest.importorskip("skimage.transform")


def _skimage_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    if hasattr(skimage_transform.SimilarityTransform, "from_estimate"):
        return skimage_transform.SimilarityTransform.from_estimate(source, target).params
    transform = skimage_transform.SimilarityTransform()
    assert transform.estimate(source, target)
    return transform.params


def _skimage_crop(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    matrix = _skimage_similarity(landmarks, ARCFACE_TEMPLATE_112 * size / 112.0)
    inverse = skimage_transform.AffineTransform(matrix=np.linalg.inv(matrix))
    warped = skimage_transform.warp(image.astype(np.float64), inverse, output_shape=(size, size), order=1,
                                    mode="constant", cval=0.0, preserve_range=True)
    return np.clip(np.rint(warped), 0, 255).astype(np.uint8)


def _deepface_landmarks(data_dir: Path) -> list[tuple[Path, np.ndarray]]:
    folder = data_dir / "deepface_verification_pairs"
    table = folder / "landmarks_mtcnn.csv"
    if not table.is_file():
        pytest.skip(f"{table} is not available")
    rows = []
    with open(table, newline="") as handle:
        for row in csv.DictReader(handle):
            names = [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                     for axis in "xy"]
            rows.append((folder / row["image"], landmarks_from_sequence(float(row[name]) for name in names)))
    return rows


# -- transform estimation ---------------------------------------------------------------------------
def test_similarity_recovers_a_known_transform():
    angle, scale, shift = 0.4, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ARCFACE_TEMPLATE_112
    target = source @ (scale * rotation).T + shift
    matrix = estimate_similarity_transform(source, target)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-10)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_similarity_matches_scikit_image_on_real_landmarks(data_dir):
    for path, landmarks in _deepface_landmarks(data_dir):
        ours = estimate_similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
        np.testing.assert_allclose(ours, _skimage_similarity(landmarks, ARCFACE_TEMPLATE_112)[:2], atol=1e-9,
                                   err_msg=path.name)


def test_similarity_never_reflects_mirrored_landmarks():
    mirrored = ARCFACE_TEMPLATE_112.copy()
    mirrored[:, 0] = 112.0 - mirrored[:, 0]  # eye order swapped by a mirror: a rotation must not flip it back
    matrix = estimate_similarity_transform(mirrored, ARCFACE_TEMPLATE_112)
    assert np.linalg.det(matrix[:, :2]) > 0
    np.testing.assert_allclose(matrix, _skimage_similarity(mirrored, ARCFACE_TEMPLATE_112)[:2], atol=1e-9)


def test_degenerate_landmarks_raise_data_error():
    with pytest.raises(DataError, match="degenerate"):
        estimate_similarity_transform(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(DataError, match=r"\(5, 2\)"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.zeros((4, 2)))


def test_template_scales_with_crop_size():
    np.testing.assert_allclose(arcface_template(224), ARCFACE_TEMPLATE_112 * 2)


# -- warping ---------------------------------------------------------------------------------------
def test_warp_matches_scikit_image_including_borders():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    # a transform that maps part of the output outside the source, to exercise the black border
    matrix = np.array([[1.3, -0.4, -10.0], [0.4, 1.3, 4.0]])
    ours = warp_affine(image, matrix, (70, 90)).astype(np.float64)
    inverse = skimage_transform.AffineTransform(matrix=np.linalg.inv(np.vstack([matrix, [0, 0, 1]])))
    reference = skimage_transform.warp(image.astype(np.float64), inverse, output_shape=(70, 90), order=1,
                                       mode="constant", cval=0.0, preserve_range=True)
    assert np.abs(ours - np.rint(reference)).max() <= 1.0  # only rounding of exact .5 values may differ
    assert np.abs(ours - reference).mean() < 0.3


def test_align_face_identity_when_landmarks_are_on_the_template():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(align_face(image, ARCFACE_TEMPLATE_112), image)


def test_align_face_matches_scikit_image_crops_on_real_photos(data_dir):
    differences = []
    for path, landmarks in _deepface_landmarks(data_dir):
        image = load_rgb_image(path)
        differences.append(np.abs(align_face(image, landmarks).astype(int) - _skimage_crop(image, landmarks)).mean())
    assert len(differences) == 25
    assert max(differences) < 0.05, differences


# -- image loading ---------------------------------------------------------------------------------
def _jpeg_with_orientation(pixels: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :10] = 255  # a white band on the left of the stored image
    path = tmp_path / "rotated.png"
    path.write_bytes(_jpeg_with_orientation(pixels, 6))  # 6: display rotated 90 degrees clockwise
    loaded = load_rgb_image(path)
    np.testing.assert_array_equal(loaded, np.rot90(pixels, k=-1))  # clockwise turn: left band ends on top
    assert loaded.shape == (40, 20, 3)


def test_grayscale_rgba_and_float_inputs(tmp_path):
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    np.testing.assert_array_equal(load_rgb_image(gray), np.repeat(gray[..., None], 3, axis=-1))
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.pgm")
    np.testing.assert_array_equal(load_rgb_image(tmp_path / "gray.pgm"), np.repeat(gray[..., None], 3, axis=-1))

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3], rgba[0, 1, 3], rgba[1, :, 3] = 255, 0, 128
    expected = np.empty((2, 2, 3))
    for row in range(2):
        for column in range(2):
            alpha = rgba[row, column, 3] / 255.0
            expected[row, column] = rgba[row, column, :3] * alpha + 255.0 * (1 - alpha)  # onto white
    np.testing.assert_allclose(load_rgb_image(rgba), np.rint(expected), atol=1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_rgb_image(tmp_path / "rgba.png"), np.rint(expected), atol=1)

    np.testing.assert_array_equal(load_rgb_image(np.full((2, 2, 3), 0.5)), np.full((2, 2, 3), 128, np.uint8))


def test_pil_input_matches_path_input(tmp_path):
    pixels = np.random.default_rng(2).integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_rgb_image(Image.open(tmp_path / "a.png")), pixels)
    np.testing.assert_array_equal(load_rgb_image(tmp_path / "a.png"), pixels)


def test_unreadable_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.jpg: file not found"):
        load_rgb_image(tmp_path / "missing.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_rgb_image(broken)
    with pytest.raises(DataError, match="shape"):
        load_rgb_image(np.zeros((4, 4, 2), np.uint8))
