"""Result files a person can open: a pandas table, results.json/.csv/.md, ROC and TAR@FAR plots.

`results.json` is a list with one record per verification benchmark (fields: name, pairs,
accuracy (10-fold mean), accuracy_std, best_threshold_accuracy, threshold, auc, eer, tar_at_far);
identification and bias summaries go to `identification.json` / `bias.json` beside it. Every file is
written by `ghostface_keras.core.files.write_atomically`, so an interrupted run never leaves half a file. Plots are
`matplotlib.figure.Figure`s: the plotting backend of the caller's process is never switched.

Example:
    >>> import tempfile
    >>> from ghostface_keras.evaluation import verification_metrics, write_reports
    >>> lfw_result = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, name="lfw")
    >>> cfp_result = verification_metrics([0.9, 0.2, 0.6, 0.1] * 5, [True, True, False, False] * 5, name="cfp_fp")
    >>> paths = write_reports([lfw_result, cfp_result], tempfile.mkdtemp())
    >>> sorted(path.name for path in paths)
    ['results.csv', 'results.json', 'results.md', 'roc.png', 'tar_at_far.png']
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np

from ghostface_keras.evaluation.verification import VerificationResult
from ghostface_keras.core.files import write_atomically
from ghostface_keras.core.tables import markdown_table

RECORD_FIELDS = ("name", "pairs", "accuracy", "accuracy_std", "best_threshold_accuracy", "threshold", "auc",
                 "eer", "tar_at_far")


def results_table(records: Sequence[dict[str, Any]]) -> Any:
    """A pandas DataFrame with one row per benchmark; `tar_at_far` is spread into `TAR@FAR=<far>` columns.

    Example:
        >>> from ghostface_keras.evaluation import verification_metrics
        >>> result = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, name="toy")
        >>> results_table([result.record()]).columns[:3].tolist()
        ['name', 'pairs', 'accuracy']
    """
    import pandas as pd

    rows = []
    for record in records:
        row = {key: record.get(key) for key in RECORD_FIELDS if key != "tar_at_far"}
        for far, tar in sorted((record.get("tar_at_far") or {}).items(), key=lambda item: -float(item[0])):
            row[f"TAR@FAR={far}"] = tar
        rows.append(row)
    return pd.DataFrame(rows)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def write_reports(results: Sequence[VerificationResult], output_dir: str | os.PathLike,
                  extra: dict[str, Any] | None = None, plots: bool = True) -> list[Path]:
    """Write results.json/.csv/.md (+ roc.png, tar_at_far.png, and one JSON per `extra` entry).

    Args:
        results: verification results (bins, IJB 1:1, RFW groups, folders).
        extra: other JSON documents by file stem, e.g. {"identification": [...], "bias": {...}}.

    Example:
        >>> import tempfile
        >>> from ghostface_keras.evaluation import rfw_summary, verification_metrics
        >>> result = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, name="toy")
        >>> groups = {"African": 0.85, "Asian": 0.84, "Caucasian": 0.92, "Indian": 0.88}   # RFW accuracies
        >>> paths = write_reports([result], tempfile.mkdtemp(), extra={"bias": rfw_summary(groups)}, plots=False)
        >>> [path.name for path in paths]
        ['results.json', 'results.csv', 'results.md', 'bias.json']
    """
    output = Path(output_dir)
    records = [_json_ready(result.record()) for result in results]
    written = [write_atomically(output / "results.json", json.dumps(records, indent=2) + "\n")]
    table = results_table(records)
    written.append(write_atomically(output / "results.csv", table.to_csv(index=False)))
    written.append(write_atomically(output / "results.md", markdown_table(table)))
    for stem, document in (extra or {}).items():
        written.append(write_atomically(output / f"{stem}.json", json.dumps(_json_ready(document), indent=2) + "\n"))
    if plots and results:
        written.append(plot_roc(results, output / "roc.png"))
        written.append(plot_tar_at_far(records, output / "tar_at_far.png"))
    return written


def _save_figure(figure: Any, path: Path) -> Path:
    return write_atomically(path, lambda temporary: figure.savefig(temporary, format="png", dpi=120,
                                                                   bbox_inches="tight"))


def plot_roc(results: Sequence[VerificationResult], path: str | os.PathLike) -> Path:
    """All benchmarks' ROC curves on one log-FAR figure (PNG).

    Example:
        >>> import tempfile
        >>> from ghostface_keras.evaluation import verification_metrics
        >>> lfw = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, name="lfw")
        >>> cfp_fp = verification_metrics([0.9, 0.2, 0.6, 0.1] * 5, [True, True, False, False] * 5, name="cfp_fp")
        >>> plot_roc([lfw, cfp_fp], Path(tempfile.mkdtemp()) / "roc.png").name
        'roc.png'
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5))
    axis = figure.subplots()
    for result in results:
        usable = result.far > 0
        if usable.any():
            axis.plot(result.far[usable], result.tar[usable], label=f"{result.name} (AUC {result.auc:.4f})")
    axis.set_xscale("log")
    axis.set_xlabel("false accept rate (FAR)")
    axis.set_ylabel("true accept rate (TAR)")
    axis.set_ylim(0.0, 1.01)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    axis.set_title("ROC")
    return _save_figure(figure, Path(path))


def plot_tar_at_far(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: TAR at each FAR, one group per benchmark (PNG).

    Example:
        >>> import tempfile
        >>> from ghostface_keras.evaluation import verification_metrics
        >>> result = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, name="toy")
        >>> plot_tar_at_far([result.record()], Path(tempfile.mkdtemp()) / "tar_at_far.png").name
        'tar_at_far.png'
    """
    from matplotlib.figure import Figure

    fars = sorted({far for record in records for far in (record.get("tar_at_far") or {})}, key=float)
    figure = Figure(figsize=(max(6, 1.5 * len(records) + 2), 4.5))
    axis = figure.subplots()
    width = 0.8 / max(len(fars), 1)
    positions = np.arange(len(records))
    for offset, far in enumerate(fars):
        values = [(record.get("tar_at_far") or {}).get(far, np.nan) for record in records]
        axis.bar(positions + offset * width, values, width, label=f"FAR={far}")
    axis.set_xticks(positions + width * (len(fars) - 1) / 2)
    axis.set_xticklabels([record["name"] for record in records], rotation=20, ha="right", rotation_mode="anchor")
    axis.set_ylabel("TAR")
    axis.set_ylim(0.0, 1.05)
    axis.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axis.set_title("TAR at FAR")
    return _save_figure(figure, Path(path))
