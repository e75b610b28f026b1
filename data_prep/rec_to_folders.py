#!/usr/bin/env python
"""Convert an insightface RecordIO dataset (train.rec/.idx/property) into identity folders, without mxnet.

    python data_prep/rec_to_folders.py REC_DIR OUT_DIR

Writes `OUT_DIR/<class index>/<record key>.<jpg|png>` with the stored bytes unchanged (no re-encoding),
as the official `prepare_data.py` does. Resumable: images already present with the right size are kept,
and each file is written to a temporary name then renamed, so an interrupted run leaves no half files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ghostface_keras.errors import GhostFaceError  # noqa: E402
from ghostface_keras.files import write_atomically  # noqa: E402


def convert(rec_dir: str, out_dir: str, quiet: bool = False) -> tuple[int, int, int]:
    """Write every image record under `out_dir`; returns (written, already present, classes)."""
    import keras

    from ghostface_keras.data.decode import sniff_image_extension
    from ghostface_keras.data.recordio import RecordIOReader

    reader = RecordIOReader(rec_dir)
    keys, labels = reader.image_labels()
    out = Path(out_dir)
    progress = None if quiet else keras.utils.Progbar(len(keys), unit_name="image")
    written = present = 0
    made: set[int] = set()
    for done, (key, label) in enumerate(zip(keys, labels), 1):
        _, data = reader.read_record(key)
        folder = out / str(int(label))
        if label not in made:
            folder.mkdir(parents=True, exist_ok=True)
            made.add(label)
        target = folder / f"{key}{sniff_image_extension(data)}"
        if target.is_file() and target.stat().st_size == len(data):
            present += 1
        else:
            write_atomically(target, data)
            written += 1
        if progress is not None and (done % 500 == 0 or done == len(keys)):
            progress.update(done)
    reader.close()
    return written, present, len(made)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec_dir", help="folder holding train.rec and train.idx (or the .rec file)")
    parser.add_argument("out_dir", help="output root: OUT_DIR/<class>/<key>.jpg")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        written, present, classes = convert(args.rec_dir, args.out_dir, args.quiet)
    except GhostFaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error.filename or ''}: {error.strerror or error}", file=sys.stderr)
        return 1
    print(f"{args.out_dir}: {classes} identities, {written} images written, {present} already present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
