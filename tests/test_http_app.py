"""The HTTP application (ghostface_keras.serve.http) in-process through Starlette's test client, with a tiny model:
answers equal the JSON-lines protocol's, uploads equal paths, hostile uploads and bad requests are 4xx JSON lines,
the token is enforced, limits answer 413 / 429. Default tier; the real uvicorn server is tests/test_gallery_server.py."""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from starlette.testclient import TestClient  # noqa: E402

from ghostface_keras.data.synthetic import render_synthetic_faces  # noqa: E402
from ghostface_keras.faces.embedder import FaceEmbedder  # noqa: E402
from ghostface_keras.faces.enroll import create_gallery  # noqa: E402
from ghostface_keras.serve.http import create_app  # noqa: E402
from ghostface_keras.serve.protocol import handle_request  # noqa: E402

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    embedder = FaceEmbedder(keras.Model(inputs, keras.layers.Dense(32)(features)), detector=None)
    faces, _ = render_synthetic_faces(2, 2)
    paths = []
    for index, face in enumerate(faces):
        paths.append(root / f"{index}.png")
        Image.fromarray(face).save(paths[-1])
    store = create_gallery(root / "gallery", embedder)
    client = TestClient(create_app(embedder, store, token=TOKEN, max_body_bytes=2 << 20, rate=1000))
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    return embedder, store, paths, client


def _error(response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and fragment in body["error"] and "\n" not in body["error"], body


def test_operations_answer_like_the_json_lines_protocol_and_uploads_like_paths(setup):
    embedder, store, paths, client = setup
    a, b = str(paths[0]), str(paths[2])
    answer = client.post("/v1/verify", json={"a": a, "b": b}).json()
    expected = handle_request(embedder, None, json.dumps({"op": "verify", "a": a, "b": b}))
    assert answer == {**expected, "id": None}
    uploaded = client.post("/v1/verify/upload", files={"a": ("x.png", paths[0].read_bytes(), "image/png"),
                                                       "b": ("y.png", paths[2].read_bytes(), "image/png")}).json()
    assert uploaded["similarity"] == answer["similarity"]
    enrolled = client.post("/v1/gallery/enroll", data={"name": "alice"},
                           files=[("images", ("0.png", paths[0].read_bytes(), "image/png")),
                                  ("images", ("1.png", paths[1].read_bytes(), "image/png"))]).json()
    assert enrolled == {"ok": True, "enrolled": 2, "no_face": 0, "already_in": 0}
    assert client.post("/v1/gallery/enroll", json={"name": "bob", "images": [str(paths[2])]}).json()["enrolled"] == 1
    matches = client.post("/v1/identify", json={"image": str(paths[1]), "top_k": 2}).json()["faces"][0]["matches"]
    reference = embedder.identify(paths[1], {"alice": paths[:2], "bob": paths[2:3]}, top_k=2)
    assert [m["name"] for m in matches] == [m.name for m in reference]
    assert np.allclose([m["similarity"] for m in matches], [m.similarity for m in reference], atol=1e-5)
    assert client.get("/v1/gallery").json()["people"] == [{"name": "alice", "photos": 2}, {"name": "bob", "photos": 1}]
    assert client.post("/v1/gallery/remove", json={"person": "bob"}).json() == {"ok": True, "removed": 1}
    assert client.post("/v1/ping", json={}).json()["gallery"] == {"photos": 2, "people": 1}
    embedded = client.post("/v1/embed/upload", files=[("images", ("p.png", paths[3].read_bytes(), "image/png"))])
    assert embedded.json()["faces"][0]["image"] == "upload 1"
    assert client.get("/health").json() == {"ok": True, "status": "ready"}
    assert "/v1/verify/upload" in client.get("/openapi.json").json()["paths"]


def _bomb_png(side: int = 10_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + \
        chunk(b"IEND", b"")


def test_hostile_uploads_and_bad_requests_are_4xx_json_naming_the_problem(setup):
    embedder, store, paths, client = setup
    png = paths[0].read_bytes()
    _error(client.post("/v1/verify/upload", files={"a": ("notes.png", b"just text", "image/png"),
                                                   "b": ("b.png", png, "image/png")}), 400,
           "notes.png: not a readable image")
    _error(client.post("/v1/identify/upload", files={"image": ("bomb.png", _bomb_png(), "image/png")}), 400,
           "bomb.png: 10000x10000 pixels is more than the 50 megapixels")
    _error(client.post("/v1/identify/upload", files={"image": ("huge.png", b"\0" * (3 << 20), "image/png")}), 413,
           "at most 2,097,152")
    _error(client.post("/v1/verify", content=b"a=1", headers={"Content-Type": "text/plain"}), 415,
           "expected a JSON body")
    _error(client.post("/v1/verify/upload", json={"a": "x"}), 415, "expected a multipart/form-data upload")
    _error(client.post("/v1/verify", content=b"{not json", headers={"Content-Type": "application/json"}), 400,
           "request is not valid JSON")
    _error(client.post("/v1/verify", json={"a": str(paths[0]), "b": "nobody.jpg"}), 400, "nobody.jpg: file not found")
    _error(client.post("/v1/verify", json={"a": "x", "b": "y", "treshold": 1}), 400, "unknown field 'treshold'")
    _error(client.post("/v1/gallery/remove", json={"person": "nobody"}), 400, "no person named 'nobody'")
    _error(client.get("/v1/nothing"), 404, "GET /v1/nothing: Not Found")
    assert client.post("/v1/verify", json={"a": str(paths[0]), "b": str(paths[0])}).json()["ok"] is True  # still up


def test_token_is_required_when_set_and_rate_limit_answers_429(setup):
    embedder, store, paths, client = setup
    bare = TestClient(client.app)
    _error(bare.post("/v1/ping", json={}), 401, "missing or wrong bearer token")
    _error(bare.post("/v1/ping", json={}, headers={"Authorization": "Bearer wrong"}), 401, "bearer token")
    assert bare.get("/health").status_code == 200
    limited = TestClient(create_app(embedder, None, rate=2))
    codes = [limited.get("/health").status_code for _ in range(8)]
    assert codes[:4] == [200] * 4 and 429 in codes
    _error(limited.get("/health"), 429, "requests a second")


def test_a_body_longer_than_its_content_length_is_cut_at_the_limit(setup):
    """A client declaring 10 bytes and streaming 3 MiB is answered 413 while streaming (ASGI called directly)."""
    import asyncio

    client = setup[3]
    chunks = [b'{"a": "' + b"x" * (1 << 20)] * 3 + [b'"}']
    sent: list[dict] = []

    async def receive() -> dict:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/verify", "raw_path": b"/v1/verify", "query_string": b"", "root_path": "",
             "client": ("127.0.0.1", 5), "server": ("127.0.0.1", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10"),
                         (b"authorization", f"Bearer {TOKEN}".encode())]}
    asyncio.run(client.app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert "request body over 2,097,152 bytes" in json.loads(sent[1]["body"])["error"]


# --------------------------------------------------------------------------------------------------
# Cross-request batching (ghostface_keras.serve.batching): concurrent requests through the application
# --------------------------------------------------------------------------------------------------
class Counted:
    """Wraps an embedder's `embed_aligned` (what the batcher calls): records each call's crop count; crops whose
    first pixel is 255 are refused like a model giving NaN (`DataError`) in any call that holds them."""

    def __init__(self, embedder: FaceEmbedder) -> None:
        from ghostface_keras.core.errors import DataError

        self.calls: list[int] = []
        inner = embedder.embed_aligned

        def embed_aligned(crops: np.ndarray) -> np.ndarray:
            self.calls.append(len(crops))
            if (np.asarray(crops)[:, 0, 0, 0] == 255).any():
                raise DataError("model gave NaN embeddings for a poisoned crop")
            return inner(crops)

        embedder.embed_aligned = embed_aligned


@pytest.fixture(scope="module")
def batching(setup, tmp_path_factory):
    """A fresh embedder (its `embed_aligned` counted) on the same tiny model, and 8 photos of 4 people."""
    embedder = FaceEmbedder(setup[0].model, detector=None)
    counted = Counted(embedder)
    root = tmp_path_factory.mktemp("batching")
    faces, _ = render_synthetic_faces(4, 2, seed=11)
    paths = []
    for index, face in enumerate(faces):
        face = face.copy()
        face[0, 0, 0] = min(int(face[0, 0, 0]), 254)  # no photo is poisoned by chance
        paths.append(root / f"{index}.png")
        Image.fromarray(face).save(paths[-1])
    poisoned = np.array(faces[0])
    poisoned[0, 0, 0] = 255
    Image.fromarray(poisoned).save(root / "poisoned.png")
    return embedder, counted, paths, root / "poisoned.png"


def _independent_embedding(model: keras.Model, crop: np.ndarray) -> np.ndarray:
    """The model on one crop alone and on its mirror, summed, unit length: written out here, not the library's."""
    pixels = (np.asarray(crop, np.float32)[None] - 127.5) / 128.0
    raw = np.asarray(model(pixels)) + np.asarray(model(pixels[:, :, ::-1]))
    return (raw / np.linalg.norm(raw, axis=1, keepdims=True))[0]


def _concurrently(client, calls: list[tuple[str, dict]]) -> list:
    """POST every (path, JSON body) at once from its own thread, all released together by a barrier."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    barrier = threading.Barrier(len(calls))

    def post(call: tuple[str, dict]):
        barrier.wait(30)
        return client.post(call[0], json=call[1])

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(post, calls))


def test_concurrent_requests_share_model_calls_and_answer_as_each_crop_embedded_alone(batching):
    embedder, counted, paths, _ = batching
    model = embedder.model.keras_model
    client = TestClient(create_app(embedder, None, rate=1e6, batch_window_ms=300))
    unbatched = TestClient(create_app(embedder, None, rate=1e6, batch_window_ms=None))
    verifies = [("/v1/verify", {"a": str(paths[index]), "b": str(paths[(index + 3) % 8])}) for index in range(8)]
    embeds = [("/v1/embed", {"images": [str(paths[index])], "encoding": "base64"}) for index in range(8)]
    counted.calls.clear()
    answers = [response.json() for response in _concurrently(client, verifies + embeds)]
    # 16 requests, 24 crops: fewer calls than requests, and every crop was in exactly one call
    assert len(counted.calls) < 16 and sum(counted.calls) == 24, counted.calls
    crops = [np.asarray(Image.open(path)) for path in paths]
    alone = [_independent_embedding(model, crop) for crop in crops]
    for index, answer in enumerate(answers[:8]):
        assert answer["ok"], answer
        expected = float(alone[index] @ alone[(index + 3) % 8])
        assert abs(answer["similarity"] - expected) < 1e-5
        reference = unbatched.post(verifies[index][0], json=verifies[index][1]).json()
        assert abs(answer["similarity"] - reference["similarity"]) < 1e-5
        assert {**answer, "similarity": None} == {**reference, "similarity": None}
    for index, answer in enumerate(answers[8:]):
        embedding = np.frombuffer(base64.b64decode(answer["faces"][0]["embedding"]), "<f4")
        np.testing.assert_allclose(embedding, alone[index], atol=1e-5)
        reference = unbatched.post(embeds[index][0], json=embeds[index][1]).json()
        assert {**answer, "faces": None} == {**reference, "faces": None}
        np.testing.assert_allclose(embedding, np.frombuffer(base64.b64decode(reference["faces"][0]["embedding"]),
                                                            "<f4"), atol=1e-5)


def test_an_error_in_one_request_of_a_shared_call_leaves_the_others_answered(batching):
    embedder, counted, paths, poisoned = batching
    client = TestClient(create_app(embedder, None, rate=1e6, batch_window_ms=300))
    calls = [("/v1/verify", {"a": str(paths[index]), "b": str(paths[index + 1])}) for index in range(5)]
    calls.insert(2, ("/v1/verify", {"a": str(poisoned), "b": str(paths[1])}))
    counted.calls.clear()
    responses = _concurrently(client, calls)
    assert responses[2].status_code == 400
    assert responses[2].json() == {"ok": False, "error": "model gave NaN embeddings for a poisoned crop"}
    expected = [embedder.verify(*(call[1][key] for key in ("a", "b")))[0] for call in calls[:2] + calls[3:]]
    for response, similarity in zip(responses[:2] + responses[3:], expected):
        assert response.status_code == 200 and abs(response.json()["similarity"] - similarity) < 1e-5
    assert max(counted.calls) > 2  # some requests did share a call (and the failed one was retried alone)
    assert client.post(calls[0][0], json=calls[0][1]).json()["ok"]  # the batcher goes on


class CountingDetector:
    """A stand-in detector (the whole image as one face) that records how many threads are inside `detect` at once,
    and lets a test know when a given photo (by its first pixel) is being detected."""

    def __init__(self) -> None:
        import threading

        self.inside = self.most_inside = 0
        self.lock = threading.Lock()
        self.seen: dict[int, threading.Event] = {}

    def detect(self, image: np.ndarray):
        import threading

        from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, DetectedFace

        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.seen.setdefault(int(image[0, 0, 1]), threading.Event()).set()
        time.sleep(0.02)  # long enough for other threads to come in, were they allowed to
        with self.lock:
            self.inside -= 1
        return [DetectedFace(np.array([0, 0, 112, 112], np.float32), ARCFACE_TEMPLATE_112.astype(np.float32), 0.99)]


def test_detection_takes_turns_but_overlaps_the_model_calls_of_other_requests(setup, tmp_path):
    """Detection runs one photo at a time (FaceEmbedder.detect's lock), yet while one request's crops are in the
    model another request's photo is being detected: no request holds a lock from start to end."""
    import threading

    detector = CountingDetector()
    embedder = FaceEmbedder(setup[0].model, detector=detector)
    inner = embedder.embed_aligned
    overlapped = threading.Event()

    def embed_aligned(crops: np.ndarray) -> np.ndarray:
        if (crops[:, 0, 0, 1] == 1).any():  # photo 1's crop is in the model: wait for photo 2's detection
            overlapped.set() if detector.seen.setdefault(2, threading.Event()).wait(30) else None
        return inner(crops)

    embedder.embed_aligned = embed_aligned
    photos = []
    for index in range(6):
        pixels = np.full((112, 112, 3), 60 + 10 * index, np.uint8)
        pixels[:8, :8, 1] = index  # the mark the stand-ins read, where alignment keeps it
        photos.append(tmp_path / f"{index}.png")
        Image.fromarray(pixels).save(photos[-1])
    client = TestClient(create_app(embedder, None, rate=1e6, batch_window_ms=0))
    first = threading.Thread(target=lambda: client.post("/v1/embed", json={"images": [str(photos[1])]}))
    first.start()
    detector.seen.setdefault(1, threading.Event()).wait(30)
    time.sleep(0.1)  # photo 1 is detected; its crop goes to the model, which waits for photo 2's detection
    responses = _concurrently(client, [("/v1/embed", {"images": [str(photo)]}) for photo in photos[2:]])
    first.join(60)
    assert overlapped.is_set() and all(response.json()["ok"] for response in responses)
    assert detector.most_inside == 1  # never two threads in the detector


def test_warnings_stay_with_the_request_that_caused_them_when_requests_overlap():
    """Two threads collect the library's warnings at the same time: each gets its own only, and the library
    logger's propagation is restored once both are done."""
    import logging
    import threading

    from ghostface_keras.serve.protocol import _warnings_collected

    library = logging.getLogger("ghostface_keras.faces.embedder")
    both_in, first_logged = threading.Barrier(2), threading.Event()
    collected: dict[str, list[str]] = {}

    def answer(name: str) -> None:
        with _warnings_collected() as warnings:
            both_in.wait(10)
            if name == "second":
                first_logged.wait(10)
            library.warning("%s: 2 faces found; using the largest", name)
            first_logged.set()
            both_in.wait(10)
        collected[name] = warnings

    threads = [threading.Thread(target=answer, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert collected == {"first": ["first: 2 faces found; using the largest"],
                         "second": ["second: 2 faces found; using the largest"]}
    assert logging.getLogger("ghostface_keras").propagate is True
    assert not any(type(handler).__name__ == "_Collect" for handler in logging.getLogger("ghostface_keras").handlers)


def test_shutdown_closes_the_batcher_after_answering_and_later_requests_are_503(batching):
    embedder, _, paths, _ = batching
    app = create_app(embedder, None, rate=1e6)
    with TestClient(app) as client:  # the lifespan: shutdown on leaving
        batcher = app.app.state.batcher
        assert client.post("/v1/verify", json={"a": str(paths[0]), "b": str(paths[1])}).json()["ok"]
    assert batcher.closed and not batcher._thread.is_alive()
    response = TestClient(app).post("/v1/verify", json={"a": str(paths[0]), "b": str(paths[1])})
    assert response.status_code == 503
    assert response.json() == {"ok": False, "error": "server shutting down: no more requests are taken"}
    assert create_app(embedder, None, batch_window_ms=None).app.state.batcher is None  # batching off: none


def test_a_full_model_queue_is_answered_503(batching):
    embedder, _, paths, _ = batching
    app = create_app(embedder, None, rate=1e6)
    batcher = app.app.state.batcher
    batcher.wait_s = 0.05
    for _ in range(batcher.max_pending):  # every place in the queue taken, as by requests the model has not reached
        batcher._places.acquire()
    response = TestClient(app).post("/v1/verify", json={"a": str(paths[0]), "b": str(paths[1])})
    assert response.status_code == 503, response.text
    assert response.json() == {"ok": False, "error": "server busy: 256 requests already wait for the model; try "
                               "again later"}
    batcher._places.release()
    assert TestClient(app).post("/v1/verify", json={"a": str(paths[0]), "b": str(paths[1])}).json()["ok"]
    batcher.close()
