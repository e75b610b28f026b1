"""Evaluate a face embedding model on the field's benchmarks from one command (`ghostface-eval`).

Pair verification from insightface `.bin` files (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW, XQLFW...), IJB-B/C
templates, RFW per-group bias, and rank-k identification of a folder of identity folders. Prints a
table and writes results.json/.csv/.md and ROC / TAR@FAR plots into --output.

Installed as `ghostface-eval`; `python eval.py` at the project root runs it too. Exit status follows
`ghostface_keras.cli` (2 with one line on stderr for bad input).

Example:
    python eval.py --model checkpoints/model.keras --bins lfw.bin cfp_fp.bin agedb_30.bin --output results/
    python eval.py --model model.tflite --ijb /data/IJB_release --ijb-subset IJBB --ijb-1n --output results/
    python eval.py --model model.keras --rfw /data/rfw_bins --folder /data/celeba_val --output results/
    python eval.py --model model.keras --gallery tf/gallery --probes tf/probe --distractors tf/distractor --output r/
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from ghostface_keras.cli import import_backend_quietly, run_reporting_errors
from ghostface_keras.core.errors import DataError, GhostFaceError

logger = logging.getLogger("ghostface_keras.eval")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of `eval.py` / `ghostface-eval`.

    Example:
        >>> build_parser().parse_args(["--model", "m.keras", "--bins", "lfw.bin", "--output", "out"]).flip
        True
    """
    parser = argparse.ArgumentParser(prog="ghostface-eval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help=".keras / .h5 (ours or official) / .tflite / .onnx file, "
                        "SavedModel folder, or a released checkpoint name")
    parser.add_argument("--bins", nargs="+", default=[], metavar="BIN", help="insightface verification .bin files")
    parser.add_argument("--ijb", metavar="DIR", help="insightface IJB_release folder (holding IJBB/ and/or IJBC/)")
    parser.add_argument("--ijb-subset", default="IJBC", choices=["IJBB", "IJBC"], type=str.upper)
    parser.add_argument("--ijb-1n", action="store_true", help="also run IJB 1:N identification")
    parser.add_argument("--ijb-no-score-weighting", action="store_true",
                        help="do not weight IJB image features by detector score (insightface D0)")
    parser.add_argument("--rfw", metavar="DIR", help="folder with one .bin per RFW group (African, Asian, ...)")
    parser.add_argument("--folder", metavar="DIR", action="append", default=[],
                        help="folder of identity sub-folders of aligned faces (rank-k + all-pairs ROC); repeatable")
    parser.add_argument("--gallery", metavar="DIR", help="identity folders of gallery images (TinyFace-style rank-k)")
    parser.add_argument("--probes", metavar="DIR", help="identity folders of probe images (with --gallery)")
    parser.add_argument("--distractors", metavar="DIR", help="extra gallery images no probe matches (with --gallery)")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                        help="flip test-time augmentation (default on, the official convention)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", required=True, metavar="DIR", help="where results and plots are written")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _load_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    """`ghostface_keras.data.load_bin`, with any reader failure turned into a DataError naming the file."""
    from ghostface_keras.data import load_bin

    if not Path(path).is_file():
        raise DataError(f"{path}: .bin file not found")
    try:
        return load_bin(path)
    except GhostFaceError:
        raise
    except (ValueError, OSError, EOFError, TypeError, KeyError, IndexError) as error:
        raise DataError(f"{path}: not a readable verification .bin ({type(error).__name__}: {error})") from error


def evaluate_bins(embed: Any, bins: Sequence[str], progress: bool, names: Sequence[str] | None = None) -> list[Any]:
    """Verification results of each `.bin` (named by `names`, or else by file stem).

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.data import save_bin
        >>> from ghostface_keras.runtime.embedding import EmbeddingFunction
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> pixels = np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
        >>> path = save_bin(f"{tempfile.mkdtemp()}/toy.bin", pixels, [True, False] * 10)  # 20 pairs, like lfw.bin
        >>> results = evaluate_bins(EmbeddingFunction(model), [str(path)], progress=False)
        >>> results[0].name, results[0].pairs
        ('toy', 20)
    """
    from ghostface_keras.runtime.embedding import extract_embeddings
    from ghostface_keras.evaluation import pair_scores, verification_metrics

    results = []
    for index, path in enumerate(bins):
        images, issame = _load_bin(path)
        if len(images) != 2 * len(issame):
            raise DataError(f"{path}: {len(images)} images for {len(issame)} pairs (expected 2 per pair)")
        logger.info("%s: %d pairs", path, len(issame))
        embeddings = extract_embeddings(embed, images, progress=progress)
        name = names[index] if names else Path(path).stem
        results.append(verification_metrics(pair_scores(embeddings), issame, name=name))
    return results


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad options, missing inputs and an unwritable --output in one line, before TensorFlow or the
    model loads.

    Example:
        >>> check_arguments(build_parser().parse_args(["--model", "m.keras", "--output", "out"]))
        Traceback (most recent call last):
        ...
        ghostface_keras.core.errors.DataError: nothing to evaluate: give --bins, --ijb, --rfw, --folder and/or --gallery/--probes
    """
    from ghostface_keras.core.files import check_input_paths, check_output_path
    from ghostface_keras.weights.checkpoints import check_model_source

    if not (args.bins or args.ijb or args.rfw or args.folder or args.gallery or args.probes):
        raise DataError("nothing to evaluate: give --bins, --ijb, --rfw, --folder and/or --gallery/--probes")
    if bool(args.gallery) != bool(args.probes):
        raise DataError("--gallery and --probes go together")
    if args.batch_size < 1:
        raise DataError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_input_paths([*((path, ".bin file") for path in args.bins), (args.ijb, "folder"), (args.rfw, "folder"),
                       *((folder, "folder") for folder in args.folder), (args.gallery, "folder"),
                       (args.probes, "folder"), (args.distractors, "folder")])
    check_output_path(args.output, "folder")
    check_model_source(args.model)


def run(args: argparse.Namespace) -> tuple[list[Any], dict[str, Any]]:
    """Run every requested benchmark (options checked by `check_arguments`); returns (verification results,
    extra JSON documents). `main` shows it at work (it calls this, then writes the reports).
    """
    from ghostface_keras.runtime.embedding import EmbeddingFunction
    from ghostface_keras.evaluation import evaluate_ijb, find_rfw_bins, rfw_summary
    from ghostface_keras.evaluation.identification import evaluate_folder, evaluate_gallery_probe

    progress = not args.quiet
    embed = EmbeddingFunction(args.model, batch_size=args.batch_size, flip=args.flip)
    results = evaluate_bins(embed, args.bins, progress)
    extra: dict[str, Any] = {}
    if args.rfw:
        group_bins = find_rfw_bins(args.rfw)
        group_results = evaluate_bins(embed, [str(path) for path in group_bins.values()], progress,
                                      names=[f"RFW-{group}" for group in group_bins])
        results.extend(group_results)
        extra["bias"] = rfw_summary({group: result.accuracy for group, result in zip(group_bins, group_results)})
    if args.ijb:
        ijb = evaluate_ijb(embed, args.ijb, args.ijb_subset, identification=args.ijb_1n,
                           score_weighting=not args.ijb_no_score_weighting, progress=progress)
        results.append(ijb.verification)
        if ijb.identification is not None:
            extra["ijb_1n"] = ijb.identification
    identifications = []
    for folder in args.folder:
        identification, verification = evaluate_folder(embed, folder, ranks=(1, 5, 10), progress=progress)
        identifications.append(identification)
        results.append(verification)
    if args.gallery:
        identifications.append(evaluate_gallery_probe(embed, args.gallery, args.probes, args.distractors,
                                                      progress=progress))
    if identifications:
        extra["identification"] = identifications
    return results, extra


def _print_summary(results: Sequence[Any], extra: dict[str, Any], output: Path) -> None:
    from ghostface_keras.evaluation import results_table
    from ghostface_keras.core.tables import markdown_table

    print(markdown_table(results_table([result.record() for result in results])))
    if "bias" in extra:
        bias = extra["bias"]
        print(f"RFW: mean {bias['mean']:.4f}  std {bias['std']:.4f}  SER {bias['ser']:.3f}")
    for identification in extra.get("identification", []):
        ranks = "  ".join(f"{key} {value:.4f}" for key, value in identification.items() if key.startswith("rank_"))
        print(f"{identification['name']}: {identification['probes']} probes  {ranks}")
    if "ijb_1n" in extra:
        one_to_n = extra["ijb_1n"]
        tops = "  ".join(f"{key} {value:.4f}" for key, value in one_to_n.items() if key.startswith("top_"))
        print(f"{one_to_n['name']}: {tops}  TPIR@FPIR {one_to_n['tpir_at_fpir']}")
    print(f"results written to {output}/")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `eval.py` and the `ghostface-eval` console script; returns the exit status.

    Example:
        >>> import keras, tempfile
        >>> from ghostface_keras.data import save_bin
        >>> folder = Path(tempfile.mkdtemp())
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> model.save(folder / "model.keras")
        >>> pixels = np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
        >>> path = save_bin(folder / "toy.bin", pixels, [True, False] * 10)
        >>> main(["--model", str(folder / "model.keras"), "--bins", str(path), "--output", str(folder / "results"),
        ...       "--quiet", "--no-plots"])
        | name | pairs | accuracy | accuracy_std | best_threshold_accuracy | threshold | auc | eer | TAR@FAR=1e-01 |
        | --- | --- | --- | --- | --- | --- | --- | --- | --- |
        | toy | 20 | ... |
        results written to .../results/
        0
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")

    def work() -> int:
        check_arguments(args)
        import_backend_quietly()
        from ghostface_keras.evaluation import write_reports

        results, extra = run(args)
        output = Path(args.output)
        write_reports(results, output, extra=extra, plots=not args.no_plots)
        _print_summary(results, extra, output)
        return 0

    return run_reporting_errors("ghostface-eval", work)


if __name__ == "__main__":
    sys.exit(main())
