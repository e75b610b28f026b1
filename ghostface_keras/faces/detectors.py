"""Face detectors by name: `get_detector("blazeface" | "mtcnn" | None | detector object)`."""

from __future__ import annotations

from typing import Any, Callable

from ghostface_keras.core.errors import GhostFaceError
from ghostface_keras.faces.alignment import FaceDetector
from ghostface_keras.faces.mtcnn import MTCNNDetector


def _blazeface(**options: Any) -> FaceDetector:
    from ghostface_keras.faces.blazeface import BlazeFaceDetector  # imports this module: resolved on first use

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


