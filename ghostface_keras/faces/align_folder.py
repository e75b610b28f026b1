"""Align a whole folder of photos: the largest face of each, saved as a crop, with a landmark table."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ghostface_keras.core.errors import DataError, GhostFaceError
from ghostface_keras.core.files import IMAGE_EXTENSIONS, list_images, write_atomically
from ghostface_keras.core.images import load_rgb_image
from ghostface_keras.core.progress import ProgressBar
from ghostface_keras.faces.alignment import LANDMARK_NAMES, DetectedFace, FaceDetector, align_face
from ghostface_keras.faces.detectors import get_detector

logger = logging.getLogger(__name__)


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
        >>> from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, CallableDetector
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


