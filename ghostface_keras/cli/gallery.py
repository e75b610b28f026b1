"""`ghostface gallery`: a persistent gallery folder (`ghostface_keras.gallery`, docs/gallery.md).

    ghostface gallery create people/ --model GhostFaceNetV1-0.5-2
    ghostface gallery enroll people/ known_photos/ --model GhostFaceNetV1-0.5-2      # name/*.jpg sub-folders
    ghostface gallery enroll people/ alice1.jpg alice2.jpg --name alice --model GhostFaceNetV1-0.5-2
    ghostface gallery list people/ [--person alice]
    ghostface gallery remove people/ --person alice          # or --photo ID / --photo PATH
    ghostface gallery rename people/ alice alicia
    ghostface gallery search people/ probes/ --model GhostFaceNetV1-0.5-2 --output matches.csv
    ghostface gallery export people/ people.npz             # and: import people/ people.npz

`create`, `enroll` and `search` load the model (its identity is recorded at creation and checked afterwards);
`list`, `remove`, `rename`, `export` and `import` do not import TensorFlow. Exit status and error lines follow
`ghostface_keras.cli`; `search` writes one CSV row per probe face (probe, face, rank, name, similarity, same, path).

Example:
    >>> main(["list", "no/such/gallery"])       # one line on stderr
    2
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path
from collections.abc import Sequence

from ghostface_keras.cli import cosine_threshold, import_backend_quietly, positive_int, run_reporting_errors

def add_gallery_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The sub-commands of `ghostface gallery`, added to `parser`.

    Example:
        >>> args = add_gallery_arguments(argparse.ArgumentParser()).parse_args(["list", "people"])
        >>> args.gallery_command, args.folder
        ('list', 'people')
    """
    commands = parser.add_subparsers(dest="gallery_command", required=True)

    def command(name: str, help: str, folder: str = "the gallery folder") -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("folder", help=folder)  # first on every command line
        sub.add_argument("--verbose", "-v", action="store_true")
        return sub

    create = command("create", "make an empty gallery folder for a model", "a new or empty folder")
    enroll = command("enroll", "add photos: a folder of name/*.jpg, or photos of one --name")
    enroll.add_argument("photos", nargs="+", help="folders and/or photo files")
    enroll.add_argument("--name", help="the person in every photo given (else: one sub-folder per person)")
    search = command("search", "who is in these photos? (folders of photos too); CSV out")
    search.add_argument("probes", nargs="+")
    search.add_argument("--top-k", type=positive_int, default=1)
    search.add_argument("--threshold", type=cosine_threshold)
    search.add_argument("--output", "-o", help="write the CSV here instead of stdout")
    for sub in (create, enroll, search):
        sub.add_argument("--model", "-m", required=True, help=".keras, .h5, .tflite, .onnx, SavedModel folder "
                         "or a released checkpoint name: the gallery's model")
        sub.add_argument("--detector", default="blazeface", help="'blazeface' (default), 'mtcnn' or 'none'")
        sub.add_argument("--no-flip", action="store_true")
    command("list", "people and their photo counts (or one person's photos)").add_argument("--person")
    which = command("remove", "remove a person (--person) or photos (--photo ID or PATH)"
                    ).add_mutually_exclusive_group(required=True)
    which.add_argument("--person")
    which.add_argument("--photo")
    rename = command("rename", "rename a person")
    rename.add_argument("old")
    rename.add_argument("new")
    command("export", "write every photo's embedding to a .npz").add_argument("npz")
    command("import", "enroll the embeddings of a .npz (same model)").add_argument("npz")
    return parser


def run_gallery(args: argparse.Namespace) -> int:
    """Run one `ghostface gallery` sub-command; returns the exit status (bad input raises `GhostFaceError`)."""
    from ghostface_keras.core.errors import DataError
    from ghostface_keras.core.files import check_input_paths
    from ghostface_keras.gallery.store import GalleryStore

    command = args.gallery_command
    if command != "create":
        store = GalleryStore.open(args.folder)  # refuses a non-gallery before any model loads
    if command == "list":
        rows = store.photos(args.person) if args.person else store.people()
        for row in rows:
            print("\t".join(str(value) for value in row))
        return 0
    if command == "remove":
        photo = args.photo
        count = (store.remove_person(args.person) if args.person is not None
                 else store.remove_photo(int(photo) if photo.isdigit() else photo))
        print(f"removed {count} photo{'s' if count != 1 else ''}", file=sys.stderr)
        return 0
    if command == "rename":
        store.rename(args.old, args.new)
        return 0
    if command in ("export", "import"):
        from ghostface_keras.gallery.transfer import export_npz, import_npz

        count = export_npz(store, args.npz) if command == "export" else import_npz(store, args.npz)
        print(f"{command}ed {count} photos", file=sys.stderr)
        return 0
    from ghostface_keras.weights.checkpoints import check_model_source

    if command == "enroll":
        check_input_paths((photo, "photo, or folder of photos") for photo in args.photos)
    if command == "search":
        check_input_paths((probe, "photo, or folder of photos") for probe in args.probes)
    check_model_source(args.model)
    import_backend_quietly()
    from ghostface_keras.faces.embedder import FaceEmbedder
    from ghostface_keras.faces.enroll import create_gallery, enroll_photos

    embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                            threshold=getattr(args, "threshold", None))
    if command == "create":
        store = create_gallery(args.folder, embedder)
        print(f"created {args.folder} for {store.identity.describe()}", file=sys.stderr)
        return 0
    if command == "enroll":
        source = args.photos if args.name else (args.photos[0] if len(args.photos) == 1 else None)
        if source is None:
            raise DataError("give one folder of name/*.jpg sub-folders, or photos with --name")
        report = enroll_photos(store, embedder, source, name=args.name, progress=True)
        print(f"enrolled {report.enrolled} photos ({report.no_face} without a face, {report.already_in} already "
              f"in); {store.photo_count} photos of {store.person_count} people", file=sys.stderr)
        return 0
    return _search(store, embedder, args)


def _search(store, embedder, args: argparse.Namespace) -> int:
    """Batch identification: every face of every probe photo (folders listed recursively), one CSV row per match."""
    from ghostface_keras.core.errors import NoFaceError
    from ghostface_keras.core.files import atomic_output, list_images
    from ghostface_keras.core.progress import ProgressBar

    probes = [path for probe in args.probes
              for path in (list_images(probe) if Path(probe).is_dir() else [Path(probe)])]
    header = ["probe", "face", "rank", "name", "similarity", "same", "path"]
    rows: list[list[object]] = []
    bar = ProgressBar(len(probes), "photo")
    for done, probe in enumerate(probes, 1):
        try:
            results = embedder.identify_faces(probe, store, top_k=args.top_k, face="all")
        except NoFaceError as error:  # a batch goes on: the row says why this probe has no match
            logging.getLogger(__name__).warning("%s", error)
            rows.append([probe, 0, "", "", "", "", "no face found"])
            continue
        for found, matches in results:
            for rank, match in enumerate(matches, 1):
                rows.append([probe, found.number, rank, match.name, f"{match.similarity:.6f}", match.same, match.path])
        bar.update(done)
    if args.output:
        with atomic_output(args.output) as temporary, open(temporary, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([header, *rows])
    else:
        writer = csv.writer(sys.stdout)
        writer.writerows([header, *rows])
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ghostface gallery`; returns the exit status.

    Example:
        >>> main(["remove", "no/such/gallery", "--person", "alice"])
        2
    """
    parser = add_gallery_arguments(argparse.ArgumentParser(prog="ghostface gallery",
                                                           description="A persistent face gallery folder."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return run_reporting_errors("ghostface", lambda: run_gallery(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
