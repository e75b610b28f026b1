"""Verification metrics against independent computations (scikit-learn, brute force, closed forms)."""

from __future__ import annotations

import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")
from sklearn.model_selection import KFold  # noqa: E402

from ghostface_keras.core.errors import DataError  # noqa: E402
from ghostface_keras.evaluation import verification as v  # noqa: E402

RECORD_FIELDS = {"name", "pairs", "accuracy", "accuracy_std", "best_threshold_accuracy", "threshold", "auc", "eer",
                 "tar_at_far"}


def _synthetic_scores(count: int = 2000, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.random(count) < 0.5
    scores = np.where(labels, rng.normal(0.55, 0.2, count), rng.normal(0.15, 0.2, count))
    if ties:
        scores = np.round(scores, 2)  # many equal scores: exercises tie handling
    return scores, labels


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn(ties):
    scores, labels = _synthetic_scores(ties=ties)
    far, tar, thresholds = v.roc_curve(scores, labels)
    expected_far, expected_tar, expected_thresholds = sklearn_metrics.roc_curve(labels, scores,
                                                                               drop_intermediate=False)
    np.testing.assert_allclose(far, expected_far)
    np.testing.assert_allclose(tar, expected_tar)
    np.testing.assert_allclose(thresholds[1:], expected_thresholds[1:])


@pytest.mark.parametrize("ties", [False, True])
def test_auc_matches_sklearn(ties):
    scores, labels = _synthetic_scores(seed=1, ties=ties)
    far, tar, _ = v.roc_curve(scores, labels)
    assert v.roc_auc(far, tar) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)


def test_eer_matches_interpolated_sklearn_roc():
    from scipy.interpolate import interp1d
    from scipy.optimize import brentq

    scores, labels = _synthetic_scores(seed=2)
    far, tar, _ = v.roc_curve(scores, labels)
    expected_far, expected_tar, _ = sklearn_metrics.roc_curve(labels, scores)
    expected = brentq(lambda x: 1.0 - x - interp1d(expected_far, expected_tar)(x), 0.0, 1.0)
    assert v.equal_error_rate(far, tar) == pytest.approx(expected, abs=1e-9)


def test_eer_known_answer_uniform_overlap():
    # genuine ~ U(0.4, 1), impostor ~ U(0, 0.6): the two error rates cross at t = 0.5, EER = 1/6
    rng = np.random.default_rng(3)
    scores = np.r_[rng.uniform(0.4, 1.0, 200_000), rng.uniform(0.0, 0.6, 200_000)]
    labels = np.r_[np.ones(200_000, bool), np.zeros(200_000, bool)]
    far, tar, _ = v.roc_curve(scores, labels)
    assert v.equal_error_rate(far, tar) == pytest.approx(1 / 6, abs=3e-3)
    # AUC = P(genuine > impostor); they can only be misordered when both fall in [0.4, 0.6]: 1/3 * 1/3 * 1/2
    assert v.roc_auc(far, tar) == pytest.approx(1 - 1 / 18, abs=3e-3)


def _brute_force_tar_at_far(scores, labels, target):
    best = 0.0
    for threshold in np.r_[np.inf, np.unique(scores)]:
        accepted = scores >= threshold
        false_accept_rate = np.mean(accepted[~labels])
        if false_accept_rate <= target:
            best = max(best, np.mean(accepted[labels]))
    return best


def test_tar_at_far_at_most_matches_brute_force():
    scores, labels = _synthetic_scores(count=600, seed=4, ties=True)
    far, tar, _ = v.roc_curve(scores, labels)
    result = v.tar_at_far(far, tar, [0.1, 0.01, 0.005], negatives=int(np.sum(~labels)))
    for target in (0.1, 0.01, 0.005):
        assert result[v.far_key(target)] == pytest.approx(_brute_force_tar_at_far(scores, labels, target))
    assert v.far_key(1e-4) not in v.tar_at_far(far, tar, [1e-4], negatives=int(np.sum(~labels)))


def test_tar_at_far_nearest_matches_insightface_rule_on_sklearn_roc():
    scores, labels = _synthetic_scores(count=5000, seed=5)
    far, tar, _ = v.roc_curve(scores, labels)
    expected_far, expected_tar, _ = sklearn_metrics.roc_curve(labels, scores)
    flipped_far, flipped_tar = np.flipud(expected_far), np.flipud(expected_tar)
    result = v.tar_at_far(far, tar, [1e-3, 1e-2, 1e-1], method="nearest")
    for target in (1e-3, 1e-2, 1e-1):
        index = np.argmin(np.abs(flipped_far - target))
        assert result[v.far_key(target)] == pytest.approx(flipped_tar[index])


def _brute_force_best_accuracy(scores, labels):
    return max(np.mean((scores >= threshold) == labels) for threshold in np.r_[np.inf, np.unique(scores)])


@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_accuracy_matches_brute_force(ties):
    scores, labels = _synthetic_scores(count=800, seed=6, ties=ties)
    accuracy, threshold = v.best_threshold_accuracy(scores, labels)
    assert accuracy == pytest.approx(_brute_force_best_accuracy(scores, labels))
    assert np.mean((scores > threshold) == labels) == pytest.approx(accuracy)


def _insightface_style_ten_fold(embeddings, issame):
    """Written from the protocol's description: squared distance, KFold(10), grid 0:4:0.01, d < thr."""
    first, second = embeddings[0::2], embeddings[1::2]
    first = first / np.linalg.norm(first, axis=1, keepdims=True)
    second = second / np.linalg.norm(second, axis=1, keepdims=True)
    distance = np.sum(np.square(first - second), axis=1)
    grid = np.arange(0, 4, 0.01)
    accuracies = []
    for train, test in KFold(n_splits=10, shuffle=False).split(np.arange(len(issame))):
        train_accuracy = [np.mean((distance[train] < t) == issame[train]) for t in grid]
        best = grid[int(np.argmax(train_accuracy))]
        accuracies.append(np.mean((distance[test] < best) == issame[test]))
    return np.array(accuracies)


@pytest.mark.parametrize("pairs", [600, 605])
def test_ten_fold_matches_independent_insightface_protocol(pairs):
    rng = np.random.default_rng(7)
    issame = rng.random(pairs) < 0.5
    base = rng.normal(size=(pairs, 16))
    other = np.where(issame[:, None], base + rng.normal(scale=1.2, size=base.shape), rng.normal(size=base.shape))
    embeddings = np.empty((2 * pairs, 16))
    embeddings[0::2], embeddings[1::2] = base, other
    accuracies, _ = v.k_fold_accuracy(v.pair_scores(embeddings), issame)
    np.testing.assert_allclose(accuracies, _insightface_style_ten_fold(embeddings, issame))
    assert 0.6 < accuracies.mean() < 0.99  # an informative case, not a trivially perfect one


def test_sequential_folds_match_sklearn_kfold():
    for count in (600, 605, 6000, 13):
        expected = [test for _, test in KFold(n_splits=10, shuffle=False).split(np.arange(count))]
        for fold, expected_fold in zip(v.sequential_folds(count, 10), expected):
            np.testing.assert_array_equal(fold, expected_fold)


def test_exact_threshold_k_fold_is_at_least_as_good_on_training_folds():
    scores, labels = _synthetic_scores(count=500, seed=8)
    accuracies, thresholds = v.k_fold_accuracy(scores, labels, thresholds="exact")
    for fold, threshold in zip(v.sequential_folds(len(scores)), thresholds):
        train = np.ones(len(scores), bool)
        train[fold] = False
        assert np.mean((scores[train] > threshold) == labels[train]) == pytest.approx(
            _brute_force_best_accuracy(scores[train], labels[train]))


def test_pair_scores_match_sklearn_cosine():
    embeddings = np.random.default_rng(9).normal(size=(20, 5))
    expected = np.diag(sklearn_metrics.pairwise.cosine_similarity(embeddings[0::2], embeddings[1::2]))
    np.testing.assert_allclose(v.pair_scores(embeddings), expected, atol=1e-6)


def test_separable_pairs_known_answers():
    scores = np.r_[np.linspace(0.6, 0.9, 50), np.linspace(-0.2, 0.3, 50)]
    labels = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    order = np.random.default_rng(10).permutation(100)
    result = v.verification_metrics(scores[order], labels[order], name="separable", thresholds="exact")
    assert (result.accuracy, result.accuracy_std, result.best_threshold_accuracy) == (1.0, 0.0, 1.0)
    assert (result.auc, result.eer) == (1.0, 0.0)
    assert result.threshold == pytest.approx(0.45)
    assert result.tar_at_far == {"1e-01": 1.0}  # 50 impostors: FAR 1e-2 needs >= 100 to be measurable
    # insightface's grid takes the *first* best threshold (the tightest one), so a held-out genuine pair
    # below every training genuine pair can be rejected even on separable data
    grid_result = v.verification_metrics(scores[order], labels[order])
    assert 0.98 <= grid_result.accuracy <= 1.0


def test_record_has_exactly_the_documented_fields():
    embeddings = np.random.default_rng(11).normal(size=(400, 8))
    record = v.evaluate_verification(embeddings, issame=np.arange(200) % 2 == 0, name="toy")
    assert set(record) == RECORD_FIELDS
    assert record["name"] == "toy" and record["pairs"] == 200
    assert 0.3 < record["accuracy"] < 0.7  # random embeddings: chance level


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="both genuine"):
        v.verification_metrics([0.1, 0.2], [True, True])
    with pytest.raises(DataError, match="NaN"):
        v.verification_metrics([0.1, np.nan], [True, False])
    with pytest.raises(DataError, match="2 labels"):
        v.verification_metrics([0.1, 0.2, 0.3], [True, False])
    with pytest.raises(DataError, match=r"\(2N, D\)"):
        v.pair_scores(np.zeros((3, 4)))
