"""Photo -> face embeddings on LiteRT alone: the phone-ready path, with no TensorFlow or Keras.

`embed_photo_litert` is the whole recognition front end in one short function, so that an app developer can
port it step by step (each step imports only numpy, Pillow and LiteRT):

1. decode: `load_rgb_image` -> (H, W, 3) uint8 RGB, EXIF orientation applied (phone photos are stored sideways);
2. detect: `BlazeFaceDetector` (two MediaPipe .tflite networks: BlazeFace boxes, then the face mesh for the
   five landmarks) -> `DetectedFace` boxes, landmarks and scores;
3. align: `align_face` -> every face warped so its five landmarks fall on the ArcFace 112x112 template;
4. normalize: `normalize_images` -> float32 (pixel - 127.5) / 128, the models' one input convention;
5. embed: `TFLiteEmbedder` runs your exported model (`ghostface-export --format tflite`); with `flip` the
   mirrored crop's output is added, as in the official evaluation;
6. L2-normalize: unit vectors, so the cosine similarity of two faces is the dot product of their rows.

Two faces are the same person when that cosine reaches the checkpoint's threshold (0.21 for the released
GN_W0.5_S2 weights, `ghostface_keras.weights.checkpoints`).

Example:
    >>> import keras, tempfile
    >>> from ghostface_keras.export import export_tflite
    >>> inputs = keras.Input((112, 112, 3))     # an untrained stand-in for your exported face model
    >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
    >>> embeddings, faces = embed_photo_litert(np.zeros((240, 320, 3), np.uint8), path)   # a black photo
    >>> embeddings.shape, faces
    ((0, 32), [])
    >>> embeddings, faces = embed_photo_litert("group.jpg", path)       # doctest: +SKIP
    >>> float(embeddings[0] @ embeddings[1])        # cosine of the two largest faces   # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from ghostface_keras.faces.alignment import DetectedFace, FaceDetector, align_face
from ghostface_keras.faces.blazeface import BlazeFaceDetector
from ghostface_keras.runtime.litert import TFLiteEmbedder
from ghostface_keras.core.images import ImageInput, load_rgb_image
from ghostface_keras.core.numeric import l2_normalize
from ghostface_keras.core.preprocessing import flip_summed


def embed_photo_litert(photo: ImageInput, embedder: str | os.PathLike | TFLiteEmbedder,
                       detector: FaceDetector | None = None, flip: bool = True,
                       max_faces: int | None = None) -> tuple[np.ndarray, list[DetectedFace]]:
    """Unit embeddings of every face in a photo, largest face first, computed with LiteRT only.

    Args:
        photo: a path, bytes, PIL image or RGB uint8 array.
        embedder: a `.tflite` face-embedding file (loaded once and kept, 1 LiteRT thread), or a `TFLiteEmbedder`.
        detector: any `FaceDetector`; None uses one shared `BlazeFaceDetector()`.
        flip: add the embedding of each mirrored crop before normalizing (as `FaceEmbedder` does by default).
        max_faces: embed only the largest `max_faces` faces; None embeds them all.

    Returns:
        (embeddings, faces): (F, D) float32 unit rows, row i for `faces[i]`; F = 0 when no face was found.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.export import export_tflite
        >>> inputs = keras.Input((112, 112, 3))     # an untrained stand-in for your exported face model
        >>> model = keras.Model(inputs, keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> path = export_tflite(model, f"{tempfile.mkdtemp()}/face.tflite")
        >>> embed_photo_litert(np.full((96, 96, 3), 255, np.uint8), path)[0].shape     # a white photo: no face
        (0, 8)
        >>> embeddings, faces = embed_photo_litert("photo.jpg", path)      # doctest: +SKIP
        >>> faces[0].box, faces[0].score                                   # doctest: +SKIP
    """
    if not isinstance(embedder, TFLiteEmbedder):
        embedder = _load_embedder(embedder)
    detector = detector if detector is not None else _shared_detector()

    rgb = load_rgb_image(photo)  # 1. decode
    faces = sorted(detector.detect(rgb), key=lambda face: -face.area)[:max_faces]  # 2. detect, largest first
    if not faces:
        return np.zeros((0, _embedding_size(embedder)), np.float32), []
    crops = np.stack([align_face(rgb, face.landmarks, embedder.input_size) for face in faces])  # 3. align
    embeddings = flip_summed(embedder, crops, flip)  # 4. normalize and 5. embed (and the mirrored crops)
    return l2_normalize(embeddings), faces  # 6. unit length


@functools.lru_cache(maxsize=1)
def _shared_detector() -> BlazeFaceDetector:
    # building the two interpreters costs more than detecting a face: build them once per process
    return BlazeFaceDetector()


def _load_embedder(path: str | os.PathLike) -> TFLiteEmbedder:
    resolved = Path(path).resolve()
    stat = resolved.stat() if resolved.is_file() else None
    # keyed on size and modification time too, so a re-exported file is loaded again
    return _cached_embedder(str(resolved), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)


@functools.lru_cache(maxsize=4)
def _cached_embedder(path: str, modified_ns: int, size: int) -> TFLiteEmbedder:
    return TFLiteEmbedder(path, num_threads=1)  # 1 thread: the least CPU time per face on a busy phone


def _embedding_size(embedder: TFLiteEmbedder) -> int:
    return int(embedder.interpreter.get_output_details()[0]["shape"][-1])
