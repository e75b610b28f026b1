"""Faces in video: read frames, detect, track, identify against a gallery, write JSON lines or an annotated video.

`watch` yields one `FrameResult` per frame. Detection runs on every frame, embedding does not: an `IoUTracker`
follows each face by box overlap, and a track is (re-)embedded only when it is new, every `reembed_every`
frames, when its face grew (a larger face embeds better) or when its aligned face changed a lot; one
`embed_aligned` call per frame embeds them. A track whose new embedding is another person's (a cut) gets a new id.
Video input and output need OpenCV (`pip install 'ghostface_keras[video]'`); the command is `ghostface watch`.

    >>> with JsonLinesWriter("faces.jsonl") as output:                      # doctest: +SKIP
    ...     for frame in watch(FaceEmbedder("model.keras"), "meeting.mp4", "known_people/"):   # 0: a camera
    ...         output.write(frame)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from ghostface_keras.core.images import load_rgb_image
from ghostface_keras.faces.alignment import align_face, arcface_template, estimate_similarity_transform
from ghostface_keras.core.errors import DataError, GhostFaceError
from ghostface_keras.core.files import atomic_output
from ghostface_keras.faces.tracking import IoUTracker, Track  # noqa: F401 - Track: part of this module's API
from ghostface_keras.faces.enroll import is_store, open_gallery

if TYPE_CHECKING:
    from ghostface_keras.faces.embedder import FaceEmbedder, Gallery

logger = logging.getLogger(__name__)

# output suffix -> FourCC: codecs every opencv-python(-headless) wheel writes without extra libraries
VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def _cv2() -> Any:
    """OpenCV, imported on first use, with its own and FFmpeg's console messages off: a bad file or a missing
    camera is reported once, as a `DataError`, not by C++ warnings on stderr (explicit settings win)."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    # FFmpeg's lines ("moov atom not found") obey OPENCV_FFMPEG_LOGLEVEL only in OpenCV's debug mode; -8 is quiet
    os.environ.setdefault("OPENCV_FFMPEG_DEBUG", "1")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise GhostFaceError("reading and writing video needs OpenCV: pip install 'ghostface_keras[video]'") from None
    return cv2


class FrameSource:
    """RGB frames of a video file or a camera index (an int, or digits that name no file), opened and its first frame
    read now (a missing file, one OpenCV cannot decode, a camera that gives no frame: `DataError`). Iterate once.
    `name`: the file or "camera N"; `fps`: 0.0 if unknown; `size`: (width, height); `frame_count`: None if unknown.

    Example:
        >>> FrameSource("no_such_clip.mp4")
        Traceback (most recent call last):
        ghostface_keras.core.errors.DataError: no_such_clip.mp4: video file not found
    """

    def __init__(self, source: int | str | os.PathLike) -> None:
        cv2 = _cv2()
        text = None if isinstance(source, int) else os.fspath(source)
        self.source = int(text) if text and text.isdigit() and not Path(text).exists() else (text or source)
        self.is_camera = isinstance(self.source, int)
        self.name = f"camera {self.source}" if self.is_camera else str(self.source)
        if not self.is_camera and not Path(self.source).is_file():
            raise DataError(f"{self.name}: video file not found")
        self._capture = cv2.VideoCapture(self.source)
        if self.is_camera:  # keep one frame buffered, so a slow consumer sees the present, not a queue
            self._capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        ok, first = self._capture.read() if self._capture.isOpened() else (False, None)
        if not ok:  # a file OpenCV opens but cannot decode is as unreadable as one it cannot open
            self.close()
            raise DataError(f"{self.name}: " + ("no such camera, or it cannot be opened" if self.is_camera
                                                else "not a video OpenCV can read"))
        self._first: np.ndarray | None = first
        self.size = (int(first.shape[1]), int(first.shape[0]))
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and fps > 0 else 0.0
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 and not self.is_camera else None
        logger.info("%s: %dx%d, %.1f frames/s, %s frames", self.name, *self.size, self.fps, self.frame_count or "?")

    def __iter__(self) -> Iterator[np.ndarray]:
        cv2 = _cv2()
        frame, self._first = self._first, None
        while frame is not None:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = self._capture.read()
            frame = frame if ok else None

    def close(self) -> None:
        """Release the file or camera (`with` and `watch` do it when done)."""
        self._capture.release()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _thumbnail(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """A 14x14 grey summary of the face aligned at 56x56 (OpenCV: 0.1 ms, against 3.5 for a 112 `align_face`, which
    only faces to embed get), zero-mean and unit-norm (None when flat). Alignment removes position and scale, block
    means most landmark jitter: 1 - the dot product of two ("change") is at least 0.21 for all 262 pairs of
    different people of the deepface photos (median 0.66), and for one face zoomed 2x over 100 frames at most 0.16
    (median 0.007): `watch`'s change_threshold 0.15 catches every such cut, for an occasional extra embedding."""
    cv2 = _cv2()
    matrix = estimate_similarity_transform(landmarks, arcface_template(56))
    grey = cv2.warpAffine(rgb, matrix, (56, 56), flags=cv2.INTER_LINEAR).astype(np.float32).mean(axis=2)
    blocks = grey.reshape(14, 4, 14, 4).mean(axis=(1, 3)).ravel()
    norm = float(np.linalg.norm(blocks - blocks.mean()))
    return (blocks - blocks.mean()) / norm if norm > 1e-3 else None


@dataclass(frozen=True)
class FaceResult:
    """One face in one frame: its track, box (x1, y1, x2, y2), detector score and identity."""

    track_id: int
    box: tuple[float, float, float, float]
    score: float
    name: str | None      # the gallery identity when `similarity` reaches the threshold, else None
    nearest: str          # the most similar gallery identity, whatever the similarity
    similarity: float
    embedded: str | None  # why the track was embedded on this frame ("new", "every", "grew", "changed"); None: reused


@dataclass(frozen=True)
class FrameResult:
    """One frame: its index, time in seconds (from the file's frame rate, else the wall clock), faces, RGB pixels."""

    index: int
    time: float
    faces: tuple[FaceResult, ...]
    image: np.ndarray = field(repr=False, compare=False)


def watch(embedder: FaceEmbedder, source: int | str | os.PathLike | FrameSource | Iterable[np.ndarray],
          gallery: Gallery | str | os.PathLike | Mapping[str, Iterable[Any]], threshold: float | None = None,
          max_frames: int | None = None, reembed_every: int | None = 30, grow_ratio: float | None = 1.5,
          change_threshold: float | None = 0.15, tracker: IoUTracker | None = None) -> Iterator[FrameResult]:
    """Detect, track and identify the faces of each frame. The gallery and source are opened now, frames on demand.

    `source`: a video file, a camera index, a `FrameSource` or any iterable of RGB frames. `gallery`: a `Gallery`,
    a `.npz` of `Gallery.save`, or what `FaceEmbedder.build_gallery` takes. `threshold`: the cosine a match needs
    (default `embedder.threshold`). A track is re-embedded after `reembed_every` frames, when its box area reaches
    `grow_ratio` times its area at its last embedding, or when its appearance changed by more than
    `change_threshold` (1 - correlation of 14x14 thumbnails); None or 0 turns a rule off. An unreadable video, no
    such camera, an empty gallery or one of another embedding size is a `DataError`.

    Example:
        >>> import keras
        >>> from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, CallableDetector
        >>> from ghostface_keras.faces.embedder import FaceEmbedder, Gallery
        >>> inputs = keras.Input((112, 112, 3))      # untrained stand-ins for a face model and a detector
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> one_face = CallableDetector(lambda image: [((0, 0, 112, 112), ARCFACE_TEMPLATE_112, 0.9)])
        >>> embedder = FaceEmbedder(model, detector=one_face)
        >>> gallery = Gallery(["alice"], np.full((1, 32), 32 ** -0.5, np.float32))
        >>> frames = [np.full((112, 112, 3), 90, np.uint8)] * 3     # or a video file, or a camera index
        >>> for frame in watch(embedder, frames, gallery, threshold=-1.0):
        ...     print(frame.index, [(face.track_id, face.name, face.embedded) for face in frame.faces])
        0 [(1, 'alice', 'new')]
        1 [(1, 'alice', None)]
        2 [(1, 'alice', None)]
    """
    from ghostface_keras.faces.embedder import Gallery

    if embedder.detector is None:
        raise DataError("watching video needs a face detector, not 'none' (frames are not aligned crops)")
    if is_store(gallery):  # a persistent gallery: its photos, checked against this model, searched per frame
        names, embeddings, paths = open_gallery(gallery, embedder).embeddings()
        gallery = Gallery(names, embeddings, paths)
    elif isinstance(gallery, (str, os.PathLike)) and str(gallery).lower().endswith(".npz"):
        gallery = Gallery.load(gallery)
    elif not isinstance(gallery, Gallery):
        gallery = embedder.build_gallery(gallery)
    if len(gallery.embeddings) == 0:
        raise DataError("the gallery is empty: it holds no embeddings")
    size = getattr(embedder.model, "embedding_size", None)  # a model of another size would fail at the first face
    if size and size != gallery.embeddings.shape[1]:
        raise DataError(f"the gallery holds {gallery.embeddings.shape[1]}-d embeddings but this model makes {size}-d "
                        "ones: build the gallery with the same model")
    frames = FrameSource(source) if isinstance(source, (int, str, os.PathLike)) else source
    return _watch_frames(embedder, frames, gallery, embedder.threshold if threshold is None else float(threshold),
                         max_frames, (reembed_every, grow_ratio, change_threshold), tracker or IoUTracker())


def _watch_frames(embedder: FaceEmbedder, frames: Iterable[np.ndarray], gallery: Gallery, threshold: float,
                  max_frames: int | None, rules: tuple[Any, Any, Any], tracker: IoUTracker) -> Iterator[FrameResult]:
    fps = frames.fps if isinstance(frames, FrameSource) and not frames.is_camera else 0.0
    started = time.monotonic()
    try:
        for index, rgb in enumerate(frames):
            if max_frames is not None and index >= max_frames:
                break
            rgb = load_rgb_image(rgb)
            faces = [face for face in embedder.detect(rgb) if np.isfinite(face.landmarks).all()]
            tracks = tracker.update([face.box for face in faces])
            thumbnails = [_thumbnail(rgb, face.landmarks) for face in faces]
            reasons = [track.embedding_reason(index, face.area, thumbnail, *rules)
                       for track, face, thumbnail in zip(tracks, faces, thumbnails)]
            todo = [position for position, reason in enumerate(reasons) if reason]
            if todo:  # all tracks that need it in one call: one padded batch per frame, not one per face
                crops = [align_face(rgb, faces[position].landmarks, embedder.input_size) for position in todo]
                embeddings = embedder.embed_aligned(np.stack(crops))
                similarities = embeddings @ gallery.embeddings.T
                for row, position in enumerate(todo):
                    track, best = tracks[position], int(np.argmax(similarities[row]))
                    if track.embedding is not None and float(embeddings[row] @ track.embedding) < threshold:
                        track.track_id, reasons[position] = tracker.new_id(), "new"  # another person: a cut
                    track.similarity, track.nearest = float(similarities[row, best]), gallery.names[best]
                    track.name = track.nearest if track.similarity >= threshold else None
                    track.embedded_frame, track.embedded_area = index, faces[position].area
                    track.thumbnail, track.embedding = thumbnails[position], embeddings[row]
            results = tuple(FaceResult(track.track_id, tuple(float(value) for value in face.box), float(face.score),
                                       track.name, track.nearest, track.similarity, reason)
                            for track, face, reason in zip(tracks, faces, reasons))
            yield FrameResult(index, index / fps if fps else time.monotonic() - started, results, rgb)
    finally:
        if isinstance(frames, FrameSource):
            frames.close()


def draw_faces(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A BGR copy of an RGB frame with each face boxed and labelled "name 0.62 #3" (green; "unknown", red, below
    the threshold): what `AnnotatedVideoWriter` writes.

    Example:
        >>> face = FaceResult(3, (10.0, 30.0, 60.0, 90.0), 0.99, "alice", "alice", 0.62, None)
        >>> draw_faces(np.zeros((120, 160, 3), np.uint8), [face])[60, 10].tolist()    # the box's edge, BGR green
        [0, 200, 0]
    """
    cv2 = _cv2()
    canvas = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    for face in faces:
        colour = (0, 200, 0) if face.name else (0, 0, 220)
        x1, y1, x2, y2 = (int(round(value)) for value in face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        label = f"{face.name or 'unknown'} {face.similarity:.2f} #{face.track_id}"
        (width, height), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - height - 6, 0)  # above the box; inside it when the box touches the top of the frame
        cv2.rectangle(canvas, (x1, top), (x1 + width + 4, top + height + 6), colour, -1)
        cv2.putText(canvas, label, (x1 + 2, top + height + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return canvas


class JsonLinesWriter:
    """One JSON object per face per frame (frame, time, track, box, score, name, nearest, similarity, embedded: the
    `FrameResult` and `FaceResult` fields); path "-" streams them to stdout. Like every output, the file appears
    complete when the `with` block ends without an error, and not at all otherwise (files.atomic_output).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "faces.jsonl"
        >>> face = FaceResult(1, (10.0, 20.0, 50.0, 70.0), 0.99, "alice", "alice", 0.6234, "new")
        >>> with JsonLinesWriter(path) as output:
        ...     output.write(FrameResult(0, 0.0, (face,), np.zeros((1, 1, 3), np.uint8)))
        >>> json.loads(path.read_text())["name"]
        'alice'
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = path

    def __enter__(self) -> JsonLinesWriter:
        self._stack = contextlib.ExitStack()
        self._handle = sys.stdout if str(self.path) == "-" else self._stack.enter_context(
            open(self._stack.enter_context(atomic_output(self.path)), "w", encoding="utf-8"))
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._stack.__exit__(*exc_info)

    def write(self, frame: FrameResult) -> None:
        """Append the lines of one frame (none when it has no face)."""
        for face in frame.faces:
            record = {"frame": frame.index, "time": round(frame.time, 3), "track": face.track_id,
                      "box": [round(value, 1) for value in face.box], "score": round(face.score, 4),
                      "name": face.name, "nearest": face.nearest, "similarity": round(face.similarity, 4),
                      "embedded": face.embedded}
            self._handle.write(json.dumps(record) + "\n")
        if self._handle is sys.stdout:
            self._handle.flush()


class AnnotatedVideoWriter:
    """The frames with boxes and names drawn (`draw_faces`), in the codec the suffix implies (`VIDEO_CODECS`);
    written atomically like `JsonLinesWriter`.

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "annotated.mp4"
        >>> with AnnotatedVideoWriter(path, fps=10) as output:
        ...     for index in range(3):
        ...         output.write(FrameResult(index, index / 10, (), np.zeros((48, 64, 3), np.uint8)))
        >>> with FrameSource(path) as frames:
        ...     frames.size, frames.fps, frames.frame_count, len(list(frames))
        ((64, 48), 10.0, 3, 3)
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0) -> None:
        suffix = Path(path).suffix.lower()
        if suffix not in VIDEO_CODECS:
            raise DataError(f"{path}: unsupported video suffix; use one of {', '.join(VIDEO_CODECS)}")
        self.path, self.fourcc, self.fps = path, _cv2().VideoWriter_fourcc(*VIDEO_CODECS[suffix]), float(fps) or 25.0

    def __enter__(self) -> AnnotatedVideoWriter:
        self._stack, self._writer = contextlib.ExitStack(), None
        self._temporary = self._stack.enter_context(atomic_output(self.path))
        return self

    def __exit__(self, *exc_info: Any) -> Any:
        return self._stack.__exit__(*exc_info)

    def write(self, frame: FrameResult) -> None:
        """Draw and append one frame (the video takes the size of the first frame)."""
        canvas = draw_faces(frame.image, frame.faces)
        if self._writer is None:
            # the temporary keeps the suffix (files.temporary_path), by which OpenCV picks the container
            self._writer = _cv2().VideoWriter(str(self._temporary), self.fourcc, self.fps, canvas.shape[1::-1])
            self._stack.callback(self._writer.release)  # runs before the rename: the file is complete by then
            if not self._writer.isOpened():
                raise DataError(f"{self.path}: OpenCV cannot write this kind of video here")
        self._writer.write(canvas)
