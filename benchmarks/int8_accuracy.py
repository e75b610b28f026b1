"""Full-int8 mean cosine to our fp32 TFLite on real aligned faces, per activation-range method, plus size
and LiteRT latency (1 thread, median of interleaved rounds). Needs ../shared.

    python benchmarks/int8_accuracy.py [--percentiles 100 99.99 auto] [--fine-tune-steps 600]

"auto" is the export default (the percentile is chosen on held-out calibration images; the choice is logged).
With --fine-tune-steps N a row "quantization-aware" is added: the twin of `quantization_aware_model`
(ranges from the same 200 calibration faces, auto percentile) fine-tuned N steps by distillation on
--fine-tune-images train faces, then exported.
"""
import argparse
import glob
import logging
import tempfile
from pathlib import Path

import numpy as np

from ghostface_keras.models import official as convert
from ghostface_keras.export import (
    export_tflite,
    fine_tune_quantization_aware,
    load_face_images,
    quantization_aware_model,
    run_tflite,
    sample_images,
    tflite_latency_ms,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
# the fixtures that ship a model.h5 (w1.0-s2 and v2-w1.3-s2 have summaries and outputs only)
MODELS = {
    "official fixture V1-1.3-2": SHARED / "reference/official/ghostfacenetv1-w1.3-s2/model.h5",
    "released GN_W0.5_S2": SHARED / "data/ghostfacenets_pretrained/GN_W0.5_S2_ArcFace_epoch16.h5",
    "official fixture V1-1.3-1": SHARED / "reference/official/ghostfacenetv1-w1.3-s1/model.h5",
    "official fixture V2-1.3-1": SHARED / "reference/official/ghostfacenetv2-w1.3-s1/model.h5",
}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--percentiles", nargs="+", default=["100", "99.99", "auto"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS)[:2],
                        help="weights to measure (default: the V1-1.3-2 fixture and the released GN_W0.5)")
    parser.add_argument("--fine-tune-steps", type=int, default=0, help="add a quantization-aware row (0: none)")
    parser.add_argument("--fine-tune-images", type=int, default=1536, help="train faces for the fine-tuning")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("ghostface_keras.export.activation_ranges").setLevel(logging.INFO)
    logging.getLogger("ghostface_keras.export.quantization_aware").setLevel(logging.INFO)
    tuning = sample_images(SHARED / "data/celeba_aligned112/train", max(args.fine_tune_images, 200))
    train = tuning[:200]
    val = load_face_images([Path(p) for p in sorted(glob.glob(str(SHARED / "data/celeba_aligned112/val/*/*.jpg")))[:64]])
    print("| weights | int8 activation ranges | mean cosine | min cosine | MiB | ms (1 thread) | x fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as folder:
        for label in args.models:
            h5 = MODELS[label]
            model = convert.load_official(str(h5))
            files = {"fp32": export_tflite(model, Path(folder) / "fp32.tflite")}
            for p in args.percentiles:
                percentile = p if p == "auto" else (None if float(p) >= 100 else float(p))
                files[p] = export_tflite(model, Path(folder) / f"int8_{p}.tflite", "int8", train,
                                         activation_percentile=percentile)
            if args.fine_tune_steps:
                twin = quantization_aware_model(model, train)
                fine_tune_quantization_aware(twin, model, tuning, steps=args.fine_tune_steps,
                                             learning_rate=args.learning_rate)
                files["qat"] = export_tflite(twin, Path(folder) / "int8_qat.tflite", "int8", train)
            reference = run_tflite(files["fp32"], val)
            times = {key: [] for key in files}
            for _ in range(args.rounds):  # interleaved: load drifts on this shared machine
                for key, path in files.items():
                    times[key].append(tflite_latency_ms(path, num_threads=1, repeats=30))
            for key, path in files.items():
                c = cosines(run_tflite(path, val), reference)
                ratio = np.median(np.array(times[key]) / np.array(times["fp32"]))
                name = {"fp32": "float32", "auto": "percentile auto",
                        "qat": f"quantization-aware, {args.fine_tune_steps} steps"}.get(key)
                name = name or ("min/max" if float(key) >= 100 else f"percentile {key}")
                print(f"| {label} | {name} | {c.mean():.4f} | {c.min():.4f} | {path.stat().st_size / 2**20:.2f} "
                      f"| {np.median(times[key]):.2f} | {ratio:.2f} |", flush=True)


if __name__ == "__main__":
    main()
