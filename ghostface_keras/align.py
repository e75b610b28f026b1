"""Photos -> aligned 112x112 face crops: image loading, face detection, 5-point similarity alignment.

The models were trained on faces warped so that five landmarks land on the ArcFace template
(`ARCFACE_TEMPLATE_112`). Inference must do the same, or accuracy collapses. The pipeline is:

1. `load_rgb_image`: path / PIL image / numpy array -> uint8 RGB array (EXIF orientation applied,
   grayscale and RGBA converted).
2. A detector (`MTCNNDetector` by default; anything with `.detect(image) -> list[DetectedFace]` works)
   finds boxes, five landmarks and scores.
3. `align_face`: least-squares similarity transform (Umeyama) from the landmarks onto the template,
   then a bilinear warp to `size x size`.

Landmark order everywhere is the ArcFace one: eye on the IMAGE's left, eye on the image's right,
nose tip, mouth corner on the image's left, mouth corner on the image's right. Coordinates are
pixel-centre based ((0, 0) is the centre of the top-left pixel), like OpenCV and scikit-image.

Example:
    >>> from ghostface_keras.align import MTCNNDetector, align_face, load_rgb_image
    >>> image = load_rgb_image("photo.jpg")          # doctest: +SKIP
    >>> face = MTCNNDetector().detect(image)[0]      # doctest: +SKIP
    >>> crop = align_face(image, face.landmarks)     # doctest: +SKIP

`crop` is a (112, 112, 3) uint8 RGB face, ready for `normalize_images`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
from PIL import Image

from ghostface_keras.errors import DataError, GhostFaceError
from ghostface_keras.files import IMAGE_EXTENSIONS, list_images, write_atomically
from ghostface_keras.progress import ProgressBar
from ghostface_keras.images import ImageInput, describe_image, load_rgb_image  # noqa: F401 - the one reader, re-exported

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


class MTCNNDetector:
    """MTCNN from the PyPI `mtcnn` package (weights ship inside its wheel, so it works offline).

    Large photos are downscaled so that their longer side is at most `max_side` before detection
    (MTCNN's image pyramid is slow on multi-megapixel images and finds nothing more); boxes and
    landmarks are mapped back to the original pixels.

    mtcnn's numpy output lists the five landmark x values before the five y values; its `left_eye`
    is the eye on the image's left (checked visually, see docs/inference.md), i.e. already the
    ArcFace order.

    Example:
        >>> detector = MTCNNDetector(min_confidence=0.8)
        >>> detector.detect(np.zeros((120, 160, 3), np.uint8))     # no face in a black image
        []
        >>> faces = detector.detect(load_rgb_image("photo.jpg"))   # doctest: +SKIP
        >>> faces[0].landmarks.shape                               # doctest: +SKIP
        (5, 2)
    """

    def __init__(self, min_confidence: float = 0.8, max_side: int | None = 1000, min_face_size: int = 20,
                 **mtcnn_options: Any) -> None:
        try:
            from mtcnn import MTCNN
        except ImportError:
            raise GhostFaceError("the default face detector needs the `mtcnn` package: "
                                 "pip install 'ghostface_keras[align]'") from None
        self.min_confidence = float(min_confidence)
        self.max_side = max_side
        self.mtcnn_options = {"min_face_size": int(min_face_size), **mtcnn_options}
        self._mtcnn = MTCNN()

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """Faces in an RGB uint8 image, most confident first."""
        image = load_rgb_image(np.asarray(image))
        small, scale_x, scale_y = _downscale(image, self.max_side)
        rows = self._mtcnn.detect_faces(small, output_type="numpy", box_format="xyxy", **self.mtcnn_options)
        faces = [_mtcnn_row_to_face(row, scale_x, scale_y) for row in np.asarray(rows).reshape(-1, 16)]
        faces = [face for face in faces if face.score >= self.min_confidence]
        return sorted(faces, key=lambda face: -face.score)


def _downscale(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float, float]:
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0, 1.0
    factor = max_side / max(height, width)
    new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
    small = np.asarray(Image.fromarray(image).resize(new_size, Image.BILINEAR))
    return small, width / new_size[0], height / new_size[1]


def _mtcnn_row_to_face(row: np.ndarray, scale_x: float, scale_y: float) -> DetectedFace:
    # row: image_id, x1, y1, x2, y2, confidence, 5 landmark x values, 5 landmark y values
    box = np.array(row[1:5], dtype=np.float64)
    landmarks = np.stack([row[6:11], row[11:16]], axis=-1).astype(np.float64)

    def to_original(points: np.ndarray) -> np.ndarray:
        # pixel-centre convention: a downscaled centre c maps back to (c + 0.5) * scale - 0.5
        scale = np.array([scale_x, scale_y])
        return (points.reshape(-1, 2) + 0.5) * scale - 0.5

    return DetectedFace(box=to_original(box).reshape(4).astype(np.float32),
                        landmarks=to_original(landmarks).astype(np.float32),
                        score=float(row[5]))


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


def _blazeface(**options: Any) -> FaceDetector:
    from ghostface_keras.blazeface import BlazeFaceDetector  # imports this module: resolved on first use

    return BlazeFaceDetector(**options)


# "blazeface" is the default of photos and video (0.007 CPU-s per photo against MTCNN's 0.16, the same
# verification accuracy: benchmarks/results/detectors.md); MTCNN finds smaller faces and stays the default of
# data_prep/align_folder.py, where thoroughness matters more than speed.
DETECTORS: dict[str, Callable[..., FaceDetector]] = {"blazeface": _blazeface, "mtcnn": MTCNNDetector}
DEFAULT_DETECTOR = "blazeface"


def get_detector(detector: str | FaceDetector | None, **options: Any) -> FaceDetector | None:
    """Resolve a detector argument: a name in `DETECTORS`, a detector object, or None (pre-aligned input).

    Example:
        >>> get_detector(None) is None
        True
    """
    if detector is None or isinstance(detector, FaceDetector):
        return detector
    if isinstance(detector, str):
        key = detector.lower()
        if key in ("none", "aligned", "precropped"):
            return None
        if key not in DETECTORS:
            raise GhostFaceError(f"unknown detector {detector!r}: expected one of {sorted(DETECTORS)} or 'none'")
        return DETECTORS[key](**options)
    raise GhostFaceError(f"detector must be a name, None or an object with .detect(image); got {type(detector).__name__}")


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


# --------------------------------------------------------------------------------------------------
# Whole folders
# --------------------------------------------------------------------------------------------------
@dataclass
class FolderAlignmentReport:
    """What `align_folder` did: written crops, photos without a face, unreadable files, and the
    detection used for each written crop (source path, box, landmarks, score), in `written` order."""

    written: list[Path]
    no_face: list[Path]
    unreadable: list[tuple[Path, str]]
    detections: list[tuple[Path, DetectedFace]] = field(default_factory=list)


def align_folder(input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 detector: str | FaceDetector = "mtcnn", size: int = 112, image_format: str = "png",
                 skip_existing: bool = False, progress: bool = True) -> FolderAlignmentReport:
    """Detect, align and save the largest face of every photo under `input_dir`, keeping sub-folders.

    `input_dir/alice/1.jpg` becomes `output_dir/alice/1.png` (identity folders are kept, so the
    result is a training folder for `image_folder_dataset`). Photos without a face and unreadable
    files are skipped and listed in the report and in `output_dir/skipped.txt`; the landmarks used for
    each crop go to `output_dir/landmarks.csv` (original-photo pixels). Each crop is written
    to a temporary file and renamed, so an interrupted run never leaves half-written images.

    Example:
        >>> import tempfile
        >>> photos = Path(tempfile.mkdtemp()) / "photos"
        >>> for name, colour in [("alice", "tan"), ("bob", "black")]:
        ...     (photos / name).mkdir(parents=True)
        ...     Image.new("RGB", (160, 160), colour).save(photos / name / "1.jpg")
        >>> # a stand-in detector that finds a face in any photo that is not all black (default: "mtcnn")
        >>> detector = CallableDetector(lambda image: [((0, 0, 160, 160), ARCFACE_TEMPLATE_112 + 24, 0.99)]
        ...                             if image.any() else [])
        >>> report = align_folder(photos, photos.parent / "photos_112", detector, progress=False)
        >>> [str(path.relative_to(photos.parent)) for path in report.written]
        ['photos_112/alice/1.png']
        >>> [str(path.relative_to(photos)) for path in report.no_face]
        ['bob/1.jpg']
    """
    detector_object = get_detector(detector)
    if detector_object is None:
        raise GhostFaceError("align_folder needs a face detector (detector='none' only suits pre-aligned crops)")
    input_root, output_root = Path(input_dir), Path(output_dir)
    images = list_images(input_root)
    if not images:
        raise DataError(f"{input_root}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    report = FolderAlignmentReport([], [], [], [])
    bar = ProgressBar(len(images), "photo") if progress else None
    for index, path in enumerate(images):
        target = (output_root / path.relative_to(input_root)).with_suffix("." + image_format.lstrip("."))
        if not (skip_existing and target.exists()):
            _align_one_file(path, target, detector_object, size, report)
        if bar is not None:
            bar.update(index + 1)
    _write_skip_list(output_root, report)
    _write_landmarks_csv(output_root, report)
    return report


def _align_one_file(path: Path, target: Path, detector: FaceDetector, size: int,
                    report: FolderAlignmentReport) -> None:
    try:
        image = load_rgb_image(path)
    except DataError as error:
        report.unreadable.append((path, str(error)))
        return
    faces = detector.detect(image)
    if not faces:
        report.no_face.append(path)
        return
    largest = max(faces, key=lambda face: face.area)
    crop = align_face(image, largest.landmarks, size)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, lambda temporary: Image.fromarray(crop).save(temporary))  # format from the suffix
    report.written.append(target)
    report.detections.append((path, largest))


def _write_landmarks_csv(output_root: Path, report: FolderAlignmentReport) -> None:
    if not report.written:
        return
    header = ["crop", "source", "score", "box_x1", "box_y1", "box_x2", "box_y2"]
    header += [f"{name}_{axis}" for name in LANDMARK_NAMES for axis in "xy"]
    rows = [",".join(header)]
    for crop, (source, face) in zip(report.written, report.detections):
        numbers = [f"{face.score:.4f}"] + [f"{value:.2f}" for value in [*face.box, *face.landmarks.reshape(-1)]]
        rows.append(",".join([str(crop.relative_to(output_root)), str(source), *numbers]))
    write_atomically(output_root / "landmarks.csv", "\n".join(rows) + "\n")


def _write_skip_list(output_root: Path, report: FolderAlignmentReport) -> None:
    lines = [f"{path}\tno face found" for path in report.no_face]
    lines += [f"{path}\t{reason}" for path, reason in report.unreadable]
    output_root.mkdir(parents=True, exist_ok=True)
    skip_file = output_root / "skipped.txt"
    if lines:
        write_atomically(skip_file, "\n".join(lines) + "\n")
    elif skip_file.exists():
        skip_file.unlink()


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
