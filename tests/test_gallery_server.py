"""Child processes against a gallery folder and a real uvicorn server: SIGKILL at random points of enrolls and
removals (the gallery opens, holds exactly what was committed, and searches like brute force), two writer
processes at once, and `ghostface serve --http` on 127.0.0.1 (token refusal, a round trip, hostile uploads, still
up afterwards). Every child is bounded in time. The large tier."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ghostface_keras.gallery import GalleryStore, ModelIdentity

pytestmark = pytest.mark.large

ROOT = Path(__file__).resolve().parents[1]
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
DIMENSION = 32
BATCH = 25

# enrolls batches of BATCH photos for ever (graph index from 200 photos, saved every 100 changes, so kills land
# inside graph builds and saves too), removing every third person again; prints each committed state
WRITER = textwrap.dedent("""
    import sys, numpy as np
    import ghostface_keras.gallery.index as index, ghostface_keras.gallery.store as store_module
    index.BRUTE_FORCE_BELOW = store_module.BRUTE_FORCE_BELOW = 200
    store_module.SAVE_AFTER_CHANGES = 100
    from ghostface_keras.gallery import GalleryStore
    store = GalleryStore.open(sys.argv[1], timeout=60)
    prefix, rng = sys.argv[2], np.random.default_rng(int(sys.argv[3]))
    for person in range(int(sys.argv[4])):
        rows = rng.standard_normal((%d, %d))
        store.enroll(f"{prefix}{person}", rows, [f"{prefix}{person}/{i}.jpg" for i in range(len(rows))])
        print("enrolled", prefix, person, flush=True)
        if person %% 3 == 2:
            store.remove_person(f"{prefix}{person - 1}")
            print("removed", prefix, person - 1, flush=True)
""" % (BATCH, DIMENSION))


def _writer(folder: Path, prefix: str, seed: int, people: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(folder), prefix, str(seed), str(people)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENVIRONMENT)


def _expected_people(lines: list[str], prefix: str) -> set[str]:
    people: set[str] = set()
    for line in lines:
        action, who, number = line.split()
        if who == prefix:
            (people.add if action == "enrolled" else people.discard)(f"{prefix}{number}")
    return people


def _assert_searches_like_brute_force(store: GalleryStore) -> None:
    names, embeddings, _ = store.embeddings()
    queries = np.random.default_rng(5).standard_normal((20, DIMENSION)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = queries @ embeddings.T
    for row, hits in enumerate(store.search(queries, 1)):
        assert hits[0].name == names[int(np.argmax(scores[row]))]
        assert abs(hits[0].similarity - float(scores[row].max())) < 1e-4


def test_sigkill_at_any_point_of_enroll_or_remove_loses_nothing_committed(tmp_path):
    pytest.importorskip("faiss")  # the children build and save graphs
    folder = tmp_path / "gallery"
    GalleryStore.create(folder, ModelIdentity("toy", DIMENSION)).close()
    rng = np.random.default_rng(0)
    committed: list[str] = []
    for round_ in range(6):
        child = _writer(folder, f"r{round_}_", round_, 1000)
        time.sleep(float(rng.uniform(1.0, 3.0)))  # start-up (imports) takes ~1 s: kills land mid-work
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        # a line cut by the kill (no newline yet) reports nothing: its change counts as the one in flight
        committed += out.split("\n")[:-1]
        store = GalleryStore.open(folder)
        held = {name for name, _ in store.people()}
        # every change a child reported as committed is there; each killed child may also have committed the one
        # change it was making (an enroll: one person more; a removal: one fewer) without living to print it
        for r in range(round_ + 1):
            prefix = f"r{r}_"
            difference = _expected_people(committed, prefix) ^ {name for name in held if name.startswith(prefix)}
            assert len(difference) <= 1, (prefix, difference)
        assert all(count == BATCH for _, count in store.people())
        _assert_searches_like_brute_force(store)
        store.close()
    assert len(committed) > 6  # the kills did land after real work


def test_two_writer_processes_are_serialized(tmp_path):
    pytest.importorskip("faiss")
    folder = tmp_path / "gallery"
    GalleryStore.create(folder, ModelIdentity("toy", DIMENSION)).close()
    children = [_writer(folder, prefix, seed, 12) for seed, prefix in enumerate(("a", "b"))]
    outputs = [child.communicate(timeout=240) for child in children]
    assert [child.returncode for child in children] == [0, 0], [err for _, err in outputs]
    store = GalleryStore.open(folder)
    expected = _expected_people(outputs[0][0].splitlines(), "a") | _expected_people(outputs[1][0].splitlines(), "b")
    assert {name for name, _ in store.people()} == expected and store.photo_count == BATCH * len(expected)
    _assert_searches_like_brute_force(store)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    import keras
    from PIL import Image

    from ghostface_keras.data.synthetic import render_synthetic_faces

    root = tmp_path_factory.mktemp("server")
    inputs = keras.Input((112, 112, 3))
    keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs))).save(root / "m.keras")
    faces, _ = render_synthetic_faces(2, 2)
    for index, face in enumerate(faces):
        Image.fromarray(face).save(root / f"{index}.png")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run([sys.executable, "-m", "ghostface_keras.cli.face", "gallery", "create", str(root / "gallery"),
                    "--model", str(root / "m.keras"), "--detector", "none"], env=ENVIRONMENT, check=True, timeout=120)
    process = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(root / "m.keras"),
                                "--detector", "none", "--gallery", str(root / "gallery"), "--http", str(port),
                                "--token", "T0k"], env=ENVIRONMENT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
        assert process.poll() is None, process.stderr.read()
    else:
        process.kill()
        pytest.fail("server did not answer /health within 120 s")
    yield base, root, httpx
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_real_uvicorn_server_token_round_trip_hostile_uploads(server):
    base, root, httpx = server
    auth = {"Authorization": "Bearer T0k"}
    assert httpx.post(base + "/v1/ping", json={}, timeout=10).status_code == 401
    assert httpx.post(base + "/v1/ping", json={}, headers={"Authorization": "Bearer x"}, timeout=10).status_code == 401
    png = (root / "0.png").read_bytes()
    enrolled = httpx.post(base + "/v1/gallery/enroll", headers=auth, data={"name": "alice"},
                          files=[("images", ("0.png", png, "image/png"))], timeout=60).json()
    assert enrolled["enrolled"] == 1
    answer = httpx.post(base + "/v1/identify/upload", headers=auth, files={"image": ("p.png", png, "image/png")},
                        timeout=60).json()
    assert answer["faces"][0]["matches"][0]["name"] == "alice"
    assert abs(answer["faces"][0]["matches"][0]["similarity"] - 1.0) < 1e-4
    hostile = [({"image": ("x.png", b"GIF89a not really", "image/gif")}, 400, "x.png: not a readable image"),
               ({"image": ("big.png", b"\0" * (21 << 20), "image/png")}, 413, "request body of")]
    for files, status, fragment in hostile:
        response = httpx.post(base + "/v1/identify/upload", headers=auth, files=files, timeout=60)
        assert response.status_code == status and fragment in response.json()["error"], response.text
    response = httpx.post(base + "/v1/verify", headers={**auth, "Content-Type": "text/plain"}, content=b"hi",
                          timeout=10)
    assert response.status_code == 415
    assert httpx.get(base + "/docs", timeout=10).status_code == 200
    assert httpx.post(base + "/v1/ping", json={}, headers=auth, timeout=10).json()["gallery"] == {"photos": 1,
                                                                                                 "people": 1}


def test_real_server_answers_concurrent_requests_through_its_batcher(server):
    """16 identify uploads at once (the server batches by default): every one answers dave, as one alone does."""
    from concurrent.futures import ThreadPoolExecutor

    base, root, httpx = server
    auth = {"Authorization": "Bearer T0k"}
    png = (root / "3.png").read_bytes()
    assert httpx.post(base + "/v1/gallery/enroll", headers=auth, data={"name": "dave"},
                      files=[("images", ("3.png", png, "image/png"))], timeout=60).json()["enrolled"] == 1

    def identify(_: int) -> dict:
        return httpx.post(base + "/v1/identify/upload", headers=auth, files={"image": ("p.png", png, "image/png")},
                          timeout=60).json()

    alone = identify(0)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(identify, range(16)))
    assert alone["ok"] and alone["faces"][0]["matches"][0]["name"] == "dave"
    for answer in answers:
        assert answer["ok"] and answer["faces"][0]["matches"][0]["name"] == "dave", answer
        assert abs(answer["faces"][0]["matches"][0]["similarity"] - alone["faces"][0]["matches"][0]["similarity"]) \
            < 1e-5


def test_real_faces_end_to_end_cli_search_equals_the_in_memory_gallery(released, data_dir, tmp_path):
    """CelebA aligned crops (../shared) with the released GhostFaceNetV1-0.5-2: enroll half of each of 10 people's
    photos through the library, search the other half through `ghostface gallery search`, and compare every CSV
    row with `FaceEmbedder.identify` against an in-memory gallery of the same photos."""
    import csv

    from ghostface_keras.faces.embedder import FaceEmbedder
    from ghostface_keras.faces.enroll import create_gallery, enroll_photos

    people = sorted((data_dir / "celeba_aligned112" / "val").iterdir())[:10]
    known = {person.name: sorted(person.glob("*.jpg"))[:4] for person in people}
    probes = [photo for person in people for photo in sorted(person.glob("*.jpg"))[4:6]]
    embedder = FaceEmbedder(str(released), detector=None)
    store = create_gallery(tmp_path / "gallery", embedder)
    assert enroll_photos(store, embedder, known).enrolled == 40
    store.close()
    output = tmp_path / "matches.csv"
    subprocess.run([sys.executable, "-m", "ghostface_keras.cli.face", "gallery", "search", str(tmp_path / "gallery"),
                    *map(str, probes), "--model", str(released), "--detector", "none", "-o", str(output)],
                   env=ENVIRONMENT, check=True, timeout=300, capture_output=True)
    rows = list(csv.DictReader(output.open()))
    reference = embedder.build_gallery(known)
    assert len(rows) == len(probes)
    correct = 0
    for row, probe in zip(rows, probes):
        expected = embedder.identify(probe, reference, top_k=1)[0]
        assert row["name"] == expected.name and abs(float(row["similarity"]) - expected.similarity) < 1e-4
        correct += row["name"] == probe.parent.name
    assert correct >= len(probes) // 2  # far above chance (1 in 10): the right people come back
