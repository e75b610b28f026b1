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
from ghostface_keras.files import remove_stale_partials, write_atomically

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
    from ghostface_keras.errors import ModelLoadError
    from ghostface_keras.loading import load_model

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
    from ghostface_keras.inference import Gallery

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
    from ghostface_keras.errors import DataError

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
    from ghostface_keras.errors import DataError

    path = save_bin(tmp_path / "pairs.bin", np.zeros((4, 112, 112, 3), np.uint8), [True, False])
    cut = _pickle_file(tmp_path / "cut.bin", path.read_bytes()[:-40])
    with pytest.raises(DataError) as raised:
        load_bin(cut)
    assert str(raised.value).startswith(f"{cut}: truncated or corrupt .bin")


def test_a_huge_canvas_is_refused_from_its_header(tmp_path, model_file, capsys):
    """A small PNG declaring 100 megapixels: refused before its pixels are allocated, in one line."""
    import struct
    import zlib

    from ghostface_keras.images import MAX_PIXELS

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
    assert line == (f"ghostface: error: {photo}: 10000x10000 pixels is more than the 50 megapixels a photo may have "
                    "here (ghostface_keras.images.MAX_PIXELS)")
