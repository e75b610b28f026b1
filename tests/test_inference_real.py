"""FaceEmbedder with the real MTCNN detector and (slow) the official GhostFaceNets checkpoint on real photos."""

from __future__ import annotations

import csv
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mtcnn")

from ghostface_keras.core.errors import NoFaceError  # noqa: E402
from ghostface_keras.cli.face import main  # noqa: E402
from ghostface_keras.faces.embedder import FaceEmbedder  # noqa: E402


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(11)
    inputs = keras.Input((112, 112, 3))
    outputs = keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs))
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def blank_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "blank wall.jpg"
    Image.new("RGB", (320, 240), (200, 200, 200)).save(path)
    return path


def test_blank_photo_raises_no_face_error_naming_it(tiny_model_file, blank_photo):
    embedder = FaceEmbedder(str(tiny_model_file))  # default detector: MTCNN
    with pytest.raises(NoFaceError, match="blank wall.jpg: no face found"):
        embedder.embed(blank_photo)


def test_blank_photo_gives_a_clean_cli_message(tiny_model_file, blank_photo, capsys):
    status = main(["verify", str(blank_photo), str(blank_photo), "--model", str(tiny_model_file)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.err == f"ghostface: error: {blank_photo}: no face found\n"
    assert "Traceback" not in captured.out + captured.err


def _best_threshold_accuracy(similarities: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    candidates = np.unique(similarities)
    accuracies = [float(np.mean((similarities >= threshold) == same)) for threshold in candidates]
    best = int(np.argmax(accuracies))
    return accuracies[best], float(candidates[best])


# the released real-size checkpoint on 300 real photo pairs: large tier (BlazeFace) and slow tier (MTCNN)
@pytest.mark.parametrize("detector", [pytest.param("blazeface", marks=pytest.mark.large),
                                      pytest.param("mtcnn", marks=pytest.mark.slow)])
def test_official_checkpoint_on_deepface_pairs(data_dir, detector):
    """Must-show: detection coverage and best-threshold accuracy of GN_W0.5 on unaligned real photos, with the
    default detector (BlazeFace, seconds) and MTCNN (slow).

    The independent reference is the dataset README: the same checkpoint, aligned by the data
    collector's own pipeline, separates all 300 pairs (accuracy 1.000; mean cosine 0.679 / 0.016).
    """
    convert = pytest.importorskip("ghostface_keras.models.official")
    checkpoint = data_dir / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
    folder = data_dir / "deepface_verification_pairs"
    if not checkpoint.is_file() or not folder.is_dir():
        pytest.skip("official checkpoint or deepface pairs not available")
    embedder = FaceEmbedder(convert.load_official(str(checkpoint)), detector=detector)

    with open(folder / "master.csv", newline="") as handle:
        pairs = [(row["file_x"], row["file_y"], row["Decision"] == "Yes") for row in csv.DictReader(handle)]
    names = sorted({name for a, b, _ in pairs for name in (a, b)})
    embeddings = dict(zip(names, embedder.embed_batch([folder / name for name in names], skip_missing=True)))
    found = {name for name, vector in embeddings.items() if not np.isnan(vector).any()}
    usable = [(a, b, same) for a, b, same in pairs if a in found and b in found]
    similarities = np.array([float(embeddings[a] @ embeddings[b]) for a, b, _ in usable])
    same = np.array([flag for _, _, flag in usable])
    accuracy, threshold = _best_threshold_accuracy(similarities, same)
    print(f"\ndetection coverage {len(found)}/{len(names)} images, {len(usable)}/{len(pairs)} pairs; "
          f"best-threshold accuracy {accuracy:.4f} at {threshold:.3f}; default-threshold "
          f"({embedder.threshold}) accuracy {np.mean((similarities >= embedder.threshold) == same):.4f}; "
          f"mean cosine same {similarities[same].mean():.3f} / different {similarities[~same].mean():.3f}")
    assert len(found) == len(names) == 25
    assert accuracy >= 0.99
    assert similarities[same].mean() == pytest.approx(0.679, abs=0.03)
