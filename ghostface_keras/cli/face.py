"""`ghostface`: face verification, embedding and identification from photos.

    ghostface verify a.jpg b.jpg --model model.keras
    ghostface embed photos/*.jpg --model model.tflite --output embeddings.npy
    ghostface identify probe.jpg --gallery known_people/ --model GhostFaceNetV1-0.5-2

Exit status and error lines follow `ghostface_keras.cli`. The work is `ghostface_keras.inference.FaceEmbedder`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from ghostface_keras.cli import EXIT_BAD_INPUT, EXIT_INTERRUPTED, error_line, import_backend_quietly


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ghostface", description="Face verification, embedding and "
                                     "identification from photos with a GhostFaceNets / MobileFaceNet model.")
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser("verify", help="are two photos the same person?")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    embed = commands.add_parser("embed", help="write unit embeddings of photos to a .npz (or .npy) file")
    embed.add_argument("images", nargs="+")
    embed.add_argument("--output", "-o", required=True, help="output .npz (embeddings N x D float32 and their "
                       "paths, one file) or .npy (embeddings; the paths in <output stem>.txt, written together)")
    embed.add_argument("--skip-missing", action="store_true", help="NaN rows for photos without a face "
                       "instead of stopping")
    identify = commands.add_parser("identify", help="who is this? rank the people of a gallery folder")
    identify.add_argument("probe")
    identify.add_argument("--gallery", required=True, help="folder of name/*.jpg (or flat name.jpg) photos, "
                          "or a .npz written by --save-gallery")
    identify.add_argument("--top-k", type=int, default=5)
    identify.add_argument("--save-gallery", help="also save the gallery embeddings to this .npz for reuse")
    for command in (verify, embed, identify):
        command.add_argument("--model", "-m", required=True, help=".keras, .h5 (ours or official), .tflite, .onnx, a "
                             "SavedModel folder, or a released checkpoint name such as GhostFaceNetV1-0.5-2")
        command.add_argument("--detector", default="mtcnn", help="'mtcnn' (default) or 'none' for aligned crops")
        command.add_argument("--no-flip", action="store_true", help="skip the mirrored-crop embedding")
        command.add_argument("--verbose", "-v", action="store_true")
    for command in (verify, identify):
        command.add_argument("--threshold", type=_cosine_threshold, help="cosine threshold (default: the released checkpoint's, "
                             "recognized from the weights; else 0.30)")
    return parser


def _cosine_threshold(text: str) -> float:
    """A cosine threshold: a finite number in [-1, 1] (argparse turns the ValueError into a usage error)."""
    value = float(text)
    if not -1.0 <= value <= 1.0:  # also refuses nan
        raise ValueError(f"{text} is not a cosine threshold in [-1, 1]")
    return value


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse bad arguments before the model loads (seconds), in one line naming the file."""
    from ghostface_keras.errors import DataError

    photos = {"verify": lambda: [args.image_a, args.image_b], "embed": lambda: args.images,
              "identify": lambda: [args.probe]}[args.command]()
    for photo in photos:
        if not Path(photo).is_file():
            raise DataError(f"{photo}: file not found")
    if args.command == "identify" and not Path(args.gallery).exists():
        raise DataError(f"{args.gallery}: gallery folder or .npz not found")
    if args.command == "embed":
        output = Path(args.output)
        if output.suffix.lower() not in (".npz", ".npy"):
            raise DataError(f"{output}: --output must end in .npz (embeddings and paths in one file) or .npy")
        if output.is_dir():
            raise DataError(f"{output}: --output is a folder; give a file name")


def _run_command(args: argparse.Namespace) -> int:
    _check_inputs(args)
    import_backend_quietly()
    from ghostface_keras.inference import FaceEmbedder, Gallery

    embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                            threshold=getattr(args, "threshold", None))
    if args.command == "verify":
        similarity, same = embedder.verify(args.image_a, args.image_b)
        verdict = "same person" if same else "different people"
        print(f"similarity {similarity:.4f}  threshold {embedder.threshold:.2f}  ->  {verdict}")
        return 0
    if args.command == "embed":
        embeddings = embedder.embed_batch(args.images, skip_missing=args.skip_missing, progress=len(args.images) > 1)
        _save_embeddings(Path(args.output), embeddings, args.images)
        missing = int(np.isnan(embeddings).any(axis=1).sum())
        print(f"wrote {len(embeddings)} x {embeddings.shape[1]} embeddings to {args.output}"
              + (f" ({missing} photos without a face are NaN rows)" if missing else ""))
        return 0
    gallery = (Gallery.load(args.gallery) if str(args.gallery).endswith(".npz")
               else embedder.build_gallery(args.gallery, progress=True))
    if args.save_gallery:
        gallery.save(args.save_gallery)
    for rank, match in enumerate(embedder.identify(args.probe, gallery, top_k=args.top_k), start=1):
        verdict = "match" if match.same else "below threshold"
        print(f"{rank}. {match.name}  similarity {match.similarity:.4f}  ({verdict}; {match.path})")
    return 0


def _save_embeddings(output: Path, embeddings: np.ndarray, images: Sequence[str]) -> None:
    """One `.npz` (embeddings and paths), or a `.npy` and its `.txt` of paths renamed into place together."""
    from ghostface_keras.files import atomic_output

    paths = [str(image) for image in images]
    if output.suffix.lower() == ".npz":
        with atomic_output(output) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, embeddings=embeddings, paths=np.array(paths, dtype=str))
        return
    with atomic_output(output) as array_file, atomic_output(output.with_suffix(".txt")) as order_file:
        with open(array_file, "wb") as handle:
            np.save(handle, embeddings)
        order_file.write_text("\n".join(paths) + "\n", encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ghostface` console script; returns the exit status.

    Example:
        >>> import keras, tempfile
        >>> from PIL import Image
        >>> from ghostface_keras.data.synthetic import render_synthetic_faces
        >>> folder = Path(tempfile.mkdtemp())
        >>> inputs = keras.Input((112, 112, 3))
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> model.save(folder / "model.keras")
        >>> faces, _ = render_synthetic_faces(1, 2)      # two aligned 112x112 pictures of one made-up person
        >>> Image.fromarray(faces[0]).save(folder / "a.png")
        >>> Image.fromarray(faces[1]).save(folder / "b.png")
        >>> # aligned crops, so --detector none; photos use the default detector, mtcnn
        >>> main(["verify", str(folder / "a.png"), str(folder / "b.png"), "--model", str(folder / "model.keras"),
        ...       "--detector", "none"])
        similarity ...  threshold 0.30  ->  ...
        0
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    from ghostface_keras.errors import GhostFaceError

    try:
        return _run_command(args)
    except GhostFaceError as error:
        print(error_line("ghostface", error), file=sys.stderr)
        if args.verbose:
            raise
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ghostface: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
