"""`ghostface watch`: who is in a video file or in front of a camera, frame by frame.

    ghostface watch meeting.mp4 --gallery known_people/ --model GN_W0.5_S2_ArcFace_epoch16.h5 \\
        --output-video annotated.mp4 --output-jsonl faces.jsonl
    ghostface watch 0 --gallery known.npz --model model.tflite          # camera 0; JSON lines on stdout

Every frame is searched for faces; tracked faces keep their identity between re-embeddings (`ghostface_keras.faces.video`).
Frames per second are shown on stderr when it is a terminal (or with --progress). Bad input (a missing or
unreadable video, no such camera, an empty gallery, an unsupported output name) is one line on stderr and exit
status 2, checked before the model loads; Ctrl-C stops the run, keeps complete outputs of the frames so far and
exits with 130. Also runs as `python -m ghostface_keras.cli.watch`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from collections.abc import Sequence

from ghostface_keras.cli import (EXIT_INTERRUPTED, EXIT_OK, check_gallery_argument, cosine_threshold,
                                 import_backend_quietly, non_negative_int, positive_int, run_reporting_errors)

# the detector `ghostface watch` uses unless told otherwise
DEFAULT_DETECTOR = "blazeface"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")


def add_watch_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `ghostface watch`, added to `parser` (the `ghostface` sub-command or this module's own).

    Example:
        >>> parser = add_watch_arguments(argparse.ArgumentParser())
        >>> args = parser.parse_args(["0", "--gallery", "known.npz", "-m", "model.keras"])
        >>> args.source, args.detector, args.reembed_every
        ('0', 'blazeface', 30)
    """
    parser.add_argument("source", help="a video file, or a camera index (0: the first camera)")
    parser.add_argument("--gallery", required=True, help="folder of name/*.jpg (or flat name.jpg) photos, or a "
                        ".npz written by `ghostface identify --save-gallery`")
    parser.add_argument("--model", "-m", required=True, help=".keras, .h5 (ours or official), .tflite, .onnx, a "
                        "SavedModel folder, or a released checkpoint name such as GhostFaceNetV1-0.5-2")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help=f"face detector (default {DEFAULT_DETECTOR})")
    parser.add_argument("--output-video", help="annotated video: boxes, names, similarities, track ids "
                        "(.mp4, .m4v, .mov, .mkv or .avi)")
    parser.add_argument("--output-jsonl", help="one JSON object per face per frame (.jsonl or .ndjson; '-': stdout, "
                        "the default when no output is given)")
    parser.add_argument("--threshold", type=cosine_threshold, help="cosine threshold of a match (default: the "
                        "released checkpoint's, recognized from the weights; else 0.30)")
    parser.add_argument("--max-frames", type=positive_int, help="stop after this many frames")
    parser.add_argument("--reembed-every", type=non_negative_int, default=30, help="re-embed a tracked face every "
                        "N frames even if it did not change (default 30; 0: only when new, grown or changed)")
    parser.add_argument("--no-flip", action="store_true", help="skip the mirrored-crop embedding")
    parser.add_argument("--progress", action="store_true", help="show frames per second on stderr even when it "
                        "is not a terminal")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


def _check_inputs(args: argparse.Namespace) -> Any:
    """Refuse bad input before TensorFlow and the model load (seconds), in one line naming the file; returns the
    gallery when it is a .npz (read without TensorFlow), else None."""
    from ghostface_keras.core.errors import DataError
    from ghostface_keras.core.files import check_output_path
    from ghostface_keras.weights.checkpoints import check_model_source
    from ghostface_keras.faces.video import VIDEO_CODECS, FrameSource

    if args.output_video and Path(args.output_video).suffix.lower() not in VIDEO_CODECS:
        raise DataError(f"{args.output_video}: --output-video must end in {', '.join(VIDEO_CODECS)}")
    if args.output_jsonl not in (None, "-") and Path(args.output_jsonl).suffix.lower() not in JSON_LINES_SUFFIXES:
        raise DataError(f"{args.output_jsonl}: --output-jsonl must end in .jsonl or .ndjson (or be '-' for stdout)")
    for output in (args.output_video, args.output_jsonl):
        if output not in (None, "-"):
            check_output_path(output)
            if Path(args.source).exists() and Path(output).resolve() == Path(args.source).resolve():
                raise DataError(f"{output}: is the input video; write the output elsewhere")
    with FrameSource(args.source):  # opens the file or camera and reads a frame: unreadable ones fail here
        pass
    loaded = check_gallery_argument(args.gallery)
    check_model_source(args.model)
    return loaded


def run_watch(args: argparse.Namespace) -> int:
    """Run `ghostface watch` for parsed arguments; returns the exit status (bad input raises `GhostFaceError`)."""
    from ghostface_keras.core.progress import ProgressBar

    gallery = _check_inputs(args)
    import_backend_quietly()
    from ghostface_keras.faces.embedder import FaceEmbedder
    from ghostface_keras.faces.video import AnnotatedVideoWriter, FrameSource, JsonLinesWriter, watch

    embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                            threshold=args.threshold).warm_up()
    from ghostface_keras.faces.enroll import is_store

    if gallery is None:  # a persistent gallery folder is opened (and its model checked) by watch itself
        gallery = args.gallery if is_store(args.gallery) else embedder.build_gallery(args.gallery, progress=True)
    source = FrameSource(args.source)
    frames = watch(embedder, source, gallery, max_frames=args.max_frames, reembed_every=args.reembed_every or None)
    jsonl = args.output_jsonl or (None if args.output_video else "-")
    total = min(source.frame_count or 0, args.max_frames or sys.maxsize) or None
    bar = ProgressBar(total, "frame", force=args.progress)
    done, embedded, names, tracks, interrupted = 0, 0, Counter(), set(), False
    started_wall, started_cpu = time.monotonic(), time.process_time()
    with contextlib.ExitStack() as outputs:
        writers = ([outputs.enter_context(JsonLinesWriter(jsonl))] if jsonl else []) + \
            ([outputs.enter_context(AnnotatedVideoWriter(args.output_video, source.fps))] if args.output_video else [])
        try:
            for frame in frames:
                for writer in writers:
                    writer.write(frame)
                done += 1
                embedded += sum(face.embedded is not None for face in frame.faces)
                names.update(face.name or "unknown" for face in frame.faces)
                tracks.update(face.track_id for face in frame.faces)
                bar.update(done)
        except KeyboardInterrupt:
            if not done:  # nothing to keep: the outputs are removed, as for any failure
                raise
            interrupted = True  # keep the frames so far: complete files, closed below
        finally:
            frames.close()
            source.close()  # also when the generator never started
    if bar.enabled and done != bar.total:  # end the progress line (a file's frame count is only an estimate)
        bar.total = done
        bar.update(done)
    wall, cpu = time.monotonic() - started_wall, time.process_time() - started_cpu
    people = ", ".join(f"{name} ({count})" for name, count in names.most_common()) or "no faces"
    summary = (f"{'interrupted after ' if interrupted else ''}{done} frames in {wall:.1f} s ({done / wall:.1f} "
               f"frames/s, {cpu / max(done, 1):.2f} CPU s per frame); {len(tracks)} tracks, {embedded} embeddings; "
               f"face-frames per name: {people}"
               + "".join(f"; wrote {path}" for path in (args.output_video, args.output_jsonl) if path and path != "-"))
    print(summary, file=sys.stderr if jsonl == "-" else sys.stdout)  # stdout may be the JSON lines
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ghostface_keras.cli.watch` (and of `ghostface watch`); returns the exit status.

    Example:
        >>> main(["no_such_video.mp4", "--gallery", "known", "--model", "model.keras"])   # checked before loading
        2
    """
    parser = add_watch_arguments(argparse.ArgumentParser(prog="ghostface watch", description="Identify the faces "
                                 "of a video file or camera against a gallery, frame by frame."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return run_reporting_errors("ghostface", lambda: run_watch(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
