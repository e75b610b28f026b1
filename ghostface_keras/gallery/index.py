"""The search index of a gallery: unit embeddings keyed by photo id, top-k by cosine similarity.

Below `BRUTE_FORCE_BELOW` photos the index is a numpy matrix searched exactly. From that size on it is an HNSW
graph (faiss `IndexHNSWFlat`, chosen over hnswlib and usearch by `benchmarks/gallery_search.py`: at 100 k photos
it built 2x faster and answered faster at equal recall (M 16); docs/gallery.md). faiss graphs cannot delete, so removed
photos are tombstones filtered from the results, and the graph is rebuilt without them once they are a tenth of it.
The index is derived data: the gallery's database is the truth, and an index is rebuilt from it or brought up to
date by replaying the database's change log (`ghostface_keras.gallery.store`).

Example:
    >>> import numpy as np
    >>> index = VectorIndex(3)
    >>> index.add(np.array([10, 11]), np.array([[1, 0, 0], [0, 1, 0]], np.float32))
    >>> ids, scores = index.search(np.array([[0.9, 0.1, 0]], np.float32), 1)
    >>> ids.tolist(), len(index)
    ([[10]], 2)
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ghostface_keras.core.errors import DataError

logger = logging.getLogger(__name__)

# brute force costs ~0.2 us per photo and probe (21.7 ms for one probe against 100 k on 2 shared cores,
# benchmarks/results/gallery_search.md), the graph ~1.6 ms at 100 k; below 20 k photos brute force stays under
# ~4 ms, is exact, and costs no build (2.7 ms of CPU per photo with the default graph)
BRUTE_FORCE_BELOW = 20_000
# HNSW parameters: M 32 / efConstruction 200 / efSearch 256 gave recall@1 1.000 against brute force at 100 k
# photos (6.5x faster per probe, 259 s to build on 2 shared cores); M 16 / efConstruction 100 builds 4x faster but
# found the same person for only 99.3 % of probes at 100 k and 84 % at 300 k (benchmarks/results/gallery_search.md)
HNSW_M = 32
HNSW_CONSTRUCTION = 200
HNSW_EF = 256
# tombstones (removed photos still in the graph) above this share of it: rebuild the graph without them
REBUILD_SHARE = 0.1
EXTRA = "gallery"  # pip install "ghostface_keras[gallery]"


def import_faiss() -> Any:
    """faiss, or one `DataError` naming the extra that installs it."""
    try:
        import faiss
    except ImportError:
        raise DataError(f"a gallery of {BRUTE_FORCE_BELOW:,} photos or more is searched with faiss: "
                        f'pip install "ghostface_keras[{EXTRA}]"') from None
    return faiss


class VectorIndex:
    """Unit embeddings keyed by non-negative integer ids; exact below `brute_force_below`, HNSW from there.

    Args:
        dimension: length of every embedding.
        brute_force_below: size from which a graph is built (`BRUTE_FORCE_BELOW`).
        threads: threads of graph building and batch search.
    """

    def __init__(self, dimension: int, brute_force_below: int | None = None, threads: int | None = None) -> None:
        self.dimension = int(dimension)
        self.brute_force_below = int(BRUTE_FORCE_BELOW if brute_force_below is None else brute_force_below)
        self.threads = int(threads or min(os.cpu_count() or 1, 4))
        self._ids = np.zeros(0, np.int64)  # brute force: ids and rows
        self._rows = np.zeros((0, self.dimension), np.float32)
        self._graph: Any = None  # faiss.IndexIDMap2(IndexHNSWFlat) once the size reaches brute_force_below
        self._deleted: set[int] = set()

    def __len__(self) -> int:
        return int(self._graph.ntotal) - len(self._deleted) if self._graph is not None else len(self._ids)

    @property
    def kind(self) -> str:
        """'exact' (numpy) or 'hnsw'."""
        return "hnsw" if self._graph is not None else "exact"

    def add(self, ids: np.ndarray, embeddings: np.ndarray) -> None:
        """Add rows (unit float32, checked finite by the store before they get here) under new ids."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        embeddings = np.ascontiguousarray(embeddings, np.float32).reshape(len(ids), self.dimension)
        if not len(ids):
            return
        if self._graph is None and len(self._ids) + len(ids) < self.brute_force_below:
            self._ids = np.concatenate([self._ids, ids])
            self._rows = np.concatenate([self._rows, embeddings])
            return
        if self._graph is None:
            self._graph = self._new_graph()
            ids, embeddings = np.concatenate([self._ids, ids]), np.concatenate([self._rows, embeddings])
            self._ids, self._rows = np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        self._graph.add_with_ids(embeddings, ids)

    def remove(self, ids: np.ndarray) -> None:
        """Drop these ids (ids not in the index are ignored: a replayed removal may already be applied)."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if self._graph is None:
            keep = ~np.isin(self._ids, ids)
            self._ids, self._rows = self._ids[keep], self._rows[keep]
            return
        self._deleted.update(int(i) for i in ids[np.isin(ids, self.graph_ids())])
        if len(self._deleted) > REBUILD_SHARE * self._graph.ntotal:
            self._rebuild_without_tombstones()

    def graph_ids(self) -> np.ndarray:
        """Every id the graph holds, tombstones included (empty for an exact index)."""
        if self._graph is None:
            return np.zeros(0, np.int64)
        return import_faiss().vector_to_array(self._graph.id_map).astype(np.int64)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ids and cosine similarities of the `k` nearest rows of each query, best first: (Q, k') int64 and
        float32 arrays with k' = min(k, len(self)); a graph may find fewer for a query (id -1, score -inf)."""
        queries = np.ascontiguousarray(queries, np.float32).reshape(-1, self.dimension)
        k = min(int(k), len(self))
        if k <= 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        if self._graph is None:
            scores = queries @ self._rows.T
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < scores.shape[1] else np.tile(
                np.arange(scores.shape[1]), (len(queries), 1))
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            return self._ids[np.take_along_axis(top, order, axis=1)], np.take_along_axis(top_scores, order, axis=1)
        faiss = import_faiss()
        parameters = faiss.SearchParametersHNSW(efSearch=max(HNSW_EF, k))
        if self._deleted:  # tombstones are skipped inside the graph walk, so k live results still come back
            excluded = np.fromiter(self._deleted, np.int64, len(self._deleted))
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(excluded))
            parameters = faiss.SearchParametersHNSW(sel=selector, efSearch=max(HNSW_EF, k))
        scores, labels = self._graph.search(queries, k, params=parameters)
        return labels.astype(np.int64), np.where(labels >= 0, scores, -np.inf).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the graph to `path` (the caller makes it atomic); an exact index has nothing worth saving.
        Tombstones are not saved: on load they are the graph's ids that the database no longer holds."""
        if self._graph is not None:
            import_faiss().write_index(self._graph, str(path))

    @classmethod
    def load_graph(cls, path: str | os.PathLike, dimension: int, live_ids: np.ndarray) -> VectorIndex:
        """A graph index saved by `save`; its ids not in `live_ids` (the database's photos) become tombstones."""
        faiss = import_faiss()
        index = cls(dimension)
        try:
            graph = faiss.read_index(str(Path(path)))
        except (RuntimeError, OSError, ValueError) as error:
            raise DataError(f"{path}: unreadable search index ({error})") from None
        if graph.d != dimension or not isinstance(graph, faiss.IndexIDMap2):
            raise DataError(f"{path}: a search index of {graph.d}-d vectors, not this gallery's {dimension}-d")
        index._graph = graph
        held = index.graph_ids()
        index._deleted = set(held[~np.isin(held, np.asarray(live_ids, np.int64))].tolist())
        return index

    def _new_graph(self) -> Any:
        faiss = import_faiss()
        faiss.omp_set_num_threads(self.threads)
        graph = faiss.IndexHNSWFlat(self.dimension, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = HNSW_CONSTRUCTION
        graph.hnsw.efSearch = HNSW_EF
        return faiss.IndexIDMap2(graph)

    def _rebuild_without_tombstones(self) -> None:
        held = self.graph_ids()
        rows = self._graph.index.reconstruct_n(0, int(self._graph.ntotal))  # HNSWFlat keeps the vectors
        keep = ~np.isin(held, np.fromiter(self._deleted, np.int64, len(self._deleted)))
        logger.info("rebuilding the search graph without %d removed photos", len(self._deleted))
        self._graph, self._deleted = None, set()
        self._ids, self._rows = np.zeros(0, np.int64), np.zeros((0, self.dimension), np.float32)
        self.add(held[keep], rows[keep])
