"""Photos into a persistent gallery (`ghostface_keras.gallery`): detect, align and embed with a `FaceEmbedder`,
then commit, a chunk at a time, so a big enroll that is killed keeps every chunk it finished and a rerun skips the
photos already in (their sha256). The model's identity (name, checkpoint, size, fingerprint) is written at
creation and checked on every later use: another model's embeddings never mix in.

Example:
    >>> import keras, tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from ghostface_keras.data.synthetic import render_synthetic_faces
    >>> from ghostface_keras.faces.embedder import FaceEmbedder
    >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
    >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> embedder = FaceEmbedder(model, detector=None)      # aligned crops; photos need a detector ("blazeface")
    >>> root = Path(tempfile.mkdtemp())
    >>> faces, _ = render_synthetic_faces(2, 2)
    >>> for index, name in enumerate(["alice", "alice", "bob", "bob"]):
    ...     (root / "photos" / name).mkdir(parents=True, exist_ok=True)
    ...     Image.fromarray(faces[index]).save(root / "photos" / name / f"{index}.png")
    >>> store = create_gallery(root / "gallery", embedder)
    >>> enroll_photos(store, embedder, root / "photos")
    EnrollReport(enrolled=4, no_face=0, already_in=0)
    >>> embedder.identify(faces[3], store)[0].name
    'bob'
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from ghostface_keras.core.errors import DataError, NoFaceError
from ghostface_keras.core.files import list_images
from ghostface_keras.core.images import describe_image
from ghostface_keras.core.progress import ProgressBar
from ghostface_keras.gallery.identity import ModelIdentity
from ghostface_keras.gallery.store import GalleryStore, is_gallery_folder

logger = logging.getLogger(__name__)

# photos embedded and committed together: a killed enroll loses at most this many photos of work
ENROLL_CHUNK = 64
FINGERPRINT_DECIMALS = 6


@dataclass(frozen=True)
class EnrollReport:
    """What `enroll_photos` did: photos enrolled, skipped without a face, skipped as already in the gallery."""

    enrolled: int
    no_face: int
    already_in: int


def gallery_entries(source: Any) -> list[tuple[str, Any]]:
    """(identity, photo) pairs of a mapping name -> photos, or of a folder: `name/*.jpg` sub-folders give identity
    "name", flat files the file name without its extension."""
    if isinstance(source, Mapping):
        return [(str(name), image) for name, images in source.items() for image in images]
    root = Path(source)
    files = list_images(root)
    if not files:
        raise DataError(f"{root}: gallery folder has no image files")
    return [(path.parent.name if path.parent != root else path.stem, path) for path in files]


def model_identity(embedder: Any) -> ModelIdentity:
    """The identity of `embedder`'s model: name, checkpoint, embedding size and fingerprint (the embedding of one
    fixed pseudo-random crop, computed once per embedder)."""
    cached = getattr(embedder, "_gallery_identity", None)
    if cached is not None:
        return cached
    size = embedder.input_size
    crop = np.random.default_rng(20231).integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    fingerprint = embedder.embed_aligned(crop)[0]
    model = embedder.model
    identity = ModelIdentity(model.name, int(fingerprint.shape[0]),
                             model.checkpoint.name if model.checkpoint is not None else None,
                             tuple(round(float(value), FINGERPRINT_DECIMALS) for value in fingerprint))
    embedder._gallery_identity = identity
    return identity


def create_gallery(folder: str | os.PathLike, embedder: Any) -> GalleryStore:
    """A new, empty gallery in `folder` for `embedder`'s model."""
    return GalleryStore.create(folder, model_identity(embedder))


def open_gallery(folder: str | os.PathLike | GalleryStore, embedder: Any) -> GalleryStore:
    """The gallery in `folder`, refused in one line if it was built with another model than `embedder`'s."""
    store = folder if isinstance(folder, GalleryStore) else GalleryStore.open(folder)
    store.identity.refuse_other(model_identity(embedder), store.folder)
    return store


def is_store(gallery: Any) -> bool:
    """True for an open `GalleryStore` or a gallery folder (what `open_gallery` takes)."""
    return isinstance(gallery, GalleryStore) or (isinstance(gallery, (str, os.PathLike)) and is_gallery_folder(gallery))


def enroll_photos(store: GalleryStore, embedder: Any, source: Any, name: str | None = None,
                  progress: bool = False) -> EnrollReport:
    """Enroll photos: a folder (as `gallery_entries`), a mapping name -> photos, or photo paths / folders of one
    person `name`. Photos without a face are skipped with a warning; photos already enrolled for that person (same
    bytes) are skipped. Commits every `ENROLL_CHUNK` photos."""
    open_gallery(store, embedder)
    entries = _entries(source, name)
    bar = ProgressBar(len(entries), "photo") if progress else None
    enrolled = no_face = already_in = 0
    for start in range(0, len(entries), ENROLL_CHUNK):
        chunk = entries[start:start + ENROLL_CHUNK]
        digests = [_digest(image) for _, image in chunk]
        known = store.digests({person for person, _ in chunk})
        fresh = [index for index, ((person, _), digest) in enumerate(zip(chunk, digests))
                 if digest is None or (person, digest) not in known]
        already_in += len(chunk) - len(fresh)
        embeddings = embedder.embed_batch([chunk[index][1] for index in fresh], skip_missing=True) if fresh else None
        by_person: dict[str, list[int]] = {}
        for row, index in enumerate(fresh):
            if np.isnan(embeddings[row]).any():
                logger.warning("gallery: no face in %s (identity %s), skipped", describe_image(chunk[index][1]),
                               chunk[index][0])
                no_face += 1
                continue
            by_person.setdefault(chunk[index][0], []).append(row)
        for person, rows in by_person.items():
            store.enroll(person, embeddings[rows], [describe_image(chunk[fresh[row]][1]) for row in rows],
                         [digests[fresh[row]] for row in rows])
            enrolled += len(rows)
        if bar is not None:
            bar.update(start + len(chunk))
    if entries and enrolled == 0 and already_in == 0:
        raise NoFaceError(f"{describe_image(source)}: no face found in any of its {len(entries)} photos")
    return EnrollReport(enrolled, no_face, already_in)


def _entries(source: Any, name: str | None) -> list[tuple[str, Any]]:
    if name is None:
        if isinstance(source, (list, tuple)):
            raise DataError("photos of one person need a name (--name)")
        return gallery_entries(source)
    photos: Sequence[Any] = source if isinstance(source, (list, tuple)) else [source]
    entries: list[tuple[str, Any]] = []
    for photo in photos:
        if isinstance(photo, (str, os.PathLike)) and Path(photo).is_dir():
            entries += [(name, path) for path in list_images(photo)]
        else:
            entries.append((name, photo))
    if not entries:
        raise DataError(f"{describe_image(source)}: no image files")
    return entries


def _digest(image: Any) -> str | None:
    """sha256 of a photo file's bytes (None for arrays and other in-memory images)."""
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    if not isinstance(image, (str, os.PathLike)) or not Path(image).is_file():
        return None
    digest = hashlib.sha256()
    with open(image, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rank_against_store(store: GalleryStore | str | os.PathLike, embedder: Any, embeddings: np.ndarray,
                       top_k: int) -> list[list[tuple[str, float, str]]]:
    """(name, similarity, path) of the `top_k` people for each probe embedding, after the model check."""
    store = open_gallery(store, embedder)
    return [[(hit.name, hit.similarity, hit.path) for hit in hits] for hits in store.search(embeddings, top_k)]

