"""The two failures found at 66a89ae, as a class: special files (FIFOs, devices, folders) are refused before any
read, in every command; non-finite embeddings are refused wherever they enter (gallery files, models). Each case
would hang or answer "similarity nan" with exit 0 before the fix; the time-out turns a hang into a failure."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.cli.face import main as face_main
from ghostface_keras.core.errors import DataError
from ghostface_keras.core.files import check_regular_file, load_npz
from ghostface_keras.core.images import load_rgb_image
from ghostface_keras.faces.embedder import FaceEmbedder, Gallery

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    inputs = keras.Input((112, 112, 3))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, keras.layers.Dense(8)(keras.layers.GlobalAveragePooling2D()(inputs))).save(path)
    return path


@pytest.fixture()
def fifo(tmp_path):
    path = tmp_path / "photo.jpg"
    os.mkfifo(path)
    return path


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "real.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (112, 112, 3), np.uint8)).save(path)
    return path


def _one_line(capsys, status):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_check_regular_file_names_each_kind(tmp_path, fifo):
    with pytest.raises(DataError, match=r"photo.jpg: is a FIFO \(named pipe\), not a regular file"):
        check_regular_file(fifo)
    with pytest.raises(DataError, match="is a character device"):
        check_regular_file("/dev/zero")
    with pytest.raises(DataError, match="is a folder"):
        check_regular_file(tmp_path)
    check_regular_file(tmp_path / "missing.jpg")  # missing: left to the reader's own "not found"


def test_library_readers_refuse_fifos_and_devices_without_reading(fifo, tmp_path):
    with pytest.raises(DataError, match="is a FIFO"):
        load_rgb_image(fifo)
    with pytest.raises(DataError, match="is a character device"):
        load_rgb_image("/dev/zero")  # would be read without end
    npz_fifo = tmp_path / "gallery.npz"
    os.mkfifo(npz_fifo)
    with pytest.raises(DataError, match="gallery.npz: is a FIFO"):
        load_npz(npz_fifo)


def test_verify_identify_and_embed_refuse_a_fifo_in_one_line(model_file, fifo, photo, tmp_path, capsys):
    common = ["--model", str(model_file), "--detector", "none"]
    line = _one_line(capsys, face_main(["verify", str(fifo), str(photo), *common]))
    assert line == f"ghostface: error: {fifo}: is a FIFO (named pipe), not a regular file"
    line = _one_line(capsys, face_main(["embed", str(photo), "/dev/zero", "-o", str(tmp_path / "e.npz"), *common]))
    assert "/dev/zero: is a character device" in line
    model_fifo = tmp_path / "model.keras"
    os.mkfifo(model_fifo)
    line = _one_line(capsys, face_main(["verify", str(photo), str(photo), "--model", str(model_fifo)]))
    assert "model.keras: is a FIFO (named pipe), not a regular file" in line
    gallery_fifo = tmp_path / "known.npz"
    os.mkfifo(gallery_fifo)
    line = _one_line(capsys, face_main(["identify", str(photo), "--gallery", str(gallery_fifo), *common]))
    assert "known.npz: not a gallery .npz file (is a FIFO (named pipe), not a regular file)" in line


def test_a_gallery_holding_a_nan_embedding_is_refused_not_answered_nan(model_file, photo, tmp_path, capsys):
    embeddings = np.eye(2, 8, dtype=np.float32)
    embeddings[1, 0] = np.nan
    path = tmp_path / "known.npz"
    np.savez(path, names=np.array(["alice", "bob"]), embeddings=embeddings, paths=np.array(["a.jpg", "b.jpg"]))
    with pytest.raises(DataError, match=r"row 2 \(bob\): its embedding holds NaN or infinity"):
        Gallery.load(path)
    line = _one_line(capsys, face_main(["identify", str(photo), "--gallery", str(path), "--model", str(model_file),
                                        "--detector", "none"]))
    assert "row 2 (bob): its embedding holds NaN or infinity" in line and "nan" not in line.split(":")[-1]


def test_a_model_that_outputs_nan_or_inf_is_refused(photo):
    for bad in (np.nan, np.inf):
        embedder = FaceEmbedder(lambda batch, bad=bad: np.full((len(batch), 8), bad, np.float32), detector=None)
        with pytest.raises(DataError, match="gave NaN or infinite embeddings for 1 of 1 faces"):
            embedder.embed(photo)
        with pytest.raises(DataError, match="NaN or infinite"):
            embedder.verify(photo, photo)
