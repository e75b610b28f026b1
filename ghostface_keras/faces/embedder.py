"""Photos in, decisions out: `FaceEmbedder` (detect -> align -> embed -> verify / identify) and the `ghostface` CLI.

Three lines from photos to a decision:

    >>> from ghostface_keras.faces.embedder import FaceEmbedder
    >>> embedder = FaceEmbedder("GN_W0.5_S2_ArcFace_epoch16.h5")      # doctest: +SKIP
    >>> similarity, same = embedder.verify("alice_1.jpg", "alice_2.jpg")  # doctest: +SKIP

(the model can also be a Keras model, a .keras or .tflite file, or a released checkpoint name).

The model sees exactly what it saw in training: one face, aligned to the ArcFace 112x112
template (`ghostface_keras.faces`), RGB, normalized by `normalize_images`. By default the embedding is
the L2-normalized sum of the embeddings of the crop and its mirror image (`flip=True`, as in the
official evaluation); the similarity of two faces is the cosine (dot product of unit vectors).

Group photos: every method takes `face=`: "largest" (the default; when a photo holds more than one face a
warning says how many were found and which one was used), a number (faces are counted left to right from 1),
or "all" (`embed_faces`, `identify_faces`; `compare` / `verify` then use the most similar pair of faces).

Command line (console script `ghostface`, in `ghostface_keras.cli.face`):

    ghostface verify a.jpg b.jpg --model model.keras
    ghostface embed photos/*.jpg --model model.tflite --output embeddings.npy
    ghostface identify probe.jpg --gallery known_people/ --model model.keras
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from ghostface_keras.faces.detectors import DEFAULT_DETECTOR, get_detector
from ghostface_keras.core.images import ImageInput, describe_image, load_rgb_image
from ghostface_keras.faces.alignment import DetectedFace, FaceDetector, align_face
from ghostface_keras.runtime.embedding import EmbeddingFunction
from ghostface_keras.core.errors import DataError, GhostFaceError, NoFaceError
from ghostface_keras.core.files import load_npz, write_atomically
from ghostface_keras.runtime.loading import LoadedModel, load_model
from ghostface_keras.core.numeric import l2_normalize
from ghostface_keras.core.progress import ProgressBar
from ghostface_keras.faces.enroll import gallery_entries, is_store, rank_against_store
from ghostface_keras.gallery.identity import check_embeddings

logger = logging.getLogger(__name__)

FaceChoice = Union[str, int]
"""Which face of a photo to use: "largest", "all", or a number (faces counted left to right from 1)."""


def parse_face_choice(choice: FaceChoice) -> FaceChoice:
    """Check a `face=` value: "largest", "all" or a positive number (an int or its digits).

    Example:
        >>> parse_face_choice("2"), parse_face_choice("ALL")
        (2, 'all')
        >>> parse_face_choice(0)
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.GhostFaceError: face must be 'largest', 'all' or a face number from 1 (left to right); got 0
    """
    text = str(choice).strip().lower()
    if text in ("largest", "all"):
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise GhostFaceError(f"face must be 'largest', 'all' or a face number from 1 (left to right); got {choice!r}")


# --------------------------------------------------------------------------------------------------
# The embedder
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlignedFace:
    """A detected face and its aligned crop ((size, size, 3) uint8 RGB).

    `number` counts the photo's faces left to right from 1 (by box centre) and `count` is how many the
    photo holds; both are set by `FaceEmbedder.choose_faces` (0 where no numbering was asked for).
    """

    image: np.ndarray
    box: np.ndarray
    landmarks: np.ndarray
    score: float
    number: int = 0
    count: int = 0

    def describe(self) -> str:
        """'face 2 of 3 (box 10,20-80,100)' for messages."""
        x1, y1, x2, y2 = (int(round(float(value))) for value in self.box)
        return f"face {self.number} of {self.count} (box {x1},{y1}-{x2},{y2})"


@dataclass(frozen=True)
class Comparison:
    """The result of `FaceEmbedder.compare`: the similarity of the faces compared, and which faces they were."""

    similarity: float
    same: bool
    face_a: AlignedFace
    face_b: AlignedFace


@dataclass(frozen=True)
class Match:
    """One gallery identity ranked by `identify`: its best-matching image and that cosine similarity."""

    name: str
    similarity: float
    path: str
    same: bool


@dataclass
class Gallery:
    """Known faces: one unit embedding per gallery image, with its identity name and source path."""

    names: list[str]
    embeddings: np.ndarray
    paths: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Write to a `.npz` file (atomically; no pickles, so it is safe to load)."""
        def write(temporary: Path) -> None:
            with open(temporary, "wb") as handle:  # a handle: np.savez would append ".npz" to a bare name
                np.savez(handle, names=np.array(self.names, dtype=str), embeddings=self.embeddings,
                         paths=np.array(self.paths, dtype=str))

        write_atomically(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Gallery:
        """Read a gallery written by `save`.

        Example:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "known.npz"
            >>> gallery = Gallery(["alice", "alice", "bob"], np.eye(3, 32, dtype=np.float32), ["a1.jpg", "a2.jpg", "b.jpg"])
            >>> gallery.save(path)
            >>> Gallery.load(path).names[:2]
            ['alice', 'alice']
        """
        try:
            data = load_npz(path, ["names", "embeddings", "paths"])  # sizes checked before allocation
        except DataError as error:
            raise DataError(f"{path}: not a gallery .npz file ({str(error).removeprefix(f'{path}: ')})") from None
        names, embeddings, paths = data["names"].tolist(), data["embeddings"], data["paths"].tolist()
        if embeddings.ndim != 2 or not np.issubdtype(embeddings.dtype, np.floating) or len(embeddings) == 0:
            raise DataError(f"{path}: gallery embeddings have shape {embeddings.shape} and type {embeddings.dtype}; "
                            "expected a non-empty (N, D) float array")
        if len(names) != len(embeddings) or (paths and len(paths) != len(embeddings)):
            raise DataError(f"{path}: {len(names)} names and {len(paths)} paths for {len(embeddings)} embeddings")
        # a NaN row would answer "similarity nan" for every probe: refused whole, naming the row
        check_embeddings(embeddings, embeddings.shape[1],
                         [f"{path}: row {index + 1} ({name})" for index, name in enumerate(names)])
        return cls(names, embeddings.astype(np.float32), paths)  # as saved: bit-exact round trips


class FaceEmbedder:
    """Detect, align and embed faces; verify pairs; identify against a gallery.

    Args:
        model_or_path: anything `ghostface_keras.load_model` takes: a Keras model, a `.keras` / `.h5` (ours or
            an official release) / `.tflite` / `.onnx` file, a SavedModel folder, a released checkpoint name.
        detector: "blazeface" (default; fast, LiteRT), "mtcnn" (finds smaller faces, ~20x slower), any object
            with `.detect(image) -> list[DetectedFace]`, or
            None / "none" when inputs are already aligned crops (resized to the model input if needed).
        flip: add the embedding of the mirrored crop before normalizing (official evaluation TTA).
        threshold: cosine threshold for `verify`; default: the threshold of the released checkpoint these
            weights are (recognized from the weights, in any format), else `checkpoints.FALLBACK_THRESHOLD`.
        batch_size: crops per model call.

    Example:
        >>> import keras
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> embedder = FaceEmbedder(model, detector=None)   # aligned crops in; photos need a detector ("blazeface")
        >>> embedder.embed(np.zeros((112, 112, 3), np.uint8)).shape       # a path, PIL image or array
        (32,)
        >>> FaceEmbedder("model.tflite").embed("photo.jpg").shape         # doctest: +SKIP
        (512,)
    """

    def __init__(self, model_or_path: Any, detector: str | FaceDetector | None = DEFAULT_DETECTOR, flip: bool = True,
                 threshold: float | None = None, batch_size: int = 32) -> None:
        self.model: LoadedModel = load_model(model_or_path)
        self.detector = get_detector(detector)
        self.flip = bool(flip)
        self.batch_size = int(batch_size)
        self.threshold = float(threshold) if threshold is not None else self.model.threshold
        self._embed = EmbeddingFunction(self.model, batch_size=self.batch_size, flip=self.flip)
        # one photo at a time through the detector, whichever thread asks (the HTTP service answers requests on
        # several): BlazeFace's LiteRT interpreters hold their input and output tensors, and LiteRT says no other
        # call may be made on an interpreter while `invoke` runs; a detector object of the caller's promises nothing
        self._detect_lock = threading.Lock()

    def warm_up(self) -> FaceEmbedder:
        """Run the whole path once now, so that the first real call is as fast as the rest: trace the embedding
        graph for each padded batch size (a short batch is padded to the next power of two; TensorFlow traces
        one graph per size until it generalizes) and start the detector on a drawn face. Long-lived users
        (`ghostface serve`, `ghostface watch`) call it at start; without it the first call costs 1-2 s more.

        Example:
            >>> import keras
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> FaceEmbedder(model, detector=None, batch_size=4).warm_up().batch_size
            4
        """
        from ghostface_keras.data.synthetic import render_synthetic_faces

        size, count = self.input_size, 1
        while count <= self.batch_size:
            self.embed_aligned(np.zeros((count, size, size, 3), np.uint8))
            count *= 2
        if self.detector is not None:
            faces, _ = render_synthetic_faces(1, 1, image_size=size)
            margin = size // 2  # a face filling a quarter of the photo, as detectors expect
            try:
                self.embed(np.pad(faces[0], ((margin, margin), (margin, margin), (0, 0))))
            except NoFaceError:  # a detector that does not see a drawn face has still started
                pass
        return self

    @property
    def input_size(self) -> int:
        """Side of the square crops the model takes (112 for every registry model)."""
        return self.model.input_size or 112

    def detect(self, image: ImageInput) -> list[DetectedFace]:
        """Faces in a photo, largest first (with detector=None: the whole image as one face)."""
        rgb = load_rgb_image(image)
        if self.detector is None:
            height, width = rgb.shape[:2]
            box = np.array([0, 0, width, height], np.float32)
            return [DetectedFace(box=box, landmarks=np.full((5, 2), np.nan, np.float32), score=1.0)]
        with self._detect_lock:
            faces = self.detector.detect(rgb)
        return sorted(faces, key=lambda face: -face.area)

    def align(self, image: ImageInput) -> list[AlignedFace]:
        """Every face of a photo, aligned to the model's input size, largest first."""
        rgb = load_rgb_image(image)
        if self.detector is None:
            return [AlignedFace(self._resize_precropped(rgb), *self._whole_image_face(rgb))]
        return [AlignedFace(align_face(rgb, face.landmarks, self.input_size), face.box, face.landmarks, face.score)
                for face in self.detect(rgb)]

    def choose_faces(self, image: ImageInput, face: FaceChoice = "largest") -> list[AlignedFace]:
        """The aligned face(s) of a photo that `face` names, numbered left to right.

        "largest" returns the largest face and, when the photo holds more than one, logs a warning saying how
        many were found and which one was used; a number returns that face; "all" returns every face.

        Raises:
            NoFaceError: no face was found, or fewer faces than the number asked for.

        Example:
            >>> import keras
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embedder = FaceEmbedder(model, detector=None)   # aligned crops: one face per image
            >>> [face.describe() for face in embedder.choose_faces(np.zeros((112, 112, 3), np.uint8), "all")]
            ['face 1 of 1 (box 0,0-112,112)']
        """
        choice = parse_face_choice(face)
        rgb = load_rgb_image(image)
        faces = self.align(rgb)
        if not faces:
            raise NoFaceError(f"{describe_image(image)}: no face found")
        left_to_right = sorted(faces, key=lambda found: float(found.box[0] + found.box[2]))
        numbered = [replace(found, number=index, count=len(faces)) for index, found in enumerate(left_to_right, 1)]
        if choice == "all":
            return numbered
        if choice == "largest":
            largest = max(numbered, key=lambda found: _box_area(found.box))
            if len(numbered) > 1:
                logger.warning("%s: %d faces found; using the largest, %s. Pick another with face=N (--face N; "
                               "counted left to right) or use each with face='all' (--face all)",
                               describe_image(image), len(numbered), largest.describe())
            return [largest]
        if choice > len(numbered):
            raise NoFaceError(f"{describe_image(image)}: face {choice} was asked for but {len(numbered)} "
                              f"face{'s were' if len(numbered) > 1 else ' was'} found")
        return [numbered[choice - 1]]

    def embed(self, image: ImageInput, face: FaceChoice = "largest") -> np.ndarray:
        """The unit-length embedding of one face of a photo (the largest unless `face` says which).

        Raises:
            NoFaceError: no face was found (the message names the file).
            DataError: the file is missing or not an image.
        """
        if parse_face_choice(face) == "all":
            raise GhostFaceError("embed returns one face's embedding; use embed_faces for every face of a photo")
        return self.embed_aligned(self.choose_faces(image, face)[0].image[None])[0]

    def embed_faces(self, image: ImageInput) -> tuple[np.ndarray, list[AlignedFace]]:
        """Embeddings of every face of a photo, (F, D) float32, and the faces, left to right.

        Example:
            >>> import keras
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embeddings, faces = FaceEmbedder(model, detector=None).embed_faces(np.zeros((112, 112, 3), np.uint8))
            >>> embeddings.shape, faces[0].number
            ((1, 32), 1)
        """
        faces = self.choose_faces(image, "all")
        return self.embed_aligned(np.stack([found.image for found in faces])), faces

    def embed_batch(self, images: Sequence[ImageInput], skip_missing: bool = False,
                    progress: bool = False, face: FaceChoice = "largest") -> np.ndarray:
        """Embeddings of one face of each photo (the largest unless `face` says which), (N, D) float32, rows
        in input order.

        With `skip_missing=True` a photo without a face (or without face number `face`) gives a row of NaN
        instead of raising `NoFaceError` (so rows stay aligned with the inputs).
        """
        if parse_face_choice(face) == "all":
            raise GhostFaceError("embed_batch returns one face per photo; use embed_faces for every face")
        crops, missing = [], []
        bar = ProgressBar(len(images), "photo") if progress else None
        for index, image in enumerate(images):
            try:
                crops.append(self.choose_faces(image, face)[0].image)
            except NoFaceError:
                if not skip_missing:
                    raise
                missing.append(index)
            if bar is not None:
                bar.update(index + 1)
        found = self.embed_aligned(np.stack(crops)) if crops else np.zeros((0, 0), np.float32)
        dimension = found.shape[1] if crops else (self.model.embedding_size or 0)
        result = np.full((len(images), dimension), np.nan, np.float32)
        result[np.setdiff1d(np.arange(len(images)), missing)] = found
        return result

    def embed_aligned(self, crops: np.ndarray) -> np.ndarray:
        """Unit embeddings of already aligned uint8 RGB crops (N, size, size, 3) -> (N, D) float32.

        Example:
            >>> import keras
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embedder = FaceEmbedder(model, detector=None)
            >>> embedder.embed_aligned(np.zeros((2, 112, 112, 3), np.uint8)).shape
            (2, 32)
        """
        crops = self.check_crops(crops)
        outputs = [self._embed(crops[start:start + self.batch_size]) for start in range(0, len(crops), self.batch_size)]
        embeddings = np.concatenate(outputs, axis=0) if outputs else np.zeros((0, self.model.embedding_size or 0),
                                                                               np.float32)
        broken = ~np.isfinite(embeddings).all(axis=1)
        if broken.any():  # NaN would pass every later comparison as "nan", never as an error
            raise DataError(f"model {self.model.name}: gave NaN or infinite embeddings for {int(broken.sum())} of "
                            f"{len(broken)} faces (broken or overflowing weights); refused")
        return l2_normalize(embeddings)

    def check_crops(self, crops: Any) -> np.ndarray:
        """`crops` as an array of the shape `embed_aligned` takes, (N, size, size, 3), or one `DataError` saying what
        it got (the HTTP service checks a request's crops with it before they join other requests' in a batch).

        Example:
            >>> import keras
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> FaceEmbedder(model, detector=None).check_crops(np.zeros((1, 96, 112, 3), np.uint8))
            Traceback (most recent call last):
            ...
            ghostface_keras.core.errors.DataError: aligned crops have shape (1, 96, 112, 3): expected (N, 112, 112, 3) uint8 RGB
        """
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[1:] != (self.input_size, self.input_size, 3):
            raise DataError(f"aligned crops have shape {crops.shape}: expected "
                            f"(N, {self.input_size}, {self.input_size}, 3) uint8 RGB")
        return crops

    def verify(self, image_a: ImageInput, image_b: ImageInput, threshold: float | None = None,
               face: FaceChoice | tuple[FaceChoice, FaceChoice] = "largest") -> tuple[float, bool]:
        """Cosine similarity of a face of each photo (the largest unless `face` says which; see `compare`)
        and whether it reaches the threshold.

        Example:
            >>> import keras
            >>> from ghostface_keras.data.synthetic import render_synthetic_faces
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embedder = FaceEmbedder(model, detector=None)      # aligned crops; photos need a detector ("blazeface")
            >>> faces, _ = render_synthetic_faces(1, 2)            # two pictures of one made-up person
            >>> embedder.threshold                                 # weights of no released checkpoint: the fallback
            0.3
            >>> embedder.verify(faces[0], faces[1])                # (cosine similarity, same person?)
            (..., ...)
            >>> similarity, same = embedder.verify(faces[0], faces[0])    # the same picture twice
            >>> round(similarity, 4), same
            (1.0, True)
        """
        result = self.compare(image_a, image_b, threshold, face)
        return result.similarity, result.same

    def compare(self, image_a: ImageInput, image_b: ImageInput, threshold: float | None = None,
                face: FaceChoice | tuple[FaceChoice, FaceChoice] = "largest") -> Comparison:
        """Like `verify`, and says which faces were compared.

        `face` applies to both photos, or is a pair (one per photo). With "all", every face of one photo is
        compared with every face of the other and the most similar pair is returned: "is the person of photo
        B anywhere in group photo A?" is `compare(a, b, face=("all", "largest"))`.

        Example:
            >>> import keras
            >>> from ghostface_keras.data.synthetic import render_synthetic_faces
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> faces, _ = render_synthetic_faces(1, 2)
            >>> result = FaceEmbedder(model, detector=None).compare(faces[0], faces[0], face=("all", 1))
            >>> round(result.similarity, 4), result.face_a.describe()
            (1.0, 'face 1 of 1 (box 0,0-112,112)')
        """
        threshold = self.threshold if threshold is None else float(threshold)
        choice_a, choice_b = face if isinstance(face, tuple) else (face, face)
        faces_a, faces_b = self.choose_faces(image_a, choice_a), self.choose_faces(image_b, choice_b)
        embeddings = self.embed_aligned(np.stack([found.image for found in faces_a + faces_b]))
        similarities = embeddings[:len(faces_a)] @ embeddings[len(faces_a):].T
        row, column = np.unravel_index(int(np.argmax(similarities)), similarities.shape)
        similarity = float(similarities[row, column])
        return Comparison(similarity, bool(similarity >= threshold), faces_a[row], faces_b[column])

    def build_gallery(self, source: str | os.PathLike | Mapping[str, Iterable[ImageInput]],
                      progress: bool = False) -> Gallery:
        """Embed known people: a folder (`name/*.jpg` sub-folders, or flat files named after the person)
        or a mapping name -> photos. Photos without a face are skipped with a warning.

        Example:
            >>> import keras, tempfile
            >>> from ghostface_keras.data.synthetic import render_synthetic_faces
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embedder = FaceEmbedder(model, detector=None)      # aligned crops; photos need a detector ("blazeface")
            >>> faces, _ = render_synthetic_faces(2, 2)            # two made-up people, two pictures each
            >>> known_people = Path(tempfile.mkdtemp())
            >>> for index, name in enumerate(["alice", "alice", "bob", "bob"]):
            ...     (known_people / name).mkdir(exist_ok=True)
            ...     Image.fromarray(faces[index]).save(known_people / name / f"{index}.png")
            >>> gallery = embedder.build_gallery(known_people)
            >>> sorted(set(gallery.names)), gallery.embeddings.shape
            (['alice', 'bob'], (4, 32))
        """
        entries = gallery_entries(source)
        embeddings = self.embed_batch([image for _, image in entries], skip_missing=True, progress=progress)
        found = ~np.isnan(embeddings).any(axis=1)
        for (name, image), ok in zip(entries, found):
            if not ok:
                logger.warning("gallery: no face in %s (identity %s), skipped", describe_image(image), name)
        if not found.any():
            raise NoFaceError(f"gallery {describe_image(source)}: no face found in any of its {len(entries)} photos")
        kept = [entry for entry, ok in zip(entries, found) if ok]
        return Gallery([name for name, _ in kept], embeddings[found], [describe_image(image) for _, image in kept])

    def identify(self, probe: ImageInput, gallery: Gallery | str | os.PathLike | Mapping[str, Iterable[ImageInput]],
                 top_k: int = 5, threshold: float | None = None, face: FaceChoice = "largest") -> list[Match]:
        """Rank gallery identities by the similarity of their closest photo to one face of the probe (the
        largest unless `face` says which; `identify_faces` ranks for every face). `gallery`: a `Gallery`, a
        persistent gallery folder or `GalleryStore` (`ghostface_keras.faces.enroll`; searched by its index, refused
        if built with another model), a folder of photos or a mapping name -> photos (embedded now).

        Example:
            >>> import keras
            >>> from ghostface_keras.data.synthetic import render_synthetic_faces
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> embedder = FaceEmbedder(model, detector=None)      # aligned crops; photos need a detector ("blazeface")
            >>> faces, _ = render_synthetic_faces(2, 2)            # two made-up people, two pictures each
            >>> best = embedder.identify(faces[0], {"alice": faces[:2], "bob": faces[2:]})[0]   # or a folder
            >>> best.name, best.same
            ('alice', True)
        """
        if parse_face_choice(face) == "all":
            raise GhostFaceError("identify ranks one face; use identify_faces for every face of a photo")
        return self.identify_faces(probe, gallery, top_k, threshold, face)[0][1]

    def identify_faces(self, probe: ImageInput,
                       gallery: Gallery | str | os.PathLike | Mapping[str, Iterable[ImageInput]],
                       top_k: int = 5, threshold: float | None = None,
                       face: FaceChoice = "all") -> list[tuple[AlignedFace, list[Match]]]:
        """For each chosen face of the probe (every face by default, left to right), the ranked identities.

        Example:
            >>> import keras
            >>> from ghostface_keras.data.synthetic import render_synthetic_faces
            >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
            >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
            >>> faces, _ = render_synthetic_faces(2, 2)
            >>> results = FaceEmbedder(model, detector=None).identify_faces(faces[2], {"alice": faces[:2], "bob": faces[2:]})
            >>> [(found.number, matches[0].name) for found, matches in results]
            [(1, 'bob')]
        """
        threshold = self.threshold if threshold is None else float(threshold)
        if is_store(gallery):  # a persistent gallery folder (or an open GalleryStore): its index searches
            faces = self.choose_faces(probe, face)
            probe_embeddings = self.embed_aligned(np.stack([found.image for found in faces]))
            ranked = rank_against_store(gallery, self, probe_embeddings, top_k)
            return [(found, [Match(name, similarity, path, bool(similarity >= threshold))
                             for name, similarity, path in hits]) for found, hits in zip(faces, ranked)]
        if not isinstance(gallery, Gallery):
            gallery = self.build_gallery(gallery)
        faces = self.choose_faces(probe, face)
        probe_embeddings = self.embed_aligned(np.stack([found.image for found in faces]))
        if gallery.embeddings.shape[1] != probe_embeddings.shape[1]:
            raise DataError(f"the gallery holds {gallery.embeddings.shape[1]}-d embeddings but this model makes "
                            f"{probe_embeddings.shape[1]}-d ones: build the gallery with the same model")
        return [(found, self._rank(gallery, gallery.embeddings @ embedding, top_k, threshold))
                for found, embedding in zip(faces, probe_embeddings)]

    @staticmethod
    def _rank(gallery: Gallery, similarities: np.ndarray, top_k: int, threshold: float) -> list[Match]:
        best_per_name: dict[str, int] = {}
        for index, name in enumerate(gallery.names):
            if name not in best_per_name or similarities[index] > similarities[best_per_name[name]]:
                best_per_name[name] = index
        ranked = sorted(best_per_name.items(), key=lambda item: -similarities[item[1]])[:max(int(top_k), 1)]
        return [Match(name, float(similarities[index]), gallery.paths[index] if gallery.paths else "",
                      bool(similarities[index] >= threshold)) for name, index in ranked]

    # -- helpers -----------------------------------------------------------------------------------
    def _resize_precropped(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[:2] == (self.input_size, self.input_size):
            return rgb
        resized = Image.fromarray(rgb).resize((self.input_size, self.input_size), Image.BILINEAR)
        return np.asarray(resized)

    @staticmethod
    def _whole_image_face(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        height, width = rgb.shape[:2]
        return np.array([0, 0, width, height], np.float32), np.full((5, 2), np.nan, np.float32), 1.0


def _box_area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))

