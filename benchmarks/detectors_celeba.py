"""Does re-detecting faces change verification? CelebA val pairs, aligned crops vs BlazeFace / MTCNN on "raw" photos.

`shared/data/celeba_aligned112/val_pairs.bin` holds 600 pairs of CelebA faces already aligned (MTCNN + the ArcFace
template). Raw photos are not in the data set, so each crop is placed in a 3x larger canvas (the crop in the
middle of a blurred, enlarged copy of itself: a face with surroundings, as a photo has) and goes through the
photo path again: detect, five landmarks, align, embed. The 10-fold accuracy of the released GN_W0.5_S2 weights
(flip on) is compared with the accuracy of the given crops, for each detector.

    python benchmarks/detectors_celeba.py      # writes results/detectors_celeba.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from ghostface_keras.core.tables import markdown_table  # noqa: E402

SHARED = Path(os.environ.get("GHOSTFACE_SHARED", ROOT.parent / "shared"))
PAIRS = SHARED / "data" / "celeba_aligned112" / "val_pairs.bin"
WEIGHTS = SHARED / "data" / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"


def as_photo(crop: np.ndarray, scale: int = 3) -> np.ndarray:
    """The crop in the middle of a blurred, `scale`x enlarged copy of itself."""
    side = crop.shape[0]
    background = Image.fromarray(crop).resize((side * scale, side * scale), Image.BILINEAR)
    canvas = background.filter(ImageFilter.GaussianBlur(radius=side // 8))
    canvas.paste(Image.fromarray(crop), (side * (scale - 1) // 2, side * (scale - 1) // 2))
    return np.asarray(canvas)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "detectors_celeba.md"))
    args = parser.parse_args(argv)
    if not (PAIRS.is_file() and WEIGHTS.is_file()):
        parser.error(f"{PAIRS} and {WEIGHTS} are needed (set GHOSTFACE_SHARED)")
    from ghostface_keras.cli import import_backend_quietly

    import_backend_quietly()
    from ghostface_keras.data import load_bin
    from ghostface_keras.evaluation import k_fold_accuracy, pair_scores
    from ghostface_keras.faces.embedder import FaceEmbedder

    images, issame = load_bin(PAIRS)
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    reference = FaceEmbedder(str(WEIGHTS), detector=None)
    given = reference.embed_aligned(images)
    folds = k_fold_accuracy(pair_scores(given), issame)[0]
    accuracy, spread = folds.mean(), folds.std()
    rows.append({"path": "given aligned crops (no detection)", "found": f"{len(images)}/{len(images)}",
                 "10-fold accuracy": f"{accuracy:.4f} ± {spread:.4f}", "cosine to given crops, mean / min": "-",
                 "CPU s / photo": "-"})
    photos = [as_photo(crop) for crop in images]
    for detector in ("blazeface", "mtcnn"):
        embedder = FaceEmbedder(reference.model, detector=detector)
        clock = time.process_time()
        embeddings = embedder.embed_batch(photos, skip_missing=True)
        cpu = (time.process_time() - clock) / len(photos)
        found = ~np.isnan(embeddings).any(axis=1)
        usable = found[0::2] & found[1::2]  # pairs with both faces found; the others count as wrong
        filled = np.where(found[:, None], embeddings, 0.0)
        folds = k_fold_accuracy(pair_scores(filled), issame)[0]
        accuracy, spread = folds.mean(), folds.std()
        cosines = np.sum(filled[found] * given[found], axis=1)
        rows.append({"path": f"photo path, {detector}", "found": f"{int(found.sum())}/{len(images)}",
                     "10-fold accuracy": f"{accuracy:.4f} ± {spread:.4f} ({int(usable.sum())} pairs usable)",
                     "cosine to given crops, mean / min": f"{cosines.mean():.3f} / {cosines.min():.3f}",
                     "CPU s / photo": f"{cpu:.3f}"})
    text = "\n".join([
        "# CelebA val pairs: given aligned crops vs re-detected by BlazeFace and MTCNN",
        "",
        f"Command: `python benchmarks/detectors_celeba.py` on {started:%Y-%m-%d %H:%M} UTC. {len(issame)} pairs of "
        "`celeba_aligned112/val_pairs.bin`; each 112x112 crop placed in the middle of a blurred 336x336 enlargement "
        "of itself, then detected, aligned and embedded again (released GN_W0.5_S2, flip on). A face not found "
        "embeds as zeros (its pairs count as different).",
        "",
        markdown_table(rows).rstrip("\n"),
        "",
    ])
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
