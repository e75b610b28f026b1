"""Demographic bias on RFW (Racial Faces in-the-Wild): per-group accuracy, their mean, std and SER.

RFW has four test groups (African, Asian, Caucasian, Indian), 6,000 pairs each, in 10 folds. Each
group is evaluated with the usual 10-fold verification protocol; the summary gives
- `mean`: mean of the group accuracies;
- `std`: their sample standard deviation (ddof = 1, as the RFW bias tables report it);
- `ser`: skewed error ratio = highest group error / lowest group error (1.0 = no skew).

The expected input is one insightface-style `.bin` per group in a folder, named after the group
(`African_test.bin`, `asian.bin`, ...: the first `.bin` whose file name contains the group name as a
word, case-insensitive).

Example:
    >>> from ghostface_keras.evaluation import rfw_summary
    >>> rfw_summary({"Caucasian": 0.9215, "Indian": 0.88, "Asian": 0.8398, "African": 0.8493})["ser"]
    2.0407...
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import numpy as np

from ghostface_keras.core.errors import DataError

RFW_GROUPS = ("African", "Asian", "Caucasian", "Indian")


def rfw_summary(group_accuracies: Mapping[str, float]) -> dict[str, Any]:
    """Mean, std (ddof=1) and skewed error ratio of per-group accuracies (fractions in [0, 1]).

    Example:
        >>> summary = rfw_summary({"A": 0.9, "B": 0.8})
        >>> round(summary["mean"], 3), round(summary["ser"], 3)
        (0.85, 2.0)
    """
    if len(group_accuracies) < 2:
        raise DataError(f"bias needs at least 2 groups, got {list(group_accuracies)}")
    accuracies = np.array([float(value) for value in group_accuracies.values()])
    errors = 1.0 - accuracies
    lowest_error = errors.min()
    ser = float(errors.max() / lowest_error) if lowest_error > 0 else float("inf")
    return {
        "groups": {name: float(value) for name, value in group_accuracies.items()},
        "mean": float(accuracies.mean()),
        "std": float(accuracies.std(ddof=1)),
        "ser": ser,
    }


def find_rfw_bins(folder: str | os.PathLike, groups: tuple[str, ...] = RFW_GROUPS) -> dict[str, Path]:
    """The `.bin` of each RFW group in `folder`, by file name.

    Raises:
        DataError: the folder does not exist or a group has no `.bin`.

    Example:
        >>> import tempfile
        >>> rfw = Path(tempfile.mkdtemp())
        >>> for name in ["African_test.bin", "Asian_test.bin", "Caucasian_test.bin", "indian.bin"]:
        ...     (rfw / name).touch()
        >>> {group: path.name for group, path in find_rfw_bins(rfw).items()}
        {'African': 'African_test.bin', 'Asian': 'Asian_test.bin', 'Caucasian': 'Caucasian_test.bin',
         'Indian': 'indian.bin'}
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: RFW folder not found")
    candidates = sorted(root.glob("*.bin"))
    found, missing = {}, []
    for group in groups:
        # a whole word, so that "Caucasian.bin" is not taken for the Asian group
        word = re.compile(rf"(?<![a-z]){group.lower()}(?![a-z])")
        matches = [path for path in candidates if word.search(path.stem.lower())]
        if matches:
            found[group] = matches[0]
        else:
            missing.append(group)
    if missing:
        raise DataError(f"{root}: no .bin for RFW group(s) {', '.join(missing)} "
                        f"(expected files named like {missing[0]}_test.bin)")
    return found
