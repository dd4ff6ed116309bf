"""Ranking and regression metrics as small pure numpy functions.

They take plain arrays so the same code scores the fine-tuned model, every
ONNX variant and every baseline. Ranking functions score one list (a basket's
candidates); ties in score keep the list's order (candidates are stored in a
seeded random order, so a model that ties is ranked at random, the same way
for everyone). AUC gives tied pairs half credit.
"""

from __future__ import annotations

import numpy as np


def _ranked_labels(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=float)
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    return labels[order]


def _average_ranks(sorted_values: np.ndarray) -> np.ndarray:
    """1-based ranks of an ascending array, runs of equal values sharing their average rank."""
    n = len(sorted_values)
    starts = np.r_[0, np.flatnonzero(sorted_values[1:] != sorted_values[:-1]) + 1]
    ends = np.r_[starts[1:], n]
    return np.repeat((starts + 1 + ends) / 2.0, ends - starts)


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outscores a negative); nan with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=float)
    ranks[order] = _average_ranks(scores[order])
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-group (user) AUC averaged with each group's number of impressions as weight.

    Groups with only positives or only negatives have no AUC and are skipped;
    nan when no group has both. Every group at once: one sort by (group, score),
    average ranks over ties within a group (as `auc` per group).
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    if labels.size == 0:
        return float("nan")
    _, group = np.unique(np.asarray(groups), return_inverse=True)
    group = group.reshape(-1)
    order = np.lexsort((scores, group))
    group, scores, labels = group[order], scores[order], labels[order]
    n = len(group)
    new_run = np.r_[True, (group[1:] != group[:-1]) | (scores[1:] != scores[:-1])]
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], n]
    first_of_group = np.searchsorted(group, group, side="left")
    ranks = np.repeat((starts + 1 + ends) / 2.0, ends - starts) - first_of_group  # 1-based within the group
    size = np.bincount(group).astype(float)
    positives = np.bincount(group, weights=labels)
    negatives = size - positives
    rank_sum = np.bincount(group, weights=ranks * labels)
    both = (positives > 0) & (negatives > 0)
    if not both.any():
        return float("nan")
    p, q = positives[both], negatives[both]
    per_group = (rank_sum[both] - p * (p + 1) / 2.0) / (p * q)
    return float((per_group * size[both]).sum() / size[both].sum())


def list_metrics(lists: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_lists: int, k: int = 10) -> dict[str, np.ndarray]:
    """NDCG@k, HR@k and MRR of many lists at once: {metric: float [n_lists]}, nan for a list without positives.

    `lists` int [n]: each element's list id in [0, n_lists), non-decreasing (lists are contiguous);
    `labels` and `scores` [n]. The same values as `ndcg_at_k`, `hit_rate_at_k` and `mrr` on each list
    (ties keep the list's order), without a Python loop over lists.
    """
    lists = np.asarray(lists, dtype=np.int64)
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    n = len(lists)
    starts = np.searchsorted(lists, np.arange(n_lists), side="left")
    position = np.arange(n)

    def ranked(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return labels[order], position - starts[lists[order]]  # lists[order] == lists: a stable within-list sort

    got, rank = ranked(np.lexsort((position, -scores, lists)))
    ideal, ideal_rank = ranked(np.lexsort((position, -labels, lists)))
    top, ideal_top = rank < k, ideal_rank < k
    dcg = np.bincount(lists, weights=np.where(top, got / np.log2(rank + 2.0), 0.0), minlength=n_lists)
    idcg = np.bincount(lists, weights=np.where(ideal_top, ideal / np.log2(ideal_rank + 2.0), 0.0), minlength=n_lists)
    has_positive = np.bincount(lists, weights=labels != 0, minlength=n_lists) > 0
    hit = np.bincount(lists, weights=top & (got > 0), minlength=n_lists) > 0
    first = np.full(n_lists, np.inf)
    np.minimum.at(first, lists[got > 0], rank[got > 0].astype(float))
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            f"ndcg@{k}": np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan),
            f"hr@{k}": np.where(has_positive, hit.astype(float), np.nan),
            "mrr": np.where(np.isfinite(first), 1.0 / (first + 1.0), np.nan),
        }


def ndcg_at_k(labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """Normalised discounted cumulative gain of the top k (binary or graded relevance); nan without positives."""
    ranked = _ranked_labels(labels, scores)[:k]
    ideal = np.sort(np.asarray(labels, dtype=float))[::-1][:k]
    if ideal.sum() <= 0:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    return float((ranked * discounts[: len(ranked)]).sum() / (ideal * discounts[: len(ideal)]).sum())


def hit_rate_at_k(labels: np.ndarray, scores: np.ndarray, k: int = 10) -> float:
    """1.0 if a positive is among the top k, else 0.0; nan without positives."""
    if not np.asarray(labels).any():
        return float("nan")
    return float(_ranked_labels(labels, scores)[:k].any())


def mrr(labels: np.ndarray, scores: np.ndarray) -> float:
    """Reciprocal rank of the first positive; nan without positives."""
    ranked = _ranked_labels(labels, scores)
    hits = np.flatnonzero(ranked > 0)
    return float(1.0 / (hits[0] + 1)) if hits.size else float("nan")


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    """Root mean squared error; nan for empty input."""
    targets = np.asarray(targets, dtype=float)
    predictions = np.asarray(predictions, dtype=float)
    if targets.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((targets - predictions) ** 2)))
