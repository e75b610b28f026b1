"""Is evaluation bound by the model's forward pass? eval.py's path vs a bare `model.predict`, one process.

Measured side by side on the same model (GhostFaceNetV1-1.3-2 by default), the same images and the
same batch size:

- `predict`      bare `model.predict` on an in-memory, already normalized float32 tensor;
- `embed`        `extract_embeddings` on uint8 pixels (normalization, batching, padding of the last
                 batch, L2 normalization: the part eval.py adds around the forward pass);
- `eval.py`      the whole `.bin` benchmark as eval.py runs it: read + decode the `.bin` (JPEG, as
                 insightface files are), embed, and every verification metric.

Flip TTA doubles the forward passes, so it is compared with `predict` on twice the images.
Each measurement is the best of `--repeats` interleaved rounds after a warm-up (tracing) run.

Example:
    python benchmarks/eval_throughput.py --images 12000 --batch-size 128
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def best_time(function: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls (the least disturbed by other processes)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="GhostFaceNetV1-1.3-2", help="registry name")
    parser.add_argument("--images", type=int, default=12000, help="images in the .bin (LFW: 12,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from ghostface_keras import create_model
    from ghostface_keras.data import load_bin, save_bin
    from ghostface_keras.evaluation import extract_embeddings, pair_scores, verification_metrics
    from ghostface_keras.runtime.embedding import EmbeddingFunction
    from ghostface_keras.core.preprocessing import normalize_images

    keras.utils.set_random_seed(0)
    model = create_model(args.model)
    count = args.images - args.images % 2
    rng = np.random.default_rng(0)
    # smooth random faces-sized images: JPEG sizes and decode cost close to real aligned crops
    coarse = rng.integers(0, 256, (count, 14, 14, 3)).astype(np.float32)
    pixels = tf.image.resize(coarse, (112, 112)).numpy().clip(0, 255).astype(np.uint8)
    issame = np.arange(count // 2) % 2 == 0
    normalized = normalize_images(pixels)
    doubled = np.concatenate([normalized, normalized[:, :, ::-1]])

    with tempfile.TemporaryDirectory() as folder:
        bin_path = Path(folder) / "bench.bin"
        save_bin(bin_path, pixels, issame, image_format="JPEG")
        embed_plain = EmbeddingFunction(model, args.batch_size, flip=False)
        embed_flip = EmbeddingFunction(model, args.batch_size, flip=True)

        def eval_path() -> None:
            images, labels = load_bin(bin_path)
            embeddings = extract_embeddings(embed_flip, images, progress=False)
            verification_metrics(pair_scores(embeddings), labels)

        # warm-up: trace every graph once on a small slice
        model.predict(normalized[: args.batch_size], batch_size=args.batch_size, verbose=0)
        extract_embeddings(embed_plain, pixels[: args.batch_size], progress=False)
        extract_embeddings(embed_flip, pixels[: args.batch_size], progress=False)

        measurements = [
            ("predict, N images", lambda: model.predict(normalized, batch_size=args.batch_size, verbose=0), count),
            ("embed, no flip", lambda: extract_embeddings(embed_plain, pixels, progress=False), count),
            ("predict, 2N images", lambda: model.predict(doubled, batch_size=args.batch_size, verbose=0),
             2 * count),
            ("embed, flip", lambda: extract_embeddings(embed_flip, pixels, progress=False), 2 * count),
            ("eval.py .bin path, flip", eval_path, 2 * count),
            ("  of which load_bin", lambda: load_bin(bin_path), count),
        ]
        # rounds interleave the paths, so a burst of load from other processes hits all of them alike
        best = {name: float("inf") for name, _, _ in measurements}
        for _ in range(args.repeats):
            for name, function, _ in measurements:
                best[name] = min(best[name], best_time(function, 1))
        rows = [(name, best[name], forwards) for name, _, forwards in measurements]

    print(f"{args.model}, {count} images, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores visible, TF {tf.__version__}, Keras {keras.__version__}")
    print(f"{'path':28s} {'seconds':>8s} {'forwards/s':>11s}")
    for name, seconds, forwards in rows:
        print(f"{name:28s} {seconds:8.2f} {forwards / seconds:11.1f}")
    seconds = {name: value for name, value, _ in rows}
    print(f"ratio embed/predict (no flip): {seconds['embed, no flip'] / seconds['predict, N images']:.3f}")
    print(f"ratio embed/predict (flip vs 2N): {seconds['embed, flip'] / seconds['predict, 2N images']:.3f}")
    print(f"ratio eval.py path/predict (flip vs 2N): "
          f"{seconds['eval.py .bin path, flip'] / seconds['predict, 2N images']:.3f}")


if __name__ == "__main__":
    main()
