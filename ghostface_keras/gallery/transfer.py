"""A gallery to and from one `.npz` file (names, embeddings, paths, and the model identity as JSON): the format
`ghostface identify --save-gallery` writes, so either can be turned into the other. Read without pickles, sizes
checked before allocation (`core.files.load_npz`); a file with a non-finite or zero embedding, or from another
model, is refused whole in one line.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from ghostface_keras.gallery.store import GalleryStore
    >>> from ghostface_keras.gallery.identity import ModelIdentity
    >>> root = Path(tempfile.mkdtemp())
    >>> store = GalleryStore.create(root / "people", ModelIdentity("toy", 2))
    >>> _ = store.enroll("alice", np.array([[1.0, 0.0]]), ["a.jpg"])
    >>> export_npz(store, root / "people.npz")
    1
    >>> copy = GalleryStore.create(root / "copy", ModelIdentity("toy", 2))
    >>> import_npz(copy, root / "people.npz"), copy.people()
    (1, [('alice', 1)])
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import load_npz, write_atomically
from ghostface_keras.gallery.identity import ModelIdentity, check_embeddings
from ghostface_keras.gallery.store import GalleryStore


def export_npz(store: GalleryStore, path: str | os.PathLike) -> int:
    """Write every photo of `store` to `path` (atomically); returns how many."""
    names, embeddings, paths = store.embeddings()

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:  # a handle: np.savez would append ".npz" to a bare name
            np.savez(handle, names=np.array(names, dtype=str), embeddings=embeddings,
                     paths=np.array(paths, dtype=str), model=np.array(store.identity.to_json()))

    write_atomically(path, write)
    return len(names)


def read_npz(path: str | os.PathLike) -> tuple[list[str], np.ndarray, list[str], ModelIdentity | None]:
    """(names, unit embeddings, paths, model identity or None) of a gallery `.npz`, every row checked."""
    try:
        data = load_npz(path, ["names", "embeddings", "paths"])
    except DataError as error:
        raise DataError(f"{path}: not a gallery .npz file ({str(error).removeprefix(f'{path}: ')})") from None
    names, embeddings, paths = data["names"].tolist(), data["embeddings"], data["paths"].tolist()
    if embeddings.ndim != 2 or len(names) != len(embeddings) or (paths and len(paths) != len(embeddings)):
        raise DataError(f"{path}: {len(names)} names and {len(paths)} paths for embeddings of shape "
                        f"{embeddings.shape}")
    identity = None
    try:
        identity = ModelIdentity.from_json(str(load_npz(path, ["model"])["model"]), path)
    except DataError:  # written by `ghostface identify --save-gallery`: no identity, only the size is checked
        pass
    rows = check_embeddings(embeddings, embeddings.shape[1], [f"{path}: row {index + 1} ({name})"
                                                              for index, name in enumerate(names)])
    return names, rows, paths or [""] * len(names), identity


def import_npz(store: GalleryStore, path: str | os.PathLike) -> int:
    """Enroll every photo of a gallery `.npz` into `store`, one transaction per person; returns how many."""
    names, embeddings, paths, identity = read_npz(path)
    if identity is not None:
        store.identity.refuse_other(identity, path)
    check_embeddings(embeddings, store.identity, [str(path)] * len(names))
    order: dict[str, list[int]] = {}
    for row, name in enumerate(names):
        order.setdefault(name, []).append(row)
    for name, rows in order.items():
        store.enroll(name, embeddings[rows], [paths[row] for row in rows])
    return len(names)
