"""`ghostface watch` on a 640x480 pan-and-zoom video of real photos: frames per second against detection alone and
the embedding-only bound, and the fraction of frames with the right name. Needs ../shared.

The video (`make_pan_zoom_video`; tests/test_video.py builds its own, shorter, with the same code): three people
of the deepface test photos (../shared/data/deepface_verification_pairs; who is who from its README), one photo
each, zooming from 0.7x to 1.4x of the frame onto the face, black frames between them. The gallery holds OTHER
photos of the same three people plus three other people. Model: the released GN_W0.5_S2_ArcFace_epoch16.h5.

Measured in ONE process, the paths alternating round by round (a busy neighbour slows all of them alike), on
wall-clock and process CPU time (all threads):
- watch + outputs: `ghostface_keras.faces.video.watch` with the default re-embedding rules, writing the annotated
  video and the JSON lines (what `ghostface watch` does per frame);
- watch, every face embedded on every frame (`reembed_every=1`): what tracking saves;
- detection only: decode + `embedder.detect` per frame;
- embedding only: the `embed_aligned` calls watch made, same count and batch sizes, alone: the embedding bound;
- decode only.
Plus one end-to-end `python -m ghostface_keras.cli.watch` run (TensorFlow import and model load included).

    python benchmarks/watch.py                      # MTCNN and BlazeFace; writes benchmarks/results/watch.md
    python benchmarks/watch.py --detectors mtcnn --frames-per-photo 10 --rounds 1 --out /tmp/watch.md
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostface_keras.faces.alignment import load_rgb_image  # noqa: E402
from ghostface_keras.core.files import atomic_output, write_atomically  # noqa: E402
from ghostface_keras.core.tables import markdown_table  # noqa: E402
from ghostface_keras.faces.video import VIDEO_CODECS  # noqa: E402

logger = logging.getLogger("watch")
ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GHOSTFACE_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "data" / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
# identity -> (photo shown in the video, gallery photos): groups of the data set's README (its "Yes" pairs)
PEOPLE = {"A": ("img1.jpg", ["img2.jpg", "img4.jpg"]), "B": ("img13.jpg", ["img14.jpg", "img15.jpg"]),
          "C": ("img3.jpg", ["img12.jpg"])}
OTHERS = {"D": ["img16.jpg", "img17.jpg"], "E": ["img20.jpg"], "F": ["img24.jpg"]}  # in the gallery only


@dataclass
class Scenario:
    """The test video's photos (with the face centre to zoom onto), their names, and the gallery photos."""

    photos: list[Path]
    focus: list[tuple[float, float]]
    names: list[str]
    gallery: dict[str, list[Path]]


def deepface_scenario(folder: Path) -> Scenario:
    """`PEOPLE` and `OTHERS` in the deepface folder; the zoom target is the centre of the five landmarks of its
    `landmarks_mtcnn.csv` (a framing choice only: `watch` detects faces itself)."""
    with open(folder / "landmarks_mtcnn.csv", newline="") as handle:
        rows = {row["image"]: row for row in csv.DictReader(handle)}
    points = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    focus = [(float(np.mean([float(rows[photo][f"{point}_x"]) for point in points])),
              float(np.mean([float(rows[photo][f"{point}_y"]) for point in points])))
             for photo, _ in PEOPLE.values()]
    gallery = {name: [folder / photo for photo in photos] for name, (_, photos) in PEOPLE.items()}
    gallery.update({name: [folder / photo for photo in photos] for name, photos in OTHERS.items()})
    return Scenario([folder / photo for photo, _ in PEOPLE.values()], focus, list(PEOPLE), gallery)


def make_pan_zoom_video(photos: Sequence[Any], output: str | os.PathLike, size: tuple[int, int] = (640, 480),
                        fps: float = 10.0, frames_per_photo: int = 10, zoom: tuple[float, float] = (0.7, 1.4),
                        focus: Sequence[tuple[float, float] | None] | None = None, gap_frames: int = 0) -> list[int]:
    """A test video from photos: each shown for `frames_per_photo` frames, zooming from `zoom[0]` to `zoom[1]`
    (1.0: the whole photo fits the frame) while panning from its centre to its `focus` point ((x, y) pixels, e.g.
    a face), with `gap_frames` black frames between photos. Returns the photo of each frame (-1: a gap frame).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "demo.mp4"
        >>> make_pan_zoom_video([np.full((300, 200, 3), 128, np.uint8)] * 2, path, (160, 120), frames_per_photo=3,
        ...                     gap_frames=1)
        [0, 0, 0, -1, 1, 1, 1]
    """
    import cv2

    width, height = size
    shown: list[int] = []
    with atomic_output(output) as temporary:  # keeps the suffix, by which OpenCV picks the container
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*VIDEO_CODECS[Path(output).suffix.lower()]),
                                 float(fps), (width, height))
        try:
            for index, photo in enumerate(photos):
                if index and gap_frames:
                    for _ in range(gap_frames):
                        writer.write(np.zeros((height, width, 3), np.uint8))
                    shown += [-1] * gap_frames
                rgb = load_rgb_image(photo)
                centre = np.array(rgb.shape[1::-1], np.float64) / 2
                target = np.array(focus[index] if focus and focus[index] is not None else centre, np.float64)
                fit = min(width / rgb.shape[1], height / rgb.shape[0])
                # shrink once to the largest scale shown: the per-frame warp then never shrinks by more than
                # zoom[1] / zoom[0], which bilinear sampling does without visible aliasing
                shrink = min(1.0, fit * max(zoom))
                if shrink < 1:
                    rgb = cv2.resize(rgb, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
                small = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
                for step in range(frames_per_photo):
                    progress = step / max(frames_per_photo - 1, 1)
                    scale = fit * (zoom[0] + (zoom[1] - zoom[0]) * progress)
                    cx, cy = centre + (target - centre) * progress
                    matrix = np.array([[scale / shrink, 0, width / 2 - scale * cx],
                                       [0, scale / shrink, height / 2 - scale * cy]])
                    writer.write(cv2.warpAffine(small, matrix, (width, height), flags=cv2.INTER_LINEAR))
                shown += [index] * frames_per_photo
        finally:
            writer.release()
    return shown


def build_video(scenario: Scenario, output: Path, frames_per_photo: int, gap_frames: int,
                fps: float = 10.0) -> list[str | None]:
    """The scenario's 640x480 video; returns the name expected in each frame (None: a black gap)."""
    shown = make_pan_zoom_video(scenario.photos, output, fps=fps, frames_per_photo=frames_per_photo,
                                focus=scenario.focus, gap_frames=gap_frames)
    return [scenario.names[index] if index >= 0 else None for index in shown]


def frames_right(frames: Sequence[Any], expected: Sequence[str | None]) -> float:
    """The fraction of frames whose gallery names are exactly {the expected name} (none in a gap); faces below the
    threshold ("unknown", e.g. a small face in a photo's background) do not count either way."""
    right = [{face.name for face in frame.faces if face.name} == ({name} if name else set())
             for frame, name in zip(frames, expected)]
    return float(np.mean(right)) if right else float("nan")


def timed(function: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detectors", nargs="+", default=["mtcnn", "blazeface"], help="one section each")
    parser.add_argument("--frames-per-photo", type=int, default=30)
    parser.add_argument("--gap-frames", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median reported)")
    parser.add_argument("--batch-size", type=int, default=32, help="crops per model call (FaceEmbedder's default, "
                        "which the command uses; short calls are padded to the next power of two)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "watch.md"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("ghostface_keras").setLevel(logging.WARNING)  # not one line per opened video
    deepface = SHARED / "data" / "deepface_verification_pairs"
    if not deepface.is_dir() or not MODEL.is_file():
        parser.error(f"{deepface} and {MODEL} are needed")
    from ghostface_keras.cli import import_backend_quietly

    import_backend_quietly()
    load, started = os.getloadavg()[0], time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="watch_benchmark_") as scratch:
        folder = Path(scratch)
        scenario = deepface_scenario(deepface)
        video = folder / "pan_zoom.mp4"
        expected = build_video(scenario, video, args.frames_per_photo, args.gap_frames)
        measured = [measure(detector, video, expected, scenario, folder, args) for detector in args.detectors]
    command = " ".join(["python benchmarks/watch.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Command: `{command}`, {started}. Video: {len(expected)} frames of 640x480 at 10 frames/s "
              f"({args.frames_per_photo} per person, {args.gap_frames} black frames between), 3 people; gallery: "
              f"{sum(map(len, scenario.gallery.values()))} photos of {len(scenario.gallery)} people. Model "
              f"GN_W0.5_S2_ArcFace_epoch16.h5 (flip on), embedding batch {args.batch_size}; median of {args.rounds} "
              f"interleaved rounds. Machine: {cpu_name()}, {os.cpu_count()} cores, load average {load:.1f} at the "
              f"start (other jobs shared the cores: absolute times are noisy, ratios less so); Python "
              f"{platform.python_version()}, TensorFlow {tf_version()}, OpenCV {opencv_version()}.")
    summary = markdown_table([row for row, _ in measured], digits=2).rstrip()
    text = "\n\n".join(["# `ghostface watch`: frames per second and identities", header, summary,
                         *(section for _, section in measured)]) + "\n"
    write_atomically(args.out, text)
    print(text)
    return 0


def make_detector(name: str) -> Any:
    """A registered detector name as is; "blazeface" from ghostface_keras.faces.blazeface while it is not registered."""
    from ghostface_keras.faces.detectors import DETECTORS

    if name.lower() not in DETECTORS and name.lower() == "blazeface":
        from ghostface_keras.faces.blazeface import BlazeFaceDetector

        return BlazeFaceDetector()
    return name


def measure(detector: str, video: Path, expected: list[str | None], scenario: Scenario, folder: Path,
            args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Every path for one detector, rounds interleaved: its row of the summary and its section of the results."""
    from ghostface_keras.faces.embedder import FaceEmbedder
    from ghostface_keras.faces.video import AnnotatedVideoWriter, FrameSource, JsonLinesWriter, watch

    resolved = make_detector(detector)
    embedder = FaceEmbedder(MODEL, detector=resolved, batch_size=args.batch_size)
    gallery = embedder.build_gallery(scenario.gallery)
    gallery.save(folder / f"gallery_{detector}.npz")
    list(watch(embedder, video, gallery, max_frames=3))  # warm-up: traces the model, starts the detector
    crop = np.zeros((args.batch_size, embedder.input_size, embedder.input_size, 3), np.uint8)
    batches: list[int] = []

    def with_outputs() -> list:
        frames = []
        with JsonLinesWriter(folder / "faces.jsonl") as jsonl, \
                AnnotatedVideoWriter(folder / "annotated.mp4", FrameSource(video).fps) as annotated:
            for frame in watch(embedder, video, gallery):
                jsonl.write(frame)
                annotated.write(frame)
                frames.append(frame)
        return frames

    paths: dict[str, Callable[[], Any]] = {
        "watch + outputs (default rules)": with_outputs,
        "watch, every face embedded every frame": lambda: list(watch(embedder, video, gallery, reembed_every=1)),
        "detection only (decode + detect)": lambda: [embedder.detect(rgb) for rgb in FrameSource(video)],
        "embedding only (watch's embed calls)": lambda: [embedder.embed_aligned(crop[:count]) for count in batches],
        "decode only": lambda: sum(1 for _ in FrameSource(video)),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    results: dict[str, Any] = {}
    for round_index in range(args.rounds):
        names = list(paths)
        names = names[round_index % len(names):] + names[:round_index % len(names)]  # rotate who goes first
        if round_index == 0:  # the embed-only path replays watch's calls: watch first in round 0
            names = sorted(names, key=lambda name: not name.startswith("watch + outputs"))
        for name in names:
            results[name], wall, cpu = timed(paths[name])
            times[name].append((wall, cpu))
            if name.startswith("watch + outputs") and not batches:  # the calls embedding-only replays
                batches = [count for count in (sum(face.embedded is not None for face in frame.faces)
                                                for frame in results[name]) if count]
        logger.info("%s: round %d/%d done", detector, round_index + 1, args.rounds)
    end_to_end = run_cli(video, folder / f"gallery_{detector}.npz", detector) if isinstance(resolved, str) else None

    frame_count, rows = len(expected), []
    for name, samples in times.items():
        wall, cpu = float(np.median([s[0] for s in samples])), float(np.median([s[1] for s in samples]))
        calls, faces, right = None, None, None
        if name.startswith("watch"):
            per_frame = [sum(face.embedded is not None for face in frame.faces) for frame in results[name]]
            calls, faces = sum(count > 0 for count in per_frame), sum(per_frame)
            right = frames_right(results[name], expected)
        elif name.startswith("embedding"):
            calls, faces = len(batches), sum(batches)
        rows.append({"path": name, "frames": frame_count, "embed calls": calls, "faces embedded": faces,
                     "wall s": wall, "frames / wall s": frame_count / wall, "CPU s": cpu,
                     "frames / CPU s": frame_count / cpu, "names right": right})
    watch_row, naive_row, detect_row, embed_row, _ = rows
    reasons = Counter(face.embedded for frame in results["watch + outputs (default rules)"]
                      for face in frame.faces if face.embedded)

    def ratio(name: str, value: float, meaning: str) -> dict[str, Any]:
        return {"ratio": name, "value": value, "meaning": meaning}

    ratios = [
        ratio("watch + outputs / (detection only + embedding only), wall",
              watch_row["wall s"] / (detect_row["wall s"] + embed_row["wall s"]),
              "1.0: tracking, alignment, drawing and writing cost nothing"),
        ratio("the same, CPU", watch_row["CPU s"] / (detect_row["CPU s"] + embed_row["CPU s"]),
              "less sensitive to other jobs"),
        ratio("detection only / watch + outputs, wall", detect_row["wall s"] / watch_row["wall s"],
              "share of the time spent detecting"),
        ratio("embedding only / watch + outputs, wall", embed_row["wall s"] / watch_row["wall s"],
              "share of the time spent embedding"),
        ratio("every face every frame / watch + outputs, wall", naive_row["wall s"] / watch_row["wall s"],
              "what re-embedding only when needed saves"),
    ]
    summary = {"detector": detector, "watch + outputs, frames / s": watch_row["frames / wall s"],
               "frames / CPU s": watch_row["frames / CPU s"],
               "detection only, frames / s": detect_row["frames / wall s"],
               "embedding-only bound, frames / s": embed_row["frames / wall s"],
               "x faster than embedding every face": ratios[4]["value"], "names right": watch_row["names right"]}
    return summary, "\n\n".join([
        f"## Detector: {detector}", markdown_table(rows, digits=3).rstrip(), markdown_table(ratios, digits=2).rstrip(),
        f"Tracking embedded {watch_row['faces embedded']} of the {naive_row['faces embedded']} face-frames; by "
        "reason (new track, every 30 frames, face area x1.5, appearance change > 0.15): "
        + ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items())) + ".",
        f"End to end, `python -m ghostface_keras.cli.watch VIDEO --gallery GALLERY.npz --model ... --detector "
        f"{detector} --output-video ... --output-jsonl ...` (TensorFlow import and model load included): "
        + (f"{end_to_end['wall']:.1f} s wall; its summary line: `{end_to_end['summary']}`" if end_to_end else
           f"not run: '{detector}' is not a detector name of `align.DETECTORS` yet."),
    ])


def run_cli(video: Path, gallery: Path, detector: str) -> dict[str, Any]:
    """One end-to-end run of the command line, in a child process (its import and model load included)."""
    command = [sys.executable, "-m", "ghostface_keras.cli.watch", str(video), "--gallery", str(gallery), "--model",
               str(MODEL), "--detector", detector, "--output-video", str(gallery.with_name("cli.mp4")),
               "--output-jsonl", str(gallery.with_name("cli.jsonl"))]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if completed.returncode:  # e.g. a detector name the command line does not know yet
        return {"wall": wall, "summary": f"failed, exit {completed.returncode}: {completed.stderr.strip()}"}
    return {"wall": wall, "summary": completed.stdout.strip().splitlines()[-1].split("; wrote ")[0]}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def tf_version() -> str:
    import tensorflow as tf

    return tf.__version__


def opencv_version() -> str:
    import cv2

    return cv2.__version__


if __name__ == "__main__":
    sys.exit(main())
