"""The two-stage ranking rule, one definition for the server and the export's evaluation.

A first stage (the two-tower ranker) scores every candidate; a second (the
cross-encoder) re-scores the first stage's `top` best. The served order puts
the re-scored candidates first, by the second stage's probability, then the
others by the first stage's; ties keep candidate order throughout.
"""

from __future__ import annotations

import numpy as np


def top_indices(first: np.ndarray, top: int) -> np.ndarray:
    """Indices (int64 [min(top, n)]) of the `top` highest of `first` (float [n]), best first, ties in order."""
    return np.argsort(-np.asarray(first), kind="stable")[: max(0, int(top))].astype(np.int64)


def two_stage_order(probabilities: np.ndarray, reranked: np.ndarray) -> np.ndarray:
    """The served order (int64 [n]): candidates where `reranked` (bool [n]) is set, by `probabilities`
    (float [n]: the second stage's for those, the first stage's for the rest), then the others."""
    probabilities, reranked = np.asarray(probabilities), np.asarray(reranked, dtype=bool)
    first = np.flatnonzero(reranked)
    rest = np.flatnonzero(~reranked)
    first = first[np.argsort(-probabilities[first], kind="stable")]
    rest = rest[np.argsort(-probabilities[rest], kind="stable")]
    return np.concatenate([first, rest]).astype(np.int64)
