"""`ghostface serve` against one `ghostface verify` process per request: latency per verify request, wall-clock
and CPU, on real photos with the released model. Needs ../shared.

Requests: pairs of the deepface test photos (../shared/data/deepface_verification_pairs, multi-megapixel JPEGs;
the first `--pairs` of its master.csv, half "Yes" and half "No"), model GN_W0.5_S2_ArcFace_epoch16.h5 (flip on).
Three paths, interleaved pair by pair so that a busy neighbour slows all of them alike:

- one process per request: `python -m ghostface_keras.cli.face verify A B --model ... --detector D` (what the
  `ghostface verify` console script runs), wall from spawn to exit, CPU of the child (all threads, rusage);
- `ghostface serve` (`python -m ghostface_keras.cli.serve`, started once): the round trip of one verify request
  over its pipes, `--repeats` times per pair, as a client sees it; CPU of the server process from /proc;
- in-process `FaceEmbedder.compare(A, B)` (what the server runs per request, warmed up as the server is),
  the same repeats: the floor, so that serve minus this is what the protocol (JSON, pipes, checks) costs;
- decoding the two photos alone (`load_rgb_image`), the share of the floor no model can remove;
- a ping round trip to the server: what the protocol itself (JSON, pipes, request checks) costs.
Plus the server's start-up (spawn to the answer of its first ping: Python, TensorFlow import, model and detector
load, warm-up) and the number of requests after which it has paid for itself.

    python benchmarks/serve.py                               # blazeface and mtcnn; writes benchmarks/results/serve.md
    python benchmarks/serve.py --detectors blazeface --pairs 4 --repeats 5 --out /tmp/serve.md
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostface_keras.core.files import write_atomically  # noqa: E402
from ghostface_keras.core.tables import markdown_table  # noqa: E402

logger = logging.getLogger("serve")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GHOSTFACE_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "data" / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
PHOTOS = SHARED / "data" / "deepface_verification_pairs"
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def choose_pairs(count: int) -> list[tuple[str, str, bool]]:
    """The first `count` pairs of master.csv in file order, alternating "Yes" and "No" (it holds 38 and 262)."""
    with open(PHOTOS / "master.csv", newline="") as handle:
        rows = [(row["file_x"], row["file_y"], row["Decision"] == "Yes") for row in csv.DictReader(handle)]
    same, different = [row for row in rows if row[2]], [row for row in rows if not row[2]]
    chosen = [pair for both in zip(same, different) for pair in both]
    return chosen[:count]


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class ServeClient:
    """A `ghostface serve` process on pipes, one request at a time."""

    def __init__(self, detector: str) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(MODEL),
                                         "--detector", detector], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        cwd=ROOT, env=ENVIRONMENT)
        answer = self.ask({"op": "ping"})
        self.startup_wall = time.perf_counter() - self.started
        self.startup_cpu = self.cpu()
        if not answer.get("ok"):
            raise RuntimeError(f"ghostface serve did not start: {answer}")

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"ghostface serve ended (exit {self.process.wait()})")
        return json.loads(line)

    def cpu(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def close(self) -> int:
        self.process.stdin.close()
        return self.process.wait(timeout=60)


def one_shot_verify(a: Path, b: Path, detector: str) -> tuple[float, float, float]:
    """One `ghostface verify` process: (wall s, CPU s, printed similarity)."""
    cpu_before, started = children_cpu_seconds(), time.perf_counter()
    completed = subprocess.run([sys.executable, "-m", "ghostface_keras.cli.face", "verify", str(a), str(b), "--model",
                                str(MODEL), "--detector", detector], capture_output=True, text=True, cwd=ROOT,
                               env=ENVIRONMENT)
    wall, cpu = time.perf_counter() - started, children_cpu_seconds() - cpu_before
    if completed.returncode:
        raise RuntimeError(f"ghostface verify failed (exit {completed.returncode}): {completed.stderr.strip()}")
    return wall, cpu, float(completed.stdout.split()[1])  # "similarity 0.5472  threshold 0.21  ->  same person"


def measure(detector: str, pairs: Sequence[tuple[str, str, bool]], repeats: int) -> dict[str, Any]:
    """Every path for one detector, interleaved pair by pair."""
    from ghostface_keras.faces.alignment import load_rgb_image
    from ghostface_keras.faces.embedder import FaceEmbedder

    server = ServeClient(detector)
    logger.info("%s: server ready in %.1f s", detector, server.startup_wall)
    embedder = FaceEmbedder(MODEL, detector=detector).warm_up()  # as the server does at start
    walls: dict[str, list[float]] = {"one": [], "serve": [], "ping": [], "library": [], "decode": []}
    cpus: dict[str, float] = {key: 0.0 for key in walls}
    agree, right, served_similarities = 0, 0, []
    for index, (a, b, same) in enumerate(pairs):
        path_a, path_b = PHOTOS / a, PHOTOS / b
        wall, cpu, printed = one_shot_verify(path_a, path_b, detector)
        walls["one"].append(wall)
        cpus["one"] += cpu
        request = {"id": index, "op": "verify", "a": str(path_a), "b": str(path_b)}
        cpu_before = server.cpu()
        for _ in range(repeats):
            started = time.perf_counter()
            answer = server.ask(request)
            walls["serve"].append(time.perf_counter() - started)
        cpus["serve"] += server.cpu() - cpu_before
        cpu_before = server.cpu()
        for _ in range(repeats):
            started = time.perf_counter()
            server.ask({"id": index, "op": "ping"})
            walls["ping"].append(time.perf_counter() - started)
        cpus["ping"] += server.cpu() - cpu_before
        if not answer.get("ok"):
            raise RuntimeError(f"serve failed on {a}, {b}: {answer}")
        served_similarities.append(answer["similarity"])
        agree += f"{answer['similarity']:.4f}" == f"{printed:.4f}"
        right += answer["same"] == same
        for key, work in (("library", lambda: embedder.compare(path_a, path_b)),
                          ("decode", lambda: (load_rgb_image(path_a), load_rgb_image(path_b)))):
            cpu_before = time.process_time()
            for _ in range(repeats):
                started = time.perf_counter()
                work()
                walls[key].append(time.perf_counter() - started)
            cpus[key] += time.process_time() - cpu_before
        logger.info("%s: pair %d/%d: one process %.2f s, serve %.1f ms", detector, index + 1, len(pairs), wall,
                    1e3 * float(np.median(walls["serve"][-repeats:])))
    status = server.close()
    counts = {key: len(pairs) * (1 if key == "one" else repeats) for key in walls}
    return {"detector": detector, "walls": walls, "cpus": cpus, "counts": counts, "agree": agree, "right": right,
            "pairs": len(pairs), "startup_wall": server.startup_wall, "startup_cpu": server.startup_cpu,
            "exit": status}


PATH_NAMES = {"one": "one `ghostface verify` process per request", "serve": "`ghostface serve`, round trip",
              "ping": "`ghostface serve`, ping round trip (the protocol alone)",
              "library": "in-process `FaceEmbedder.compare` (the floor)",
              "decode": "decoding the two photos alone (`load_rgb_image`)"}


def section(result: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The summary row of one detector and its section of the results file."""
    walls, cpus, counts = result["walls"], result["cpus"], result["counts"]
    median = {key: 1e3 * float(np.median(values)) for key, values in walls.items()}
    cpu = {key: 1e3 * cpus[key] / counts[key] for key in walls}
    rows = [{"path": PATH_NAMES[key], "requests": counts[key], "wall ms / request, median": median[key],
             "wall ms, 90th percentile": 1e3 * float(np.percentile(walls[key], 90)),
             "CPU ms / request": cpu[key]} for key in walls]
    saved = median["one"] - median["serve"]
    ratios = [
        {"ratio": "one process per request / serve, wall (median)", "value": median["one"] / median["serve"],
         "meaning": "how many times faster a warm server answers"},
        {"ratio": "the same, CPU", "value": cpu["one"] / cpu["serve"], "meaning": "less sensitive to other jobs"},
        {"ratio": "serve / in-process compare, wall (median)", "value": median["serve"] / median["library"],
         "meaning": "1.0: the protocol (JSON, pipes, request checks) costs nothing"},
        {"ratio": "ping round trip, wall ms (median)", "value": median["ping"],
         "meaning": "what the protocol (JSON, pipes, request checks) costs per request"},
        {"ratio": "decoding / in-process compare, wall", "value": median["decode"] / median["library"],
         "meaning": "share of a request spent decoding the two JPEGs"},
        {"ratio": "server start-up / time saved per request", "value": 1e3 * result["startup_wall"] / saved,
         "meaning": "requests after which the server has paid for its start-up"},
    ]
    text = "\n\n".join([
        f"## Detector: {result['detector']}",
        markdown_table(rows, digits=2).rstrip(),
        markdown_table(ratios, digits=2).rstrip(),
        f"Server start-up (spawn to the answer of its first ping: Python, TensorFlow import, model and detector load, "
        f"warm-up): {result['startup_wall']:.1f} s wall, {result['startup_cpu']:.1f} CPU s; exit status at end of "
        f"input {result['exit']}. Answers: serve's similarity equals the one printed by `ghostface verify` "
        f"(4 decimals) "
        f"on {result['agree']} of {result['pairs']} pairs; same/different right (data set labels, threshold 0.21) on "
        f"{result['right']} of {result['pairs']}.",
    ])
    summary = {"detector": result["detector"], "one process per request, ms": median["one"],
               "serve, ms": median["serve"], "x faster (wall)": median["one"] / median["serve"],
               "x less CPU": cpu["one"] / cpu["serve"], "in-process floor, ms": median["library"],
               "ping round trip, µs": 1e3 * median["ping"], "server start-up, s": result["startup_wall"]}
    return summary, text


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", nargs="+", default=["blazeface", "mtcnn"], help="one section each")
    parser.add_argument("--pairs", type=int, default=8, help="verify requests of the one-process path (each starts "
                        "Python and TensorFlow: ~8 s)")
    parser.add_argument("--repeats", type=int, default=10, help="requests per pair for serve and in-process")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("ghostface_keras").setLevel(logging.WARNING)
    if not PHOTOS.is_dir() or not MODEL.is_file():
        parser.error(f"{PHOTOS} and {MODEL} are needed")
    from ghostface_keras.cli import import_backend_quietly

    import_backend_quietly()
    import tensorflow as tf

    load, began = os.getloadavg()[0], time.time()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    pairs = choose_pairs(args.pairs)
    from PIL import Image

    megapixels = [np.prod(Image.open(PHOTOS / name).size) / 1e6 for pair in pairs for name in pair[:2]]
    measured = [section(measure(detector, pairs, args.repeats)) for detector in args.detectors]
    command = " ".join(["python benchmarks/serve.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Command: `{command}`, {started}, {(time.time() - began) / 60:.1f} min. Requests: verify, "
              f"{len(pairs)} pairs of the deepface photos (master.csv, alternating same / different; JPEGs of "
              f"{min(megapixels):.1f}-{max(megapixels):.1f} megapixels), each once as its own process (`python -m "
              f"ghostface_keras.cli.face verify`, what the `ghostface` script runs) and {args.repeats} times to the "
              f"server and in-process, "
              f"interleaved pair by pair. Model GN_W0.5_S2_ArcFace_epoch16.h5 (flip on). Machine: {cpu_name()}, "
              f"{os.cpu_count()} cores, load average {load:.1f} at the start and {os.getloadavg()[0]:.1f} at the end "
              f"(other jobs may share the cores: absolute times are noisy, ratios less so); Python "
              f"{platform.python_version()}, TensorFlow {tf.__version__}.")
    text = "\n\n".join(["# `ghostface serve`: latency per request against one process per request", header,
                        markdown_table([row for row, _ in measured], digits=1).rstrip(),
                        *(part for _, part in measured)]) + "\n"
    write_atomically(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
