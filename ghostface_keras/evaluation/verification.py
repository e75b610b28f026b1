"""Pair verification metrics: the insightface 10-fold protocol, best-threshold accuracy, ROC, EER, TAR@FAR.

Every metric works on similarity scores (cosine of L2-normalized embeddings: higher = more alike) and
boolean labels (True = same person). A pair is predicted "same" when its score is strictly above the
threshold, which is insightface's `distance < threshold` rule rewritten for cosines
(squared distance of unit vectors = 2 - 2 cos).

Two accuracies are reported, and they are not the same thing (state which one you quote):
- `accuracy` / `accuracy_std`: the 10-fold protocol of the LFW-style benchmarks (sequential folds, the
  threshold picked on 9 folds, accuracy measured on the held-out one; mean and std over the folds).
  This is the number papers report.
- `best_threshold_accuracy`: the best accuracy over every threshold on all pairs (optimistic, not
  cross-validated; the official code's "max accuracy" picks from a subset of these thresholds).

Example:
    >>> import numpy as np
    >>> from ghostface_keras.evaluation import evaluate_verification
    >>> embeddings = np.random.default_rng(0).normal(size=(200, 8))   # 100 pairs: rows 2i, 2i+1
    >>> record = evaluate_verification(embeddings, issame=np.arange(100) % 2 == 0, name="toy")
    >>> sorted(record)[:3]
    ['accuracy', 'accuracy_std', 'auc']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Iterable, Sequence

import numpy as np

from ghostface_keras.core.errors import DataError
from ghostface_keras.core.numeric import l2_normalize

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
# insightface's grid of squared-distance thresholds, np.arange(0, 4, 0.01), seen as cosines
INSIGHTFACE_DISTANCE_GRID = np.arange(0.0, 4.0, 0.01)


# --------------------------------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------------------------------
def pair_scores(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity of pairs laid out as in `.bin` files: pair i = rows 2i and 2i+1.

    Example:
        >>> pair_scores(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])).tolist()
        [1.0, 0.0]
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) % 2:
        raise DataError(f"pair embeddings must be a (2N, D) array, got shape {embeddings.shape}")
    unit = l2_normalize(embeddings)
    return np.sum(unit[0::2] * unit[1::2], axis=1).astype(np.float64)


def _checked(scores: Any, issame: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(issame).reshape(-1).astype(bool)
    if len(scores) != len(labels):
        raise DataError(f"{len(scores)} scores but {len(labels)} labels")
    if not np.all(np.isfinite(scores)):
        raise DataError(f"{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite (diverged model?)")
    if labels.all() or not labels.any():
        raise DataError("verification needs both genuine (same) and impostor (different) pairs")
    return scores, labels


def _accuracy_at(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Accuracy of `score > t` for every t in `thresholds` (vectorized over thresholds)."""
    predicted_same = scores[None, :] > thresholds[:, None]
    return np.mean(predicted_same == labels[None, :], axis=1)


# --------------------------------------------------------------------------------------------------
# ROC family
# --------------------------------------------------------------------------------------------------
def roc_curve(scores: Any, issame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False/true accept rates at every distinct score: `(far, tar, thresholds)`, far ascending.

    Point k accepts every pair whose score is >= thresholds[k]; the first point (threshold +inf)
    accepts nothing.

    Example:
        >>> far, tar, _ = roc_curve([0.9, 0.8, 0.3, 0.1], [True, False, True, False])
        >>> far.tolist(), tar.tolist()
        ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    scores, labels = _checked(scores, issame)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # the last index of each run of equal scores: ties are accepted together
    run_ends = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    true_accepts = np.cumsum(sorted_labels)[run_ends]
    false_accepts = (run_ends + 1) - true_accepts
    far = np.r_[0.0, false_accepts / np.sum(~labels)]
    tar = np.r_[0.0, true_accepts / np.sum(labels)]
    thresholds = np.r_[np.inf, sorted_scores[run_ends]]
    return far, tar, thresholds


def roc_auc(far: np.ndarray, tar: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoid rule (far ascending).

    Example:
        >>> roc_auc(np.array([0.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0]))
        1.0
    """
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2.0))


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """The rate where false accepts equal false rejects (1 - tar), linearly interpolated on the ROC.

    Example:
        >>> equal_error_rate(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.5, 1.0]))
        0.5
    """
    gap = (1.0 - tar) - far  # decreases from 1 to -1 along the curve
    crossing = int(np.argmax(gap <= 0.0))
    if crossing == 0:
        return float(far[0])
    before, after = gap[crossing - 1], gap[crossing]
    weight = before / (before - after)
    return float(far[crossing - 1] + weight * (far[crossing] - far[crossing - 1]))


def tar_at_far(far: np.ndarray, tar: np.ndarray, targets: Iterable[float], method: str = "at_most",
               negatives: int | None = None) -> dict[str, float]:
    """True accept rate at each target false accept rate, keyed like "1e-03".

    Methods:
        "at_most": the highest tar among ROC points whose far <= target (the strict definition).
        "nearest": insightface's IJB rule: the ROC point whose far is nearest to the target, the
            highest tar among equals.
    Targets below 1/negatives (not measurable with that many impostor pairs) are left out.

    Example:
        >>> far, tar = np.array([0.0, 0.01, 0.1, 1.0]), np.array([0.0, 0.5, 0.9, 1.0])
        >>> tar_at_far(far, tar, [0.1, 0.05])
        {'1e-01': 0.9, '5e-02': 0.5}
    """
    if method not in ("at_most", "nearest"):
        raise ValueError(f"method must be 'at_most' or 'nearest', got {method!r}")
    results = {}
    for target in targets:
        if negatives is not None and target * negatives < 1.0 - 1e-9:
            continue
        if method == "at_most":
            value = float(np.max(tar[far <= target + 1e-12]))
        else:
            distance = np.abs(far - target)
            value = float(np.max(tar[distance == distance.min()]))
        results[far_key(target)] = value
    return results


def far_key(far: float) -> str:
    """The JSON key of a FAR value, e.g. 0.001 -> "1e-03".

    Example:
        >>> far_key(1e-4)
        '1e-04'
    """
    return f"{far:.0e}"


# --------------------------------------------------------------------------------------------------
# Accuracies
# --------------------------------------------------------------------------------------------------
def best_threshold_accuracy(scores: Any, issame: Any) -> tuple[float, float]:
    """Best accuracy over all thresholds on all pairs, and the threshold (a cosine) achieving it.

    The threshold is the midpoint between the two scores it separates (ties: the highest such one).

    Example:
        >>> best_threshold_accuracy([0.9, 0.7, 0.4, 0.1], [True, True, False, False])
        (1.0, 0.55)
    """
    scores, labels = _checked(scores, issame)
    far, tar, thresholds = roc_curve(scores, labels)
    positives, negatives = np.sum(labels), np.sum(~labels)
    correct = tar * positives + (1.0 - far) * negatives
    best = int(np.argmax(correct))
    accepted_floor = thresholds[best]  # every score >= this is accepted
    below = scores[scores < accepted_floor]
    if np.isinf(accepted_floor):
        threshold = float(np.max(scores)) + 1e-6
    elif len(below):
        threshold = float((accepted_floor + np.max(below)) / 2.0)
    else:
        threshold = float(accepted_floor) - 1e-6
    return float(correct[best] / len(scores)), threshold


def sequential_folds(count: int, n_folds: int = 10) -> list[np.ndarray]:
    """Indices of `n_folds` consecutive blocks; the first `count % n_folds` get one extra item.

    This is the fold split of insightface (`KFold(n_splits, shuffle=False)`): `.bin` files are
    written so that each block holds its own balanced share of positives and negatives.

    Example:
        >>> [fold.tolist() for fold in sequential_folds(5, 2)]
        [[0, 1, 2], [3, 4]]
    """
    if n_folds < 2 or count < n_folds:
        raise DataError(f"cannot split {count} pairs into {n_folds} folds")
    return np.array_split(np.arange(count), n_folds)


def insightface_thresholds() -> np.ndarray:
    """insightface's squared-distance grid 0:4:0.01 as cosine thresholds (same iff cos > 1 - d/2).

    Example:
        >>> insightface_thresholds()[:3].round(3).tolist()
        [1.0, 0.995, 0.99]
    """
    return 1.0 - INSIGHTFACE_DISTANCE_GRID / 2.0


def k_fold_accuracy(scores: Any, issame: Any, n_folds: int = 10, thresholds: str | np.ndarray = "insightface"
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per-fold accuracies and thresholds of the k-fold protocol.

    For each fold, the threshold with the best accuracy on the other folds (first best in the grid's
    order, as `np.argmax` in insightface) is applied to the held-out fold.

    Args:
        thresholds: "insightface" (the official 400-value grid), "exact" (every midpoint between
            distinct training-fold scores: the true optimum on the training folds), or an explicit array.

    Example:
        >>> scores, issame = np.tile([0.9, 0.1], 10), np.tile([True, False], 10)   # every fold holds both kinds
        >>> accuracies, chosen = k_fold_accuracy(scores, issame, n_folds=2)
        >>> accuracies.tolist(), chosen.round(3).tolist()         # the first grid threshold below 0.9
        ([1.0, 1.0], [0.895, 0.895])
    """
    scores, labels = _checked(scores, issame)
    accuracies, chosen = [], []
    for test_index in sequential_folds(len(scores), n_folds):
        train_mask = np.ones(len(scores), dtype=bool)
        train_mask[test_index] = False
        grid = _threshold_grid(scores[train_mask], thresholds)  # "exact" must not see the held-out scores
        train_accuracy = _accuracy_at(scores[train_mask], labels[train_mask], grid)
        threshold = grid[int(np.argmax(train_accuracy))]
        chosen.append(threshold)
        accuracies.append(_accuracy_at(scores[test_index], labels[test_index], np.array([threshold]))[0])
    return np.asarray(accuracies), np.asarray(chosen)


def _threshold_grid(scores: np.ndarray, thresholds: str | np.ndarray) -> np.ndarray:
    if isinstance(thresholds, str):
        if thresholds == "insightface":
            return insightface_thresholds()
        if thresholds == "exact":
            distinct = np.unique(scores)[::-1]
            return np.r_[distinct[0] + 1e-6, (distinct[1:] + distinct[:-1]) / 2.0, distinct[-1] - 1e-6]
        raise ValueError(f"thresholds must be 'insightface', 'exact' or an array, got {thresholds!r}")
    return np.asarray(thresholds, dtype=np.float64).reshape(-1)


# --------------------------------------------------------------------------------------------------
# One benchmark
# --------------------------------------------------------------------------------------------------
@dataclass
class VerificationResult:
    """All verification figures of one benchmark, plus its ROC curve for plots.

    `record()` gives the JSON record (fields: name, pairs, accuracy, accuracy_std,
    best_threshold_accuracy, threshold, auc, eer, tar_at_far).
    """

    name: str
    pairs: int
    accuracy: float
    accuracy_std: float
    best_threshold_accuracy: float
    threshold: float
    auc: float
    eer: float
    tar_at_far: dict[str, float]
    far: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    tar: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    fold_accuracies: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def record(self) -> dict[str, Any]:
        """The benchmark's results record (plain Python types, JSON-ready)."""
        return {
            "name": self.name,
            "pairs": int(self.pairs),
            "accuracy": _maybe_float(self.accuracy),
            "accuracy_std": _maybe_float(self.accuracy_std),
            "best_threshold_accuracy": _maybe_float(self.best_threshold_accuracy),
            "threshold": _maybe_float(self.threshold),
            "auc": _maybe_float(self.auc),
            "eer": _maybe_float(self.eer),
            "tar_at_far": {key: float(value) for key, value in self.tar_at_far.items()},
        }


def _maybe_float(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def verification_metrics(scores: Any, issame: Any, name: str = "pairs", n_folds: int = 10,
                         fars: Sequence[float] = DEFAULT_FARS, far_method: str = "at_most",
                         thresholds: str | np.ndarray = "insightface") -> VerificationResult:
    """Every verification figure for one set of scored pairs.

    With `n_folds=0` (e.g. IJB's millions of template pairs, where no protocol defines folds) or fewer
    than `n_folds` pairs, the k-fold accuracy is left undefined (None in the record).

    Example:
        >>> result = verification_metrics([0.9, 0.8, 0.3, 0.1] * 5, [True, True, False, False] * 5, n_folds=5)
        >>> result.accuracy, result.auc, result.eer
        (1.0, 1.0, 0.0)
    """
    scores, labels = _checked(scores, issame)
    far, tar, _ = roc_curve(scores, labels)
    if n_folds and len(scores) >= n_folds:
        fold_accuracies, _ = k_fold_accuracy(scores, labels, n_folds, thresholds)
        accuracy, accuracy_std = float(np.mean(fold_accuracies)), float(np.std(fold_accuracies))
    else:
        fold_accuracies, accuracy, accuracy_std = np.zeros(0), float("nan"), float("nan")
    best_accuracy, threshold = best_threshold_accuracy(scores, labels)
    return VerificationResult(
        name=name, pairs=len(scores), accuracy=accuracy, accuracy_std=accuracy_std,
        best_threshold_accuracy=best_accuracy, threshold=threshold, auc=roc_auc(far, tar),
        eer=equal_error_rate(far, tar),
        tar_at_far=tar_at_far(far, tar, fars, far_method, negatives=int(np.sum(~labels))),
        far=far, tar=tar, fold_accuracies=fold_accuracies,
    )


def evaluate_verification(embeddings_or_model: Any, images: Any = None, issame: Any = None, *,
                          name: str = "pairs", flip: bool = True, batch_size: int = 128,
                          progress: bool = False, n_folds: int = 10,
                          fars: Sequence[float] = DEFAULT_FARS) -> dict[str, Any]:
    """Verification record of one pair set, from embeddings or from a model and images.

    Args:
        embeddings_or_model: a (2N, D) embedding array (pair i = rows 2i, 2i+1), or anything
            `extract_embeddings` accepts as a model (Keras model, `.keras` / SavedModel / `.tflite` path).
        images: (2N, 112, 112, 3) uint8 RGB pixels (e.g. from `load_bin`); needed with a model.
        issame: N booleans.
        flip: flip test-time augmentation (image + mirror embeddings summed) when embedding images.

    Returns:
        The JSON record: name, pairs, accuracy (10-fold mean), accuracy_std,
        best_threshold_accuracy, threshold, auc, eer, tar_at_far.

    Example (a Keras callback evaluating a `.bin` at epoch end):
        >>> import keras, tempfile
        >>> from ghostface_keras.data import load_bin, save_bin
        >>> pixels = np.random.default_rng(0).integers(0, 256, (40, 112, 112, 3), dtype=np.uint8)
        >>> path = save_bin(f"{tempfile.mkdtemp()}/toy.bin", pixels, [True, False] * 10)   # a toy "lfw.bin"
        >>> images, issame = load_bin(path)
        >>> inputs = keras.Input((112, 112, 3))       # the model being trained
        >>> model = keras.Model(inputs, keras.layers.Dense(32)(keras.layers.GlobalAveragePooling2D()(inputs)))
        >>> record = evaluate_verification(model, images, issame, name="toy")
        >>> print(f"accuracy {record['accuracy']:.4f} +- {record['accuracy_std']:.4f}")    # untrained: about 0.5
        accuracy ... +- ...
    """
    if issame is None:
        raise DataError("evaluate_verification needs `issame` (one boolean per pair)")
    if _is_embedding_array(embeddings_or_model):
        embeddings = np.asarray(embeddings_or_model)
    else:
        if images is None:
            raise DataError("evaluate_verification needs `images` when given a model")
        from ghostface_keras.runtime.embedding import extract_embeddings

        embeddings = extract_embeddings(embeddings_or_model, images, batch_size=batch_size, flip=flip,
                                        progress=progress)
    scores = pair_scores(embeddings)
    return verification_metrics(scores, issame, name=name, n_folds=n_folds, fars=fars).record()


def _is_embedding_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 2
