"""Each metric agrees with values worked out by hand on small cases."""

import math

import numpy as np
import pytest

from edgerec.export import metrics


def test_auc_counts_pairs_won_by_positives():
    # positive 0.9 beats both negatives, positive 0.3 beats only 0.1: 3 of 4 pairs
    assert metrics.auc([1, 0, 1, 0], [0.9, 0.8, 0.3, 0.1]) == pytest.approx(0.75)


def test_auc_gives_ties_half_credit():
    assert metrics.auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    # the positive ties one negative (1/2) and beats the other (1): 1.5 / 2
    assert metrics.auc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.75)


def test_auc_matches_brute_force_pair_counting():
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = rng.integers(0, 2, 30)
        scores = rng.integers(0, 6, 30).astype(float)  # many ties
        if labels.all() or not labels.any():
            continue
        pos, neg = scores[labels == 1], scores[labels == 0]
        expected = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
        assert metrics.auc(labels, scores) == pytest.approx(expected)


def test_auc_is_nan_with_one_class():
    assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))


def test_gauc_weights_users_by_impressions_and_skips_one_class_users():
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.8, 0.5, 0.2, 0.3, 0.4]
    # a: AUC 1.0 over 2 impressions; b: 0.5 over 3; c: only positives, skipped
    assert metrics.gauc(groups, labels, scores) == pytest.approx((1.0 * 2 + 0.5 * 3) / 5)
    assert math.isnan(metrics.gauc(["c", "c"], [1, 1], [0.1, 0.2]))


def test_ndcg_hand_computed():
    labels, scores = [0, 1, 0, 1], [0.4, 0.3, 0.2, 0.1]
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3)
    assert metrics.ndcg_at_k(labels, scores, 10) == pytest.approx(dcg / ideal)
    assert metrics.ndcg_at_k(labels, scores, 2) == pytest.approx((1 / math.log2(3)) / ideal)
    assert metrics.ndcg_at_k([1, 0], [0.9, 0.1], 10) == pytest.approx(1.0)
    assert math.isnan(metrics.ndcg_at_k([0, 0], [0.9, 0.1], 10))


def test_hit_rate_and_mrr_hand_computed():
    labels, scores = [0, 1, 0, 1], [0.4, 0.3, 0.2, 0.1]
    assert metrics.hit_rate_at_k(labels, scores, 1) == 0.0
    assert metrics.hit_rate_at_k(labels, scores, 2) == 1.0
    assert metrics.mrr(labels, scores) == pytest.approx(0.5)
    assert metrics.mrr([0, 0, 1], [0.1, 0.2, 0.9]) == pytest.approx(1.0)


def test_ranking_ties_keep_the_given_order():
    assert metrics.mrr([0, 0, 1], [0.5, 0.5, 0.5]) == pytest.approx(1 / 3)
    assert metrics.hit_rate_at_k([0, 0, 1], [0.5, 0.5, 0.5], 2) == 0.0


def test_rmse_hand_computed():
    assert metrics.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.rmse([2.0], [2.0]) == 0.0
    assert math.isnan(metrics.rmse([], []))


def _gauc_by_group(groups, labels, scores):
    """GAUC's definition, one group at a time (what the vectorised `metrics.gauc` must equal)."""
    total, weight = 0.0, 0
    for group in np.unique(groups):
        mask = groups == group
        value = metrics.auc(labels[mask], scores[mask])
        if not np.isnan(value):
            total, weight = total + value * mask.sum(), weight + mask.sum()
    return total / weight if weight else float("nan")


def test_gauc_and_list_metrics_equal_their_one_list_definitions_with_ties():
    rng = np.random.default_rng(5)
    for _ in range(60):
        sizes = rng.integers(1, 14, rng.integers(1, 12))
        lists = np.repeat(np.arange(sizes.size), sizes)
        labels = (rng.random(lists.size) < 0.3).astype(int)
        scores = rng.integers(0, 4, lists.size).astype(float)  # many ties: list order must break them
        groups = rng.integers(0, 4, lists.size)
        assert metrics.gauc(groups, labels, scores) == pytest.approx(_gauc_by_group(groups, labels, scores), nan_ok=True)
        every = metrics.list_metrics(lists, labels, scores, sizes.size, k=3)
        for index in range(sizes.size):
            y, s = labels[lists == index], scores[lists == index]
            assert every["ndcg@3"][index] == pytest.approx(metrics.ndcg_at_k(y, s, 3), nan_ok=True)
            assert every["hr@3"][index] == pytest.approx(metrics.hit_rate_at_k(y, s, 3), nan_ok=True)
            assert every["mrr"][index] == pytest.approx(metrics.mrr(y, s), nan_ok=True)
