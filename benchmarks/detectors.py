"""Face detectors side by side on the 25 deepface photos: MTCNN vs BlazeFace (LiteRT) and its variants.

One process, every detector loaded once before the clock starts, rounds interleaved (the order rotates and
reverses every other round) so that load from other jobs slows every detector alike. Reported:

- detection alone (photos already decoded): wall and CPU seconds per photo (`time.process_time`, all threads
  of the process), median over rounds of the per-round mean; faces found; faces in two mosaics of the photos
  (3x3 and 5x5 tiles: small faces, as in group photos);
- landmark error of the largest face against the MTCNN landmarks recorded in `landmarks_mtcnn.csv` (distance /
  that face's inter-ocular distance), per point and overall;
- verification on the 300 `master.csv` pairs with the released GN_W0.5_S2 weights (`FaceEmbedder`, flip):
  best-threshold accuracy, accuracy at the checkpoint threshold (0.21), AUC, the gap between the lowest genuine
  and the highest impostor cosine, and each photo's cosine to its embedding from the recorded MTCNN landmarks;
- where the time of the whole photo -> embedding path goes (decode, detect, align, embed), for MTCNN and the
  default BlazeFace with the Keras model as `ghostface embed` runs it (all crops embedded in one batch), and
  `embed_photo_litert` (one photo at a time, LiteRT only) measured in a child process without TensorFlow;
- whether batching the detector's networks saves time (`detect_batch`).

    python benchmarks/detectors.py            # 3 rounds, writes results/detectors.md
    python benchmarks/detectors.py --quick    # 1 round, the mosaics skipped
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostface_keras.faces.mtcnn import MTCNNDetector
from ghostface_keras.faces.alignment import align_face, load_rgb_image  # noqa: E402
from ghostface_keras.faces.blazeface import BlazeFaceDetector  # noqa: E402
from ghostface_keras.core.tables import markdown_table  # noqa: E402

logger = logging.getLogger("detectors")
SHARED = Path(os.environ.get("GHOSTFACE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
PHOTOS = SHARED / "data" / "deepface_verification_pairs"
WEIGHTS = SHARED / "data" / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
LANDMARK_COLUMNS = [f"{point}_{axis}" for point in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
                    for axis in "xy"]
DEFAULT = "BlazeFace full + mesh (default)"
VARIANTS = {  # label -> detector factory; MTCNN first
    "MTCNN": lambda: MTCNNDetector(),
    DEFAULT: lambda: BlazeFaceDetector(),
    "BlazeFace short + mesh": lambda: BlazeFaceDetector(model="short"),
    "BlazeFace full_sparse + mesh": lambda: BlazeFaceDetector(model="full_sparse"),
    "BlazeFace full, eyes+nose BlazeFace, mouth mesh": lambda: BlazeFaceDetector(landmarks="blazeface+mesh"),
    "BlazeFace full, no mesh (template mouth)": lambda: BlazeFaceDetector(landmarks="blazeface"),
    "BlazeFace full + mesh, 2 threads": lambda: BlazeFaceDetector(num_threads=2),
}


def rotated(items: list, round_index: int) -> list:
    order = items[round_index % len(items):] + items[:round_index % len(items)]
    return order[::-1] if round_index % 2 else order


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> np.ndarray:
    wall, cpu = clock()
    return np.array([wall - start[0], cpu - start[1]])


def largest(faces: list):
    return max(faces, key=lambda face: face.area) if faces else None


def time_detection(detectors: dict, images: dict, rounds: int) -> tuple[dict, dict]:
    """Per detector: median over rounds of (wall, cpu) seconds per photo, and the first round's detections."""
    per_round = {label: [] for label in detectors}
    detections: dict[str, dict] = {}
    for round_index in range(rounds):
        for label in rotated(list(detectors), round_index):
            start = clock()
            found = {name: detectors[label].detect(image) for name, image in images.items()}
            per_round[label].append(since(start) / len(images))
            detections.setdefault(label, found)
    return {label: np.median(values, axis=0) for label, values in per_round.items()}, detections


def landmark_errors(detections: dict, reference: dict) -> dict:
    """Per point (5,) mean and the overall mean / max of |landmark - MTCNN's| / inter-ocular distance."""
    errors = []
    for name, points in reference.items():
        face = largest(detections[name])
        if face is not None:
            errors.append(np.linalg.norm(face.landmarks - points, axis=1) / np.linalg.norm(points[1] - points[0]))
    errors = np.array(errors)
    return {"per_point": errors.mean(axis=0), "mean": float(errors.mean()), "max": float(errors.max())}


def mosaic(size: int, tile: int) -> np.ndarray:
    """`size` x `size` photos, each shrunk to fit a `tile`-pixel square: one face per tile."""
    from PIL import Image

    sheet = Image.new("RGB", (size * tile, size * tile))
    for index in range(size * size):
        photo = Image.fromarray(load_rgb_image(PHOTOS / f"img{index % 25 + 1}.jpg"))
        photo.thumbnail((tile, tile))
        sheet.paste(photo, ((index % size) * tile, (index // size) * tile))
    return np.asarray(sheet)


def verification(embeddings: dict, pairs: list, threshold: float, reference: dict | None) -> dict:
    from ghostface_keras.evaluation.verification import best_threshold_accuracy, roc_auc, roc_curve

    labels = np.array([same for _, _, same in pairs])
    scores = np.array([float(embeddings[a] @ embeddings[b]) for a, b, _ in pairs])
    accuracy, best_threshold = best_threshold_accuracy(scores, labels)
    far, tar, _ = roc_curve(scores, labels)
    row = {"best-threshold accuracy": accuracy, "at threshold": best_threshold,
           f"accuracy at {threshold:g}": float(np.mean((scores > threshold) == labels)), "AUC": roc_auc(far, tar),
           "min genuine - max impostor": float(scores[labels].min() - scores[~labels].max()),
           "mean genuine / impostor": f"{scores[labels].mean():.3f} / {scores[~labels].mean():.3f}"}
    if reference is not None:
        to_reference = np.array([float(embeddings[name] @ reference[name]) for name in reference])
        row["cosine to MTCNN-aligned, mean / min"] = f"{to_reference.mean():.4f} / {to_reference.min():.4f}"
    return row


def whole_path(embedder, detectors: dict, paths: list[Path], rounds: int) -> dict:
    """Per detector: median over rounds of per-photo (wall, cpu) for decode, detect, align, embed, as
    `FaceEmbedder.embed_batch` does it (each photo decoded, detected and aligned, then every crop in one batch)."""
    stages = ("decode", "detect", "align", "embed")
    per_round = {label: {stage: [] for stage in stages} for label in detectors}
    for round_index in range(rounds):
        for label in rotated(list(detectors), round_index):
            totals = {stage: np.zeros(2) for stage in stages}
            crops = []
            for path in paths:
                start = clock()
                image = load_rgb_image(path)
                totals["decode"] += since(start)
                start = clock()
                face = largest(detectors[label].detect(image))
                totals["detect"] += since(start)
                start = clock()
                crops.append(align_face(image, face.landmarks, embedder.input_size))
                totals["align"] += since(start)
            start = clock()
            embedder.embed_aligned(np.stack(crops))
            totals["embed"] += since(start)
            for stage in stages:
                per_round[label][stage].append(totals[stage] / len(paths))
    return {label: {stage: np.median(values, axis=0) for stage, values in stages_.items()}
            for label, stages_ in per_round.items()}


def litert_child(tflite: str, rounds: int, output: str) -> None:
    """In a fresh process (no TensorFlow): time `embed_photo_litert` per photo and its stages; save embeddings."""
    from ghostface_keras.runtime.litert import TFLiteEmbedder
    from ghostface_keras.faces.litert_pipeline import embed_photo_litert
    from ghostface_keras.core.preprocessing import normalize_images

    embedder, detector = TFLiteEmbedder(tflite, num_threads=1), BlazeFaceDetector()
    paths = sorted(PHOTOS.glob("img*.jpg"))
    embed_photo_litert(paths[0], embedder, detector)  # warm-up: first invokes allocate XNNPACK buffers
    stages = {stage: [] for stage in ("decode", "detect", "align", "embed", "embed_photo_litert")}
    embeddings = {}
    for _ in range(rounds):
        totals = {stage: np.zeros(2) for stage in stages}
        for path in paths:
            start = clock()
            image = load_rgb_image(path)
            totals["decode"] += since(start)
            start = clock()
            face = largest(detector.detect(image))
            totals["detect"] += since(start)
            start = clock()
            crop = align_face(image, face.landmarks, embedder.input_size)
            totals["align"] += since(start)
            start = clock()
            inputs = normalize_images(crop[None])
            embedder(inputs) + embedder(np.ascontiguousarray(inputs[:, :, ::-1]))
            totals["embed"] += since(start)
            start = clock()
            rows, _ = embed_photo_litert(path, embedder, detector, max_faces=1)
            totals["embed_photo_litert"] += since(start)
            embeddings[path.name] = rows[0].tolist()
        for stage in stages:
            stages[stage].append((totals[stage] / len(paths)).tolist())
    result = {"stages": {stage: np.median(values, axis=0).tolist() for stage, values in stages.items()},
              "embeddings": embeddings, "tensorflow_imported": "tensorflow" in sys.modules}
    Path(output).write_text(json.dumps(result))


def batching(count: int = 25, repeats: int = 5) -> list[dict]:
    """Microseconds per image: `count` single-image invokes vs one invoke of a batch of `count` (resized input)."""
    from ghostface_keras.faces.blazeface import DETECTOR_MODELS, FACE_MESH_FILE, model_folder
    from ghostface_keras.runtime.litert import make_interpreter

    rows = []
    for label, file in (("BlazeFace full", DETECTOR_MODELS["full"].file), ("face mesh", FACE_MESH_FILE)):
        single = make_interpreter(model_folder() / file, 1)
        shape = list(single.get_input_details()[0]["shape"])
        batched = make_interpreter(model_folder() / file, 1)
        batched.resize_tensor_input(batched.get_input_details()[0]["index"], [count, *shape[1:]])
        batched.allocate_tensors()
        images = np.random.default_rng(0).uniform(-1, 1, (count, *shape[1:])).astype(np.float32)
        timings = {"single": [], "batch": []}
        for _ in range(repeats):
            start = time.process_time()
            for image in images:
                single.set_tensor(single.get_input_details()[0]["index"], image[None])
                single.invoke()
            timings["single"].append(time.process_time() - start)
            start = time.process_time()
            batched.set_tensor(batched.get_input_details()[0]["index"], images)
            batched.invoke()
            timings["batch"].append(time.process_time() - start)
        one, many = (np.median(timings[key]) / count * 1e6 for key in ("single", "batch"))
        rows.append({"network": label, "CPU us/image, one image per invoke": one,
                     f"CPU us/image, {count} per invoke": many, "batch / single": many / one})
    return rows


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())


def read_reference() -> tuple[dict, list]:
    with open(PHOTOS / "landmarks_mtcnn.csv", newline="") as handle:
        reference = {row["image"]: np.array([float(row[column]) for column in LANDMARK_COLUMNS]).reshape(5, 2)
                     for row in csv.DictReader(handle)}
    with open(PHOTOS / "master.csv", newline="") as handle:
        pairs = [(row["file_x"], row["file_y"], row["Decision"] == "Yes") for row in csv.DictReader(handle)]
    return reference, pairs


def accuracy_section(embedder, images: dict, reference: dict, pairs: list, detections: dict,
                     default_detector: BlazeFaceDetector) -> tuple[list, float, dict]:
    """Verification rows (recorded MTCNN landmarks first, then each detector's largest faces), how closely
    `FaceEmbedder.embed_batch` with the default BlazeFace reproduces the cached-detection path, and the
    embeddings from the recorded landmarks."""
    from ghostface_keras.faces.embedder import FaceEmbedder

    names, threshold = sorted(reference), embedder.threshold

    def embed(landmarks: dict) -> dict:  # FaceEmbedder's own path from the landmarks on: align, then embed (flip)
        crops = np.stack([align_face(images[name], landmarks[name]) for name in names])
        return dict(zip(names, embedder.embed_aligned(crops)))

    recorded = embed(reference)
    rows = [{"detector": "recorded MTCNN landmarks (csv)", **verification(recorded, pairs, threshold, None)}]
    for label, found in detections.items():
        landmarks = {name: largest(faces).landmarks for name, faces in found.items()}
        rows.append({"detector": label, **verification(embed(landmarks), pairs, threshold, recorded)})
    default = FaceEmbedder(embedder.model, detector=default_detector).embed_batch([PHOTOS / n for n in names])
    cached = embed({name: largest(faces).landmarks for name, faces in detections[DEFAULT].items()})
    return rows, float(np.abs(default - np.stack([cached[name] for name in names])).max()), recorded


def path_section(embedder, detectors: dict, names: list[str], rounds: int) -> tuple[list, dict]:
    """Stage rows for the Keras path (MTCNN, default BlazeFace) and the LiteRT child; the child's embeddings."""
    from ghostface_keras.export import export_tflite

    paths = [PHOTOS / name for name in names]
    embedder.embed_aligned(np.zeros((len(paths), 112, 112, 3), np.uint8))  # traces the batch shape off the clock
    stages = whole_path(embedder, {label: detectors[label] for label in ("MTCNN", DEFAULT)}, paths, rounds)
    with tempfile.TemporaryDirectory() as folder:
        tflite = export_tflite(embedder.model.keras_model, Path(folder) / "gn_w05.tflite")
        output = Path(folder) / "litert.json"
        command = [sys.executable, __file__, "--litert-child", str(tflite), str(rounds), str(output)]
        subprocess.run(command, check=True)
        litert = json.loads(output.read_text())

    def row(path: str, stage_values: dict, total: np.ndarray) -> dict:
        return {"path": path, **{f"{stage} CPU / wall": f"{stage_values[stage][1]:.4f} / {stage_values[stage][0]:.4f}"
                                 for stage in ("decode", "detect", "align", "embed")},
                "total CPU s/photo": total[1], "total wall s/photo": total[0]}

    rows = [row(f"FaceEmbedder (Keras .h5), {label}", values, np.sum(list(values.values()), axis=0))
            for label, values in stages.items()]
    child = {stage: np.array(values) for stage, values in litert["stages"].items()}
    rows.append(row("embed_photo_litert (LiteRT, one photo per call), default BlazeFace", child,
                    child["embed_photo_litert"]))
    litert["embeddings"] = {name: np.array(values, np.float32) for name, values in litert["embeddings"].items()}
    return rows, litert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 round, no mosaics")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3, --quick 1)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    parser.add_argument("--litert-child", nargs=3, metavar=("TFLITE", "ROUNDS", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.litert_child:
        litert_child(args.litert_child[0], int(args.litert_child[1]), args.litert_child[2])
        return 0
    if not PHOTOS.is_dir() or not WEIGHTS.is_file():
        parser.error(f"needs {PHOTOS} and {WEIGHTS} (../shared beside the checkout, or $GHOSTFACE_SHARED)")
    rounds = args.rounds or (1 if args.quick else 3)
    began, load_before = time.time(), os.getloadavg()[0]
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    reference, pairs = read_reference()
    images = {name: load_rgb_image(PHOTOS / name) for name in sorted(reference)}
    detectors = {label: factory() for label, factory in VARIANTS.items()}
    for detector in detectors.values():  # start-up (first invokes, TF graph building for MTCNN) off the clock
        detector.detect(images["img25.jpg"])
    logger.info("timing detection, %d round(s)", rounds)
    timings, detections = time_detection(detectors, images, rounds)
    detector_rows = []
    for label, found in detections.items():
        errors = landmark_errors(found, reference)
        detector_rows.append({"detector": label, "CPU s/photo": timings[label][1], "wall s/photo": timings[label][0],
                              "photos with a face": f"{sum(bool(faces) for faces in found.values())}/{len(images)}",
                              "faces": sum(len(faces) for faces in found.values()),
                              "landmark error / IOD": errors["mean"], "max": errors["max"],
                              "eyes, nose, mouth corners": " ".join(f"{value:.3f}" for value in errors["per_point"])})
    mosaic_rows = []
    for size, tile in ((3, 300), (5, 200)) if not args.quick else ():
        sheet = mosaic(size, tile)
        mosaic_rows.append({"mosaic": f"{size}x{size} photos, {tile}-px tiles ({sheet.shape[1]} px)",
                            **{label: len(detector.detect(sheet)) for label, detector in detectors.items()
                               if "2 threads" not in label}})

    from ghostface_keras.faces.embedder import FaceEmbedder

    logger.info("verification and the whole photo -> embedding path")
    embedder = FaceEmbedder(str(WEIGHTS), detector=None)
    accuracy_rows, consistency, recorded = accuracy_section(embedder, images, reference, pairs, detections,
                                                                 detectors[DEFAULT])
    path_rows, litert = path_section(embedder, detectors, sorted(reference), rounds)
    accuracy_rows.append({"detector": "embed_photo_litert (LiteRT only, default BlazeFace)",
                          **verification(litert["embeddings"], pairs, embedder.threshold, recorded)})
    batch_rows = batching()

    command = " ".join(["python benchmarks/detectors.py", *(argv if argv is not None else sys.argv[1:])])
    header = (f"Command: `{command}` on {datetime.datetime.now():%Y-%m-%d %H:%M}, "
              f"{(time.time() - began) / 60:.1f} min; {cpu_model()}, {len(os.sched_getaffinity(0))} cores, "
              f"load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; Python "
              f"{platform.python_version()}. {rounds} interleaved round(s); start-up (model loading, first invokes) "
              "excluded.")
    sections = [
        "# Face detectors on the deepface photos: MTCNN vs BlazeFace (LiteRT)", header,
        "## Detection (photos decoded beforehand)\n\nCPU time counts every thread of the process. Landmark error: "
        "largest face vs the MTCNN landmarks recorded in `landmarks_mtcnn.csv`, divided by that face's "
        "inter-ocular distance (the MTCNN row measures the live detector against its recorded run).\n\n"
        + markdown_table(detector_rows, digits=3),
        f"## Verification, 300 deepface pairs, released GN_W0.5_S2 (flip, cosine; checkpoint threshold "
        f"{embedder.threshold:g})\n\n" + markdown_table(accuracy_rows, digits=4)
        + f"\nFaceEmbedder's own `embed_batch` with the default BlazeFace reproduces its row to {consistency:.1e} "
          "(max abs difference).",
        "## Small faces: faces found in mosaics of the photos\n\n" + markdown_table(mosaic_rows) if mosaic_rows else "",
        "## The whole photo -> embedding path, seconds per photo (CPU / wall)\n\nFaceEmbedder rows: what `ghostface "
        "embed` does (each photo decoded, detected, aligned; then the 25 crops embedded in one batch with flip). "
        "LiteRT row: `embed_photo_litert` on one photo at a time (stages timed separately, the total as one call) "
        "in a child process; TensorFlow imported there: "
        f"{litert['tensorflow_imported']}.\n\n" + markdown_table(path_rows, digits=4),
        "## Batching the detector networks (LiteRT, 1 thread)\n\n" + markdown_table(batch_rows, digits=2),
    ]
    text = "\n\n".join(section.rstrip() for section in sections if section)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detectors.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
