"""benchmarks/litert_files_latency.py: the TF-free side-by-side timer for .tflite files on other machines.

Timing values are not asserted (they depend on the machine); what is checked is what the script
promises: every file measured once per round in a fair order, the ratios relative to the first file,
GMAC/s from the given MACs, and clear errors.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

from ghostface_keras import export  # noqa: E402

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "litert_files_latency.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("litert_files_latency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("litert_files")
    inputs = keras.Input((16, 16, 3))
    small = keras.Model(inputs, keras.layers.Conv2D(4, 3, padding="same")(inputs))
    inputs = keras.Input((16, 16, 3))
    large = keras.Model(inputs, keras.layers.Conv2D(64, 3, padding="same")(keras.layers.Conv2D(64, 3, padding="same")(inputs)))
    return [export.export_tflite(small, folder / "small.tflite"), export.export_tflite(large, folder / "large.tflite")]


def test_every_file_runs_once_per_round_and_each_takes_every_slot(script):
    count = 3
    orders = [script.rotated_order(count, round_index) for round_index in range(2 * count)]
    for order in orders:
        assert sorted(order) == list(range(count))
    for file_index in range(count):
        slots = {order.index(file_index) for order in orders}
        assert slots == set(range(count))


def test_table_has_one_row_per_file_and_thread_with_ratios_to_the_first(script, two_files, capsys):
    macs = [16 * 16 * 27 * 4, 16 * 16 * (27 * 64 + 576 * 64)]
    assert script.main([str(path) for path in two_files] + ["--threads", "1,2", "--rounds", "2", "--repeats", "3",
                                                             "--macs", ",".join(map(str, macs))]) == 0
    output = capsys.readouterr().out
    assert output.startswith("CPU: ")
    rows = [line.split("|")[1:-1] for line in output.splitlines() if re.match(r"\| [12] \|", line)]
    assert [(row[0].strip(), row[1].strip()) for row in rows] == [
        ("1", "small.tflite"), ("1", "large.tflite"), ("2", "small.tflite"), ("2", "large.tflite")]
    for row, mac_count in zip(rows, macs * 2):
        milliseconds, rate = float(row[3]), float(row[5])
        assert milliseconds > 0
        # both printed rounded: milliseconds to 0.001, GMAC/s to 0.1
        np.testing.assert_allclose(rate, mac_count / milliseconds / 1e6, rtol=0.0005 / milliseconds + 1e-3, atol=0.05)
    assert {row[4].strip() for row in rows[::2]} == {"1.000"}
    # 64x more work: the larger model cannot come out faster than the small one
    assert float(rows[1][4]) > 1.0


def test_bad_arguments_are_one_line_errors(script, two_files, tmp_path, capsys):
    with pytest.raises(SystemExit) as raised:
        script.main([str(two_files[0]), "--macs", "1,2"])
    assert raised.value.code == 2
    assert "--macs has 2 values for 1 files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([str(tmp_path / "missing.tflite")])
    assert "missing.tflite: no such file" in capsys.readouterr().err
