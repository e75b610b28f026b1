"""`ghostface embed` as a user runs it, BlazeFace (default) vs MTCNN, on the 25 deepface photos.

Each run is a fresh `ghostface embed` process (Python and TensorFlow import, model load, detector start, the
photos, the output file), timed from outside: wall time and the child's CPU time (`RUSAGE_CHILDREN`, every
thread). Runs alternate between the detectors, and each detector also runs on 1 photo, so that

    per-photo cost = (time for 25 photos - time for 1 photo) / 24

cancels the start-up (the way the issue measured MTCNN's 0.29 CPU-s per photo). Where the time inside one run
goes (decode, detect, align, embed) is `benchmarks/detectors.py`.

    python benchmarks/embed_cli.py              # 3 rounds, writes results/embed_cli.md
    python benchmarks/embed_cli.py --rounds 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ghostface_keras.core.tables import markdown_table  # noqa: E402

SHARED = Path(os.environ.get("GHOSTFACE_SHARED", ROOT.parent / "shared"))
PHOTOS = SHARED / "data" / "deepface_verification_pairs"
WEIGHTS = SHARED / "data" / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
DETECTORS = ("blazeface", "mtcnn")


def run_embed(photos: list[Path], detector: str, output: Path) -> tuple[float, float]:
    """Wall and CPU seconds of one `ghostface embed` process."""
    command = [sys.executable, "-m", "ghostface_keras.cli.face", "embed", *map(str, photos), "-m", str(WEIGHTS),
               "--detector", detector, "--output", str(output)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"ghostface embed failed ({detector}): {result.stderr.strip()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median reported)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "embed_cli.md"))
    args = parser.parse_args(argv)
    if not WEIGHTS.is_file():
        parser.error(f"{WEIGHTS} is needed (set GHOSTFACE_SHARED)")
    photos = sorted(PHOTOS.glob("img*.jpg"), key=lambda path: int(path.stem[3:]))
    load, started = os.getloadavg()[0], datetime.datetime.now(datetime.timezone.utc)
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="embed_cli_") as scratch:
        for round_index in range(args.rounds):
            order = DETECTORS if round_index % 2 == 0 else DETECTORS[::-1]  # who goes first alternates
            for detector in order:
                for subset in (photos, photos[:1]):
                    timing = run_embed(subset, detector, Path(scratch) / f"{detector}.npz")
                    samples.setdefault((detector, len(subset)), []).append(timing)
                    print(f"round {round_index + 1} {detector} {len(subset)} photos: {timing[0]:.1f} s wall, "
                          f"{timing[1]:.1f} s CPU", file=sys.stderr)
    median = {key: np.median(np.array(values), axis=0) for key, values in samples.items()}
    rows, per_photo = [], {}
    for detector in DETECTORS:
        (wall_all, cpu_all), (wall_one, cpu_one) = median[(detector, len(photos))], median[(detector, 1)]
        wall, cpu = (wall_all - wall_one) / (len(photos) - 1), (cpu_all - cpu_one) / (len(photos) - 1)
        per_photo[detector] = (wall, cpu)
        rows.append({"detector": detector, "25 photos, s wall / CPU": f"{wall_all:.1f} / {cpu_all:.1f}",
                     "1 photo, s wall / CPU": f"{wall_one:.1f} / {cpu_one:.1f}", "wall s/photo": f"{wall:.3f}",
                     "CPU s/photo": f"{cpu:.3f}", "photos/s once started": f"{1 / wall:.1f}",
                     "photos/s incl. start-up": f"{len(photos) / wall_all:.2f}"})
    ratio_wall = per_photo["mtcnn"][0] / per_photo["blazeface"][0]
    ratio_cpu = per_photo["mtcnn"][1] / per_photo["blazeface"][1]
    lines = [
        "# `ghostface embed` on the 25 deepface photos: BlazeFace (default) vs MTCNN",
        "",
        f"Command: `python benchmarks/embed_cli.py --rounds {args.rounds}` on {started:%Y-%m-%d %H:%M} UTC; "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start (shared machine). Released GN_W0.5_S2 `.h5`, "
        "flip on, output `.npz`. Each run is a new process; median of the alternating rounds. Per photo = "
        "(25 photos - 1 photo) / 24: start-up (imports, model load, detector start) cancels out.",
        "",
        markdown_table(rows).rstrip("\n"),
        "",
        f"MTCNN / BlazeFace per photo: **{ratio_wall:.1f}x wall, {ratio_cpu:.1f}x CPU**. Goal of the issue: at most "
        "0.1 CPU-s per photo (20 photos/s on 2 cores); verification accuracy: benchmarks/results/detectors.md.",
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
