"""`ghostface-export` (also ``python -m ghostface_keras.export``): export a model and prove parity.

Exit status follows `ghostface_keras.cli`: 0 exported and parity passed, 1 parity missed its threshold,
2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ghostface_keras.cli import EXIT_CHECK_FAILED, import_backend_quietly, non_negative_int, run_reporting_errors
from ghostface_keras.core.errors import ExportError
from ghostface_keras.export.formats import FORMATS, QUANTIZATIONS

logger = logging.getLogger(__name__)


def _parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ghostface-export",
        description="Export a face-embedding model to SavedModel / TFLite / ONNX and check that it gives "
        "the same embeddings as Keras (exit code 1 when parity misses its threshold).",
    )
    parser.add_argument("--model", required=True, help=".keras / .h5 file (ours or official), or a released "
                        "checkpoint name such as GhostFaceNetV1-0.5-2")
    parser.add_argument("--format", choices=FORMATS, default="tflite")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="none", help="TFLite only")
    parser.add_argument("--calibration-data", help="folder of aligned 112x112 faces (int8 calibration)")
    parser.add_argument("--calibration-size", type=int, default=200, help="images drawn for int8 calibration")
    parser.add_argument(
        "--parity-data",
        help="folder of aligned faces for the parity check (default: calibration images not used to "
        "calibrate; without any folder: reproducible random pixels)",
    )
    parser.add_argument("--parity-size", type=int, default=32)
    parser.add_argument("--int8-io", action="store_true", help="int8 input/output tensors (int8 only)")
    parser.add_argument("--activation-percentile", type=_percentile, default="auto",
                        help="int8: activation ranges from this percentile of the calibration values "
                        "(100 = min/max); 'auto' (default) picks it on held-out calibration images")
    parser.add_argument("--fine-tune-steps", type=non_negative_int, default=0,
                        help="int8: quantization-aware fine-tuning steps (distillation to the float model on the "
                        "calibration images) before export; 0 (default) = post-training int8 only")
    parser.add_argument("--fine-tune-learning-rate", type=_positive_float, default=3e-5,
                        help="Adam rate of --fine-tune-steps (default 3e-5)")
    parser.add_argument("--batch-size", type=int, default=1, help="static batch of the exported signature")
    parser.add_argument("--no-uint8-signature", action="store_true", help="SavedModel: float32 signature only")
    parser.add_argument("--threads", default="1,2", help="LiteRT latency thread counts, comma separated")
    parser.add_argument("--output", required=True)
    return parser.parse_args(argv)


def _percentile(text: str) -> float | str | None:
    if text == "auto":
        return text
    value = float(text)
    if not 50.0 < value <= 100.0:
        raise argparse.ArgumentTypeError(f"percentile must be in (50, 100] or 'auto', got {text}")
    return None if value == 100.0 else value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _check_arguments(args: argparse.Namespace) -> tuple[int, ...]:
    """Refuse bad option combinations, missing inputs and an unwritable --output before TensorFlow or the
    model loads; returns the LiteRT thread counts."""
    from ghostface_keras.core.files import check_input_paths, check_output_path
    from ghostface_keras.weights.checkpoints import check_model_source

    if args.format != "tflite" and args.quantization != "none":
        raise ExportError(f"--quantization {args.quantization} applies to --format tflite only")
    if args.fine_tune_steps and args.quantization != "int8":
        raise ExportError("--fine-tune-steps applies to --quantization int8 only")
    if args.quantization == "int8" and not args.calibration_data:
        raise ExportError("--quantization int8 needs --calibration-data DIR (aligned faces)")
    try:
        threads = tuple(int(count) for count in args.threads.split(",") if count.strip())
    except ValueError:
        raise ExportError(f"--threads {args.threads}: expected thread counts separated by commas, e.g. 1,2") from None
    check_input_paths([(args.calibration_data, "image folder"), (args.parity_data, "image folder")])
    check_output_path(args.output, "folder" if args.format == "savedmodel" else "file")
    check_model_source(args.model)
    return threads


def _parity_images(args: argparse.Namespace, height_width: tuple[int, int]) -> np.ndarray:
    from ghostface_keras.export.images import sample_images
    from ghostface_keras.core.preprocessing import normalize_images

    if args.parity_data:
        return sample_images(args.parity_data, args.parity_size, seed=1, size=height_width)
    if args.calibration_data:
        # images the calibration did not see, from the same reproducible draw
        return sample_images(
            args.calibration_data, args.parity_size, seed=0, skip=args.calibration_size, size=height_width
        )
    logger.warning("no --parity-data: checking parity on random pixels, a weaker test than real faces")
    pixels = np.random.default_rng(1234).integers(0, 256, (args.parity_size, *height_width, 3))
    return normalize_images(pixels.astype(np.uint8))


def _export(args: argparse.Namespace, model, height_width: tuple[int, int], checkpoint: str | None) -> Path:
    from ghostface_keras.export import export_onnx, export_saved_model, export_tflite
    from ghostface_keras.export.images import sample_images
    from ghostface_keras.export.quantization_aware import fine_tune_quantization_aware, quantization_aware_model

    if args.format == "savedmodel":
        batch = None if args.batch_size <= 0 else args.batch_size
        return export_saved_model(model, args.output, batch, uint8_signature=not args.no_uint8_signature)
    if args.format == "onnx":
        return export_onnx(model, args.output, batch_size=args.batch_size)
    calibration = None
    if args.quantization == "int8":
        calibration = sample_images(args.calibration_data, args.calibration_size, seed=0, size=height_width)
    if args.fine_tune_steps:
        twin = quantization_aware_model(model, calibration, args.activation_percentile or 100.0)
        # a quarter of the images (32 at most) is held out to keep the best weights
        fine_tune_quantization_aware(twin, model, calibration, steps=args.fine_tune_steps,
                                     batch_size=max(1, min(32, len(calibration) * 3 // 4)),
                                     learning_rate=args.fine_tune_learning_rate)
        return export_tflite(twin, args.output, "int8", calibration[:32], args.int8_io, args.batch_size,
                             checkpoint=checkpoint)
    return export_tflite(model, args.output, args.quantization, calibration, args.int8_io, args.batch_size,
                         activation_percentile=args.activation_percentile, checkpoint=checkpoint)


# what to try when a quantized file misses its threshold (docs/export.md, "Full-int8 accuracy")
_PARITY_HINTS = {
    "int8": " (trained checkpoints with large PReLU slopes lose more in full int8: --fine-tune-steps 600 with "
            "--calibration-size 1500 trains the weights against the int8 rounding; --quantization float16 keeps "
            "cosine > 0.999 at half the fp32 size)",
    "dynamic": " (--quantization float16 keeps cosine > 0.999 at half the fp32 size)",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m ghostface_keras.export`` / ``ghostface-export``.

    Example:
        $ ghostface-export --model model.keras --format tflite --quantization float16 \\
              --parity-data faces/val --output model_fp16.tflite
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = _parse_arguments(argv)
    outcome: dict = {}

    def work() -> int:
        threads = _check_arguments(args)
        import_backend_quietly()
        from ghostface_keras.export.parity import check_parity
        from ghostface_keras.export.quantization_aware import is_quantization_aware
        from ghostface_keras.runtime.loading import load_model

        loaded = load_model(args.model)
        model = loaded.keras_model
        if model is None:
            raise ExportError(f"{args.model}: a {loaded.format} file cannot be exported again: give the Keras model "
                              "(.keras, .h5 or a released checkpoint name)")
        if is_quantization_aware(model):
            raise ExportError(
                f"{args.model} is a quantization-aware twin: pass the float model with --fine-tune-steps, or "
                "export the twin with export_tflite in Python"
            )
        size = (loaded.input_size, loaded.input_size)
        outcome["exported"] = _export(args, model, size, loaded.checkpoint.name if loaded.checkpoint else None)
        images = _parity_images(args, size)
        outcome["report"] = check_parity(model, outcome["exported"], images, args.quantization,
                                         latency_threads=threads)
        return 0

    status = run_reporting_errors("ghostface-export", work)
    if status:
        return status
    report, exported = outcome["report"], outcome["exported"]
    print(report.to_markdown())
    if not report.passed:
        hint = _PARITY_HINTS.get(args.quantization, "")
        if args.fine_tune_steps:
            hint = (" (after quantization-aware fine-tuning: more --fine-tune-steps or a larger --calibration-size may "
                    "help; --quantization float16 keeps cosine > 0.999 at half the fp32 size)")
        print(f"ghostface-export: parity FAILED for {exported}: {'; '.join(report.failures)}{hint}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    return 0
