"""Hostile and careless input through the public commands: one line and exit status 2, nothing half-written,
no escape codes in piped output (the first part of the hostile-input issue; more cases follow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.cli.face import main as face_main
from ghostface_keras.core.files import remove_stale_partials, write_atomically

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(2)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(32)(features)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for index in range(3):
        paths.append(folder / f"face{index}.png")
        Image.fromarray(np.random.default_rng(index).integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _one_line(capsys, status: int, expected_status: int = 2) -> str:
    captured = capsys.readouterr()
    assert status == expected_status
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_embed_output_named_txt_is_refused_instead_of_overwritten_by_the_order_file(model_file, photos, tmp_path,
                                                                                    capsys):
    output = tmp_path / "e.txt"
    line = _one_line(capsys, face_main(["embed", *map(str, photos), "--model", str(model_file), "--detector", "none",
                                        "--output", str(output)]))
    assert line == f"ghostface: error: {output}: --output must end in .npz (embeddings and paths in one file) or .npy"
    assert not output.exists()


def test_embed_npz_holds_embeddings_and_their_paths_in_one_file(model_file, photos, tmp_path, capsys):
    output = tmp_path / "out" / "e.npz"
    assert face_main(["embed", *map(str, photos), "--model", str(model_file), "--detector", "none",
                      "--output", str(output)]) == 0
    with np.load(output, allow_pickle=False) as saved:
        assert saved["embeddings"].shape == (3, 32) and saved["paths"].tolist() == [str(path) for path in photos]
    assert sorted(path.name for path in output.parent.iterdir()) == ["e.npz"]


def test_embed_npy_and_its_order_file_agree(model_file, photos, tmp_path):
    output = tmp_path / "e.npy"
    for order in (photos, photos[::-1]):
        assert face_main(["embed", *map(str, order), "--model", str(model_file), "--detector", "none",
                          "--output", str(output)]) == 0
        assert output.with_suffix(".txt").read_text().split() == [str(path) for path in order]
        assert np.load(output).shape == (3, 32)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["e.npy", "e.txt"]


@pytest.mark.parametrize("value", ["nan", "inf", "1.5", "-2", "abc"])
def test_a_threshold_that_is_not_a_cosine_is_a_usage_error(model_file, photos, value, capsys):
    with pytest.raises(SystemExit) as raised:
        face_main(["verify", str(photos[0]), str(photos[1]), "--model", str(model_file), "--threshold", value])
    assert raised.value.code == 2
    assert "--threshold" in capsys.readouterr().err


def test_inputs_are_checked_before_the_model_loads(photos, tmp_path, capsys):
    """A missing photo is reported at once, even with a model that does not exist: no model was opened."""
    missing = tmp_path / "nobody.jpg"
    started = time.monotonic()
    line = _one_line(capsys, face_main(["verify", str(photos[0]), str(missing), "--model",
                                        str(tmp_path / "also_missing.keras")]))
    assert line == f"ghostface: error: {missing}: file not found"
    assert time.monotonic() - started < 5
    line = _one_line(capsys, face_main(["identify", str(photos[0]), "--gallery", str(tmp_path / "no_gallery"),
                                        "--model", str(tmp_path / "also_missing.keras")]))
    assert line.endswith("no_gallery: gallery folder or .npz not found")


def test_leftovers_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.keras"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        dead = target.with_name(".model.keras.999999999-00000000.partial.keras")      # no such process
        alive = target.with_name(f".model.keras.{child.pid}-00000000.partial.keras")  # a writer still at work
        dead.write_bytes(b"")
        alive.write_bytes(b"")
        write_atomically(target, b"weights")
        assert target.read_bytes() == b"weights" and not dead.exists() and alive.exists()
    finally:
        child.kill()
        child.wait()
    assert remove_stale_partials(target) == [alive]


def test_piped_commands_print_no_progress_bars_or_escape_codes(model_file, photos, tmp_path):
    output = tmp_path / "e.npz"
    done = subprocess.run([sys.executable, "-c", "import sys; from ghostface_keras.cli.face import main; "
                           "sys.exit(main(sys.argv[1:]))", "embed", *map(str, photos), "--model", str(model_file),
                           "--detector", "none", "--output", str(output)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == f"wrote 3 x 32 embeddings to {output}\n"
    assert "\r" not in done.stderr and "\x1b" not in done.stderr and "photos [" not in done.stderr


def test_a_random_bytes_keras_file_is_named_as_not_a_keras_file(tmp_path):
    from ghostface_keras.core.errors import ModelLoadError
    from ghostface_keras.runtime.loading import load_model

    path = tmp_path / "random.keras"
    path.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(ModelLoadError) as raised:
        load_model(path)
    assert str(raised.value) == f"{path}: not a .keras file (a .keras model is a zip archive; this file is not one)"


@pytest.mark.parametrize("arrays, problem", [
    (dict(names=np.array(["a", "b"]), embeddings=np.ones((3, 32), np.float32), paths=np.array([], str)),
     "2 names and 0 paths for 3 embeddings"),
    (dict(names=np.array(["a"]), embeddings=np.ones((1, 2, 3), np.float32), paths=np.array(["x"])),
     "expected a non-empty (N, D) float array"),
    (dict(names=np.array(["a"]), paths=np.array(["x"])), "not a gallery .npz file"),
])
def test_inconsistent_gallery_files_are_one_line(model_file, photos, tmp_path, capsys, arrays, problem):
    gallery = tmp_path / "gallery.npz"
    np.savez(gallery, **arrays)
    line = _one_line(capsys, face_main(["identify", str(photos[0]), "--gallery", str(gallery), "--model",
                                        str(model_file), "--detector", "none"]))
    assert line.startswith(f"ghostface: error: {gallery}: ") and problem in line


def test_a_gallery_of_another_embedding_size_is_one_line(model_file, photos, tmp_path, capsys):
    from ghostface_keras.faces.embedder import Gallery

    gallery = tmp_path / "g128.npz"
    Gallery(["a", "b"], np.eye(2, 128, dtype=np.float32), ["a.jpg", "b.jpg"]).save(gallery)
    line = _one_line(capsys, face_main(["identify", str(photos[0]), "--gallery", str(gallery), "--model",
                                        str(model_file), "--detector", "none"]))
    assert line == ("ghostface: error: the gallery holds 128-d embeddings but this model makes 32-d ones: build the "
                    "gallery with the same model")


def _pickle_file(path: Path, payload: bytes) -> Path:
    path.write_bytes(payload)
    return path


PRINT_PEAK_MEMORY = "\nfor line in open('/proc/self/status'):\n    if line.startswith('VmHWM:'):\n        print(line.split()[1])"


def _child_max_rss_kib(code: str, *arguments: str) -> tuple[list[str], int]:
    """Run `code` in a fresh interpreter; its output lines and its peak resident memory (KiB).

    The peak is VmHWM of the child's own address space: `getrusage(RUSAGE_SELF).ru_maxrss` would carry over the
    high-water mark of the (large) pytest process it was forked from, which Linux keeps across exec."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc to read a process's own peak memory")
    child = subprocess.run([sys.executable, "-c", code + PRINT_PEAK_MEMORY, *arguments], capture_output=True,
                           text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = child.stdout.strip().splitlines()
    assert child.returncode == 0 and lines, child.stderr[-2000:]
    return lines[:-1], int(lines[-1])


def test_a_bin_that_declares_more_bytes_than_it_holds_is_refused_without_allocating(tmp_path):
    """`bytearray(n)` in a 40-byte pickle would allocate n bytes: refused from the declared size (2**70 and 2e9),
    with the child's peak memory that of a child that only imports the loader (an independent baseline)."""
    import pickle

    from ghostface_keras.data import load_bin
    from ghostface_keras.core.errors import DataError

    _, baseline = _child_max_rss_kib("from ghostface_keras.data import load_bin")
    for size in (2**70, 2_000_000_000):
        path = tmp_path / f"huge_{size}.bin"
        payload = (b"\x80\x02c__builtin__\nbytearray\nq\x00" + pickle.dumps(size, protocol=2)[2:-1]
                   + b"\x85q\x01Rq\x02.")
        _pickle_file(path, payload)
        assert len(payload) < 64
        lines, peak = _child_max_rss_kib("import sys\nfrom ghostface_keras.data import load_bin\n"
                                         "try:\n    load_bin(sys.argv[1])\nexcept Exception as error:\n"
                                         "    print(type(error).__name__, error)", str(path))
        assert lines[0].startswith(f"DataError {path}: not a safe verification .bin (bytearray({size}) asks for more")
        assert peak < baseline + 200_000, (peak, baseline)  # KiB: nowhere near the 2 GB the pickle asked for
        with pytest.raises(DataError, match="asks for more bytes"):
            load_bin(path)


def test_a_truncated_bin_is_called_truncated_not_unsafe(tmp_path):
    from ghostface_keras.data import load_bin, save_bin
    from ghostface_keras.core.errors import DataError

    path = save_bin(tmp_path / "pairs.bin", np.zeros((4, 112, 112, 3), np.uint8), [True, False])
    cut = _pickle_file(tmp_path / "cut.bin", path.read_bytes()[:-40])
    with pytest.raises(DataError) as raised:
        load_bin(cut)
    assert str(raised.value).startswith(f"{cut}: truncated or corrupt .bin")


def test_a_huge_canvas_is_refused_from_its_header(tmp_path, model_file, capsys):
    """A small PNG declaring 100 megapixels: refused before its pixels are allocated, in one line."""
    import struct
    import zlib

    from ghostface_keras.core.images import MAX_PIXELS

    width = height = 10_000
    assert width * height > MAX_PIXELS
    row = b"\x00" + b"\x00" * (width * 3)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(row * 16, 9)) + chunk(b"IEND", b""))
    photo = tmp_path / "bomb.png"
    photo.write_bytes(png)
    assert photo.stat().st_size < 100_000
    line = _one_line(capsys, face_main(["verify", str(photo), str(photo), "--model", str(model_file),
                                        "--detector", "none"]))
    assert line == (f"ghostface: error: {photo}: 10000x10000 pixels is more than the 50 megapixels an image of this "
                    "format may have here (ghostface_keras.core.images.MAX_PIXELS)")


def _solid_png(path: Path, width: int, height: int, mode: str = "RGBA") -> Path:
    Image.new(mode, (width, height), (90, 120, 150, 200)[:len(mode)]).save(path, optimize=False)
    return path


def test_large_photos_are_read_in_bounded_memory(tmp_path):
    """A 200 KB RGBA PNG of 49 megapixels (just under the limit) and a 1 MB JPEG of 100 megapixels are read at
    reduced size: peak memory within 600 MB of a child that only imports the reader (it was 1.3 GB)."""
    from ghostface_keras.core.images import WORKING_PIXELS

    png = _solid_png(tmp_path / "poster.png", 7000, 7000)
    jpeg = tmp_path / "phone.jpg"
    Image.new("RGB", (11500, 8700), (30, 160, 60)).save(jpeg, quality=30)
    assert png.stat().st_size < 400_000 and jpeg.stat().st_size < 2_000_000
    _, baseline = _child_max_rss_kib("from ghostface_keras.core.images import load_rgb_image")
    for photo, colour in ((png, (125, 149, 173)), (jpeg, (30, 160, 60))):
        lines, peak = _child_max_rss_kib("import sys\nfrom ghostface_keras.core.images import load_rgb_image\n"
                                         "a = load_rgb_image(sys.argv[1])\nprint(a.shape[0] * a.shape[1], *a[9, 9])",
                                         str(photo))
        pixels, *rgb = (int(value) for value in lines[0].split())
        assert pixels <= WORKING_PIXELS and np.allclose(rgb, colour, atol=3), (photo, lines)
        assert peak - baseline < 600_000, (photo, peak, baseline)


def test_a_training_image_over_the_limit_is_a_counted_skip_decided_from_its_header(tmp_path):
    """The training decoder refuses a 60-megapixel crop from its header (a counted skip in the pipelines)."""
    import io

    from ghostface_keras.data.decode import ImageDecodeError, decode_image_bytes, decode_many

    buffer = io.BytesIO()
    Image.new("RGB", (8000, 7500), (1, 2, 3)).save(buffer, "JPEG", quality=20)
    small = io.BytesIO()
    Image.new("RGB", (112, 112), (1, 2, 3)).save(small, "PNG")
    with pytest.raises(ImageDecodeError, match="8000x7500 pixels is more than the 16 megapixels a training image"):
        decode_image_bytes(buffer.getvalue())
    images, failures = decode_many(2, [small.getvalue(), buffer.getvalue()].__getitem__)
    assert images.shape == (1, 112, 112, 3) and [item for item, _ in failures] == [1]


# -- group photos -------------------------------------------------------------------------------------
def _face_region(data_dir: Path, name: str, side: int) -> Image.Image:
    """A square crop around the one face of a deepface photo (its MTCNN box, doubled), resized to `side`."""
    import csv

    with open(data_dir / "deepface_verification_pairs" / "landmarks_mtcnn.csv", newline="") as handle:
        row = next(row for row in csv.DictReader(handle) if Path(row[next(iter(row))]).name == name)
    x, y, w, h = (float(row[key]) for key in ("box_x", "box_y", "box_w", "box_h"))
    half = max(w, h)
    centre_x, centre_y = x + w / 2, y + h / 2
    photo = Image.open(data_dir / "deepface_verification_pairs" / name).convert("RGB")
    box = tuple(int(value) for value in (centre_x - half, centre_y - half, centre_x + half, centre_y + half))
    return photo.crop(box).resize((side, side), Image.BILINEAR)


@pytest.fixture(scope="module")
def group_photo(data_dir, tmp_path_factory) -> Path:
    """Two real people side by side: img3's person small on the left, img1's person large on the right."""
    pytest.importorskip("mtcnn")
    canvas = Image.new("RGB", (720, 400), (90, 110, 100))
    canvas.paste(_face_region(data_dir, "img3.jpg", 200), (40, 150))
    canvas.paste(_face_region(data_dir, "img1.jpg", 380), (320, 10))
    path = tmp_path_factory.mktemp("group") / "group.jpg"
    canvas.save(path, quality=95)
    return path


def test_a_group_photo_says_which_face_was_used_and_can_compare_all_or_pick_one(group_photo, data_dir, released,
                                                                               capsys, caplog):
    """img12 is the person of img3 (left, small). The default compares the largest face and says so; --face all
    finds the person; --face 1,1 picks them; a face number beyond the count is one line."""
    other_photo = str(data_dir / "deepface_verification_pairs" / "img12.jpg")
    common = ["--model", str(released)]
    capsys.readouterr()
    assert face_main(["verify", str(group_photo), other_photo, *common]) == 0
    default = capsys.readouterr()
    assert "different people" in default.out
    assert f"{group_photo}: 2 faces found; using the largest, face 2 of 2" in caplog.text
    assert face_main(["verify", str(group_photo), other_photo, "--face", "all", *common]) == 0
    every = capsys.readouterr().out
    assert "same person" in every and f"{group_photo}: face 1 of 2" in every, every
    assert face_main(["verify", str(group_photo), other_photo, "--face", "1,1", *common]) == 0
    picked = capsys.readouterr().out
    assert picked.split("->")[0] == every.split("->")[0]  # the same pair, so the same similarity
    line = _one_line(capsys, face_main(["verify", str(group_photo), other_photo, "--face", "3", *common]))
    assert line == f"ghostface: error: {group_photo}: face 3 was asked for but 2 faces were found"


def test_embed_and_identify_every_face_of_a_group_photo(group_photo, data_dir, released, tmp_path, capsys):
    photos = data_dir / "deepface_verification_pairs"
    gallery = tmp_path / "gallery"
    for name, photo in (("person_of_img3", "img12.jpg"), ("person_of_img1", "img2.jpg")):
        (gallery / name).mkdir(parents=True)
        (gallery / name / photo).write_bytes((photos / photo).read_bytes())
    output = tmp_path / "faces.npz"
    assert face_main(["embed", str(group_photo), str(photos / "img2.jpg"), "--face", "all", "--model", str(released),
                      "--output", str(output)]) == 0
    with np.load(output, allow_pickle=False) as saved:
        assert saved["faces"].tolist() == [1, 2, 1]
        assert saved["paths"].tolist() == [str(group_photo)] * 2 + [str(photos / "img2.jpg")]
        assert saved["boxes"][0, 0] < saved["boxes"][1, 0]  # counted left to right
        embeddings = saved["embeddings"]
    assert float(embeddings[1] @ embeddings[2]) > float(embeddings[0] @ embeddings[2])  # img1's person is face 2
    capsys.readouterr()
    assert face_main(["identify", str(group_photo), "--gallery", str(gallery), "--face", "all",
                      "--model", str(released)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("face 1 of 2") and lines[1].startswith("  1. person_of_img3")
    assert lines[3].startswith("face 2 of 2") and lines[4].startswith("  1. person_of_img1"), lines


# -- every command: inputs and --output checked before TensorFlow or the model loads -----------------------
_CHECK_BEFORE_BACKEND = """
import sys
from importlib import import_module
status = import_module(sys.argv[1]).main(sys.argv[2:])
print("backend imported" if "tensorflow" in sys.modules or "keras" in sys.modules else "no backend")
sys.exit(status)
"""


def _command_cases(root: Path, model: Path, photo: Path) -> list[tuple[str, list[str], str]]:
    a_file, a_folder, bin_file = root / "notes.txt", root / "existing", root / "lfw.bin"
    return [
        ("face", ["embed", str(photo), "-m", str(model), "--output", str(a_folder)],
         f"{a_folder}: is a folder; give a file name"),
        ("face", ["embed", str(photo), "-m", str(model), "--output", f"{a_file}/e.npz"],
         f"{a_file}/e.npz: cannot be created: {a_file} is a file, not a folder"),
        ("face", ["identify", str(photo), "--gallery", str(photo.parent), "-m", str(model), "--save-gallery",
                  str(a_folder / "g.txt")], f"{a_folder / 'g.txt'}: --save-gallery must end in .npz"),
        ("face", ["identify", str(photo), "--gallery", str(a_folder), "-m", str(model)],
         f"{a_folder}: gallery folder has no image files"),
        ("face", ["verify", str(photo), str(photo), "-m", str(root / "missing.keras")],
         f"{root / 'missing.keras'}: model file not found"),
        ("face", ["verify", str(photo), str(photo), "-m", "NoSuchNet-9"], "NoSuchNet-9: no such model file, and no "
         "released checkpoint has that name"),
        ("evaluate", ["--model", str(model), "--bins", str(bin_file), "--output", str(a_file)],
         f"{a_file}: is a file; give a folder"),
        ("evaluate", ["--model", str(model), "--bins", str(bin_file), "--output", f"{a_file}/results"],
         f"{a_file}/results: cannot be created: {a_file} is a file, not a folder"),
        ("evaluate", ["--model", str(model), "--bins", str(root / "cfp.bin"), "--output", str(root / "r")],
         f"{root / 'cfp.bin'}: .bin file not found"),
        ("evaluate", ["--model", str(model), "--folder", str(a_file), "--output", str(root / "r")],
         f"{a_file}: is a file; a folder was expected"),
        ("evaluate", ["--model", str(root / "gone.tflite"), "--bins", str(bin_file), "--output", str(root / "r")],
         f"{root / 'gone.tflite'}: model file not found"),
        ("export", ["--model", str(model), "--output", str(a_folder)], f"{a_folder}: is a folder; give a file name"),
        ("export", ["--model", str(model), "--format", "savedmodel", "--output", str(a_file)],
         f"{a_file}: is a file; give a folder"),
        ("export", ["--model", str(model), "--quantization", "int8", "--calibration-data", str(root / "faces"),
                    "--output", str(root / "m.tflite")], f"{root / 'faces'}: image folder not found"),
        ("export", ["--model", str(model), "--threads", "1,two", "--output", str(root / "m.tflite")],
         "--threads 1,two: expected thread counts separated by commas, e.g. 1,2"),
        ("train", ["--demo", "--output", str(a_file)], f"{a_file}: is a file; give a folder"),
        ("train", ["--data", str(a_folder), "--output", f"{a_file}/run"],
         f"{a_file}/run: cannot be created: {a_file} is a file, not a folder"),
        ("train", ["--data", str(root / "faces"), "--output", str(root / "run")],
         f"--data {root / 'faces'}: no such file or directory"),
        ("train", ["--data", str(a_folder), "--init-from", str(root / "GN.h5"), "--output", str(root / "run")],
         f"{root / 'GN.h5'}: model file not found"),
        ("train", ["--data", str(a_folder), "--eval-bins", str(root / "agedb.bin"), "--output", str(root / "run")],
         f"{root / 'agedb.bin'}: .bin file not found"),
        ("convert", [str(root / "official.h5"), str(root / "out.keras")], f"{root / 'official.h5'}: file not found"),
        ("convert", [str(model), str(a_folder)], f"{a_folder}: is a folder; give a file name"),
    ]


def test_every_command_refuses_bad_paths_in_one_line_before_the_backend_loads(model_file, photos, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    (tmp_path / "existing").mkdir()
    (tmp_path / "lfw.bin").write_bytes(b"\x80\x04N.")
    before = sorted(path.name for path in tmp_path.iterdir())
    failures = []
    for command, arguments, expected in _command_cases(tmp_path, model_file, photos[0]):
        result = subprocess.run([sys.executable, "-c", _CHECK_BEFORE_BACKEND, f"ghostface_keras.cli.{command}",
                                 *arguments], capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        lines = result.stderr.strip().splitlines()
        prog = {"face": "ghostface", "evaluate": "ghostface-eval"}.get(command, f"ghostface-{command}")
        if not (result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"{prog}: error: {expected}")
                and result.stdout.strip() == "no backend"):
            failures.append((command, arguments, result.returncode, result.stdout, result.stderr))
    assert not failures, failures
    assert sorted(path.name for path in tmp_path.iterdir()) == before  # nothing created, nothing left behind


# -- RecordIO: sizes read from the files are checked before they are used; streaming errors are one line ----
def _recordio(folder: Path) -> Path:
    from test_data_recordio import _write_dataset  # the independent RecordIO writer of the reader's tests

    _write_dataset(folder, images_per_class=(3, 3, 3))
    return folder


def _break_records(folder: Path, keys) -> None:
    """Overwrite the magic word of these records (found through train.idx): each becomes unreadable."""
    rec = folder / "train.rec"
    offsets = {int(key): int(value) for key, value in
               (line.split("\t") for line in (folder / "train.idx").read_text().splitlines())}
    blob = bytearray(rec.read_bytes())
    for key in keys:
        blob[offsets[key]:offsets[key] + 4] = b"XXXX"
    rec.write_bytes(bytes(blob))


def test_a_property_declaring_a_hundred_million_classes_is_refused_in_bounded_memory(tmp_path):
    """A 17-byte property of `100000000,112,112` took 33 s and 8.4 GB; now one line, checked against the index."""
    folder = _recordio(tmp_path / "rec")
    (folder / "property").write_text("100000000,112,112")
    lines, peak = _child_max_rss_kib(
        "import sys\nfrom ghostface_keras.data.recordio import recordio_source\nfrom ghostface_keras.core.errors import "
        "DataError\ntry:\n    recordio_source(sys.argv[1])\nexcept DataError as error:\n    print(error)", str(folder))
    _, baseline = _child_max_rss_kib("from ghostface_keras.data.recordio import recordio_source")
    assert lines == [f"{folder / 'property'}: declares 100000000 classes but the index holds only 9 images (every "
                     "class has at least one); wrong property file?"]
    assert peak - baseline < 50_000


@pytest.mark.parametrize("text", ["1,112", "0,112,112", "5,100000,112", "a,b,c", "9" * 5000])
def test_malformed_property_files_are_one_line(tmp_path, text):
    from ghostface_keras.data.recordio import read_property
    from ghostface_keras.core.errors import DataError

    folder = _recordio(tmp_path / "rec")
    (folder / "property").write_text(text)
    with pytest.raises(DataError, match=r"property: ") as raised:
        read_property(folder)
    assert len(str(raised.value)) < 300


def test_an_identity_record_announcing_a_billion_keys_is_refused_before_listing_them(tmp_path):
    import struct

    from ghostface_keras.data import RecordIOReader
    from ghostface_keras.core.errors import DataError
    from test_data_recordio import _encode_record, _header

    folder = _recordio(tmp_path / "rec")
    rec, idx = folder / "train.rec", folder / "train.idx"
    offsets = dict(line.split("\t") for line in idx.read_text().splitlines())
    blob = rec.read_bytes()
    start = int(offsets["0"])
    length = struct.unpack("<I", blob[start + 4:start + 8])[0] & ((1 << 29) - 1)
    forged = _encode_record(_header(2, 0.0, 0, (10, 1_000_000_000)))
    assert len(forged) == 8 + length + (-length % 4)  # the same size: the other offsets stay right
    rec.write_bytes(blob[:start] + forged + blob[start + len(forged):])
    with RecordIOReader(folder) as reader, pytest.raises(DataError, match=r"record 0 \(the identity list\) announces "
                                                                        r"keys \[10, 1000000000\), but the index holds"):
        reader.image_labels()


def test_corrupt_records_while_streaming_are_counted_skips_and_a_corrupt_file_is_one_line(tmp_path):
    """cache=False (the large-data path): one bad record is replaced by another image of its identity and
    counted; a file whose every record is bad stops with the reader's line, not tf.data's InvalidArgumentError."""
    from ghostface_keras.data import recordio_dataset
    from ghostface_keras.data.pipeline import pipeline_errors_in_one_line
    from ghostface_keras.core.errors import DataError

    folder = _recordio(tmp_path / "rec")
    rec = folder / "train.rec"
    _break_records(folder, [2])
    dataset = recordio_dataset(folder, batch_size=9, shuffle=False, cache=False, normalize=False)
    _, labels = next(iter(dataset))
    assert labels.numpy().tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # the bad record replaced within its identity
    assert [name.split()[-1] for name, _ in dataset.skipped_files] == ["2"]
    _break_records(folder, range(1, 10))
    dataset = recordio_dataset(folder, batch_size=9, shuffle=False, cache=False)
    with pytest.raises(DataError) as raised, pipeline_errors_in_one_line():
        next(iter(dataset))
    assert str(raised.value).startswith(f"{rec}: none of the 9 images could be decoded")
    assert "\n" not in str(raised.value) and "Traceback" not in str(raised.value)


# -- data preparation scripts: one unreadable file is a counted skip, as in the loaders ---------------------
def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / "data_prep" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_make_bin_skips_and_counts_pairs_with_unreadable_images(tmp_path, capsys):
    from ghostface_keras.data import load_bin

    faces = tmp_path / "faces"
    rng = np.random.default_rng(5)
    for identity in range(3):
        (faces / str(identity)).mkdir(parents=True)
        for shot in range(2):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(faces / str(identity) / f"{shot}.png")
    (faces / "1" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "pairs.csv").write_text("0/0.png,0/1.png,1\n1/0.png,1/1.png,1\n0/0.png,1/1.png,0\n0/1.png,2/0.png,0\n")
    output = tmp_path / "val.bin"
    assert _script("make_bin").main([str(faces), str(output), "--pairs", str(tmp_path / "pairs.csv")]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{output}: 2 pairs (1 positive, 1 negative); skipped 2 pairs with an unreadable image ("
                          f"{faces / '1' / '1.png'}: not a readable image")
    images, issame = load_bin(output)
    assert images.shape == (4, 112, 112, 3) and issame.tolist() == [True, False]
    (tmp_path / "bad.csv").write_text("1/1.png,1/1.png,1\n")
    line = _one_line(capsys, _script("make_bin").main([str(faces), str(tmp_path / "none.bin"), "--pairs",
                                                       str(tmp_path / "bad.csv")]))
    assert line.startswith(f"make_bin: error: {faces}: no pair has two readable images") and not (tmp_path / "none.bin").exists()


def test_rec_to_folders_skips_and_counts_corrupt_records(tmp_path, capsys):
    folder = _recordio(tmp_path / "rec")
    rec = folder / "train.rec"
    _break_records(folder, [4])
    assert _script("rec_to_folders").main([str(folder), str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"{tmp_path / 'out'}: 3 identities, 8 images written, 0 already present; skipped 1 corrupt "
                          f"records ({rec}: record key 4: bad magic"), out
    assert sum(1 for path in (tmp_path / "out").rglob("*") if path.is_file()) == 8


# -- downloads: a published, pinned or first-use sha256 is checked before a file is used ---------------------
def test_a_checkpoint_without_a_published_hash_is_recorded_on_first_download_and_verified_after(
        released, tmp_path, monkeypatch, caplog):
    import dataclasses
    import hashlib

    import ghostface_keras.models.pretrained as pretrained

    unpublished = dataclasses.replace(pretrained.get_checkpoint("GhostFaceNetV1-0.5-2"), sha256=None)
    monkeypatch.setattr(pretrained, "get_checkpoint", lambda name: unpublished)
    actual = hashlib.sha256(released.read_bytes()).hexdigest()
    cache = tmp_path / "ghostface_keras" / "v1.0"
    pretrained.load_pretrained("x", cache_dir=str(tmp_path), origin=released.as_uri())
    assert (cache / "GN_W0.5_S2_ArcFace_epoch16.h5.sha256").read_text().split() == [actual]
    assert f"recorded {actual}" in caplog.text and f"sha256={actual!r}" in caplog.text  # printed, to pin it

    converted = cache / "GN_W0.5_S2_ArcFace_epoch16.keras"
    with open(converted, "ab") as handle:  # the cached conversion changed behind our back
        handle.write(b"!")
    with pytest.raises(pretrained.PretrainedError, match="is not the sha256 recorded when it was converted"):
        pretrained.load_pretrained("x", cache_dir=str(tmp_path), origin=released.as_uri())

    converted.unlink()
    with open(cache / "GN_W0.5_S2_ArcFace_epoch16.h5", "ab") as handle:  # and the download too
        handle.write(b"!")
    with pytest.raises(pretrained.PretrainedError, match="is not the sha256 recorded at its first download"):
        pretrained.load_pretrained("x", cache_dir=str(tmp_path), origin=released.as_uri())
    with pytest.raises(pretrained.PretrainedError, match=f"is not the pinned sha256 {actual}"):
        pretrained.load_pretrained("x", cache_dir=str(tmp_path), origin=released.as_uri(), sha256=actual)
    assert not converted.exists()


def _npy_member(shape: tuple, dtype: str, payload: bytes = b"") -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue() + payload


@pytest.mark.parametrize("bomb", [False, True])
def test_a_gallery_npz_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path, bomb):
    """An 800-byte .npz whose header declares 205 GB of embeddings, and a 64 MB zip bomb of zeros (64 KB on disk):
    one line each, decided from the sizes before any array is allocated or unpacked."""
    import zipfile

    path = tmp_path / "gallery.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if bomb else zipfile.ZIP_STORED) as archive:
        archive.writestr("names.npy", _npy_member((1,), "<U1", "a".encode("utf-32-le")))
        if bomb:
            with archive.open("embeddings.npy", "w") as member:
                member.write(_npy_member((131_072, 128), "<f4"))
                for _ in range(64):
                    member.write(bytes(1 << 20))
        else:
            archive.writestr("embeddings.npy", _npy_member((100_000_000, 512), "<f4", b"\0" * 64))
        archive.writestr("paths.npy", _npy_member((0,), "<U1"))
    assert path.stat().st_size < 200_000
    lines, peak = _child_max_rss_kib("import sys\nfrom ghostface_keras.faces.embedder import Gallery\nfrom ghostface_keras."
                                     "errors import DataError\ntry:\n    Gallery.load(sys.argv[1])\nexcept DataError as "
                                     "error:\n    print(error)", str(path))
    _, baseline = _child_max_rss_kib("from ghostface_keras.faces.embedder import Gallery")
    assert lines and lines[0].startswith(f"{path}: not a gallery .npz file ({path}: array 'embeddings' declares") \
        or lines[0].startswith(f"{path}: not a gallery .npz file (array 'embeddings' declares"), lines
    assert "truncated, corrupt or a decompression bomb" in lines[0]
    assert peak - baseline < 50_000
