"""`ghostface gallery ...` and `ghostface identify --gallery FOLDER`, in-process with a tiny model: the default tier.
Results are compared with the library's in-memory gallery, computed independently of the store."""

from __future__ import annotations

import csv

import keras
import numpy as np
import pytest
from PIL import Image

from ghostface_keras.cli.face import main
from ghostface_keras.data.synthetic import render_synthetic_faces
from ghostface_keras.faces.embedder import FaceEmbedder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 5, strides=4)(inputs))
    keras.Model(inputs, keras.layers.Dense(32)(features)).save(root / "model.keras")
    faces, labels = render_synthetic_faces(3, 3)
    for index, (face, label) in enumerate(zip(faces, labels)):
        (root / "people" / f"p{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(face).save(root / "people" / f"p{label}" / f"{index}.png")
    (root / "probes").mkdir()
    for index in (0, 4, 8):
        Image.fromarray(faces[index]).save(root / "probes" / f"probe{index}.png")
    return root


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_create_enroll_list_search_rename_remove_export_import(setup, tmp_path, capsys):
    model = ["--model", str(setup / "model.keras"), "--detector", "none"]
    gallery = str(tmp_path / "gallery")
    assert _run(capsys, "gallery", "create", gallery, *model)[0] == 0
    status, _, err = _run(capsys, "gallery", "enroll", gallery, str(setup / "people"), *model)
    assert status == 0 and "enrolled 9 photos" in err
    assert _run(capsys, "gallery", "list", gallery)[1].splitlines() == ["p0\t3", "p1\t3", "p2\t3"]
    output = tmp_path / "matches.csv"
    assert _run(capsys, "gallery", "search", gallery, str(setup / "probes"), *model, "-o", str(output))[0] == 0
    rows = list(csv.DictReader(output.open()))
    embedder = FaceEmbedder(str(setup / "model.keras"), detector=None)
    reference = embedder.build_gallery(setup / "people")
    assert len(rows) == 3
    for row in rows:
        expected = embedder.identify(row["probe"], reference, top_k=1)[0]
        assert row["name"] == expected.name and abs(float(row["similarity"]) - expected.similarity) < 1e-5
    status, out, _ = _run(capsys, "gallery", "search", gallery, rows[0]["probe"], *model)  # a photo, to stdout
    assert status == 0 and list(csv.DictReader(out.splitlines()))[0]["name"] == rows[0]["name"]
    status, out, _ = _run(capsys, "identify", rows[0]["probe"], "--gallery", gallery, *model)
    assert status == 0 and out.startswith(f"1. {rows[0]['name']}  similarity")
    assert _run(capsys, "gallery", "rename", gallery, "p0", "alice")[0] == 0
    assert _run(capsys, "gallery", "remove", gallery, "--person", "p1")[0] == 0
    assert _run(capsys, "gallery", "list", gallery)[1].splitlines() == ["alice\t3", "p2\t3"]
    assert _run(capsys, "gallery", "export", gallery, str(tmp_path / "g.npz"))[0] == 0
    assert np.load(tmp_path / "g.npz")["embeddings"].shape == (6, 32)
    copy = str(tmp_path / "copy")
    _run(capsys, "gallery", "create", copy, *model)
    assert _run(capsys, "gallery", "import", copy, str(tmp_path / "g.npz"))[0] == 0
    assert _run(capsys, "gallery", "list", copy)[1].splitlines() == ["alice\t3", "p2\t3"]


def test_bad_gallery_commands_are_one_line(setup, tmp_path, capsys):
    for argv, fragment in [(["gallery", "list", str(tmp_path)], "not a gallery folder"),
                           (["gallery", "remove", str(tmp_path), "--person", "x"], "not a gallery folder"),
                           (["identify", str(setup / "probes" / "probe0.png"), "--gallery", str(tmp_path / "none"),
                             "--model", str(setup / "model.keras")], "not found")]:
        status, _, err = _run(capsys, *argv)
        assert status == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    gallery = str(tmp_path / "g")
    _run(capsys, "gallery", "create", gallery, "--model", str(setup / "model.keras"), "--detector", "none")
    status, _, err = _run(capsys, "gallery", "remove", gallery, "--person", "nobody")
    assert status == 2 and "no person named 'nobody'" in err
