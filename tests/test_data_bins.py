"""Verification .bin files: safe loading, real insightface file, round trip, make_bin CLI."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ghostface_keras.data import load_bin, save_bin
from ghostface_keras.core.errors import DataError

PROJECT = Path(__file__).resolve().parents[1]


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class _RunsCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("__import__('os').system('true')",))


@pytest.mark.parametrize("payload", ["os.system", "eval"])
def test_malicious_bin_raises_and_runs_nothing(tmp_path, payload):
    marker = tmp_path / "pwned"
    evil = _RunsCommand(f"touch {marker}") if payload == "os.system" else _CallsEval()
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", evil], [True])))
    with pytest.raises(DataError, match="evil.bin"):
        load_bin(path)
    assert not marker.exists()


def test_truncated_bin_names_the_file(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    whole = save_bin(tmp_path / "whole.bin", images, [True, False]).read_bytes()
    (tmp_path / "trunc.bin").write_bytes(whole[: len(whole) // 3])
    with pytest.raises(DataError, match="trunc.bin"):
        load_bin(tmp_path / "trunc.bin")


@pytest.mark.parametrize(
    "content, message",
    [((["a"], [True]), "image entry 0"), (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"), ("text", "pair")],
)
def test_malformed_bins_are_data_errors(tmp_path, content, message):
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content))
    with pytest.raises(DataError, match=message):
        load_bin(path)


def test_png_round_trip_is_exact(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    loaded, issame = load_bin(save_bin(tmp_path / "x.bin", images, [True, False, True]))
    np.testing.assert_array_equal(loaded, images)
    assert issame.dtype == bool and issame.tolist() == [True, False, True]


@pytest.mark.parametrize("protocol", [2, 4])
@pytest.mark.parametrize("entry_type", ["bytes", "numpy", "bytearray"])
def test_raw_and_reformatted_layouts_load(tmp_path, protocol, entry_type):
    """Old insightface files hold numpy / buffer entries (why official `-T` exists); `-T` files hold bytes."""
    images = np.random.default_rng(2).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    encoded = [_png(image) for image in images]
    wrap = {"bytes": bytes, "numpy": lambda b: np.frombuffer(b, np.uint8), "bytearray": bytearray}[entry_type]
    path = tmp_path / "legacy.bin"
    path.write_bytes(pickle.dumps(([wrap(e) for e in encoded], np.array([True])), protocol=protocol))
    loaded, issame = load_bin(path)
    np.testing.assert_array_equal(loaded, images)
    assert issame.tolist() == [True]


def test_celeba_val_pairs_bin_matches_its_jpegs(data_dir):
    folder = data_dir / "celeba_aligned112"
    images, issame = load_bin(folder / "val_pairs.bin")
    assert images.shape == (1200, 112, 112, 3) and images.dtype == np.uint8
    assert issame.shape == (600,) and issame.sum() == 300
    with open(folder / "val_pairs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["same"] == "1" for row in rows] == issame.tolist()
    for pair in (0, 1, 299, 599):  # decoded independently with Pillow straight from the files
        for side, column in enumerate(("image_a", "image_b")):
            expected = np.asarray(Image.open(folder / rows[pair][column]).convert("RGB"))
            np.testing.assert_array_equal(images[2 * pair + side], expected)


def test_bin_pixels_equal_tensorflow_accurate_jpeg_decode(data_dir):
    import tensorflow as tf

    folder = data_dir / "celeba_aligned112"
    images, _ = load_bin(folder / "val_pairs.bin")
    with open(folder / "val_pairs.csv", newline="") as handle:
        first = next(csv.DictReader(handle))["image_a"]
    decoded = tf.io.decode_jpeg((folder / first).read_bytes(), channels=3, dct_method="INTEGER_ACCURATE").numpy()
    np.testing.assert_array_equal(images[0], decoded)


def _load_cli():
    spec = importlib.util.spec_from_file_location("make_bin_cli", PROJECT / "data_prep" / "make_bin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args):
    """The CLI's main() in-process (a subprocess would pay TensorFlow's import each time)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = _load_cli().main([str(arg) for arg in args])
    return subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())


def _tiny_folder(root, identities=4, shots=3):
    rng = np.random.default_rng(3)
    for identity in range(identities):
        (root / str(identity)).mkdir(parents=True)
        for shot in range(shots):
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / str(identity) / f"{shot}.png")
    return root


def test_make_bin_from_csv_keeps_file_bytes(tmp_path):
    root = _tiny_folder(tmp_path / "faces")
    (tmp_path / "pairs.csv").write_text("image_a,image_b,same\n0/0.png,0/1.png,1\n1/0.png,2/2.png,0\n")
    result = _run(root, tmp_path / "out.bin", "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 0, result.stderr
    encoded, issame = pickle.loads((tmp_path / "out.bin").read_bytes())
    assert issame == [True, False]
    assert encoded[0] == (root / "0" / "0.png").read_bytes() and encoded[3] == (root / "2" / "2.png").read_bytes()


def test_make_bin_draws_pairs_in_folds(tmp_path):
    root = _tiny_folder(tmp_path / "faces")
    result = _run(root, tmp_path / "drawn.bin", "--num-pairs", 10, "--seed", 0)
    assert result.returncode == 0, result.stderr
    images, issame = load_bin(tmp_path / "drawn.bin")
    assert images.shape == (40, 112, 112, 3)
    assert issame.tolist() == [True, False] * 10  # 10 folds, each its positives then its negatives
    index_of = {}
    for label in range(4):
        for shot in range(3):
            index_of[np.asarray(Image.open(root / str(label) / f"{shot}.png")).tobytes()] = label
    labels = [index_of[image.tobytes()] for image in images]
    same = [labels[2 * i] == labels[2 * i + 1] for i in range(20)]
    assert same == issame.tolist()


def test_make_bin_bad_input_is_one_line(tmp_path):
    (tmp_path / "pairs.csv").write_text("image_a,image_b,same\nmissing.png,x.png,1\n")
    _tiny_folder(tmp_path / "faces")
    result = _run(tmp_path / "faces", tmp_path / "o.bin", "--pairs", tmp_path / "pairs.csv")
    assert result.returncode == 2 and "missing.png" in result.stderr and "Traceback" not in result.stderr
