"""Align a folder of photos into 112x112 ArcFace-template face crops (training / gallery data).

    python data_prep/align_folder.py photos/ photos_112/

`photos/alice/1.jpg` becomes `photos_112/alice/1.png`: identity sub-folders are kept, so the output
is ready for `ghostface_keras.data.image_folder_dataset`. The largest face of each photo is kept;
photos without a face and unreadable files are skipped, printed at the end and listed in
`photos_112/skipped.txt`. Exit status: 0 when at least one crop was written, 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads (MTCNN runs on it)
if __package__ in (None, ""):  # run as `python data_prep/align_folder.py` from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ghostface_keras.faces.align_folder import align_folder  # noqa: E402
from ghostface_keras.cli import run_reporting_errors  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status.

    Example:
        >>> main(["photos/", "photos_112/", "--size", "112"])
        wrote 41 crops to photos_112/; skipped 1 (listed in photos_112/skipped.txt)
        0
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input_dir", help="folder of photos (identity sub-folders or flat)")
    parser.add_argument("output_dir", help="where the aligned crops go (created)")
    parser.add_argument("--size", type=int, default=112, help="crop side in pixels (template scaled by size/112)")
    parser.add_argument("--format", default="png", choices=["png", "jpg", "bmp"],
                        help="output image format (png is lossless; default)")
    parser.add_argument("--detector", default="mtcnn", help="face detector name (default mtcnn)")
    parser.add_argument("--skip-existing", action="store_true", help="resume: keep crops already written")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    outcome = {}

    def work() -> int:
        outcome["report"] = align_folder(args.input_dir, args.output_dir, detector=args.detector, size=args.size,
                                         image_format=args.format, skip_existing=args.skip_existing)
        return 0

    status = run_reporting_errors("align_folder", work)
    if status:
        return status
    report = outcome["report"]
    skipped = len(report.no_face) + len(report.unreadable)
    for path in report.no_face:
        print(f"  no face: {path}")
    for path, reason in report.unreadable:
        print(f"  unreadable: {reason}")
    summary = f"wrote {len(report.written)} crops to {args.output_dir}"
    if skipped:
        summary += f"; skipped {skipped} (listed in {os.path.join(args.output_dir, 'skipped.txt')})"
    print(summary)
    return 0 if report.written or args.skip_existing else 1


if __name__ == "__main__":
    sys.exit(main())
