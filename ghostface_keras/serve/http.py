"""`ghostface serve --http HOST:PORT`: the JSON-lines operations over HTTP (FastAPI on uvicorn), plus uploads and
gallery changes. One process, one model loaded once.

Concurrency: requests run on Starlette's thread pool. With batching (the default, `batch_window_ms`), decoding,
detection and alignment of concurrent requests run side by side, and their embedding calls go to one
`ghostface_keras.serve.batching.MicroBatcher`: the crops of the requests arriving within the window share one
model call (one thread calls the model, so runtimes that allow one caller at a time are safe). The detector
itself runs one photo at a time (`FaceEmbedder.detect` holds a lock: LiteRT interpreters allow one call at a
time). Gallery enrolls take turns (the check for photos already in and the write must not interleave). With
`batch_window_ms=None` each request holds the one model lock from start to end, as before batching. Answers are
the same either way (to float32 rounding: a row's embedding may differ in its last bits with the batch size).

Endpoints (JSON answers as in `ghostface_keras.serve.protocol`; `POST` bodies are JSON unless "upload"):

- `GET /health`: `{"ok": true, "status": "ready"}` (no token needed); `GET /docs`, `/openapi.json`: the API docs.
- `POST /v1/ping | /v1/verify | /v1/embed | /v1/identify`: the protocol's request fields as a JSON object (no
  `op`: the path says it), with file paths as the server sees them.
- `POST /v1/verify/upload` (multipart: files `a`, `b`), `/v1/embed/upload` (files `images`), `/v1/identify/upload`
  (file `image`): the same with the photos in the request; other protocol fields as form fields (numbers as text).
- `GET /v1/gallery`: people and photo counts; `POST /v1/gallery/enroll` (multipart: `name` and files `images`, or
  JSON `{"name", "images": [paths]}`); `POST /v1/gallery/remove` (JSON `{"person"}` or `{"photo": id or path}`).
  These need a persistent gallery folder (`--gallery FOLDER` made by `ghostface gallery create`).

Limits: a request body over `max_body_bytes` is 413 before it is read whole; more than `rate` requests a second
from one client address (burst `2 * rate`) is 429; with a `token`, every endpoint but /health and the docs needs
`Authorization: Bearer <token>` (401 otherwise). A bad request is a 4xx JSON `{"ok": false, "error": "<one line
naming the problem>"}`; a failure of ours is a 500 of the same shape, a full model queue or a server shutting down
a 503; the server goes on either way.

Example:
    >>> app = create_app(None, None, token="s3cret")       # doctest: +SKIP
"""

import contextlib
import json
import logging
import threading
import time
from typing import Any, Optional

from ghostface_keras.core.errors import DataError, GhostFaceError
from ghostface_keras.serve.batching import DEFAULT_WINDOW_MS, batched_embedder, embedding_batcher
from ghostface_keras.serve.protocol import answer_request, describe_failure

logger = logging.getLogger(__name__)

EXTRA = "serve"  # pip install "ghostface_keras[serve]"
DEFAULT_MAX_BODY_BYTES = 20 << 20  # a few multi-megapixel phone photos per request
DEFAULT_RATE = 50.0  # requests per second per client address
MAX_UPLOADS = 64
# answers of a batcher that cannot take the request now (BatcherBusy, BatcherClosed): 503, the client may retry
_UNAVAILABLE = ("server busy:", "server shutting down:")


def import_fastapi() -> Any:
    """fastapi, or one `DataError` naming the extra that installs it (and uvicorn, python-multipart)."""
    try:
        import fastapi
        import multipart  # noqa: F401 - python-multipart: what form uploads are parsed with
    except ImportError:
        raise DataError(f'the HTTP service needs FastAPI, uvicorn and python-multipart: pip install '
                        f'"ghostface_keras[{EXTRA}]"') from None
    return fastapi


class _Limits:
    """ASGI middleware: the body-size cap (counted while streaming, so a lying Content-Length does not help), the
    per-client rate limit and the bearer token, answered before the application sees the request."""

    def __init__(self, app: Any, max_body_bytes: int, rate: float, token: Optional[str]) -> None:
        self.app, self.max_body_bytes, self.rate, self.token = app, int(max_body_bytes), float(rate), token
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        client = (scope.get("client") or ("?", 0))[0]
        if not self._allow(client):
            return await _send_error(send, 429, f"more than {self.rate:g} requests a second from {client}; slow down")
        public = path in ("/health", "/docs", "/openapi.json", "/docs/oauth2-redirect")
        if self.token and not public and headers.get("authorization", "") != f"Bearer {self.token}":
            return await _send_error(send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            return await _send_error(send, 413, f"request body of {int(declared):,} bytes; at most "
                                     f"{self.max_body_bytes:,} (the server's --max-body-bytes)")
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # answered 413 by the application's handler
                    raise _BodyTooLarge(f"request body over {self.max_body_bytes:,} bytes (the server's "
                                        "--max-body-bytes)")
            return message

        await self.app(scope, counted, send)

    def _allow(self, client: str) -> bool:
        """A token bucket per client address: `rate` a second, bursts of up to twice that."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (2 * self.rate, now))
            tokens = min(2 * self.rate, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > 10_000:  # bounded memory under many addresses: forget the oldest
                for stale in sorted(self._buckets, key=lambda key: self._buckets[key][1])[:5_000]:
                    del self._buckets[stale]
        return allowed


class _BodyTooLarge(Exception):
    pass


async def _send_error(send: Any, status: int, message: str) -> None:
    body = json.dumps({"ok": False, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(embedder: Any, gallery: Any, token: Optional[str] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, rate: float = DEFAULT_RATE,
               batch_window_ms: Optional[float] = DEFAULT_WINDOW_MS) -> Any:
    """The ASGI application (FastAPI, wrapped in the limits) answering with `embedder` and `gallery`.

    `batch_window_ms`: how long the embedding batcher gathers concurrent requests' crops for one model call (at
    most `embedder.batch_size` crops; 0: only those already waiting); None: no batching, each request holds the
    model lock throughout. The batcher is closed when the application shuts down (its lifespan).
    """
    fastapi = import_fastapi()
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    batcher = None
    # embedding requests being answered: the batcher gathers no more requests than these (a lone one is called at
    # once, not after the window)
    in_progress = _InProgress()
    if batch_window_ms is not None and embedder is not None:
        batcher = embedding_batcher(embedder, batch_window_ms, expected=in_progress.count)
        serving = batched_embedder(embedder, batcher)
        # the batcher serializes model calls and FaceEmbedder.detect the detector: requests need no lock
        request_lock: Any = contextlib.nullcontext()
    else:
        serving = embedder
        # one model: requests take turns, each from start to end (TensorFlow runs each call on every core)
        request_lock = threading.Lock()
    enroll_lock = threading.Lock()  # an enroll's "already in?" check and its write must not interleave another's

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        yield
        if batcher is not None:  # queued requests are answered first, then the batcher thread ends
            await run_in_threadpool(batcher.close)

    app = fastapi.FastAPI(title="ghostface", description="Face verification, embedding and identification "
                          "(GhostFaceNets). The fields of each operation: ghostface_keras/serve/protocol.py.",
                          lifespan=lifespan)
    app.state.batcher = batcher

    def respond(answer: dict) -> Any:
        if answer.get("ok"):
            return JSONResponse(answer)
        error = str(answer.get("error", ""))
        status = 503 if error.startswith(_UNAVAILABLE) else 500 if error.startswith(("internal error",
                                                                                     "out of memory")) else 400
        return JSONResponse({"ok": False, "error": answer.get("error")}, status_code=status)

    def run(op: str, fields: dict) -> dict:
        with request_lock, in_progress.counting(op != "ping"):
            return answer_request(serving, gallery, {**fields, "op": op})

    async def json_body(request: Any) -> dict:
        if not request.headers.get("content-type", "").split(";")[0].strip() == "application/json":
            raise _HttpError(415, "expected a JSON body (Content-Type: application/json)")
        try:
            body = json.loads(await request.body() or b"{}")
        except (ValueError, RecursionError) as error:
            raise _HttpError(400, f"request is not valid JSON: {str(error).splitlines()[0]}") from None
        if not isinstance(body, dict):
            raise _HttpError(400, "request must be a JSON object")
        if "op" in body:
            raise _HttpError(400, "'op' is the URL path here; leave it out of the body")
        return body

    async def form_body(request: Any, file_fields: tuple[str, ...]) -> dict:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise _HttpError(415, "expected a multipart/form-data upload (Content-Type: multipart/form-data)")
        form = await request.form(max_files=MAX_UPLOADS, max_fields=32)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):  # an uploaded file: decoded now, so its name is in any error
                if key not in file_fields:
                    raise _HttpError(400, f"unexpected file field {key!r} (files go in {', '.join(file_fields)})")
                fields.setdefault(key, []).append(await run_in_threadpool(_decode_upload, value.filename or key,
                                                                          await value.read()))
            else:
                fields[key] = _form_value(value)
        for key in file_fields:
            if key in fields and key != "images":
                if len(fields[key]) != 1:
                    raise _HttpError(400, f"give one file in {key!r}")
                fields[key] = fields[key][0]
        return fields

    @app.exception_handler(_HttpError)
    async def http_error(request: Any, error: "_HttpError") -> Any:
        return JSONResponse({"ok": False, "error": error.message}, status_code=error.status)

    @app.exception_handler(_BodyTooLarge)
    async def body_too_large(request: Any, error: "_BodyTooLarge") -> Any:
        return JSONResponse({"ok": False, "error": str(error)}, status_code=413)

    from starlette.exceptions import HTTPException

    @app.exception_handler(HTTPException)
    async def starlette_error(request: Any, error: HTTPException) -> Any:  # 404, 405: our shape too
        return JSONResponse({"ok": False, "error": f"{request.method} {request.url.path}: {error.detail}"},
                            status_code=error.status_code)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Any, error: RequestValidationError) -> Any:
        problems = "; ".join(f"{'.'.join(map(str, item.get('loc', ())))}: {item.get('msg')}" for item in error.errors())
        return JSONResponse({"ok": False, "error": f"bad request ({problems})"}, status_code=400)

    @app.exception_handler(GhostFaceError)
    async def our_error(request: Any, error: GhostFaceError) -> Any:
        return JSONResponse({"ok": False, "error": describe_failure(error)}, status_code=400)

    @app.exception_handler(Exception)
    async def any_error(request: Any, error: Exception) -> Any:  # never a traceback to the client, never a crash
        logger.exception("request failed")
        return JSONResponse({"ok": False, "error": describe_failure(error)}, status_code=500)

    @app.get("/health", summary="Liveness: the model is loaded and the server answers")
    async def health() -> Any:
        return {"ok": True, "status": "ready"}

    for op in ("ping", "verify", "embed", "identify"):
        async def operation(request: fastapi.Request, op: str = op) -> Any:
            return respond(await run_in_threadpool(run, op, await json_body(request)))

        app.add_api_route(f"/v1/{op}", operation, methods=["POST"], summary=f"{op} (JSON fields of the protocol)")

    for op, files in (("verify", ("a", "b")), ("embed", ("images",)), ("identify", ("image",))):
        async def upload(request: fastapi.Request, op: str = op, files: tuple = files) -> Any:
            return respond(await run_in_threadpool(run, op, await form_body(request, files)))

        app.add_api_route(f"/v1/{op}/upload", upload, methods=["POST"], summary=f"{op} with the photos uploaded "
                          f"(multipart files: {', '.join(files)})")

    def store() -> Any:
        if gallery is None or not hasattr(gallery, "photo_count"):
            raise _HttpError(400, "gallery changes need a persistent gallery: start with --gallery FOLDER made by "
                             "`ghostface gallery create`")
        return gallery

    @app.get("/v1/gallery", summary="People and their photo counts")
    async def people() -> Any:
        return {"ok": True, "people": [{"name": name, "photos": count} for name, count in store().people()]}

    @app.post("/v1/gallery/enroll", summary="Enroll photos of one person (multipart name + images, or JSON)")
    async def enroll(request: fastapi.Request) -> Any:
        from ghostface_keras.faces.enroll import enroll_photos

        target = store()
        is_json = request.headers.get("content-type", "").startswith("application/json")
        body = await json_body(request) if is_json else await form_body(request, ("images",))
        name, images = body.get("name"), body.get("images")
        if not isinstance(name, str) or not images or not isinstance(images, list):
            raise _HttpError(400, "enroll needs 'name' (text) and 'images' (files, or an array of paths)")

        def work() -> Any:
            with enroll_lock, request_lock, in_progress.counting():
                return enroll_photos(target, serving, images, name=name)

        report = await run_in_threadpool(work)
        return {"ok": True, "enrolled": report.enrolled, "no_face": report.no_face, "already_in": report.already_in}

    @app.post("/v1/gallery/remove", summary="Remove a person ({\"person\"}) or photos ({\"photo\": id or path})")
    async def remove(request: fastapi.Request) -> Any:
        target, body = store(), await json_body(request)
        if set(body) == {"person"} and isinstance(body["person"], str):
            return {"ok": True, "removed": await run_in_threadpool(target.remove_person, body["person"])}
        if set(body) == {"photo"} and isinstance(body["photo"], (int, str)) and not isinstance(body["photo"], bool):
            return {"ok": True, "removed": await run_in_threadpool(target.remove_photo, body["photo"])}
        raise _HttpError(400, "remove needs exactly one of {\"person\": name} or {\"photo\": id or path}")

    return _Limits(app, max_body_bytes, rate, token)


class _InProgress:
    """How many requests that embed are being answered right now (thread-safe)."""

    def __init__(self) -> None:
        self._count, self._lock = 0, threading.Lock()

    def count(self) -> int:
        return self._count

    @contextlib.contextmanager
    def counting(self, counts: bool = True) -> Any:
        if not counts:
            yield
            return
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def _form_value(text: str) -> Any:
    """A form field as the protocol wants it: numbers and true/false parsed, the rest kept as text."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _decode_upload(name: str, content: bytes) -> Any:
    """An uploaded photo as an RGB array, or one error naming the upload (not an image, a decompression bomb, a
    canvas over the limits: the same checks as for files, `core.images`)."""
    from ghostface_keras.core.images import load_rgb_image

    if not content:
        raise _HttpError(400, f"{name}: empty upload")
    try:
        return load_rgb_image(content)
    except DataError as error:
        raise _HttpError(400, f"{name}: {str(error).removeprefix('<bytes>: ')}") from None


def serve_http(embedder: Any, gallery: Any, host: str = "127.0.0.1", port: int = 8000, token: Optional[str] = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, rate: float = DEFAULT_RATE,
               batch_window_ms: Optional[float] = DEFAULT_WINDOW_MS) -> None:
    """Run the service with uvicorn (one worker: the model is loaded once) until interrupted."""
    app = create_app(embedder, gallery, token, max_body_bytes, rate, batch_window_ms)
    try:
        import uvicorn
    except ImportError:
        raise DataError(f'the HTTP service needs uvicorn: pip install "ghostface_keras[{EXTRA}]"') from None
    uvicorn.run(app, host=host, port=int(port), workers=1, log_level="warning", access_log=False)

