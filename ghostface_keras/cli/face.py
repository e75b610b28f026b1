"""`ghostface`: face verification, embedding and identification from photos.

    ghostface verify a.jpg b.jpg --model model.keras
    ghostface embed photos/*.jpg --model model.tflite --output embeddings.npy
    ghostface identify probe.jpg --gallery known_people/ --model GhostFaceNetV1-0.5-2
    ghostface identify group.jpg --gallery known_people/ --model model.keras --face all
    ghostface watch meeting.mp4 --gallery known_people/ --model model.keras --output-video annotated.mp4

Group photos: `--face largest` (default; a warning says how many faces were found and which was used),
`--face N` (counted left to right from 1) or `--face all` (verify: the most similar pair of faces;
embed: one row per face; identify: a ranking per face). verify takes `--face N,M` for one face per photo.

Exit status and error lines follow `ghostface_keras.cli`. The work is `ghostface_keras.faces.embedder.FaceEmbedder`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from ghostface_keras.cli import (check_gallery_argument, cosine_threshold, import_backend_quietly,
                                 run_reporting_errors)


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
                          "a .npz written by --save-gallery, or a gallery folder of `ghostface gallery create`")
    identify.add_argument("--top-k", type=int, default=5)
    identify.add_argument("--save-gallery", help="also save the gallery embeddings to this .npz for reuse")
    for command in (verify, embed, identify):
        command.add_argument("--model", "-m", required=True, help=".keras, .h5 (ours or official), .tflite, .onnx, a "
                             "SavedModel folder, or a released checkpoint name such as GhostFaceNetV1-0.5-2")
        command.add_argument("--detector", default="blazeface", help="'blazeface' (default, fast), 'mtcnn' (finds "
                             "smaller faces, ~20x slower) or 'none' for aligned crops")
        command.add_argument("--no-flip", action="store_true", help="skip the mirrored-crop embedding")
        command.add_argument("--verbose", "-v", action="store_true")
    verify.add_argument("--face", type=_face_pair, default=("largest", "largest"), help="which faces: largest "
                        "(default), all (the most similar pair), N (counted left to right from 1) or N,M (one per photo)")
    for command in (embed, identify):
        command.add_argument("--face", type=_face_choice, default="largest", help="which face of each photo: "
                             "largest (default), all (every face) or N (counted left to right from 1)")
    from ghostface_keras.cli.watch import add_watch_arguments

    add_watch_arguments(commands.add_parser("watch", help="who is in a video file or in front of a camera: "
                                            "detect, track, identify frame by frame"))
    from ghostface_keras.cli.gallery import add_gallery_arguments

    add_gallery_arguments(commands.add_parser("gallery", help="a persistent gallery folder: create, enroll, list, "
                                              "remove, rename, search (batch identification to CSV), export, import"))
    from ghostface_keras.cli.serve import add_serve_arguments

    add_serve_arguments(commands.add_parser("serve", help="load the model once and answer JSON-line requests "
                                            "(verify, embed, identify) on stdin: a warm process for scripts"))
    for command in (verify, identify):
        command.add_argument("--threshold", type=cosine_threshold, help="cosine threshold (default: the released checkpoint's, "
                             "recognized from the weights; else 0.30)")
    return parser


def _face_choice(text: str):
    """A --face value, checked before anything loads (argparse turns the ValueError into a usage error)."""
    from ghostface_keras.faces.embedder import parse_face_choice
    from ghostface_keras.core.errors import GhostFaceError

    try:
        return parse_face_choice(text)
    except GhostFaceError as error:
        raise ValueError(str(error)) from None


def _face_pair(text: str) -> tuple:
    """verify's --face: one choice for both photos, or 'A,B' one per photo."""
    parts = text.split(",")
    if len(parts) > 2:
        raise ValueError(f"{text}: give one face choice, or two separated by a comma")
    choices = [_face_choice(part) for part in parts]
    return (choices[0], choices[-1])


def _check_inputs(args: argparse.Namespace) -> None:
    """Refuse bad arguments before the model loads (seconds), in one line naming the file."""
    from ghostface_keras.core.errors import DataError
    from ghostface_keras.core.files import check_input_paths, check_output_path
    from ghostface_keras.weights.checkpoints import check_model_source

    photos = {"verify": lambda: [args.image_a, args.image_b], "embed": lambda: args.images,
              "identify": lambda: [args.probe]}[args.command]()
    check_input_paths((photo, "file") for photo in photos)
    if args.command == "identify":
        args.loaded_gallery = check_gallery_argument(args.gallery)
        if args.save_gallery:
            if not args.save_gallery.lower().endswith(".npz"):
                raise DataError(f"{args.save_gallery}: --save-gallery must end in .npz")
            check_output_path(args.save_gallery)
    if args.command == "embed":
        output = Path(args.output)
        check_output_path(output)
        if output.suffix.lower() not in (".npz", ".npy"):
            raise DataError(f"{output}: --output must end in .npz (embeddings and paths in one file) or .npy")
    check_model_source(args.model)


def _run_command(args: argparse.Namespace) -> int:
    if args.command == "watch":
        from ghostface_keras.cli.watch import run_watch

        return run_watch(args)
    if args.command == "gallery":
        from ghostface_keras.cli.gallery import run_gallery

        return run_gallery(args)
    if args.command == "serve":
        from ghostface_keras.cli.serve import run_serve

        return run_serve(args)
    _check_inputs(args)
    import_backend_quietly()
    from ghostface_keras.faces.embedder import FaceEmbedder

    embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                            threshold=getattr(args, "threshold", None))
    if args.command == "verify":
        result = embedder.compare(args.image_a, args.image_b, face=args.face)
        verdict = "same person" if result.same else "different people"
        which = ""
        if max(result.face_a.count, result.face_b.count) > 1:  # say which faces of a group photo were compared
            which = f"  ({args.image_a}: {result.face_a.describe()}; {args.image_b}: {result.face_b.describe()})"
        print(f"similarity {result.similarity:.4f}  threshold {embedder.threshold:.2f}  ->  {verdict}{which}")
        return 0
    if args.command == "embed":
        if args.face == "all":
            embeddings, sources, faces = _embed_every_face(embedder, args.images, args.skip_missing)
        else:
            embeddings = embedder.embed_batch(args.images, skip_missing=args.skip_missing,
                                              progress=len(args.images) > 1, face=args.face)
            sources, faces = list(args.images), None
        _save_embeddings(Path(args.output), embeddings, sources, faces)
        missing = int(np.isnan(embeddings).any(axis=1).sum())
        print(f"wrote {len(embeddings)} x {embeddings.shape[1]} embeddings to {args.output}"
              + (f" ({missing} photos without {'that face' if isinstance(args.face, int) else 'a face'} "
                 "are NaN rows)" if missing else ""))
        return 0
    from ghostface_keras.faces.enroll import is_store, open_gallery

    if is_store(args.gallery):  # a persistent gallery folder: searched by its index
        gallery = open_gallery(args.gallery, embedder)
        if args.save_gallery:
            from ghostface_keras.gallery.transfer import export_npz

            export_npz(gallery, args.save_gallery)
    else:
        gallery = args.loaded_gallery or embedder.build_gallery(args.gallery, progress=True)
        if args.save_gallery:
            gallery.save(args.save_gallery)
    results = embedder.identify_faces(args.probe, gallery, top_k=args.top_k, face=args.face)
    for found, matches in results:
        indent = ""
        if args.face == "all" or found.count > 1:  # a group photo: head each ranking with its face
            print(f"{found.describe()}:")
            indent = "  "
        for rank, match in enumerate(matches, start=1):
            verdict = "match" if match.same else "below threshold"
            print(f"{indent}{rank}. {match.name}  similarity {match.similarity:.4f}  ({verdict}; {match.path})")
    return 0


def _embed_every_face(embedder, images: Sequence[str], skip_missing: bool):
    """--face all: one row per face, photos in order and faces left to right; a faceless photo is an error,
    or one NaN row (face number 0) with --skip-missing."""
    from ghostface_keras.core.errors import NoFaceError

    rows, sources, faces = [], [], []
    for image in images:
        try:
            embeddings, found = embedder.embed_faces(image)
        except NoFaceError:
            if not skip_missing:
                raise
            embeddings, found = None, [None]
        for index, face in enumerate(found):
            rows.append(embeddings[index] if embeddings is not None else None)
            sources.append(str(image))
            faces.append(face)
    dimension = next((len(row) for row in rows if row is not None), embedder.model.embedding_size or 0)
    table = np.stack([row if row is not None else np.full(dimension, np.nan, np.float32) for row in rows])
    return table.astype(np.float32), sources, faces


def _save_embeddings(output: Path, embeddings: np.ndarray, images: Sequence[str], faces=None) -> None:
    """One `.npz` (embeddings and paths, and with --face all each row's face number and box), or a `.npy`
    and its `.txt` of paths (`path<TAB>face number` with --face all) renamed into place together."""
    from ghostface_keras.core.files import atomic_output

    paths = [str(image) for image in images]
    extra, lines = {}, paths
    if faces is not None:
        numbers = np.array([face.number if face is not None else 0 for face in faces], np.int32)
        extra = {"faces": numbers, "boxes": np.stack([face.box if face is not None else np.full(4, np.nan)
                                                      for face in faces]).astype(np.float32)}
        lines = [f"{path}\t{number}" for path, number in zip(paths, numbers)]
    if output.suffix.lower() == ".npz":
        with atomic_output(output) as temporary, open(temporary, "wb") as handle:
            np.savez(handle, embeddings=embeddings, paths=np.array(paths, dtype=str), **extra)
        return
    with atomic_output(output) as array_file, atomic_output(output.with_suffix(".txt")) as order_file:
        with open(array_file, "wb") as handle:
            np.save(handle, embeddings)
        order_file.write_text("\n".join(lines) + "\n", encoding="utf-8")


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
        >>> # aligned crops, so --detector none; photos use the default detector, blazeface
        >>> main(["verify", str(folder / "a.png"), str(folder / "b.png"), "--model", str(folder / "model.keras"),
        ...       "--detector", "none"])
        similarity ...  threshold 0.30  ->  ...
        0
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return run_reporting_errors("ghostface", lambda: _run_command(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
