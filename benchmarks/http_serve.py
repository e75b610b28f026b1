"""`ghostface serve --http` against the JSON-lines `ghostface serve`: verify and identify round trips on 127.0.0.1,
p50 / p99 latency and throughput with 1, 8 and 32 concurrent clients (HTTP) and one client (JSON lines: one pipe,
answers in order), both servers started from the same model and gallery, measured back to back in one script.

Model: a tiny random Keras model (GAP + Dense 512) on aligned 112x112 crops (`--detector none`), so the numbers are
the serving path (HTTP / JSON, threads, the one model lock), not a face model; with a real model every row gains
its per-request model time. The gallery: a folder of `ghostface gallery create` with 40 photos of 20 people.
Bounded: `--requests` per row and `--seconds` at most per row; failed requests are counted (the goal is 0).

`--part batching`: cross-request batching (`ghostface_keras.serve.batching`) with a real-size model,
GhostFaceNetV1-1.3-2 with random weights (4.1 M parameters; the model's cost does not depend on its weights), on
aligned crops: `/v1/embed` of one crop per request with 1, 8 and 32 concurrent clients, against servers started
with `--no-batching` (each request holds the model lock from start to end, as before batching) and with
`--batch-window-ms` 0 and 2. All servers run at once (idle ones cost nothing) and the rows of one client count are
measured back to back, so the ratios compare settings under the same load. Bounded: `--batch-requests` per row,
`--seconds` at most per row.

    python benchmarks/http_serve.py                     # both parts; writes benchmarks/results/http_serve.md
    python benchmarks/http_serve.py --part batching     # rewrites that part's section only
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TF_CPP_MIN_LOG_LEVEL": "3"}

from ghostface_keras.core.files import write_atomically  # noqa: E402
from ghostface_keras.core.tables import markdown_table  # noqa: E402


def prepare(folder: Path) -> tuple[Path, list[Path]]:
    import keras
    from PIL import Image

    from ghostface_keras.data.synthetic import render_synthetic_faces

    inputs = keras.Input((112, 112, 3))
    keras.Model(inputs, keras.layers.Dense(512)(keras.layers.GlobalAveragePooling2D()(inputs))).save(folder / "m.keras")
    faces, labels = render_synthetic_faces(20, 2)
    photos = []
    for index, (face, label) in enumerate(zip(faces, labels)):
        (folder / "people" / f"p{label}").mkdir(parents=True, exist_ok=True)
        photos.append(folder / "people" / f"p{label}" / f"{index}.png")
        Image.fromarray(face).save(photos[-1])
    model = ["--model", str(folder / "m.keras"), "--detector", "none"]
    for command in (["create", str(folder / "gallery")], ["enroll", str(folder / "gallery"), str(folder / "people")]):
        subprocess.run([sys.executable, "-m", "ghostface_keras.cli.face", "gallery", *command, *model],
                       env=ENVIRONMENT, check=True, timeout=300, capture_output=True)
    return folder / "m.keras", photos


def requests_for(photos: list[Path], count: int) -> list[tuple[str, dict]]:
    out = []
    for index in range(count):
        a, b = str(photos[index % len(photos)]), str(photos[(index * 7 + 1) % len(photos)])
        out.append(("verify", {"a": a, "b": b}) if index % 2 == 0 else ("identify", {"image": a, "top_k": 3}))
    return out


def summarize(label: str, clients: int, op: str, latencies: list[float], failed: int, wall: float,
              cpu: float) -> dict:
    values = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return {"server": label, "clients": clients, "op": op, "requests": len(latencies), "failed": failed,
            "p50 ms": round(float(np.percentile(values, 50)), 2), "p99 ms": round(float(np.percentile(values, 99)), 2),
            "requests/s": round(len(latencies) / wall, 1), "server CPU ms per request": round(1e3 * cpu / max(len(latencies), 1), 2)}


def process_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_http(model: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """A `ghostface serve --http` process on a free port of 127.0.0.1, once it answers /health."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(model), "--detector",
                               "none", "--http", str(port), "--rate-limit", "100000", *options],
                              env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return server, base
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"the server ({' '.join(options)}) did not answer /health")


def measure(server: subprocess.Popen, base: str, label: str, clients: int, op: str,
            work: list[tuple[str, dict]], seconds: float) -> dict:
    """`work` posted by `clients` threads (one HTTP connection each), stopped after `seconds`."""
    import httpx

    local = threading.local()
    stop = time.monotonic() + seconds

    def one(request: tuple[str, dict]) -> tuple[float, bool]:
        if time.monotonic() > stop:
            return -1.0, True
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=120)
        started = time.perf_counter()
        try:
            ok = local.client.post(f"/v1/{request[0]}", json=request[1]).json().get("ok") is True
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok

    cpu, wall = process_cpu(server.pid), time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, work))
    wall, cpu = time.perf_counter() - wall, process_cpu(server.pid) - cpu
    done = [latency for latency, _ in results if latency >= 0]
    failed = sum(1 for latency, ok in results if latency >= 0 and not ok)
    row = summarize(label, clients, op, done, failed, wall, cpu)
    print(json.dumps(row), flush=True)
    return row


def bench_http(model: Path, gallery: Path, photos: list[Path], count: int, seconds: float) -> list[dict]:
    server, base = start_http(model, "--gallery", str(gallery))
    rows = []
    try:
        for clients in (1, 8, 32):
            for op in ("verify", "identify"):
                work = [request for request in requests_for(photos, 2 * count) if request[0] == op][:count]
                rows.append(measure(server, base, "HTTP", clients, op, work, seconds))
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


BATCHING_SETTINGS = {"no batching": ["--no-batching"], "batching, window 0 ms": ["--batch-window-ms", "0"],
                     "batching, window 2 ms": ["--batch-window-ms", "2"]}


def prepare_real_size(folder: Path) -> tuple[Path, list[Path]]:
    """GhostFaceNetV1-1.3-2 with random weights, saved, and 32 aligned 112x112 crops as PNG files."""
    import keras
    from PIL import Image

    from ghostface_keras import GhostFaceNetV1
    from ghostface_keras.data.synthetic import render_synthetic_faces

    keras.utils.set_random_seed(0)
    GhostFaceNetV1(width=1.3, stem_strides=2).save(folder / "GhostFaceNetV1-1.3-2.keras")
    faces, _ = render_synthetic_faces(16, 2, seed=1)
    crops = []
    for index, face in enumerate(faces):
        crops.append(folder / f"crop{index}.png")
        Image.fromarray(face).save(crops[-1])
    return folder / "GhostFaceNetV1-1.3-2.keras", crops


def bench_batching(folder: Path, count: int, seconds: float) -> tuple[list[dict], list[dict]]:
    """Rows per (client count, setting), and per client count the ratios of each batching setting to none."""
    model, crops = prepare_real_size(folder)
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    rows: list[dict] = []
    try:
        for label, options in BATCHING_SETTINGS.items():  # one at a time: start-ups would compete for the cores
            servers[label] = start_http(model, *options)
        for clients in (1, 8, 32):
            work = [("embed", {"images": [str(crops[index % len(crops)])]}) for index in range(count)]
            for label, (server, base) in servers.items():
                measure(server, base, label, clients, "embed", work[:2 * clients], seconds)  # connections, warm
                rows.append(measure(server, base, label, clients, "embed", work, seconds))
    finally:
        for server, _ in servers.values():
            server.terminate()
        for server, _ in servers.values():
            server.wait(timeout=60)
    ratios = []
    for clients in (1, 8, 32):
        by_label = {row["server"]: row for row in rows if row["clients"] == clients}
        off = by_label["no batching"]
        for label in list(BATCHING_SETTINGS)[1:]:
            on = by_label[label]
            ratios.append({"clients": clients, "setting": label,
                           "requests/s, x no batching": round(on["requests/s"] / off["requests/s"], 2),
                           "p50 latency, x no batching": round(on["p50 ms"] / off["p50 ms"], 2),
                           "server CPU per request, x no batching": round(on["server CPU ms per request"]
                                                                          / off["server CPU ms per request"], 2)})
    return rows, ratios


SERVING_TITLE = "# HTTP service vs JSON-lines server"
BATCHING_TITLE = "## Cross-request batching with a real-size model"


def merged(old: str, title: str, section: str) -> str:
    """The results file `old` with its section headed `title` replaced by `section`, or `section` appended (a
    section runs from a line starting with '#' to the next one), so each part rewrites only its own."""
    parts: list[str] = []
    for line in old.splitlines(keepends=True):
        if line.startswith("#") or not parts:
            parts.append("")
        parts[-1] += line
    position = next((index for index, part in enumerate(parts) if part.startswith(title + "\n")), None)
    if position is None:
        parts.append(section)
    else:
        parts[position] = section
    return "\n".join(part.strip("\n") + "\n" for part in parts if part.strip())


def bench_json_lines(model: Path, gallery: Path, photos: list[Path], count: int) -> list[dict]:
    server = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(model), "--detector",
                               "none", "--gallery", str(gallery)], env=ENVIRONMENT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)

    def ask(request: dict) -> dict:
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        return json.loads(server.stdout.readline())

    rows = []
    try:
        ask({"op": "ping"})
        for op in ("verify", "identify"):
            work = [request for request in requests_for(photos, 2 * count) if request[0] == op][:count]
            latencies, failed = [], 0
            cpu, wall = process_cpu(server.pid), time.perf_counter()
            for name, fields in work:
                started = time.perf_counter()
                failed += not ask({"op": name, **fields}).get("ok")
                latencies.append(time.perf_counter() - started)
            wall, cpu = time.perf_counter() - wall, process_cpu(server.pid) - cpu
            rows.append(summarize("JSON lines", 1, op, latencies, failed, wall, cpu))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "serving", "batching"), default="all")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch-requests", type=int, default=192, help="requests per row of the batching part")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "http_serve.md"))
    arguments = parser.parse_args()
    command = f"`python benchmarks/http_serve.py {' '.join(sys.argv[1:])}`"
    text = Path(arguments.out).read_text() if Path(arguments.out).exists() else ""
    with tempfile.TemporaryDirectory() as folder:
        if arguments.part in ("all", "serving"):
            started, load = time.perf_counter(), os.getloadavg()[0]
            model, photos = prepare(Path(folder))
            rows = bench_json_lines(model, Path(folder) / "gallery", photos, arguments.requests)
            rows += bench_http(model, Path(folder) / "gallery", photos, arguments.requests, arguments.seconds)
            text = merged(text, SERVING_TITLE, (
                f"{SERVING_TITLE}\n\nRun: {command} on {time.strftime('%Y-%m-%d %H:%M')}, "
                f"{(time.perf_counter() - started) / 60:.1f} min, {os.cpu_count()} cores shared with other jobs (load "
                f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); clients and servers on the "
                "same machine (127.0.0.1). A tiny random 512-d model on aligned crops (the serving path, not a face "
                "model); a persistent gallery of 40 photos. Latency: client round trip; server CPU from /proc.\n\n"
                + markdown_table(rows, digits=2) + "\n"))
        if arguments.part in ("all", "batching"):
            started, load = time.perf_counter(), os.getloadavg()[0]
            rows, ratios = bench_batching(Path(folder), arguments.batch_requests, arguments.seconds)
            text = merged(text, BATCHING_TITLE, (
                f"{BATCHING_TITLE}\n\nRun: {command} on {time.strftime('%Y-%m-%d %H:%M')}, "
                f"{(time.perf_counter() - started) / 60:.1f} min, {os.cpu_count()} cores shared with other jobs (load "
                f"average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end); clients and servers on the "
                "same machine (127.0.0.1). GhostFaceNetV1-1.3-2 with random weights, flip on, `--detector none`: "
                "`POST /v1/embed` of one aligned 112x112 crop per request; the rows of one client count ran back to "
                "back. Latency: client round trip; server CPU (all its threads) from /proc.\n\n"
                + markdown_table(rows, digits=2) + "\n\nEach batching setting against no batching, same client "
                "count (requests/s above 1 and latency or CPU below 1 are better):\n\n"
                + markdown_table(ratios, digits=2) + "\n"))
    write_atomically(arguments.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
