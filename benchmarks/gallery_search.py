"""Gallery search: approximate-nearest-neighbour indexes (hnswlib, faiss HNSW, usearch) against brute-force numpy
on the same embeddings, side by side in one process: recall@1 against the exact answer, query latency (one probe,
and a batch of 64), build time (wall and CPU) and the memory the index adds.

Data: `--sizes` enrolled unit 512-d float32 embeddings shaped like a face gallery (identities drawn at random on
the sphere, 4 photos each at cosine ~0.7 to their identity's centre, the spread of a trained face model), and
1,000 probes that are new photos of enrolled identities. Ground truth is numpy's exact top-1 (float32 matmul).
Pure random vectors (no identity structure at all) are the hard case for any graph index; `--random` measures it.

    python benchmarks/gallery_search.py --sizes 100000 300000         # writes benchmarks/results/gallery_search.md
    python benchmarks/gallery_search.py --sizes 2000 --queries 100 --out /tmp/search.md      # a smoke run

Threads: every library is given `--threads` (default 2, the machine's cores); numpy's BLAS is limited to the same
through OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set before numpy is imported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

THREADS = "2"
for _argument in sys.argv:
    if _argument.startswith("--threads="):
        THREADS = _argument.split("=", 1)[1]
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, THREADS)

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ghostface_keras.core.files import write_atomically  # noqa: E402
from ghostface_keras.core.tables import markdown_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIMENSION = 512
PHOTOS_PER_PERSON = 4


def gallery_like(size: int, queries: int, seed: int, random: bool) -> tuple[np.ndarray, np.ndarray]:
    """`size` enrolled unit embeddings and `queries` probes (new photos of enrolled people), float32."""
    rng = np.random.default_rng(seed)

    def unit(array: np.ndarray) -> np.ndarray:
        return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)

    if random:
        return unit(rng.standard_normal((size, DIMENSION), np.float32)), unit(
            rng.standard_normal((queries, DIMENSION), np.float32))
    people = -(-size // PHOTOS_PER_PERSON)
    centres = unit(rng.standard_normal((people, DIMENSION), np.float32))
    # noise of norm ~1 around a unit centre: photo-to-centre cosine ~0.7, photo-to-photo ~0.5 (a trained model's
    # genuine pairs); different people are ~0 apart, as in 512-d
    spread = 1.0 / np.sqrt(DIMENSION)
    enrolled = np.empty((size, DIMENSION), np.float32)
    for start in range(0, size, 100_000):  # in chunks: the noise of 1 M x 512 in float64 would be 4 GB
        stop = min(start + 100_000, size)
        owners = np.arange(start, stop) // PHOTOS_PER_PERSON
        enrolled[start:stop] = unit(centres[owners] + rng.standard_normal((stop - start, DIMENSION), np.float32)
                                    * spread)
    owners = rng.integers(0, people, queries)
    probes = unit(centres[owners] + rng.standard_normal((queries, DIMENSION), np.float32) * spread)
    return enrolled, probes


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def timed(work: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - wall, time.process_time() - cpu


class Brute:
    name = "numpy brute force"

    def build(self, data: np.ndarray, threads: int) -> None:
        self.data = data

    def search(self, probes: np.ndarray, k: int) -> np.ndarray:
        scores = probes @ self.data.T
        if k == 1:
            return np.argmax(scores, axis=1)[:, None]
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


class Hnswlib:
    name = "hnswlib HNSW"

    def __init__(self, m: int, construction: int, ef: int) -> None:
        self.m, self.construction, self.ef = m, construction, ef

    def build(self, data: np.ndarray, threads: int) -> None:
        import hnswlib

        self.index = hnswlib.Index(space="ip", dim=data.shape[1])
        self.index.init_index(max_elements=len(data), ef_construction=self.construction, M=self.m)
        self.index.set_num_threads(threads)
        self.index.add_items(data, np.arange(len(data)))
        self.set_ef(self.ef)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.set_ef(ef)

    def search(self, probes: np.ndarray, k: int) -> np.ndarray:
        return self.index.knn_query(probes, k=k)[0]


class Faiss:
    name = "faiss HNSWFlat"

    def __init__(self, m: int, construction: int, ef: int) -> None:
        self.m, self.construction, self.ef = m, construction, ef

    def build(self, data: np.ndarray, threads: int) -> None:
        import faiss

        faiss.omp_set_num_threads(threads)
        self.index = faiss.IndexHNSWFlat(data.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = self.construction
        self.index.add(data)
        self.set_ef(self.ef)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.hnsw.efSearch = ef

    def search(self, probes: np.ndarray, k: int) -> np.ndarray:
        return self.index.search(probes, k)[1]


class Usearch:
    name = "usearch HNSW"

    def __init__(self, m: int, construction: int, ef: int) -> None:
        self.m, self.construction, self.ef = m, construction, ef

    def build(self, data: np.ndarray, threads: int) -> None:
        from usearch.index import Index

        self.threads = threads
        self.index = Index(ndim=data.shape[1], metric="ip", dtype="f32", connectivity=self.m,
                           expansion_add=self.construction, expansion_search=self.ef)
        self.index.add(np.arange(len(data)), data, threads=threads)

    def set_ef(self, ef: int) -> None:
        self.ef = ef
        self.index.expansion_search = ef

    def search(self, probes: np.ndarray, k: int) -> np.ndarray:
        found = self.index.search(probes, k, threads=self.threads)
        return np.asarray(found.keys).reshape(len(probes), k)


def latency_ms(search: Callable[[np.ndarray, int], np.ndarray], probes: np.ndarray, batch: int,
               rounds: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of one search call of `batch` probes."""
    walls, cpus = [], []
    for round_ in range(rounds):
        start = (round_ * batch) % (len(probes) - batch + 1)
        _, wall, cpu = timed(lambda: search(probes[start:start + batch], 1))
        walls.append(wall)
        cpus.append(cpu)
    return float(np.median(walls) * 1e3), float(np.median(cpus) * 1e3)


def measure(size: int, queries: int, threads: int, seed: int, random: bool, libraries: list[Any],
            efs: list[int]) -> list[dict]:
    enrolled, probes = gallery_like(size, queries, seed, random)
    rows = []
    truth = None
    for library in [Brute()] + libraries:
        before = rss_bytes()
        _, build_wall, build_cpu = timed(lambda: library.build(enrolled, threads))
        added = max(rss_bytes() - before, 0)
        for ef in (efs if hasattr(library, "set_ef") else [None]):
            if ef is not None:
                library.set_ef(ef)
            found = np.concatenate([library.search(probes[start:start + 256], 1)[:, 0]
                                    for start in range(0, len(probes), 256)])
            if truth is None:
                truth = found
            single = latency_ms(library.search, probes, 1, min(300, queries))
            batch = latency_ms(library.search, probes, 64, 40)
            rows.append({"size": size, "library": library.name, "ef": ef, "build_wall_s": build_wall,
                         "build_cpu_s": build_cpu, "index_mb": added / 2**20,
                         "recall_at_1": float(np.mean(found == truth)),
                         # the same person as brute force's best photo (what identify reports)
                         "person_recall_at_1": float(np.mean(found // PHOTOS_PER_PERSON == truth // PHOTOS_PER_PERSON)),
                         "single_ms": single[0], "single_cpu_ms": single[1],
                         "batch64_ms": batch[0], "batch64_cpu_ms": batch[1]})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def report(rows: list[dict], arguments: argparse.Namespace, seconds: float) -> str:
    brute = {row["size"]: row for row in rows if row["library"] == Brute.name}
    table = []
    for row in rows:
        base = brute[row["size"]]
        search = row["library"] + (f" ef {row['ef']}" if row["ef"] else "")
        table.append([f"{row['size']:,}", search, f"{row['recall_at_1']:.4f}", f"{row['person_recall_at_1']:.4f}",
                      f"{row['single_ms']:.3f} ({row['single_cpu_ms']:.3f})",
                      f"{base['single_ms'] / row['single_ms']:.1f}x",
                      f"{row['batch64_ms']:.2f} ({row['batch64_cpu_ms']:.2f})",
                      f"{base['batch64_ms'] / row['batch64_ms']:.1f}x",
                      f"{row['build_wall_s']:.1f} ({row['build_cpu_s']:.1f})", f"{row['index_mb']:.0f}"])
    header_keys = ["enrolled", "search", "recall@1 vs brute", "same person as brute", "1 probe ms wall (CPU)", "1 probe speed-up",
                   "64 probes ms wall (CPU)", "64 probes speed-up", "build s wall (CPU)", "memory added MB"]
    load = os.getloadavg()[0]
    data = "pure random unit vectors" if arguments.random else (
        f"face-gallery-like ({PHOTOS_PER_PERSON} photos per identity, probes are new photos of enrolled people)")
    return (f"# Gallery search: ANN indexes vs brute-force numpy\n\n"
            f"Run: `python benchmarks/gallery_search.py {' '.join(sys.argv[1:])}` on "
            f"{time.strftime('%Y-%m-%d %H:%M')}, {seconds / 60:.1f} min, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores shared with other jobs (load average {load:.1f} at the end), {arguments.threads} "
            f"threads per library (numpy's BLAS too). Data: {DIMENSION}-d float32 unit embeddings, {data}; "
            f"{arguments.queries} probes; HNSW M={arguments.m}, efConstruction={arguments.construction}, "
            f"efSearch (ef) as listed, on one index built per library and size. Latency: median of repeated calls; speed-up = brute-force wall / this wall, "
            f"measured in the same process back to back. Memory added: resident-set growth while building "
            f"(the brute-force row is 0: it searches the array it is given, "
            f"{DIMENSION * 4 / 2**20:.1f} MB per 1,000 photos).\n\n" + markdown_table([dict(zip(header_keys, row)) for row in table]) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=int(THREADS))
    parser.add_argument("--m", type=int, default=16)
    parser.add_argument("--construction", type=int, default=100)
    parser.add_argument("--efs", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--libraries", nargs="+", default=["hnswlib", "faiss", "usearch"])
    parser.add_argument("--random", action="store_true", help="pure random vectors instead of a face-like gallery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gallery_search.md"))
    arguments = parser.parse_args()
    classes = {"hnswlib": Hnswlib, "faiss": Faiss, "usearch": Usearch}
    started = time.perf_counter()
    rows = []
    for size in arguments.sizes:
        libraries = [classes[name](arguments.m, arguments.construction, arguments.efs[0]) for name in arguments.libraries]
        rows += measure(size, arguments.queries, arguments.threads, arguments.seed, arguments.random, libraries,
                        arguments.efs)
    text = report(rows, arguments, time.perf_counter() - started)
    write_atomically(arguments.out, text)
    write_atomically(Path(arguments.out).with_suffix(".json"), json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
