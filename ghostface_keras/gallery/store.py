"""A persistent gallery: one folder holding a SQLite database (the truth) and a search index (derived from it).

    gallery/
        gallery.sqlite       people, their photos (path, sha256, unit embedding), the model identity, timestamps,
                             and a change log (one row per photo added or removed, in commit order)
        index-<seq>.faiss     the HNSW graph as of change <seq> (only for galleries of BRUTE_FORCE_BELOW photos or
                             more; smaller ones are searched exactly from the database's rows)
        .lock                held by the one process that writes

Why it survives a crash: every change is one SQLite transaction (write-ahead log, synchronous=FULL), so a process
killed at any point (SIGKILL included) leaves the database as of its last commit. The index is never trusted
beyond what it says: a saved graph is named by the change it reflects, is written atomically, and on open the
changes after it are replayed from the log (or, with no usable graph, the index is rebuilt from the rows).
Readers take a snapshot (one read transaction) to bring the index up to date, search and name the results, so
they never see half of a change. Two writers are serialized by `.lock`; one that cannot get it within `timeout`
seconds is refused in one line. Embeddings that are not finite, are zero, or have another length than the
gallery's never enter.

Example:
    >>> import tempfile, numpy as np
    >>> folder = Path(tempfile.mkdtemp()) / "people"
    >>> store = GalleryStore.create(folder, ModelIdentity("toy", 3))
    >>> _ = store.enroll("alice", np.array([[1, 0, 0], [1, 0.1, 0]], np.float32), ["a1.jpg", "a2.jpg"])
    >>> _ = store.enroll("bob", np.array([[0, 1, 0]], np.float32), ["b1.jpg"])
    >>> [(hit.name, round(hit.similarity, 3)) for hit in store.search(np.array([[0.1, 1, 0]], np.float32), 2)[0]]
    [('bob', 0.995), ('alice', 0.198)]
    >>> store.people()
    [('alice', 2), ('bob', 1)]
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator, Sequence

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import atomic_output
from ghostface_keras.gallery.index import BRUTE_FORCE_BELOW, VectorIndex
from ghostface_keras.gallery.locking import exclusive_lock
from ghostface_keras.gallery.identity import ModelIdentity, check_embeddings

logger = logging.getLogger(__name__)

DATABASE = "gallery.sqlite"
SCHEMA_VERSION = 1
# a graph is saved again once this many changes would have to be replayed on open (replaying is ~0.2 ms a photo)
SAVE_AFTER_CHANGES = 2_000
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created REAL NOT NULL);
CREATE TABLE photos (id INTEGER PRIMARY KEY AUTOINCREMENT, person INTEGER NOT NULL REFERENCES people(id),
                     path TEXT NOT NULL, sha256 TEXT, embedding BLOB NOT NULL, created REAL NOT NULL);
CREATE INDEX photos_person ON photos(person);
CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, photo INTEGER NOT NULL, added INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Hit:
    """One person found by `GalleryStore.search`: the best-matching photo of that person."""

    name: str
    similarity: float
    path: str
    photo_id: int


def is_gallery_folder(path: str | os.PathLike) -> bool:
    """True when `path` is a folder holding a gallery database.

    Example:
        >>> is_gallery_folder(".")
        False
    """
    return (Path(path) / DATABASE).is_file()


class GalleryStore:
    """A gallery folder, opened; use `create` or `open`. Thread-safe (one connection behind a lock)."""

    def __init__(self, folder: Path, connection: sqlite3.Connection, identity: ModelIdentity,
                 timeout: float) -> None:
        self.folder, self.identity, self.timeout = folder, identity, float(timeout)
        self._db = connection
        self._lock = threading.RLock()
        self._index: VectorIndex | None = None
        self._index_seq = 0  # the last change the in-memory index reflects

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike, identity: ModelIdentity, timeout: float = 30.0) -> GalleryStore:
        """A new, empty gallery in `folder` (created; refused if it already holds one)."""
        folder = Path(folder)
        if is_gallery_folder(folder):
            raise DataError(f"{folder}: already holds a gallery")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise DataError(f"{folder}: exists and is not an empty folder; give a new folder for the gallery")
        folder.mkdir(parents=True, exist_ok=True)

        def write(temporary: Path) -> None:  # the database appears whole or not at all
            connection = sqlite3.connect(temporary)
            with connection:
                connection.executescript(_SCHEMA)
                connection.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema", str(SCHEMA_VERSION)), ("model", identity.to_json()), ("created", repr(time.time()))])
            connection.close()

        with atomic_output(folder / DATABASE) as temporary:
            write(temporary)
        return cls.open(folder, timeout=timeout)

    @classmethod
    def open(cls, folder: str | os.PathLike, timeout: float = 30.0) -> GalleryStore:
        """The gallery in `folder`; one `DataError` naming it if it is missing or is not one."""
        folder = Path(folder)
        if not is_gallery_folder(folder):
            raise DataError(f"{folder}: not a gallery folder (no {DATABASE}; make one with `ghostface gallery "
                            "create`)")
        try:
            connection = sqlite3.connect(folder / DATABASE, timeout=timeout, check_same_thread=False,
                                         isolation_level=None)  # transactions are explicit: BEGIN ... COMMIT
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as error:
            raise DataError(f"{folder / DATABASE}: not a readable gallery database ({error})") from None
        if meta.get("schema") != str(SCHEMA_VERSION):
            raise DataError(f"{folder}: gallery schema {meta.get('schema')!r}; this version reads {SCHEMA_VERSION}")
        return cls(folder, connection, ModelIdentity.from_json(meta["model"], folder), timeout)

    def close(self) -> None:
        """Close the database (the store is unusable afterwards)."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> GalleryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.photo_count

    @property
    def photo_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM photos").fetchone()[0])

    @property
    def person_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM people").fetchone()[0])

    def people(self) -> list[tuple[str, int]]:
        """(name, number of photos) of every person, by name."""
        return [(name, int(count)) for name, count in self._db.execute(
            "SELECT people.name, COUNT(photos.id) FROM people LEFT JOIN photos ON photos.person = people.id "
            "GROUP BY people.id ORDER BY people.name").fetchall()]

    def photos(self, name: str | None = None) -> list[tuple[int, str, str]]:
        """(photo id, person name, path) of every photo (of one person), in enrollment order."""
        query = "SELECT photos.id, people.name, photos.path FROM photos JOIN people ON photos.person = people.id"
        rows = self._db.execute(query + (" WHERE people.name = ?" if name is not None else "") + " ORDER BY photos.id",
                                () if name is None else (name,)).fetchall()
        return [(int(photo_id), person, path) for photo_id, person, path in rows]

    def digests(self, names: set[str]) -> set[tuple[str, str]]:
        """(name, sha256) of the photos of these people that have a digest (to skip photos already enrolled)."""
        rows = self._db.execute("SELECT people.name, photos.sha256 FROM photos JOIN people ON photos.person = "
                                "people.id WHERE photos.sha256 IS NOT NULL AND people.name IN (SELECT value FROM "
                                "json_each(?))", (json.dumps(sorted(names)),)).fetchall()
        return {(name, digest) for name, digest in rows}

    def embeddings(self) -> tuple[list[str], np.ndarray, list[str]]:
        """Every photo's (names, (N, D) float32 unit embeddings, paths), in enrollment order."""
        rows = self._db.execute("SELECT people.name, photos.embedding, photos.path FROM photos JOIN people "
                                "ON photos.person = people.id ORDER BY photos.id").fetchall()
        matrix = np.frombuffer(b"".join(row[1] for row in rows), "<f4").reshape(len(rows), self.identity.embedding_size)
        return [row[0] for row in rows], matrix.astype(np.float32), [row[2] for row in rows]

    def search(self, queries: np.ndarray, top_k: int = 5) -> list[list[Hit]]:
        """For each query embedding, the `top_k` people whose closest photo is most similar, best first.

        Queries are checked like enrolled embeddings (length, finite, non-zero) and scaled to unit length.
        """
        queries = check_embeddings(queries, self.identity, "query")
        with self._lock, self._snapshot():
            index = self._synced_index()
            # more photos than people are fetched: several of one person may rank before the next person
            ids, scores = index.search(queries, max(int(top_k) * 8, 32))
            named = self._names_of(np.unique(ids))
        results = []
        for row_ids, row_scores in zip(ids, scores):
            best: dict[str, Hit] = {}
            for photo_id, score in zip(row_ids.tolist(), row_scores.tolist()):
                if photo_id in named and named[photo_id][0] not in best:
                    name, path = named[photo_id]
                    best[name] = Hit(name, float(score), path, int(photo_id))
            results.append(sorted(best.values(), key=lambda hit: -hit.similarity)[:max(int(top_k), 1)])
        return results

    # -- writing ------------------------------------------------------------------------------------
    def enroll(self, name: str, embeddings: np.ndarray, paths: Sequence[str],
               sha256s: Sequence[str | None] | None = None) -> list[int]:
        """Add photos of `name` (created if new) in one transaction; returns their photo ids. Refuses, before
        writing anything, embeddings that do not fit the gallery (length, NaN, infinity, zero)."""
        name = _check_name(name)
        embeddings = check_embeddings(embeddings, self.identity, paths)
        if len(paths) != len(embeddings):
            raise DataError(f"{len(paths)} paths for {len(embeddings)} embeddings")
        sha256s = list(sha256s) if sha256s is not None else [None] * len(paths)
        now = time.time()
        with self._writing():
            self._db.execute("INSERT OR IGNORE INTO people (name, created) VALUES (?, ?)", (name, now))
            person = self._db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()[0]
            ids = []
            for embedding, path, digest in zip(embeddings, paths, sha256s):
                cursor = self._db.execute("INSERT INTO photos (person, path, sha256, embedding, created) "
                                          "VALUES (?, ?, ?, ?, ?)", (person, str(path), digest,
                                                                     embedding.astype("<f4").tobytes(), now))
                ids.append(int(cursor.lastrowid))
            self._db.executemany("INSERT INTO changes (photo, added) VALUES (?, 1)", [(i,) for i in ids])
        return ids

    def remove_person(self, name: str) -> int:
        """Remove a person and all their photos; returns how many photos went."""
        with self._writing():
            ids = [row[0] for row in self._db.execute(
                "SELECT photos.id FROM photos JOIN people ON photos.person = people.id WHERE people.name = ?",
                (name,))]
            if not ids and self._db.execute("SELECT 1 FROM people WHERE name = ?", (name,)).fetchone() is None:
                raise DataError(f"{self.folder}: no person named {name!r}")
            self._delete_photos(ids)
            self._db.execute("DELETE FROM people WHERE name = ?", (name,))
        return len(ids)

    def remove_photo(self, photo: int | str) -> int:
        """Remove one photo by id, or every photo enrolled from a path; returns how many went."""
        with self._writing():
            column = "id" if isinstance(photo, int) else "path"
            ids = [row[0] for row in self._db.execute(f"SELECT id FROM photos WHERE {column} = ?", (photo,))]
            if not ids:
                raise DataError(f"{self.folder}: no photo {photo!r}")
            self._delete_photos(ids)
        return len(ids)

    def rename(self, old: str, new: str) -> None:
        """Rename a person (refused if `new` is taken)."""
        new = _check_name(new)
        with self._writing():
            if self._db.execute("SELECT 1 FROM people WHERE name = ?", (new,)).fetchone() is not None:
                raise DataError(f"{self.folder}: a person named {new!r} already exists")
            if self._db.execute("UPDATE people SET name = ? WHERE name = ?", (new, old)).rowcount == 0:
                raise DataError(f"{self.folder}: no person named {old!r}")

    def save_index(self) -> Path | None:
        """Write the graph as of the latest change (nothing for an exact index); returns the file written."""
        with self._lock, self._writer_lock():
            return self._save_index()

    # -- internals ----------------------------------------------------------------------------------
    def _delete_photos(self, ids: list[int]) -> None:
        self._db.executemany("DELETE FROM photos WHERE id = ?", [(i,) for i in ids])
        self._db.executemany("INSERT INTO changes (photo, added) VALUES (?, 0)", [(i,) for i in ids])

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """One read transaction: everything read inside sees the same committed state."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """The writer lock, then one write transaction; afterwards the graph is saved if the log has grown."""
        with self._lock, self._writer_lock():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            if self._index is not None and self._index.kind == "hnsw" and \
                    self._last_seq() - self._saved_seq() >= SAVE_AFTER_CHANGES:
                self._save_index()

    def _writer_lock(self) -> contextlib.AbstractContextManager:
        """`.lock` held exclusively (`locking.exclusive_lock`): one writer at a time, across processes."""
        return exclusive_lock(self.folder, self.timeout)

    def _last_seq(self) -> int:
        return int(self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    def _saved_seq(self) -> int:
        saved = self._saved_graphs()
        return saved[-1][0] if saved else 0

    def _saved_graphs(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.folder.glob("index-*.faiss"):
            seq = path.stem.removeprefix("index-")
            if seq.isdigit():
                found.append((int(seq), path))
        return sorted(found)

    def _save_index(self) -> Path | None:
        with self._snapshot():
            index = self._synced_index()
        if index.kind != "hnsw":
            return None
        target = self.folder / f"index-{self._index_seq}.faiss"
        with atomic_output(target) as temporary:
            index.save(temporary)
        for seq, path in self._saved_graphs():  # older graphs are no longer needed
            if seq < self._index_seq:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        logger.info("%s: search index saved as of change %d", self.folder, self._index_seq)
        return target

    def _synced_index(self) -> VectorIndex:
        """The index as of the current snapshot: loaded or rebuilt on first use, then the log replayed."""
        last = self._last_seq()
        if self._index is None:
            self._index, self._index_seq = self._loaded_or_rebuilt()
        if last > self._index_seq:
            changes = self._db.execute("SELECT photo, added FROM changes WHERE seq > ? ORDER BY seq",
                                       (self._index_seq,)).fetchall()
            removed = [photo for photo, added in changes if not added]
            gone = set(removed)
            added = [photo for photo, was_added in changes if was_added and photo not in gone]
            self._index.remove(np.array(removed, np.int64))
            self._add_rows(self._index, "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(added),))
            self._index_seq = last
        return self._index

    def _loaded_or_rebuilt(self) -> tuple[VectorIndex, int]:
        count = self.photo_count
        for seq, path in reversed(self._saved_graphs()):
            if count >= BRUTE_FORCE_BELOW // 2 and seq <= self._last_seq():
                try:
                    live = np.array([row[0] for row in self._db.execute("SELECT id FROM photos")], np.int64)
                    return VectorIndex.load_graph(path, self.identity.embedding_size, live), seq
                except DataError as error:  # a damaged graph is only a cache: rebuild it
                    logger.warning("%s; rebuilding the index from the database", error)
        index = VectorIndex(self.identity.embedding_size)
        self._add_rows(index, "", ())
        return index, self._last_seq()

    def _add_rows(self, index: VectorIndex, where: str, parameters: tuple) -> None:
        cursor = self._db.execute(f"SELECT id, embedding FROM photos {where} ORDER BY id", parameters)
        while True:
            rows = cursor.fetchmany(50_000)
            if not rows:
                break
            matrix = np.frombuffer(b"".join(row[1] for row in rows), "<f4").reshape(len(rows), -1)
            index.add(np.array([row[0] for row in rows], np.int64), matrix)

    def _names_of(self, ids: np.ndarray) -> dict[int, tuple[str, str]]:
        rows = self._db.execute("SELECT photos.id, people.name, photos.path FROM photos JOIN people ON "
                                "photos.person = people.id WHERE photos.id IN (SELECT value FROM json_each(?))",
                                (json.dumps([int(i) for i in ids.reshape(-1) if i >= 0]),)).fetchall()
        return {int(photo_id): (name, path) for photo_id, name, path in rows}


def _check_name(name: str) -> str:
    text = str(name).strip()
    if not text or "\n" in text or len(text) > 200:
        raise DataError(f"person name {name!r}: give 1 to 200 characters on one line")
    return text
