"""The `ghostface serve` protocol: face requests as JSON lines in, one JSON answer per line out.

`handle_request` answers one request line with a `FaceEmbedder` (and an optional `Gallery`); `serve` answers a
stream of them. The command (`ghostface serve`, `ghostface_keras.cli.serve`) loads the model once and runs
`serve` on stdin / stdout, so scripts skip the seconds of start-up per call.

Protocol (JSON Lines, UTF-8; answers in request order, each flushed at once):

- A request is one JSON object on one line; blank lines are skipped. `op` says what to do; `id` (optional: a
  string, a number or null) is echoed in the answer so a client can match them. Unknown fields are refused
  (a typo such as `"treshold"` must not be silently ignored). Paths are file paths as the server sees them
  (relative ones from its working directory).
- `{"op": "verify", "a": "x.jpg", "b": "y.jpg"}` with optional `"face"` ("largest" (default), "all", a face
  number counted left to right from 1, "N,M" or ["all", 1]: one choice per photo, as `ghostface verify --face`)
  and `"threshold"` -> `similarity` (cosine, 6 decimals), `same`, `threshold`, and `face_a` / `face_b`: which
  face was compared, as `{"number", "count", "box": [x1, y1, x2, y2], "score"}`.
- `{"op": "embed", "images": ["x.jpg", ...]}` with optional `"face"` ("largest", "all" or N), `"encoding"`
  ("list" (default): unit-length floats with 7 decimals, cosines exact to ~1e-6; "base64": the little-endian
  float32 bytes, exact: `numpy.frombuffer(base64.b64decode(text), "<f4")`) and `"skip_missing"` (true: a photo
  without that face gives `"embedding": null` and its `"error"` instead of failing the request) -> `dimension`,
  `encoding` and `faces`: one entry per face, photos in order and faces left to right, each `{"image", "number",
  "count", "box", "score", "embedding"}`. At most `MAX_IMAGES_PER_REQUEST` photos per request.
- `{"op": "identify", "image": "probe.jpg"}` with optional `"top_k"` (default 5), `"face"` ("largest", "all"
  or N) and `"threshold"` -> `threshold` and `faces`: per chosen face `{"number", "count", "box", "score",
  "matches": [{"name", "similarity", "same", "path"}, ...]}`, best first, against the gallery given at start.
- `{"op": "ping"}` -> what is loaded: `model`, `format`, `checkpoint`, `embedding_size`, `threshold`,
  `detector` ("blazeface", "mtcnn", "none"), `flip`, `gallery` (`{"photos", "people"}` or null). Send it first
  to wait until the server is ready.
- Every answer is `{"id": ..., "ok": true, "op": ..., <result>}`, plus `"warnings": [...]` when the library
  warned (e.g. "3 faces found; using the largest"), or `{"id": ..., "ok": false, "error": "<one line naming the
  file and the problem>"}`. A bad request (malformed JSON, an unknown op or field, a missing or unreadable file,
  no face, a huge image, a line over `--max-line-bytes`, 1 MiB by default, which is skipped without being held in
  memory) gets such an answer and the server goes on with the next line; it never prints a traceback.
- End of input ends the server with exit status 0 (also when the client closes the answers pipe); Ctrl-C exits
  with 130. Bad start-up arguments (missing model, gallery or input, unknown detector) are one line on stderr
  and exit status 2 before TensorFlow is imported. Anything a library prints goes to stderr: stdout carries
  only answers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import threading
import time
from typing import IO, Any, BinaryIO, Callable
from collections.abc import Iterator

from ghostface_keras.core.errors import GhostFaceError

logger = logging.getLogger(__name__)

# one request line may hold this many bytes: a longer (hostile or broken) line is skipped in chunks, never held
DEFAULT_MAX_LINE_BYTES = 1 << 20
# photos per embed request: bounds the time and the answer size of one request (512 floats are ~5 KB of JSON)
MAX_IMAGES_PER_REQUEST = 1000
# aligned crops embedded together in an embed request: bounds its memory (a crop is 37 KB) whatever its size
EMBED_CHUNK = 64
SIMILARITY_DECIMALS = 6
EMBEDDING_DECIMALS = 7
ENCODINGS = ("list", "base64")
# fields each op accepts (besides "id" and "op"); the first group is required
OPS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ping": ((), ()),
    "verify": (("a", "b"), ("face", "threshold")),
    "embed": (("images",), ("face", "encoding", "skip_missing")),
    "identify": (("image",), ("top_k", "face", "threshold")),
}


class RequestError(Exception):
    """A request that is not well-formed (its JSON, op, fields or their types); answered, never raised out."""


# --------------------------------------------------------------------------------------------------
# One request
# --------------------------------------------------------------------------------------------------
def handle_request(embedder: Any, gallery: Any, line: str | bytes) -> dict[str, Any]:
    """The answer to one request line, as a dict ready for `json.dumps`; never raises for a bad request.

    `embedder` is a `ghostface_keras.faces.embedder.FaceEmbedder`, `gallery` a `Gallery` (or None: identify is then
    refused). Ctrl-C (KeyboardInterrupt) is not caught.

    Example:
        >>> import keras, tempfile
        >>> import numpy as np
        >>> from pathlib import Path
        >>> from PIL import Image
        >>> from ghostface_keras.data.synthetic import render_synthetic_faces
        >>> from ghostface_keras.faces.embedder import FaceEmbedder
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> embedder = FaceEmbedder(model, detector=None)      # aligned crops; photos need a detector
        >>> folder = Path(tempfile.mkdtemp())
        >>> faces, _ = render_synthetic_faces(1, 2)            # two pictures of one made-up person
        >>> for index, face in enumerate(faces):
        ...     Image.fromarray(face).save(folder / f"{index}.png")
        >>> a, b = str(folder / "0.png"), str(folder / "1.png")
        >>> answer = handle_request(embedder, None, json.dumps({"id": 7, "op": "verify", "a": a, "b": a}))
        >>> answer["id"], answer["ok"], answer["similarity"], answer["same"], answer["face_b"]
        (7, True, 1.0, True, {'number': 1, 'count': 1, 'box': [0.0, 0.0, 112.0, 112.0], 'score': 1.0})
        >>> answer = handle_request(embedder, None, json.dumps({"op": "embed", "images": [a, b]}))
        >>> answer["dimension"], len(answer["faces"]), len(answer["faces"][1]["embedding"])
        (32, 2, 32)
        >>> handle_request(embedder, None, '{"id": "x", "op": "verify", "a": "' + a + '", "b": "nobody.jpg"}')
        {'id': 'x', 'ok': False, 'error': 'nobody.jpg: file not found'}
        >>> handle_request(embedder, None, '{"op": "verfiy"}')["error"]
        "unknown op 'verfiy': expected one of embed, identify, ping, verify"
        >>> print(handle_request(embedder, None, '{"op": "ping"')["error"])
        request is not valid JSON: Expecting ',' delimiter at column 14
    """
    try:
        request = _parse(line)
    except RequestError as error:
        return {"id": None, "ok": False, "error": describe_failure(error)}
    return answer_request(embedder, gallery, request)


def answer_request(embedder: Any, gallery: Any, request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one parsed request (what `handle_request` answers after parsing its line; the HTTP service
    calls it directly). Image fields may also hold decoded RGB arrays (uploads), named "upload N" in answers.

    Example:
        >>> answer_request(None, None, {"op": "verify", "a": "x.jpg"})
        {'id': None, 'ok': False, 'error': "verify needs 'b'"}
    """
    request_id: Any = None
    try:
        request_id = _request_id(request)
        op = _check_fields(request)
        with _warnings_collected() as warnings:
            result = _OPERATIONS[op](embedder, gallery, request)
        answer = {"id": request_id, "ok": True, "op": op, **result}
        if warnings:
            answer["warnings"] = warnings
        return answer
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - any failure of one request is that request's answer
        return {"id": request_id, "ok": False, "error": describe_failure(error)}


def describe_failure(error: BaseException) -> str:
    """The one line an error answer carries: our errors' own message (they name the file), an operating-system
    error as '<file>: <reason>', anything unexpected with its type.

    Example:
        >>> describe_failure(FileNotFoundError(2, "No such file or directory", "a.jpg"))
        'a.jpg: No such file or directory'
        >>> describe_failure(ZeroDivisionError("division by zero"))
        'internal error (ZeroDivisionError: division by zero)'
    """
    from ghostface_keras.core.files import describe_os_error

    if isinstance(error, (RequestError, GhostFaceError)):
        text = str(error)
    elif isinstance(error, OSError):
        text = describe_os_error(error)
    elif isinstance(error, MemoryError):
        text = "out of memory while answering this request"
    else:  # a bug or a runtime failure: the server keeps going; -v shows the traceback
        logger.debug("request failed", exc_info=error)
        text = f"internal error ({type(error).__name__}: {error})"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _parse(line: str | bytes) -> dict[str, Any]:
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8-sig")  # -sig: a byte-order mark some editors write is not an error
        except UnicodeDecodeError as error:
            raise RequestError(f"request is not UTF-8 text (byte {error.start})") from None
    try:
        request = json.loads(line)
    except json.JSONDecodeError as error:
        raise RequestError(f"request is not valid JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:  # [[[[... deep enough to exhaust the parser
        raise RequestError("request is not valid JSON: nested too deeply") from None
    if not isinstance(request, dict):
        raise RequestError(f"request must be a JSON object, got {_json_type(request)}")
    return request


def _request_id(request: dict[str, Any]) -> Any:
    request_id = request.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, (str, int, float))):
        raise RequestError(f"id must be a string, a number or null, got {_json_type(request_id)}")
    return request_id


def _check_fields(request: dict[str, Any]) -> str:
    op = request.get("op")
    if op is None:
        raise RequestError(f"request has no 'op': expected one of {', '.join(sorted(OPS))}")
    if not isinstance(op, str) or op not in OPS:
        raise RequestError(f"unknown op {op!r}: expected one of {', '.join(sorted(OPS))}")
    required, optional = OPS[op]
    missing = [name for name in required if name not in request]
    if missing:
        raise RequestError(f"{op} needs {' and '.join(repr(name) for name in missing)}")
    unknown = sorted(set(request) - set(required) - set(optional) - {"id", "op"})
    if unknown:
        accepted = ", ".join(("id", "op") + required + optional)
        raise RequestError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                           f"for {op} (accepted: {accepted})")
    return op


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number")


def _path(request: dict[str, Any], name: str) -> str:
    value = request[name]
    if _is_array(value):  # an upload, decoded by the HTTP service
        return value
    if not isinstance(value, str) or not value:
        raise RequestError(f"{name!r} must be a file path (a non-empty string), got {_json_type(value)}")
    return value


def _is_array(value: Any) -> bool:
    return type(value).__name__ == "ndarray"  # numpy without importing it for every request


def _image_name(image: Any, index: int) -> str:
    return image if isinstance(image, str) else f"upload {index + 1}"


def _threshold(request: dict[str, Any], embedder: Any) -> float:
    value = request.get("threshold")
    if value is None:
        return float(embedder.threshold)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise RequestError(f"threshold must be a cosine threshold in [-1, 1], got {json.dumps(value)}")
    return float(value)


def _face(request: dict[str, Any], pair: bool = False) -> Any:
    """The request's `face` as `FaceEmbedder` takes it; verify (`pair`) also takes "N,M" or a 2-element array."""
    from ghostface_keras.faces.embedder import parse_face_choice

    value = request.get("face", "largest")
    if pair and isinstance(value, (str, list)):
        parts = value.split(",") if isinstance(value, str) else value
        if not 1 <= len(parts) <= 2:
            raise RequestError(f"face: give one face choice, or two (one per photo); got {json.dumps(value)}")
        choices = [_face({"face": part}) for part in parts]
        return choices[0], choices[-1]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestError(f"face must be 'largest', 'all' or a face number from 1, got {json.dumps(value)}")
    return parse_face_choice(value)


def _number(value: Any, digits: int) -> float | None:
    """A finite float rounded for JSON, or None (NaN and infinities are not JSON)."""
    value = float(value)
    return round(value, digits) if math.isfinite(value) else None


def _face_json(found: Any) -> dict[str, Any]:
    return {"number": int(found.number), "count": int(found.count),
            "box": [_number(value, 1) for value in found.box], "score": _number(found.score, 4)}


def _encode(embedding: Any, encoding: str) -> Any:
    import numpy as np

    if encoding == "base64":
        return base64.b64encode(np.asarray(embedding, "<f4").tobytes()).decode("ascii")
    # float64 before rounding: float32 values would print as their long float64 expansions
    return [value if math.isfinite(value) else None
            for value in np.round(np.asarray(embedding, np.float64), EMBEDDING_DECIMALS).tolist()]


# --------------------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------------------
def _ping(embedder: Any, gallery: Any, request: dict[str, Any]) -> dict[str, Any]:
    model = embedder.model
    detector = embedder.detector
    return {"model": str(model.source), "format": model.format,
            "checkpoint": model.checkpoint.name if model.checkpoint is not None else None,
            "embedding_size": model.embedding_size, "threshold": _number(embedder.threshold, SIMILARITY_DECIMALS),
            "detector": "none" if detector is None else type(detector).__name__.lower().removesuffix("detector"),
            "flip": bool(embedder.flip),
            "gallery": gallery_counts(gallery)}


def gallery_counts(gallery: Any) -> dict[str, int] | None:
    """{"photos", "people"} of a `Gallery` or a `GalleryStore` (None for no gallery).

    Example:
        >>> gallery_counts(None) is None
        True
    """
    if gallery is None:
        return None
    if hasattr(gallery, "photo_count"):  # a persistent gallery: counted by its database, as of now
        return {"photos": gallery.photo_count, "people": gallery.person_count}
    return {"photos": len(gallery.names), "people": len(set(gallery.names))}


def _verify(embedder: Any, gallery: Any, request: dict[str, Any]) -> dict[str, Any]:
    image_a, image_b = _path(request, "a"), _path(request, "b")
    face, threshold = _face(request, pair=True), _threshold(request, embedder)
    result = embedder.compare(image_a, image_b, threshold=threshold, face=face)
    return {"similarity": _number(result.similarity, SIMILARITY_DECIMALS), "same": bool(result.same),
            "threshold": threshold, "face_a": _face_json(result.face_a), "face_b": _face_json(result.face_b)}


def _embed(embedder: Any, gallery: Any, request: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from ghostface_keras.core.errors import NoFaceError

    images = request["images"]
    if not isinstance(images, list) or not images or not all((isinstance(image, str) and image) or _is_array(image)
                                                             for image in images):
        raise RequestError("'images' must be a non-empty array of file paths")
    if len(images) > MAX_IMAGES_PER_REQUEST:
        raise RequestError(f"{len(images)} images in one request; at most {MAX_IMAGES_PER_REQUEST} (split it)")
    face = _face(request)
    encoding = request.get("encoding", "list")
    if encoding not in ENCODINGS:
        raise RequestError(f"encoding must be one of {', '.join(ENCODINGS)}, got {json.dumps(encoding)}")
    skip_missing = request.get("skip_missing", False)
    if not isinstance(skip_missing, bool):
        raise RequestError(f"skip_missing must be true or false, got {json.dumps(skip_missing)}")
    entries: list[dict[str, Any]] = []
    pending: list[tuple[dict[str, Any], Any]] = []  # (entry, aligned crop) not embedded yet

    def embed_pending() -> None:
        embeddings = embedder.embed_aligned(np.stack([crop for _, crop in pending]))
        for (entry, _), embedding in zip(pending, embeddings):
            entry["embedding"] = _encode(embedding, encoding)
        pending.clear()

    for index, image in enumerate(images):
        name = _image_name(image, index)
        try:
            chosen = embedder.choose_faces(image, face)
        except NoFaceError as error:
            if not skip_missing:
                raise
            entries.append({"image": name, "number": 0, "count": 0, "box": None, "score": None,
                            "embedding": None, "error": describe_failure(error)})
            continue
        for found in chosen:
            entries.append({"image": name, **_face_json(found)})
            pending.append((entries[-1], found.image))
        if len(pending) >= EMBED_CHUNK:
            embed_pending()
    if pending:
        embed_pending()
    return {"dimension": int(embedder.model.embedding_size or 0), "encoding": encoding, "faces": entries}


def _identify(embedder: Any, gallery: Any, request: dict[str, Any]) -> dict[str, Any]:
    if gallery is None:
        raise RequestError("identify needs a gallery: start the server with --gallery FOLDER or --gallery FILE.npz")
    image = _path(request, "image")
    top_k = request.get("top_k", 5)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise RequestError(f"top_k must be a whole number from 1, got {json.dumps(top_k)}")
    face, threshold = _face(request), _threshold(request, embedder)
    results = embedder.identify_faces(image, gallery, top_k=top_k, threshold=threshold, face=face)
    return {"threshold": threshold,
            "faces": [{**_face_json(found),
                       "matches": [{"name": match.name, "similarity": _number(match.similarity, SIMILARITY_DECIMALS),
                                    "same": bool(match.same), "path": match.path} for match in matches]}
                      for found, matches in results]}


_OPERATIONS: dict[str, Callable[[Any, Any, dict[str, Any]], dict[str, Any]]] = {
    "ping": _ping, "verify": _verify, "embed": _embed, "identify": _identify}


class _Collect(logging.Handler):
    """Keeps the library's warnings of each request being answered, by the thread answering it, for its answer;
    passes quieter records, and records of threads answering nothing, on to the root logger (so -v still shows
    them). One handler for all threads: the HTTP service answers requests on several at once, and each answer
    must hold its own warnings only."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.by_thread: dict[int, list[str]] = {}
        self.saved_propagate = True  # the library logger's, while the handler is installed

    def emit(self, record: logging.LogRecord) -> None:
        messages = self.by_thread.get(record.thread) if record.levelno >= logging.WARNING else None
        if messages is not None:
            lines = record.getMessage().strip().splitlines()
            messages.append(lines[0] if lines else record.levelname)
        else:
            logging.getLogger().handle(record)


_collector = _Collect()
_collecting_lock = threading.Lock()  # guards the handler's installation and its table of threads


@contextlib.contextmanager
def _warnings_collected() -> Iterator[list[str]]:
    """The library's warnings while answering a request go into the answer, not to stderr: the client is who
    asked ("3 faces found; using the largest ..."). Thread-safe: the handler is installed while any thread
    collects (the library logger's propagation saved by the first, restored by the last) and files each record
    under the thread that logged it."""
    library, thread = logging.getLogger("ghostface_keras"), threading.get_ident()
    messages: list[str] = []
    with _collecting_lock:
        if not _collector.by_thread:
            _collector.saved_propagate = library.propagate
            library.addHandler(_collector)
            library.propagate = False
        outer = _collector.by_thread.get(thread)  # a nested collection gets the records until it ends
        _collector.by_thread[thread] = messages
    try:
        yield messages
    finally:
        with _collecting_lock:
            if outer is not None:
                _collector.by_thread[thread] = outer
            else:
                del _collector.by_thread[thread]
            if not _collector.by_thread:
                library.removeHandler(_collector)
                library.propagate = _collector.saved_propagate


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------
def request_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """The lines of `stream` (bytes, newline kept), or None for a line longer than `max_line_bytes`, which is
    read past in chunks without being held in memory.

    Example:
        >>> import io
        >>> list(request_lines(io.BytesIO(b'{"op": "ping"}\\n' + b"x" * 50 + b"\\nlast"), max_line_bytes=20))
        [b'{"op": "ping"}\\n', None, b'last']
    """
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) > max_line_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of the line, a chunk at a time
                rest = stream.readline(1 << 16)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def serve(embedder: Any, gallery: Any, requests: BinaryIO, answers: IO[str],
          max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> int:
    """Answer every request line of `requests` (bytes) on `answers` (text), one JSON line each, flushed at once;
    returns how many were answered. Stops at end of input, or when `answers` is closed by its reader.

    Example:
        >>> import io, keras
        >>> from ghostface_keras.faces.embedder import FaceEmbedder
        >>> inputs = keras.Input((112, 112, 3))      # an untrained stand-in for a face model
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> answers = io.StringIO()
        >>> serve(FaceEmbedder(model, detector=None), None, io.BytesIO(b'{"id": 1, "op": "ping"}\\n\\n'
        ...       b'{"id": 2, "op": "identify", "image": "probe.jpg"}\\n' + b" " * 100 + b"\\n"), answers,
        ...       max_line_bytes=64)
        3
        >>> for line in answers.getvalue().splitlines():
        ...     answer = json.loads(line)
        ...     print(answer["id"], answer["ok"], answer.get("embedding_size"), answer.get("error"))
        1 True 32 None
        2 False None identify needs a gallery: start the server with --gallery FOLDER or --gallery FILE.npz
        None False None request line longer than 64 bytes (the server's --max-line-bytes); skipped
    """
    answered = 0
    for line in request_lines(requests, max_line_bytes):
        if line is None:
            answer: dict[str, Any] = {"id": None, "ok": False, "error": f"request line longer than {max_line_bytes} "
                                      "bytes (the server's --max-line-bytes); skipped"}
        elif not line.strip():
            continue  # blank lines are not requests (a trailing newline, a separator in a hand-written file)
        else:
            started = time.perf_counter()
            answer = handle_request(embedder, gallery, line)
            logger.info("%s %s in %.1f ms", answer.get("op", "request"), "ok" if answer["ok"] else "failed",
                        (time.perf_counter() - started) * 1e3)
        try:
            text = json.dumps(answer, allow_nan=False)
        except (TypeError, ValueError) as error:  # cannot happen with _number/_encode; never send invalid JSON
            text = json.dumps({"id": answer.get("id"), "ok": False, "error": describe_failure(error)})
        try:
            answers.write(text + "\n")
            answers.flush()
        except BrokenPipeError:
            logger.info("the client closed the answers pipe; stopping")
            return answered
        answered += 1
    return answered
