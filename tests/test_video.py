"""ghostface_keras.faces.video and `ghostface watch`: tracking and re-embedding rules on scripted detections, then the
released GN_W0.5 model with MTCNN on a 640x480 pan-and-zoom video of real photos (three people in turn; the
gallery holds other photos of them and of three more people), its JSON lines and annotated video, and bad input
through `python -m ghostface_keras.cli.watch`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from ghostface_keras.faces.alignment import ARCFACE_TEMPLATE_112, DetectedFace# noqa: E402
from ghostface_keras.faces.embedder import Gallery  # noqa: E402
from ghostface_keras.faces.video import (  # noqa: E402
    AnnotatedVideoWriter,
    FrameResult,
    FrameSource,
    IoUTracker,
    JsonLinesWriter,
    watch,
)

ROOT = Path(__file__).resolve().parents[1]
FRAMES_PER_PERSON, GAP_FRAMES = 8, 2


@pytest.fixture(scope="module")
def bench():
    """benchmarks/watch.py: the one place that builds the test video (and its people and gallery photos)."""
    spec = importlib.util.spec_from_file_location("watch_benchmark", ROOT / "benchmarks" / "watch.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# Tracker and re-embedding rules, with a scripted detector and a counting embedder (no model)
# --------------------------------------------------------------------------------------------------
def face_at(x: float, y: float, side: float) -> DetectedFace:
    """A face whose landmarks are the ArcFace template scaled into the box (x, y, x + side, y + side)."""
    landmarks = (ARCFACE_TEMPLATE_112 * side / 112 + (x, y)).astype(np.float32)
    return DetectedFace(np.array([x, y, x + side, y + side], np.float32), landmarks, 0.99)


class ScriptedEmbedder:
    """Detections scripted per frame (the frame index is pixel [0, 0, 0]); embeddings from the crop's brightness
    (dark: person "dark", bright: person "bright"); every `embed_aligned` call is counted."""

    detector, threshold, input_size = "scripted", 0.5, 112
    model = SimpleNamespace(embedding_size=2)

    def __init__(self, script):
        self.script, self.calls = script, []

    def detect(self, image):
        return self.script[int(image[0, 0, 0])]

    def embed_aligned(self, crops):
        self.calls.append(len(crops))
        bright = crops.reshape(len(crops), -1).mean(axis=1) > 128
        return np.where(bright[:, None], [[0.0, 1.0]], [[1.0, 0.0]]).astype(np.float32)


GALLERY = Gallery(["dark", "bright"], np.eye(2, dtype=np.float32))


def textured_frames(count: int, bright_from: int | None = None, seed: int = 0, flat: bool = False) -> list[np.ndarray]:
    """Frames of one random texture (dark; bright from frame `bright_from` on; one grey level if `flat`, so that a
    moving box sees no change of appearance), the frame index in pixel [0, 0, 0]."""
    rng = np.random.default_rng(seed)
    dark = np.full((240, 320, 3), 50, np.uint8) if flat else rng.integers(0, 100, (240, 320, 3), dtype=np.uint8)
    bright = rng.integers(150, 250, (240, 320, 3), dtype=np.uint8)
    frames = []
    for index in range(count):
        frame = (bright if bright_from is not None and index >= bright_from else dark).copy()
        frame[0, 0, 0] = index
        frames.append(frame)
    return frames


def test_tracker_keeps_ids_across_frames_and_ends_lost_tracks():
    tracker = IoUTracker(min_iou=0.3, max_missed=2)
    ids = [track.track_id for track in tracker.update([[0, 0, 40, 40], [100, 0, 140, 40]])]
    assert ids == [1, 2]
    for step in range(1, 6):  # both faces drift 3 px a frame, listed in the other order
        ids = [track.track_id for track in tracker.update([[100 + 3 * step, 0, 140 + 3 * step, 40],
                                                           [3 * step, 0, 40 + 3 * step, 40]])]
        assert ids == [2, 1]
    for _ in range(2):  # face 1 missed twice: still tracked
        tracker.update([[118, 0, 158, 40]])
    assert [track.track_id for track in tracker.update([[15, 0, 55, 40], [118, 0, 158, 40]])] == [1, 2]
    for _ in range(3):  # missed three times (> max_missed): ended; coming back makes a new track
        tracker.update([[118, 0, 158, 40]])
    assert [track.track_id for track in tracker.update([[15, 0, 55, 40]])] == [3]


def test_still_faces_are_embedded_once_in_one_batched_call():
    script = [[face_at(20, 20, 80), face_at(180, 40, 90)]] * 10
    embedder = ScriptedEmbedder(script)
    frames = list(watch(embedder, textured_frames(10), GALLERY, reembed_every=None))
    assert embedder.calls == [2]  # both new tracks in the first frame's single call; reused afterwards
    assert [[face.track_id for face in frame.faces] for frame in frames] == [[1, 2]] * 10
    assert [face.embedded for face in frames[0].faces] == ["new", "new"]
    assert all(face.embedded is None for frame in frames[1:] for face in frame.faces)
    assert {face.name for frame in frames for face in frame.faces} == {"dark"}


def test_reembedding_every_n_frames():
    embedder = ScriptedEmbedder([[face_at(20, 20, 80)]] * 10)
    frames = list(watch(embedder, textured_frames(10), GALLERY, reembed_every=4))
    assert [frame.faces[0].embedded for frame in frames] == ["new", None, None, None, "every", None, None, None,
                                                             "every", None]
    assert embedder.calls == [1, 1, 1]


def test_reembedding_when_the_face_grew():
    sides = [60, 66, 72, 78, 84, 90, 96]  # area x1.5: side 73.5 from 60, then 95.5 from 78
    embedder = ScriptedEmbedder([[face_at(30, 30, side)] for side in sides])
    frames = list(watch(embedder, textured_frames(len(sides), flat=True), GALLERY, reembed_every=None))
    assert [frame.faces[0].embedded for frame in frames] == ["new", None, None, "grew", None, None, "grew"]
    assert len({frame.faces[0].track_id for frame in frames}) == 1


def test_another_person_at_the_same_place_is_reembedded_and_gets_a_new_track():
    embedder = ScriptedEmbedder([[face_at(40, 40, 100)]] * 8)
    frames = list(watch(embedder, textured_frames(8, bright_from=5), GALLERY, reembed_every=None, grow_ratio=None))
    assert [frame.faces[0].embedded for frame in frames] == ["new", None, None, None, None, "new", None, None]
    assert [frame.faces[0].name for frame in frames] == ["dark"] * 5 + ["bright"] * 3
    assert [frame.faces[0].track_id for frame in frames] == [1] * 5 + [2] * 3
    assert embedder.calls == [1, 1]


def test_appearance_change_of_the_same_person_keeps_the_track():
    embedder = ScriptedEmbedder([[face_at(40, 40, 100)]] * 4)
    frames = textured_frames(4, seed=1)
    frames[2:] = [np.ascontiguousarray(frame[::-1]) for frame in frames[2:]]  # other texture, still dark
    for index, frame in enumerate(frames):
        frame[0, 0, 0] = index
    results = list(watch(embedder, frames, GALLERY, reembed_every=None, grow_ratio=None))
    assert [frame.faces[0].embedded for frame in results] == ["new", None, "changed", None]
    assert {frame.faces[0].track_id for frame in results} == {1}


def test_gallery_problems_are_data_errors(tmp_path):
    from ghostface_keras.core.errors import DataError

    with pytest.raises(DataError, match="empty"):
        watch(ScriptedEmbedder([]), [], Gallery([], np.zeros((0, 2), np.float32)))
    with pytest.raises(DataError, match="2-d embeddings but this model makes 3-d"):
        embedder = ScriptedEmbedder([])
        embedder.model = SimpleNamespace(embedding_size=3)
        watch(embedder, [], GALLERY)
    with pytest.raises(DataError, match="not found"):
        watch(ScriptedEmbedder([]), tmp_path / "missing.mp4", GALLERY)


# --------------------------------------------------------------------------------------------------
# The released model on a video of real photos
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(bench, data_dir, released, tmp_path_factory):
    from ghostface_keras.faces.embedder import FaceEmbedder

    folder = tmp_path_factory.mktemp("watch")
    scenario = bench.deepface_scenario(data_dir / "deepface_verification_pairs")
    video = folder / "pan_zoom.mp4"
    expected = bench.build_video(scenario, video, FRAMES_PER_PERSON, GAP_FRAMES)
    embedder = FaceEmbedder(released, batch_size=4)
    gallery = embedder.build_gallery(scenario.gallery)
    gallery.save(folder / "gallery.npz")
    calls = []
    embed_aligned = embedder.embed_aligned
    embedder.embed_aligned = lambda crops: calls.append(len(crops)) or embed_aligned(crops)
    frames = list(watch(embedder, video, gallery))
    return SimpleNamespace(folder=folder, video=video, expected=expected, frames=frames, calls=calls,
                           gallery=folder / "gallery.npz", model=released)


def test_video_is_640x480_with_the_expected_frames(scene):
    with FrameSource(scene.video) as source:
        assert source.size == (640, 480) and source.fps == 10.0
        assert source.frame_count == len(scene.expected) == 3 * FRAMES_PER_PERSON + 2 * GAP_FRAMES


def test_each_segment_is_the_right_person(scene):
    for frame, name in zip(scene.frames, scene.expected, strict=True):
        if name is None:
            assert frame.faces == (), frame.index  # black frames
            continue
        # the largest face is the person shown; img13 (B) also has a small face in its background, found by MTCNN
        # once the zoom makes it large enough: "unknown" (below the threshold), as it should be
        assert frame.faces[0].name == name and [face.name for face in frame.faces[1:]] == [None] * (
            len(frame.faces) - 1), frame.index
    similarities = [frame.faces[0].similarity for frame in scene.frames if frame.faces]
    assert min(similarities) > 0.3  # above this model's threshold (0.21) by a margin: same person, other photos


def test_tracked_faces_reuse_their_embedding(scene):
    faces = [face for frame in scene.frames for face in frame.faces]
    embedded = [face for face in faces if face.embedded]
    # one call per frame that needs one, with every face to embed in it
    per_frame = [sum(face.embedded is not None for face in frame.faces) for frame in scene.frames]
    assert scene.calls == [count for count in per_frame if count] and sum(scene.calls) == len(embedded)
    segments = [[frame.faces[0] for frame, name in zip(scene.frames, scene.expected) if name == person]
                for person in ("A", "B", "C")]
    for segment in segments:
        assert len({face.track_id for face in segment}) == 1  # one track per person
        assert segment[0].embedded == "new" and "new" not in {face.embedded for face in segment[1:]}
        # the face grows 4x in area over the segment: re-embedded when it grew 1.5x, reused in between
        assert "grew" in {face.embedded for face in segment}
        assert sum(face.embedded is None for face in segment) >= FRAMES_PER_PERSON // 4
    assert len({segment[0].track_id for segment in segments}) == 3


def test_json_lines_hold_every_face(scene, tmp_path):
    path = tmp_path / "faces.jsonl"
    with JsonLinesWriter(path) as output:
        for frame in scene.frames:
            output.write(frame)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    faces = [(frame, face) for frame in scene.frames for face in frame.faces]
    assert len(records) == len(faces)
    for record, (frame, face) in zip(records, faces):
        assert set(record) == {"frame", "time", "track", "box", "score", "name", "nearest", "similarity", "embedded"}
        assert (record["frame"], record["track"], record["name"]) == (frame.index, face.track_id, face.name)
        assert record["time"] == pytest.approx(frame.index / 10)
        assert record["box"] == pytest.approx(face.box, abs=0.06)
        assert record["similarity"] == pytest.approx(face.similarity, abs=1e-4)
    assert [record["name"] for record in records if record["name"]] == [name for name in scene.expected if name]


def test_annotated_video_has_every_frame_with_boxes_drawn(scene, tmp_path):
    path = tmp_path / "annotated.avi"
    with AnnotatedVideoWriter(path, fps=10) as output:
        for frame in scene.frames:
            output.write(frame)
    assert [item.name for item in tmp_path.iterdir()] == ["annotated.avi"]  # no temporary left
    with FrameSource(path) as source:
        annotated = list(source)
    assert source.frame_count == len(annotated) == len(scene.frames)
    frame = next(frame for frame in scene.frames if frame.faces)
    x1, y1, _, y2 = (int(round(value)) for value in frame.faces[0].box)
    edge = annotated[frame.index][(y1 + y2) // 2, x1]  # the box's left edge, RGB: green (JPEG-ish codec: roughly)
    assert edge[1] > 150 and edge[0] < 80 and edge[2] < 80


def test_command_line_writes_both_outputs(scene, tmp_path, capsys):
    from ghostface_keras.cli.watch import main

    video, jsonl = tmp_path / "out.mp4", tmp_path / "out.jsonl"
    assert main([str(scene.video), "--gallery", str(scene.gallery), "--model", str(scene.model), "--max-frames",
                 "12", "--output-video", str(video), "--output-jsonl", str(jsonl)]) == 0
    summary = capsys.readouterr().out  # frames 0-7: A, 8-9: black, 10-11: B
    assert summary.startswith("12 frames in ") and "A (8), B (2)" in summary, summary
    with FrameSource(video) as source:
        assert source.frame_count == 12
    assert {json.loads(line)["name"] for line in jsonl.read_text().splitlines()} == {"A", "B"}


# --------------------------------------------------------------------------------------------------
# Bad input through the command line: exit 2, one line naming the input, no output left
# --------------------------------------------------------------------------------------------------
def run_cli(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "ghostface_keras.cli.watch", *arguments], cwd=cwd,
                          capture_output=True, text=True, env=environment, timeout=120)


@pytest.fixture(scope="module")
def gallery_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("gallery") / "known.npz"
    Gallery(["alice"], np.eye(1, 512, dtype=np.float32)).save(path)
    return path


@pytest.mark.parametrize("case", ["missing video", "unreadable video", "no camera", "empty gallery folder",
                                  "empty gallery npz", "bad output suffix", "missing model"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, gallery_npz):
    work = tmp_path / "work"
    work.mkdir()
    video = work / "clip.mp4"
    (work / "empty_gallery").mkdir()
    if case == "unreadable video":
        video.write_bytes(b"not a video" * 100)
    elif case != "missing video":  # a real video, for the cases about the other inputs
        with AnnotatedVideoWriter(video, fps=5) as output:
            output.write(FrameResult(0, 0.0, (), np.zeros((48, 64, 3), np.uint8)))
    source, gallery, output = str(video), str(gallery_npz), ["--output-video", "annotated.mp4"]
    if case == "no camera":
        source = "97"
    elif case == "empty gallery folder":
        gallery = "empty_gallery"
    elif case == "empty gallery npz":
        gallery = "empty.npz"
        with open(work / gallery, "wb") as handle:
            np.savez(handle, names=np.array([], str), embeddings=np.zeros((0, 512), np.float32),
                     paths=np.array([], str))
    elif case == "bad output suffix":
        output = ["--output-video", "annotated.gif"]
    before = sorted(path.name for path in work.iterdir())
    # the model is checked last: every other case fails before it, without loading TensorFlow
    completed = run_cli([source, "--gallery", gallery, "--model", "missing_model.keras", *output], work)
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ghostface: error: "), completed.stderr
    named = {"missing video": "clip.mp4", "unreadable video": "clip.mp4", "no camera": "camera 97",
             "empty gallery folder": "empty_gallery", "empty gallery npz": "empty.npz", "bad output suffix": ".gif",
             "missing model": "missing_model.keras: model file not found"}
    assert named[case] in lines[0]
    assert completed.stdout == ""
    assert sorted(path.name for path in work.iterdir()) == before  # no output, no temporary


def test_help_does_not_import_tensorflow(tmp_path):
    code = ("import sys\nfrom ghostface_keras.cli.watch import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(name for name in ('tensorflow', 'keras', 'jax') if name in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert "--reembed-every" in completed.stdout and completed.stdout.strip().endswith("[]")


def test_without_opencv_the_error_says_what_to_install(tmp_path):
    code = ("import sys\nsys.modules['cv2'] = None  # as if opencv-python-headless were not installed\n"
            "from ghostface_keras.cli.watch import main\n"
            "sys.exit(main(['clip.mp4', '--gallery', 'known.npz', '--model', 'model.keras']))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert completed.returncode == 2
    assert completed.stderr.strip() == ("ghostface: error: reading and writing video needs OpenCV: "
                                        "pip install 'ghostface_keras[video]'")
