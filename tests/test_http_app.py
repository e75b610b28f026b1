"""The HTTP application (ghostface_keras.serve.http) in-process through Starlette's test client, with a tiny model:
answers equal the JSON-lines protocol's, uploads equal paths, hostile uploads and bad requests are 4xx JSON lines,
the token is enforced, limits answer 413 / 429. Default tier; the real uvicorn server is tests/test_gallery_server.py."""

from __future__ import annotations

import json
import struct
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
