"""Result files a person can open: a pandas table, results.json/.csv/.md, ROC and TAR@FAR plots.

`results.json` is a list with one record per verification benchmark (fields: name, pairs,
accuracy (10-fold mean), accuracy_std, best_threshold_accuracy, threshold, auc, eer, tar_at_far);
identification and bias summaries go to `identification.json` / `bias.json` beside it. Every file is
written atomically (temporary file + rename), so an interrupted run never leaves half a file.

Example:
    >>> from ghostface_keras.evaluation import write_reports
    >>> paths = write_reports([lfw_result, cfp_result], "results/")
    >>> sorted(path.name for path in paths)
    ['results.csv', 'results.json', 'results.md', 'roc.png', 'tar_at_far.png']
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ghostface_keras.evaluation.verification import VerificationResult

RECORD_FIELDS = ("name", "pairs", "accuracy", "accuracy_std", "best_threshold_accuracy", "threshold", "auc",
                 "eer", "tar_at_far")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename.

    Example:
        >>> atomic_write_text("out/results.md", "| a |\\n")
        PosixPath('out/results.md')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def results_table(records: Sequence[dict[str, Any]]) -> Any:
    """A pandas DataFrame with one row per benchmark; `tar_at_far` is spread into `TAR@FAR=<far>` columns.

    Example:
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


def markdown_table(table: Any, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table of a DataFrame (no `tabulate` dependency).

    Example:
        >>> print(markdown_table(pd.DataFrame([{"name": "lfw", "accuracy": 0.99}])))
        | name | accuracy |
        | --- | --- |
        | lfw | 0.9900 |
    """
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "-"
        if isinstance(value, (float, np.floating)):
            return f"{value:.{digits}f}"
        return str(value)

    lines = ["| " + " | ".join(str(column) for column in table.columns) + " |",
             "| " + " | ".join("---" for _ in table.columns) + " |"]
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(cell(value) for value in row) + " |")
    return "\n".join(lines) + "\n"


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
        >>> write_reports([result], "out", extra={"bias": rfw_summary(groups)})
    """
    output = Path(output_dir)
    records = [_json_ready(result.record()) for result in results]
    written = [atomic_write_text(output / "results.json", json.dumps(records, indent=2) + "\n")]
    table = results_table(records)
    written.append(atomic_write_text(output / "results.csv", table.to_csv(index=False)))
    written.append(atomic_write_text(output / "results.md", markdown_table(table)))
    for stem, document in (extra or {}).items():
        written.append(atomic_write_text(output / f"{stem}.json", json.dumps(_json_ready(document), indent=2) + "\n"))
    if plots and results:
        written.append(plot_roc(results, output / "roc.png"))
        written.append(plot_tar_at_far(records, output / "tar_at_far.png"))
    return written


def _save_figure(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, dpi=120, bbox_inches="tight")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path


def plot_roc(results: Sequence[VerificationResult], path: str | os.PathLike) -> Path:
    """All benchmarks' ROC curves on one log-FAR figure (PNG).

    Example:
        >>> plot_roc([lfw, cfp_fp], "out/roc.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 5))
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
    try:
        return _save_figure(figure, Path(path))
    finally:
        plt.close(figure)


def plot_tar_at_far(records: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Grouped bars: TAR at each FAR, one group per benchmark (PNG).

    Example:
        >>> plot_tar_at_far([result.record()], "out/tar_at_far.png")
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fars = sorted({far for record in records for far in (record.get("tar_at_far") or {})}, key=float)
    figure, axis = plt.subplots(figsize=(max(6, 1.5 * len(records) + 2), 4.5))
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
    try:
        return _save_figure(figure, Path(path))
    finally:
        plt.close(figure)
