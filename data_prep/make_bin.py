#!/usr/bin/env python
"""Build an insightface verification `.bin` from an identity folder.

    python data_prep/make_bin.py FOLDER OUT.bin --pairs pairs.csv      # pairs listed in a CSV
    python data_prep/make_bin.py FOLDER OUT.bin --num-pairs 300 --seed 0  # draw 300 positive + 300 negative

The CSV has columns `image_a,image_b,same` (same = 1/0, true/false); paths are relative to FOLDER, or
to the CSV's own folder when that is where they resolve. Drawn pairs are laid out as the insightface
files are: 10 folds, each holding its positive pairs then its negative pairs. Images stored as their
original bytes when already image_size square, else decoded, resized and stored as PNG.

A pair with an unreadable image is skipped and counted (as the training loaders skip and count such files);
the summary line says how many, and the first few are named. Exit status follows `ghostface_keras.cli`
(2 and one line for bad input).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ghostface_keras.cli import run_reporting_errors  # noqa: E402
from ghostface_keras.core.errors import DataError  # noqa: E402

SKIPS_NAMED = 5

TRUE_WORDS = {"1", "true", "yes", "y", "t"}
FALSE_WORDS = {"0", "false", "no", "n", "f"}


def read_pairs_csv(csv_path: Path, folder: Path) -> list[tuple[Path, Path, bool]]:
    """Pairs of the CSV, with paths resolved against `folder` (or the CSV's folder)."""
    pairs = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle)
        for line_number, row in enumerate(rows, 1):
            if line_number == 1 and len(row) >= 3 and row[2].strip().lower() not in TRUE_WORDS | FALSE_WORDS:
                continue  # a header line
            if not row:
                continue
            if len(row) < 3:
                raise DataError(f"{csv_path}: line {line_number}: expected image_a,image_b,same, got {row}")
            flag = row[2].strip().lower()
            if flag not in TRUE_WORDS | FALSE_WORDS:
                raise DataError(f"{csv_path}: line {line_number}: 'same' must be 1/0 or true/false, got {row[2]!r}")
            pairs.append((_resolve(row[0], folder, csv_path, line_number), _resolve(row[1], folder, csv_path, line_number), flag in TRUE_WORDS))
    if not pairs:
        raise DataError(f"{csv_path}: no pairs")
    return pairs


def _resolve(name: str, folder: Path, csv_path: Path, line_number: int) -> Path:
    for base in (folder, csv_path.parent):
        candidate = base / name.strip()
        if candidate.is_file():
            return candidate
    raise DataError(f"{csv_path}: line {line_number}: image {name!r} not found under {folder} or {csv_path.parent}")


def draw_pairs(folder: Path, num_pairs: int, seed: int) -> list[tuple[Path, Path, bool]]:
    """`num_pairs` positive and `num_pairs` negative distinct pairs, arranged in 10 folds (positives first)."""
    from ghostface_keras.data.folders import scan_image_folder

    index = scan_image_folder(folder)
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(index.labels == label) for label in range(index.num_classes)]
    multi = [members for members in by_class if len(members) >= 2]
    if not multi or index.num_classes < 2:
        raise DataError(f"{folder}: need >= 2 identities and one with >= 2 images to draw pairs")
    positives, negatives = set(), set()
    for wanted, chosen, draw in ((num_pairs, positives, lambda: tuple(rng.choice(multi[rng.integers(len(multi))], 2, replace=False))),
                                 (num_pairs, negatives, lambda: _negative(rng, by_class))):
        attempts = 0
        while len(chosen) < wanted:
            chosen.add(tuple(sorted(int(item) for item in draw())))
            attempts += 1
            if attempts > 50 * wanted:
                raise DataError(f"{folder}: cannot draw {wanted} distinct pairs of this kind (got {len(chosen)})")
    positives, negatives = [sorted(group) for group in (positives, negatives)]
    rng.shuffle(positives)
    rng.shuffle(negatives)
    pairs = []
    for fold in range(10):
        pairs += [(index.paths[a], index.paths[b], True) for a, b in positives[fold::10]]
        pairs += [(index.paths[a], index.paths[b], False) for a, b in negatives[fold::10]]
    return [(Path(a), Path(b), same) for a, b, same in pairs]


def _negative(rng, by_class):
    first, second = rng.choice(len(by_class), 2, replace=False)
    return rng.choice(by_class[first]), rng.choice(by_class[second])


def stored_bytes(path: Path, image_size: int) -> bytes:
    """The file's own bytes if it decodes to image_size x image_size, else a PNG of the resized image."""
    from PIL import Image

    from ghostface_keras.data.bins import encode_image
    from ghostface_keras.data.decode import ImageDecodeError, decode_image_bytes

    data = path.read_bytes()
    try:
        pixels = decode_image_bytes(data, image_size)
        with Image.open(path) as image:
            same_size = image.size == (image_size, image_size) and image.mode == "RGB"
    except (ImageDecodeError, OSError) as error:
        raise DataError(f"{path}: not a readable image ({error})") from None
    return data if same_size else encode_image(pixels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="identity folder ROOT/<identity>/<image>")
    parser.add_argument("output", type=Path, help="the .bin to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path, help="CSV image_a,image_b,same")
    source.add_argument("--num-pairs", type=int, help="draw this many positive and as many negative pairs")
    parser.add_argument("--seed", type=int, default=0, help="seed for --num-pairs")
    parser.add_argument("--image-size", type=int, default=112)
    args = parser.parse_args(argv)
    return run_reporting_errors("make_bin", lambda: _make(args))


def _make(args: argparse.Namespace) -> int:
    from ghostface_keras.data.bins import save_bin

    pairs = read_pairs_csv(args.pairs, args.folder) if args.pairs else draw_pairs(args.folder, args.num_pairs, args.seed)
    encoded, kept, skipped = readable_pairs(pairs, args.image_size)
    if not kept:
        raise DataError(f"{args.folder}: no pair has two readable images ({skipped[0]})")
    save_bin(args.output, encoded, [same for _, _, same in kept])
    positives = sum(same for _, _, same in kept)
    summary = f"{args.output}: {len(kept)} pairs ({positives} positive, {len(kept) - positives} negative)"
    if skipped:
        named = "; ".join(skipped[:SKIPS_NAMED]) + ("; ..." if len(skipped) > SKIPS_NAMED else "")
        summary += f"; skipped {len(skipped)} pairs with an unreadable image ({named})"
    print(summary)
    return 0


def readable_pairs(pairs: list[tuple[Path, Path, bool]], image_size: int) -> tuple[list[bytes], list, list[str]]:
    """The stored bytes of every pair whose two images read, those pairs, and one reason per skipped pair
    (each file is read once, however many pairs it is in)."""
    cache: dict[Path, bytes | DataError] = {}

    def stored(path: Path) -> bytes | DataError:
        if path not in cache:
            try:
                cache[path] = stored_bytes(path, image_size)
            except DataError as error:
                cache[path] = error
        return cache[path]

    encoded, kept, skipped = [], [], []
    for first, second, same in pairs:
        pair = [stored(first), stored(second)]
        problems = [str(item) for item in pair if isinstance(item, DataError)]
        if problems:
            skipped.append(problems[0])
            continue
        encoded.extend(pair)
        kept.append((first, second, same))
    return encoded, kept, skipped

if __name__ == "__main__":
    sys.exit(main())
