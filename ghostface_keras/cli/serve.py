"""`ghostface serve`: one warm process that answers face requests, one JSON line in, one JSON line out.

    ghostface serve --model GN_W0.5_S2_ArcFace_epoch16.h5 --gallery known_people/ < requests.jsonl > answers.jsonl
    python -m ghostface_keras.cli.serve -m model.tflite                  # the same, without the console script

Why: every `ghostface verify / embed / identify` call pays for starting Python, importing TensorFlow and loading
the model and the detector, seconds before milliseconds of real work. `serve` pays that once: it loads the
model, the detector and the gallery (embedded once), warms them up, then answers requests read from stdin (or
`--input FILE`, e.g. a named pipe) until end of input, so a shell script, another language or a pipeline can
talk to it over two pipes. What that saves per request is measured in benchmarks/results/serve.md
(`python benchmarks/serve.py`) and docs/inference.md.

The protocol is `ghostface_keras.serve.protocol` (and docs/inference.md).

Example:
    >>> main(["--model", "no/such/model.keras"])      # one line on stderr, before TensorFlow loads
    2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from typing import IO, Any
from collections.abc import Iterator, Sequence

from ghostface_keras.cli import (EXIT_OK, check_gallery_argument, cosine_threshold, import_backend_quietly, number_in,
                                 positive_int, run_reporting_errors)
from ghostface_keras.serve.batching import DEFAULT_WINDOW_MS
from ghostface_keras.serve.protocol import DEFAULT_MAX_LINE_BYTES, gallery_counts

logger = logging.getLogger(__name__)

# FaceEmbedder's default batch size, spelled out so that --help does not import the embedder (tests/test_serve.py
# checks that they are equal)
DEFAULT_BATCH_SIZE = 32
# the detector of photos (the library's default, ghostface_keras.faces.detectors.DEFAULT_DETECTOR: BlazeFace, 0.007 CPU-s
# per photo against MTCNN's 0.16); spelled out here so that --help does not import the detectors
DEFAULT_DETECTOR = "blazeface"


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------
def add_serve_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `ghostface serve`, added to `parser` (the `ghostface` sub-command or this module's own).

    Example:
        >>> args = add_serve_arguments(argparse.ArgumentParser()).parse_args(["-m", "model.keras"])
        >>> args.detector, args.gallery, args.input, args.max_line_bytes
        ('blazeface', None, '-', 1048576)
    """
    parser.add_argument("--model", "-m", required=True, help=".keras, .h5 (ours or official), .tflite, .onnx, a "
                        "SavedModel folder, or a released checkpoint name such as GhostFaceNetV1-0.5-2")
    parser.add_argument("--detector", default=DEFAULT_DETECTOR, help=f"'{DEFAULT_DETECTOR}' (default, fast), 'mtcnn' "
                        "(finds smaller faces, ~20x slower) or 'none' for aligned crops")
    parser.add_argument("--gallery", help="known people for identify requests, embedded once at start: a folder of "
                        "name/*.jpg (or flat name.jpg) photos, or a .npz written by `ghostface identify "
                        "--save-gallery`")
    parser.add_argument("--threshold", type=cosine_threshold, help="cosine threshold of verify and identify (default: "
                        "the released checkpoint's, recognized from the weights; else 0.30); a request's own wins")
    parser.add_argument("--no-flip", action="store_true", help="skip the mirrored-crop embedding")
    parser.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, help="aligned crops per "
                        f"model call at most ({DEFAULT_BATCH_SIZE}); with --http also the most crops that concurrent "
                        "requests share one call with")
    parser.add_argument("--input", default="-", help="read requests from this file or named pipe instead of stdin")
    parser.add_argument("--max-line-bytes", type=positive_int, default=DEFAULT_MAX_LINE_BYTES,
                        help=f"longest request line accepted (default {DEFAULT_MAX_LINE_BYTES}); longer ones are "
                        "answered with an error and skipped")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each request's time, and tracebacks, "
                        "on stderr")
    http = parser.add_argument_group("HTTP service (instead of JSON lines on stdin; docs/serving.md)")
    http.add_argument("--http", metavar="[HOST:]PORT", type=_host_port, help="answer HTTP on this address "
                      "(host 127.0.0.1 unless given): FastAPI, OpenAPI docs at /docs")
    http.add_argument("--token", default=os.environ.get("GHOSTFACE_TOKEN"), help="require 'Authorization: Bearer "
                      "TOKEN' (default: $GHOSTFACE_TOKEN; none: no token needed)")
    http.add_argument("--max-body-bytes", type=positive_int, default=20 << 20, help="largest request body (20 MiB)")
    http.add_argument("--rate-limit", type=float, default=50.0, help="requests a second per client address (50)")
    http.add_argument("--batch-window-ms", type=_window_ms, default=DEFAULT_WINDOW_MS, metavar="MS",
                      help="embed the crops of requests arriving within MS milliseconds in one model call (default "
                      f"{DEFAULT_WINDOW_MS:g}; 0: merge only requests already waiting)")
    http.add_argument("--no-batching", action="store_true", help="each request on the model alone, one at a time "
                      "(requests hold the one model lock from start to end)")
    return parser


def _window_ms(text: str) -> float:
    """A batching window in milliseconds: a number from 0 to 1000 (a longer wait is a mistake, not a window)."""
    return number_in(text, 0.0, 1000.0, f"{text}: expected milliseconds from 0 to 1000")


def _host_port(text: str) -> tuple[str, int]:
    """'8000' or 'HOST:8000' -> (host, port); the host defaults to 127.0.0.1 (this machine only)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text}: expected PORT or HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _check_inputs(args: argparse.Namespace) -> Any:
    """Refuse bad arguments before TensorFlow and the model load (seconds), in one line naming the file; returns
    the gallery when it is a .npz (read without TensorFlow), else None."""
    from ghostface_keras.faces.detectors import DETECTORS
    from ghostface_keras.core.errors import DataError
    from ghostface_keras.core.files import check_input_paths
    from ghostface_keras.weights.checkpoints import check_model_source

    if args.detector.lower() not in {*DETECTORS, "none"}:
        raise DataError(f"{args.detector}: unknown detector; expected one of {', '.join(sorted(DETECTORS))} or none")
    if args.input != "-":
        import stat

        if not (os.path.exists(args.input) and stat.S_ISFIFO(os.stat(args.input).st_mode)):  # a FIFO is meant here
            check_input_paths([(args.input, "input file")])
    if getattr(args, "http", None):
        from ghostface_keras.serve.http import import_fastapi

        import_fastapi()  # a missing extra is one line now, not after the model loads
    loaded = check_gallery_argument(args.gallery) if args.gallery is not None else None
    check_model_source(args.model)
    return loaded


@contextlib.contextmanager
def _answers_channel() -> Iterator[IO[str]]:
    """A text stream on the real stdout for the answers, while file descriptor 1 (and so `print`, and C code
    writing to stdout) goes to stderr: nothing a library prints can corrupt the protocol."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no usable descriptors (an embedded interpreter): answer on sys.stdout as it is
        yield sys.stdout
        return
    answers = os.fdopen(os.dup(saved), "w", encoding="utf-8", errors="backslashreplace", newline="\n")
    try:
        yield answers
    finally:
        with contextlib.suppress(OSError):  # BrokenPipeError: the reader has gone; nothing left to flush to
            answers.close()
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run_serve(args: argparse.Namespace) -> int:
    """Run `ghostface serve` for parsed arguments; returns the exit status (bad input raises `GhostFaceError`)."""
    from ghostface_keras.cli import _stderr_captured

    gallery = _check_inputs(args)
    with _answers_channel() as answers:
        import_backend_quietly()
        from ghostface_keras.core.errors import DataError
        from ghostface_keras.faces.embedder import FaceEmbedder
        from ghostface_keras.serve.protocol import serve

        started = time.monotonic()
        # the detector's runtime announces itself on stderr ("Created TensorFlow Lite XNNPACK delegate"):
        # kept off unless -v or a failure
        with contextlib.nullcontext() if args.verbose else _stderr_captured():
            embedder = FaceEmbedder(args.model, detector=args.detector, flip=not args.no_flip,
                                    threshold=args.threshold, batch_size=args.batch_size).warm_up()
        from ghostface_keras.faces.enroll import is_store, open_gallery

        if args.gallery is not None and is_store(args.gallery):  # persistent: searched by its index, kept open
            gallery = open_gallery(args.gallery, embedder)
        elif gallery is None and args.gallery is not None:
            gallery = embedder.build_gallery(args.gallery, progress=True)
        if gallery is not None and not is_store(gallery) and \
                embedder.model.embedding_size not in (None, gallery.embeddings.shape[1]):
            raise DataError(f"{args.gallery}: the gallery holds {gallery.embeddings.shape[1]}-d embeddings but this "
                            f"model makes {embedder.model.embedding_size}-d ones: build it with the same model")
        counts = gallery_counts(gallery)
        people = f", gallery {counts['photos']} photos of {counts['people']} people" if counts else ""
        print(f"ghostface serve: ready in {time.monotonic() - started:.1f} s: {embedder.model.name} "
              f"({embedder.model.embedding_size}-d, threshold {embedder.threshold:.2f}), detector {args.detector}"
              f"{people}; " + ("answering HTTP" if args.http else
                                 f"reading JSON requests from {'stdin' if args.input == '-' else args.input}"),
              file=sys.stderr, flush=True)
        if args.http:
            from ghostface_keras.serve.http import serve_http

            host, port = args.http
            window = None if args.no_batching else args.batch_window_ms
            batching = "no batching" if window is None else f"batching {window:g} ms, up to {args.batch_size} crops"
            print(f"ghostface serve: HTTP on http://{host}:{port} (docs at /docs; {batching})", file=sys.stderr,
                  flush=True)
            serve_http(embedder, gallery, host, port, args.token, args.max_body_bytes, args.rate_limit, window)
            return EXIT_OK
        with contextlib.ExitStack() as stack:
            if args.input == "-" and sys.stdin is None:  # started with stdin closed
                raise DataError("stdin is closed: give the requests with --input FILE")
            requests = (sys.stdin.buffer if args.input == "-"
                        else stack.enter_context(open(args.input, "rb")))
            answered = serve(embedder, gallery, requests, answers, args.max_line_bytes)
        logger.info("end of input after %d answers", answered)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m ghostface_keras.cli.serve` (and of `ghostface serve`); returns the exit status.

    Example:
        >>> main(["--model", "model.keras", "--gallery", "no_such_people/"])   # checked before loading
        2
    """
    parser = add_serve_arguments(argparse.ArgumentParser(
        prog="ghostface serve", description="Load a face model once and answer verify / embed / identify / ping "
        "requests, one JSON object per line on stdin, one JSON answer per line on stdout (see "
        "ghostface_keras/serve/protocol.py or docs/inference.md for the protocol)."))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    return run_reporting_errors("ghostface", lambda: run_serve(args), verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
