"""eval.py end to end on tiny models and synthetic .bin files; report files; real-data checks (skip without ../shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pd = pytest.importorskip("pandas")
sklearn_metrics = pytest.importorskip("sklearn.metrics")
from sklearn.model_selection import KFold  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]

from ghostface_keras.cli import evaluate as eval_cli  # noqa: E402
from ghostface_keras.evaluation import evaluate_verification  # noqa: E402
from ghostface_keras.core.preprocessing import normalize_images  # noqa: E402

RECORD_FIELDS = ["name", "pairs", "accuracy", "accuracy_std", "best_threshold_accuracy", "threshold", "auc", "eer",
                 "tar_at_far"]


def _save_bin(path, images, issame):
    from ghostface_keras.data import save_bin

    save_bin(path, images, issame)
    return path


def _identity_pairs(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """112x112 pairs: same pairs share a random colour pattern (plus noise), different pairs do not."""
    rng = np.random.default_rng(seed)
    issame = np.arange(count) % 2 == 0
    images = np.empty((2 * count, 112, 112, 3), np.uint8)
    for pair in range(count):
        base = rng.integers(0, 256, (14, 14, 3))
        other = base + rng.normal(0, 90, base.shape) if issame[pair] else rng.integers(0, 256, (14, 14, 3))
        for slot, pattern in ((0, base), (1, other)):
            noisy = np.kron(pattern, np.ones((8, 8, 1))) + rng.normal(0, 20, (112, 112, 3))
            images[2 * pair + slot] = np.clip(noisy, 0, 255).astype(np.uint8)
    return images, issame


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    x = keras.layers.AveragePooling2D(8)(inputs)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(32, use_bias=False)(x)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bins")
    return [str(_save_bin(folder / f"{name}.bin", *_identity_pairs(40, seed)))
            for seed, name in enumerate(["lfw", "cfp_fp"])]


def test_eval_cli_writes_every_report(tiny_model_path, bins, tmp_path, capsys):
    output = tmp_path / "out"
    status = eval_cli.main(["--model", str(tiny_model_path), "--bins", *bins, "--output", str(output),
                            "--batch-size", "16", "--quiet"])
    assert status == 0
    records = json.loads((output / "results.json").read_text())
    assert [list(record) for record in records] == [RECORD_FIELDS, RECORD_FIELDS]
    assert [record["name"] for record in records] == ["lfw", "cfp_fp"]
    from ghostface_keras.data import load_bin

    images, issame = load_bin(bins[0])
    expected = evaluate_verification(str(tiny_model_path), images, issame, name="lfw", batch_size=7)
    assert records[0]["tar_at_far"] == pytest.approx(expected.pop("tar_at_far"))
    assert {key: records[0][key] for key in expected} == pytest.approx(expected)
    assert 0.6 < records[0]["accuracy"] < 1.0  # a case that tells thresholds apart
    table = pd.read_csv(output / "results.csv")
    assert table["accuracy"].tolist() == pytest.approx([record["accuracy"] for record in records])
    assert (output / "results.md").read_text().startswith("| name | pairs | accuracy |")
    assert (output / "roc.png").stat().st_size > 1000 and (output / "tar_at_far.png").stat().st_size > 1000
    assert "lfw" in capsys.readouterr().out


def test_eval_cli_rfw_and_folder(tiny_model_path, tmp_path):
    from PIL import Image

    rfw = tmp_path / "rfw"
    rfw.mkdir()
    for seed, group in enumerate(["African", "Asian", "Caucasian", "Indian"]):
        _save_bin(rfw / f"{group}_test.bin", *_identity_pairs(20, 10 + seed))
    folder = tmp_path / "people"
    images, _ = _identity_pairs(6, 20)
    for pair in (0, 2, 4):  # "same" pairs: 3 identities of 2 images each
        (folder / f"id{pair}").mkdir(parents=True)
        for slot in range(2):
            Image.fromarray(images[2 * pair + slot]).save(folder / f"id{pair}" / f"{slot}.png")
    output = tmp_path / "out"
    status = eval_cli.main(["--model", str(tiny_model_path), "--rfw", str(rfw), "--folder", str(folder),
                            "--gallery", str(folder), "--probes", str(folder),
                            "--output", str(output), "--quiet", "--no-flip", "--no-plots"])
    assert status == 0
    records = json.loads((output / "results.json").read_text())
    assert [record["name"] for record in records] == ["RFW-African", "RFW-Asian", "RFW-Caucasian", "RFW-Indian",
                                                      "people"]
    bias = json.loads((output / "bias.json").read_text())
    accuracies = [record["accuracy"] for record in records[:4]]
    assert bias["mean"] == pytest.approx(np.mean(accuracies))
    assert bias["ser"] == pytest.approx((1 - min(accuracies)) / (1 - max(accuracies)))
    identification = json.loads((output / "identification.json").read_text())
    assert identification[0]["probes"] == 6 and 0.0 <= identification[0]["rank_1"] <= 1.0
    assert identification[1]["rank_1"] == 1.0  # probes identical to gallery images find themselves
    assert not (output / "roc.png").exists()


def test_wrong_model_and_bad_bin_give_one_line_errors(tiny_model_path, bins, tmp_path, capsys):
    status = eval_cli.main(["--model", str(tmp_path / "nope.keras"), "--bins", *bins, "--output", str(tmp_path)])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and error == [f"ghostface-eval: error: {tmp_path / 'nope.keras'}: model file not found"]
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\x80\x04garbage")
    status = eval_cli.main(["--model", str(tiny_model_path), "--bins", str(bad), "--output", str(tmp_path),
                            "--quiet"])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1 and "bad.bin" in error[0]
    status = eval_cli.main(["--model", str(tiny_model_path), "--bins", str(tmp_path / "missing.bin"),
                            "--output", str(tmp_path), "--quiet"])
    assert status == 2 and "missing.bin: .bin file not found" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter importing TensorFlow: ~25 s on a busy 2-core machine
def test_script_runs_as_a_program_and_fails_cleanly(tmp_path):
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "eval.py"), "--model", str(tmp_path / "x.tflite"),
                             "--bins", "a.bin", "--output", str(tmp_path)], capture_output=True, text=True,
                            cwd=PROJECT_ROOT, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("ghostface-eval: error:")


# --------------------------------------------------------------------------------------------------
# Real data: CelebA val pairs with the converted official GN_W0.5 checkpoint
# --------------------------------------------------------------------------------------------------
def _independent_ten_fold(scores, issame):
    distance = 2.0 - 2.0 * scores
    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(scores):
        grid = np.arange(0, 4, 0.01)
        best = grid[int(np.argmax([np.mean((distance[train] < t) == issame[train]) for t in grid]))]
        accuracies.append(np.mean((distance[test] < best) == issame[test]))
    return np.mean(accuracies)


def _official_model(data_dir):
    convert = pytest.importorskip("ghostface_keras.models.official")
    if not hasattr(convert, "load_official"):
        pytest.skip("ghostface_keras.models.official.load_official has not landed")
    return convert.load_official(str(data_dir / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"))


def _check_against_independent_metrics(model, images, issame):
    record = evaluate_verification(model, images, issame, name="celeba_val", batch_size=50)
    inputs = normalize_images(images)
    both = model.predict(np.concatenate([inputs, inputs[:, :, ::-1]]), verbose=0, batch_size=64)
    raw = both[:len(inputs)] + both[len(inputs):]
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    scores = np.sum(unit[0::2] * unit[1::2], axis=1)
    assert record["auc"] == pytest.approx(sklearn_metrics.roc_auc_score(issame, scores), abs=1e-4)
    assert record["accuracy"] == pytest.approx(_independent_ten_fold(scores, issame), abs=1e-9)
    return record


@pytest.mark.slow  # converts the official checkpoint and embeds 1,200 images twice (~2 min on 2 busy cores)
def test_real_val_pairs_bin_with_official_checkpoint(data_dir):
    from ghostface_keras.data import load_bin

    model = _official_model(data_dir)
    images, issame = load_bin(data_dir / "celeba_aligned112" / "val_pairs.bin")
    record = _check_against_independent_metrics(model, images, issame)
    assert record["accuracy"] > 0.9 and record["auc"] > 0.95
