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


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outscores a negative); nan with one class."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=float)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=float)
    # average 1-based ranks over runs of equal scores
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def gauc(groups: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-group (user) AUC averaged with each group's number of impressions as weight.

    Groups with only positives or only negatives have no AUC and are skipped;
    nan when no group has both.
    """
    groups = np.asarray(groups)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=float)
    total, weight = 0.0, 0
    for group in np.unique(groups):
        mask = groups == group
        value = auc(labels[mask], scores[mask])
        if not np.isnan(value):
            total += value * int(mask.sum())
            weight += int(mask.sum())
    return total / weight if weight else float("nan")


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
