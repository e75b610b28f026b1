"""`ghostface serve --http` against the JSON-lines `ghostface serve`: verify and identify round trips on 127.0.0.1,
p50 / p99 latency and throughput with 1, 8 and 32 concurrent clients (HTTP) and one client (JSON lines: one pipe,
answers in order), both servers started from the same model and gallery, measured back to back in one script.

Model: a tiny random Keras model (GAP + Dense 512) on aligned 112x112 crops (`--detector none`), so the numbers are
the serving path (HTTP / JSON, threads, the one model lock), not a face model; with a real model every row gains
its per-request model time. The gallery: a folder of `ghostface gallery create` with 40 photos of 20 people.
Bounded: `--requests` per row and `--seconds` at most per row; failed requests are counted (the goal is 0).

    python benchmarks/http_serve.py                     # writes benchmarks/results/http_serve.md
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


def bench_http(model: Path, gallery: Path, photos: list[Path], count: int, seconds: float) -> list[dict]:
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(model), "--detector",
                               "none", "--gallery", str(gallery), "--http", str(port), "--rate-limit", "100000"],
                              env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        for clients in (1, 8, 32):
            for op in ("verify", "identify"):
                work = [request for request in requests_for(photos, 2 * count) if request[0] == op][:count]
                local = threading.local()
                stop = time.monotonic() + seconds

                def one(request: tuple[str, dict]) -> tuple[float, bool]:
                    if time.monotonic() > stop:
                        return -1.0, True
                    if not hasattr(local, "client"):
                        local.client = httpx.Client(base_url=base, timeout=60)
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
                rows.append(summarize("HTTP", clients, op, done, failed, wall, cpu))
                print(json.dumps(rows[-1]), flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rows


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
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "http_serve.md"))
    arguments = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        model, photos = prepare(Path(folder))
        rows = bench_json_lines(model, Path(folder) / "gallery", photos, arguments.requests)
        rows += bench_http(model, Path(folder) / "gallery", photos, arguments.requests, arguments.seconds)
    text = (f"# HTTP service vs JSON-lines server\n\nRun: `python benchmarks/http_serve.py {' '.join(sys.argv[1:])}` "
            f"on {time.strftime('%Y-%m-%d %H:%M')}, {(time.perf_counter() - started) / 60:.1f} min, {os.cpu_count()} "
            f"cores shared with other jobs (load average {os.getloadavg()[0]:.1f} at the end); clients and servers "
            "on the same machine (127.0.0.1). A tiny random 512-d model on aligned crops (the serving path, not a "
            "face model); a persistent gallery of 40 photos. Latency: client round trip; server CPU from /proc.\n\n"
            + markdown_table(rows, digits=2) + "\n")
    write_atomically(arguments.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
