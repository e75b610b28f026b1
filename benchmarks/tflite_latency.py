"""LiteRT latency of every face model in the registry at fp32 / fp16 / int8, against the compute bound.

For each variant (random weights, seed 0, BatchNorm statistics taken from the calibration faces so that
activations have trained-like scales): export with `ghostface_keras.export.export_tflite` (static batch 1;
int8 calibrated on real aligned faces when ../shared is present, otherwise on smooth random images), then
measure in ONE
process, interleaving the files round by round so that a busy neighbour slows all of them alike:

- size (MiB), cosine of the TFLite embedding to the Keras one (min over the parity images),
- median invoke latency at 1 thread (and 2 with --threads 1,2), median over rounds of per-round medians,
- the theoretical bound MACs / peak MAC rate, where the peak is *measured* on this CPU with the same
  runtime (a 56x56x128 -> 128 1x1 convolution pair, fp32 and int8, 1 thread) and the ratio of the
  measured latency to that bound (1.0 would mean every MAC runs at the dense-GEMM peak).

Writes `<out>/tflite_latency.md`, `.csv` and `.png` (latency vs size, marker per quantization).

    python benchmarks/tflite_latency.py                                # every face model
    python benchmarks/tflite_latency.py --models GhostFaceNetV1-1.3-2 GhostFaceNetV2-1.3-2 --rounds 5
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostface_keras import export  # noqa: E402
from ghostface_keras.export.parity import _cosines  # noqa: E402
from ghostface_keras.core.preprocessing import normalize_images  # noqa: E402

logger = logging.getLogger("tflite_latency")
SHARED = Path(os.environ.get("GHOSTFACE_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FACES = SHARED / "data" / "celeba_aligned112"
QUANTIZATIONS = ("none", "float16", "int8")
OFFICIAL_TFLITE = SHARED / "reference" / "official" / "ghostfacenetv1-w1.3-s2" / "model.tflite"
PEAK_SHAPE = (56, 56, 128)


def face_model_names() -> list[str]:
    from ghostface_keras.models.registry import list_models

    return [name for name in list_models() if "FaceNet" in name]


def real_or_smooth_images(split: str, count: int, seed: int) -> np.ndarray:
    """Aligned faces from ../shared when available, else smooth random images (stated in the output)."""
    if (FACES / split).is_dir():
        return export.sample_images(FACES / split, count, seed=seed)
    logger.warning("%s not found: using smooth random images (int8 accuracy figures are then indicative)", FACES)
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (count, 8, 8, 3)).astype(np.uint8)
    return normalize_images(np.repeat(np.repeat(coarse, 14, axis=1), 14, axis=2))


def peak_mac_rates(folder: Path, rounds: int) -> dict[str, float]:
    """MAC/s of a dense 1x1-convolution pair through LiteRT/XNNPACK at 1 thread, fp32 and int8."""
    import keras

    inputs = keras.Input(PEAK_SHAPE)
    hidden = keras.layers.Conv2D(PEAK_SHAPE[-1], 1)(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(PEAK_SHAPE[-1], 1)(hidden))
    macs = 2 * PEAK_SHAPE[0] * PEAK_SHAPE[1] * PEAK_SHAPE[2] * PEAK_SHAPE[2]
    sample = np.random.default_rng(0).uniform(-1, 1, (8, *PEAK_SHAPE)).astype(np.float32)
    rates = {}
    for quantization in ("none", "int8"):
        path = export.export_tflite(model, folder / f"peak_{quantization}.tflite", quantization, sample)
        interpreter = export.make_interpreter(path, 1)
        best = min(export.tflite_latency_ms(interpreter, 1, 30) for _ in range(rounds))  # peak: best round
        rates[quantization] = macs / (best * 1e-3)
    rates["float16"] = rates["none"]  # XNNPACK computes fp16-weight models in fp32 on x86
    return rates


def batch_norm_statistics_from(model, images: np.ndarray) -> None:
    """Set every BatchNormalization's moving mean / variance to those of its input on `images`.

    Random-init weights with the initial statistics (0, 1) let activations shrink ~20x per block in deep
    stacks (MMobileFaceNet's embedding norm is ~1e-8), which makes any cosine a comparison of noise; with
    statistics of real faces the activations have trained-like scales. One training-mode pass with
    momentum 0 gives every BN the statistics of its already-normalized input.
    """
    import keras

    layers = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum


def export_variant(name: str, folder: Path, calibration: np.ndarray, parity: np.ndarray,
                   activation_percentile="auto") -> list[dict]:
    import keras

    from ghostface_keras.models.flops import count_flops
    from ghostface_keras.models.registry import create_model

    keras.utils.set_random_seed(0)
    model = create_model(name)
    batch_norm_statistics_from(model, calibration[:64])
    macs = count_flops(model)
    reference = np.asarray(model.predict(parity, batch_size=16, verbose=0))
    rows = []
    for quantization in QUANTIZATIONS:
        path = export.export_tflite(model, folder / f"{name}_{quantization}.tflite", quantization, calibration,
                                    activation_percentile=activation_percentile)
        cosines = _cosines(export.run_tflite(path, parity), reference)
        rows.append({
            "model": name, "quantization": quantization, "path": path, "macs": macs,
            "size_mib": path.stat().st_size / 2**20, "min_cosine": float(cosines.min()),
            "mean_cosine": float(cosines.mean()), "partitions": export.count_delegate_nodes(path),
        })
    return rows


def official_row() -> list[dict]:
    """The official GhostFaceNetV1-1.3-2 converted as-is (from_keras_model, dynamic batch), for comparison."""
    if not OFFICIAL_TFLITE.is_file():
        return []
    return [{
        "model": "official GhostFaceNetV1-1.3-2", "quantization": "none", "path": OFFICIAL_TFLITE,
        "macs": 59_316_222,  # analytic MACs from the fixture's flops.json
        "size_mib": OFFICIAL_TFLITE.stat().st_size / 2**20, "min_cosine": float("nan"),
        "mean_cosine": float("nan"), "partitions": export.count_delegate_nodes(OFFICIAL_TFLITE),
    }]


def measure_interleaved(rows: list[dict], threads: list[int], rounds: int, repeats: int) -> None:
    """Fill row[f"ms_{t}"]: median over rounds of each round's median; files alternate within a round."""
    for thread_count in threads:
        interpreters = [export.make_interpreter(row["path"], thread_count) for row in rows]
        per_round = [[] for _ in rows]
        for round_index in range(rounds):
            for index, interpreter in enumerate(interpreters):
                per_round[index].append(export.tflite_latency_ms(interpreter, thread_count, repeats))
            logger.info("threads %d: round %d/%d done", thread_count, round_index + 1, rounds)
        for row, values in zip(rows, per_round):
            row[f"ms_{thread_count}"] = float(np.median(values))


def write_outputs(rows: list[dict], rates: dict[str, float], threads: list[int], out: Path, setup: str = "") -> None:
    out.mkdir(parents=True, exist_ok=True)
    columns = ["model", "quantization", "size_mib", "macs", "min_cosine", "mean_cosine", "partitions"]
    columns += [f"ms_{t}" for t in threads] + ["bound_ms", "ratio_to_bound"]
    for row in rows:
        row["bound_ms"] = row["macs"] / rates[row["quantization"]] * 1e3
        row["ratio_to_bound"] = row[f"ms_{threads[0]}"] / row["bound_ms"]
    with open(out / "tflite_latency.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        f"Peak MAC rate measured on this CPU (LiteRT/XNNPACK, 1 thread, 1x1 conv {PEAK_SHAPE}): "
        f"fp32 {rates['none'] / 1e9:.1f} GMAC/s, int8 {rates['int8'] / 1e9:.1f} GMAC/s. {setup}",
        "",
        "| model | quant | MiB | MMACs | cos min / mean vs Keras | partitions | "
        + " | ".join(f"ms @{t}T" for t in threads) + " | bound ms | x bound |",
        "|---" * (8 + len(threads)) + "|",
    ]
    for row in rows:
        lines.append(
            f"| {row['model']} | {row['quantization']} | {row['size_mib']:.2f} | {row['macs'] / 1e6:.1f} | "
            f"{row['min_cosine']:.5f} / {row['mean_cosine']:.5f} | {row['partitions']} | "
            + " | ".join(f"{row[f'ms_{t}']:.2f}" for t in threads)
            + f" | {row['bound_ms']:.2f} | {row['ratio_to_bound']:.1f} |"
        )
    (out / "tflite_latency.md").write_text("\n".join(lines) + "\n")
    plot(rows, threads[0], out / "tflite_latency.png")
    print("\n".join(lines))


def plot(rows: list[dict], threads: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5))
    markers = {"none": "o", "float16": "s", "int8": "^"}
    for quantization, marker in markers.items():
        chosen = [row for row in rows if row["quantization"] == quantization]
        axes.scatter([r["size_mib"] for r in chosen], [r[f"ms_{threads}"] for r in chosen], marker=marker,
                     label={"none": "fp32"}.get(quantization, quantization))
        for row in chosen:
            axes.annotate(f"{row['model']} ({row['min_cosine']:.3f})", (row["size_mib"], row[f"ms_{threads}"]),
                          fontsize=6)
    axes.set_xlabel("TFLite file size (MiB)")
    axes.set_ylabel(f"LiteRT median latency, {threads} thread (ms)")
    axes.set_title("Latency vs size (label: min cosine to the Keras embedding)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", help="registry names (default: every face model)")
    parser.add_argument("--threads", default="1", help="comma-separated thread counts, first is the headline")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--repeats", type=int, default=30, help="invokes per round")
    parser.add_argument("--calibration-size", type=int, default=100)
    parser.add_argument("--activation-percentile", default="auto",
                        help="int8 activation ranges: 'auto' (the export default) or a fixed percentile such as "
                             "99.99, which exports every variant about 3x faster")
    parser.add_argument("--parity-size", type=int, default=32)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    threads = [int(t) for t in args.threads.split(",")]
    names = args.models or face_model_names()
    calibration = real_or_smooth_images("train", args.calibration_size, seed=0)
    parity = real_or_smooth_images("val", args.parity_size, seed=1)
    with tempfile.TemporaryDirectory(prefix="tflite_latency_") as scratch:
        folder = Path(scratch)
        rates = peak_mac_rates(folder, args.rounds)
        rows = []
        for index, name in enumerate(names):
            logger.info("[%d/%d] exporting %s", index + 1, len(names), name)
            percentile = args.activation_percentile
            rows += export_variant(name, folder, calibration, parity,
                                   percentile if percentile == "auto" else float(percentile))
        if "GhostFaceNetV1-1.3-2" in names:
            rows += official_row()
        measure_interleaved(rows, threads, args.rounds, args.repeats)
        setup = (f"Registry weights are random (seed 0) with BatchNorm statistics of 64 calibration images; "
                 f"int8 calibrated on {len(calibration)} "
                 f"{'CelebA train faces' if (FACES / 'train').is_dir() else 'smooth random images'}, "
                 f"activation percentile {args.activation_percentile}; cosines on {len(parity)} "
                 f"{'CelebA val faces' if (FACES / 'val').is_dir() else 'smooth random images'}; "
                 f"{args.rounds} interleaved rounds of {args.repeats} invokes.")
        write_outputs(rows, rates, threads, Path(args.out), setup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
