"""Photos -> aligned 112x112 face crops: image loading, face detection, 5-point similarity alignment.

The models were trained on faces warped so that five landmarks land on the ArcFace template
(`ARCFACE_TEMPLATE_112`). Inference must do the same, or accuracy collapses. The pipeline is:

1. `load_rgb_image`: path / PIL image / numpy array -> uint8 RGB array (EXIF orientation applied,
   grayscale and RGBA converted).
2. A detector finds boxes, five landmarks and scores: `BlazeFaceDetector` (`faces.blazeface`, the default
   of photos and video), `MTCNNDetector` (`faces.mtcnn`, for small faces), chosen by name with
   `faces.detectors.get_detector`; anything with `.detect(image) -> list[DetectedFace]` works.
3. `align_face`: least-squares similarity transform (Umeyama) from the landmarks onto the template,
   then a bilinear warp to `size x size`.

Landmark order everywhere is the ArcFace one: eye on the IMAGE's left, eye on the image's right,
nose tip, mouth corner on the image's left, mouth corner on the image's right. Coordinates are
pixel-centre based ((0, 0) is the centre of the top-left pixel), like OpenCV and scikit-image.

Example:
    >>> from ghostface_keras.core.images import load_rgb_image
    >>> from ghostface_keras.faces.alignment import align_face
    >>> from ghostface_keras.faces.mtcnn import MTCNNDetector
    >>> image = load_rgb_image("photo.jpg")          # doctest: +SKIP
    >>> face = MTCNNDetector().detect(image)[0]      # doctest: +SKIP
    >>> crop = align_face(image, face.landmarks)     # doctest: +SKIP

`crop` is a (112, 112, 3) uint8 RGB face, ready for `normalize_images`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable
from collections.abc import Sequence

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.images import load_rgb_image

logger = logging.getLogger(__name__)

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # eye on the image's left
        [73.5318, 51.5014],  # eye on the image's right
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # mouth corner on the image's left
        [70.7299, 92.2041],  # mouth corner on the image's right
    ],
    dtype=np.float64,
)
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DetectedFace:
    """One detected face.

    Attributes:
        box: (x1, y1, x2, y2) in image pixels, float32.
        landmarks: (5, 2) float32 (x, y) in ArcFace order (see `LANDMARK_NAMES`).
        score: detector confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        """Box area in square pixels (used to pick the largest face)."""
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


@runtime_checkable
class FaceDetector(Protocol):
    """What a detector must provide: `detect(rgb_uint8_image) -> list[DetectedFace]`."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        ...



class CallableDetector:
    """Wraps a plain function `fn(image) -> iterable of (box, landmarks, score)` as a detector.

    Use it to plug in another detector (RetinaFace, SCRFD, YuNet, ...) without subclassing.

    Example:
        >>> detector = CallableDetector(lambda image: [((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 1.0)])
        >>> detector.detect(np.zeros((112, 112, 3), np.uint8))[0].score
        1.0
    """

    def __init__(self, function: Callable[[np.ndarray], Any]) -> None:
        self.function = function

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces found by the wrapped function, converted to `DetectedFace`."""
        faces = []
        for box, landmarks, score in self.function(image):
            landmarks = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
            faces.append(DetectedFace(np.asarray(box, np.float32).reshape(4), landmarks, float(score)))
        return faces



# --------------------------------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------------------------------
def arcface_template(size: int = 112) -> np.ndarray:
    """The ArcFace 5-point template for a `size x size` crop (the 112 template scaled by size/112).

    Example:
        >>> arcface_template(224)[0].round(3).tolist()
        [76.589, 103.393]
    """
    return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)


def estimate_similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation) mapping source -> target.

    Umeyama (1991), "Least-squares estimation of transformation parameters between two point
    patterns": the rotation comes from the SVD of the cross-covariance, with a sign fix so that it
    is never a reflection. Returns the 2x3 matrix `M` with `target ~= M @ [x, y, 1]`.

    Example:
        >>> matrix = estimate_similarity_transform(ARCFACE_TEMPLATE_112 * 2 + 5, ARCFACE_TEMPLATE_112)
        >>> (matrix.round(6) + 0.0).tolist()       # + 0.0 turns a -0.0 into 0.0
        [[0.5, 0.0, -2.5], [0.0, 0.5, -2.5]]
    """
    source = np.asarray(source, dtype=np.float64).reshape(-1, 2)
    target = np.asarray(target, dtype=np.float64).reshape(-1, 2)
    if source.shape != target.shape or len(source) < 2:
        raise DataError(f"need matching point sets of >= 2 points, got {source.shape} and {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = (source_centred ** 2).sum() / len(source)
    if not np.isfinite(source_variance) or source_variance < 1e-12:
        raise DataError("landmarks are degenerate (all at one point or not finite): cannot align")
    covariance = target_centred.T @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    reflection_fix = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ reflection_fix @ vt
    scale = np.trace(np.diag(singular_values) @ reflection_fix) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int] | int) -> np.ndarray:
    """Warp an image by a 2x3 forward matrix (source -> output pixels), bilinear, black outside.

    Same sampling as OpenCV's `warpAffine(..., INTER_LINEAR, BORDER_CONSTANT, 0)` and scikit-image's
    `warp(order=1, mode="constant")` with pixel-centre coordinates; the result is rounded to uint8
    (the official skimage path truncates, which darkens crops by half a grey level on average).

    Example:
        >>> warp_affine(np.full((4, 4, 3), 200, np.uint8), np.eye(2, 3), 2)[..., 0].tolist()
        [[200, 200], [200, 200]]
    """
    height, width = (size, size) if isinstance(size, int) else size
    image = load_rgb_image(np.asarray(image))
    forward = np.vstack([np.asarray(matrix, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    out_x, out_y = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    source_x = inverse[0, 0] * out_x + inverse[0, 1] * out_y + inverse[0, 2]
    source_y = inverse[1, 0] * out_x + inverse[1, 1] * out_y + inverse[1, 2]
    return _sample_bilinear(image, source_x, source_y)


def _sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # In the coordinates of the image with one ring of zeros around it (samples within one pixel of the border
    # blend into black, as cv2 does). Only the rows and columns the samples touch are converted and padded: a
    # 112x112 crop of a 12-megapixel photo reads a few hundred pixels square, not the photo (5x faster).
    height, width = image.shape[:2]
    x, y = x + 1.0, y + 1.0
    inside = (x >= 0) & (y >= 0) & (x <= width + 1) & (y <= height + 1)
    x0 = np.clip(np.floor(x), 0, width).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, height).astype(np.int64)
    left, top_row = int(x0.min()), int(y0.min())
    right, bottom_row = int(x0.max()) + 1, int(y0.max()) + 1  # inclusive, in padded coordinates
    region = np.zeros((bottom_row - top_row + 1, right - left + 1, image.shape[2]), np.float64)
    rows = slice(max(top_row, 1), min(bottom_row, height) + 1)  # padded rows that hold image rows
    columns = slice(max(left, 1), min(right, width) + 1)
    if rows.start < rows.stop and columns.start < columns.stop:
        region[rows.start - top_row:rows.stop - top_row, columns.start - left:columns.stop - left] = \
            image[rows.start - 1:rows.stop - 1, columns.start - 1:columns.stop - 1]
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0 - left, y0 - top_row
    top = region[y0, x0] * (1 - fx) + region[y0, x0 + 1] * fx
    bottom = region[y0 + 1, x0] * (1 - fx) + region[y0 + 1, x0 + 1] * fx
    values = top * (1 - fy) + bottom * fy
    values[~inside] = 0.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp a face so its 5 landmarks fall on the ArcFace template: (size, size, 3) uint8 RGB crop.

    Args:
        image: (H, W, 3) uint8 RGB (anything `load_rgb_image` accepts also works).
        landmarks: (5, 2) (x, y) in ArcFace order: eye on the image's left first (see module doc).
        size: output side; the template is scaled by size/112.

    Example:
        >>> image = np.zeros((200, 160, 3), np.uint8)                 # an RGB photo
        >>> landmarks = ARCFACE_TEMPLATE_112 * 1.5 + (20, 40)          # e.g. `face.landmarks` from a detector
        >>> crop = align_face(image, landmarks)
        >>> crop.shape
        (112, 112, 3)
    """
    if not isinstance(image, np.ndarray):
        image = load_rgb_image(image)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise DataError(f"landmarks have shape {landmarks.shape}: expected (5, 2) (x, y) points")
    matrix = estimate_similarity_transform(landmarks, arcface_template(size))
    return warp_affine(load_rgb_image(image), matrix, size)



def landmarks_from_sequence(values: Sequence[float]) -> np.ndarray:
    """Ten numbers (x1, y1, x2, y2, ... in ArcFace order) -> (5, 2) landmarks, e.g. from a CSV row.

    Example:
        >>> landmarks_from_sequence(range(10))[1].tolist()
        [2.0, 3.0]
    """
    array = np.asarray(list(values), dtype=np.float64)
    if array.size != 10:
        raise DataError(f"expected 10 landmark coordinates, got {array.size}")
    return array.reshape(5, 2)
