"""The MTCNN face detector (the `mtcnn` package): thorough on small faces, slower than BlazeFace."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.core.images import load_rgb_image
from ghostface_keras.faces.alignment import DetectedFace


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


