#!/usr/bin/env python
"""Convert an insightface RecordIO dataset (train.rec/.idx/property) into identity folders, without mxnet.

    python data_prep/rec_to_folders.py REC_DIR OUT_DIR

Writes `OUT_DIR/<class index>/<record key>.<jpg|png>` with the stored bytes unchanged (no re-encoding),
as the official `prepare_data.py` does. Resumable: images already present with the right size are kept,
and each file is written to a temporary name then renamed, so an interrupted run leaves no half files.
A corrupt record is skipped and counted (the summary names the first few); a file whose every record is
corrupt, or a bad index, is one line and exit status 2 (`ghostface_keras.cli`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ghostface_keras.cli import run_reporting_errors  # noqa: E402
from ghostface_keras.core.errors import DataError  # noqa: E402
from ghostface_keras.core.files import write_atomically  # noqa: E402
from ghostface_keras.core.progress import ProgressBar  # noqa: E402


def convert(rec_dir: str, out_dir: str, quiet: bool = False) -> tuple[int, int, int, list[str]]:
    """Write every readable image record under `out_dir`; returns (written, already present, classes, one
    reason per corrupt record skipped)."""
    from ghostface_keras.data.decode import sniff_image_extension
    from ghostface_keras.data.recordio import RecordIOReader

    reader = RecordIOReader(rec_dir)
    keys, labels = reader.image_labels()
    out = Path(out_dir)
    progress = None if quiet else ProgressBar(len(keys), "image")  # stderr, on a terminal only
    written = present = 0
    made: set[int] = set()
    skipped: list[str] = []
    for done, (key, label) in enumerate(zip(keys, labels), 1):
        try:
            _, data = reader.read_record(key)
        except DataError as error:
            skipped.append(str(error))
            continue
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
    if skipped and len(skipped) == len(keys):
        raise DataError(f"none of the {len(keys)} records could be read (first: {skipped[0]})")
    return written, present, len(made), skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rec_dir", help="folder holding train.rec and train.idx (or the .rec file)")
    parser.add_argument("out_dir", help="output root: OUT_DIR/<class>/<key>.jpg")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def work() -> int:
        written, present, classes, skipped = convert(args.rec_dir, args.out_dir, args.quiet)
        summary = f"{args.out_dir}: {classes} identities, {written} images written, {present} already present"
        if skipped:
            summary += f"; skipped {len(skipped)} corrupt records ({'; '.join(skipped[:3])}{'; ...' * (len(skipped) > 3)})"
        print(summary)
        return 0

    return run_reporting_errors("rec_to_folders", work)

if __name__ == "__main__":
    sys.exit(main())
