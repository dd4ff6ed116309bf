"""Non-neural baselines scored on exactly the stored candidates the model is scored on.

Each baseline is fitted only on baskets strictly before the evaluated split
starts (for the test split: train and validation months), and reads a
basket's history only up to the basket's time, which is what the model sees:
- popularity: baskets that held the item; its quantity guess is the item's
  median units per line;
- repeat frequency: how many earlier baskets of this customer held the item
  (popularity breaks ties, so on new items it falls back to popularity);
- co-occurrence: "customers who bought X also bought Y": the sum over the
  customer's past items of the cosine-normalised count of baskets holding
  both;
- ALS matrix factorisation (`implicit`): item factors from the customer x item
  matrix, the customer's factors recomputed from the basket's own history.
Items nobody bought before the split (cold items) get 0 from all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm import tqdm

from edgerec.export.samples import Basket, PreparedData, split_starts


@dataclasses.dataclass
class Baseline:
    """A named scoring rule: baskets -> flat scores (and optionally expected quantities)."""

    name: str
    score: Callable[[Sequence[Basket]], np.ndarray]
    quantity: Callable[[Sequence[Basket]], np.ndarray] | None = None


@dataclasses.dataclass(frozen=True)
class ALSConfig:
    """Settings of the ALS baseline (chosen on the validation split)."""

    factors: int = 64
    regularization: float = 0.1
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 0


def history_before(prepared: PreparedData, split: str) -> pd.DataFrame:
    """The purchases (one row per basket and item) strictly before `split` starts."""
    start = split_starts(prepared.config)[split]
    if start is None:
        raise ValueError("baselines need data before the split; the train split has none")
    purchases = prepared.purchases
    return purchases[purchases["time"] < start]


def _per_candidate(baskets: Sequence[Basket], value: Callable[[Basket, str], float]) -> np.ndarray:
    return np.array([value(b, item) for b in baskets for item in b.candidates], dtype=float)


def popularity(past: pd.DataFrame) -> Baseline:
    counts = past.groupby("item")["invoice"].nunique().to_dict()
    medians = past.groupby("item")["quantity"].median().to_dict()
    fallback = float(past["quantity"].median()) if len(past) else 1.0
    return Baseline(
        "popularity",
        lambda baskets: _per_candidate(baskets, lambda b, item: counts.get(item, 0)),
        lambda baskets: _per_candidate(baskets, lambda b, item: medians.get(item, fallback)),
    )


def repeat_frequency(past: pd.DataFrame) -> Baseline:
    counts = past.groupby("item")["invoice"].nunique()
    tie_break = (counts.rank(method="average") / (len(counts) + 1) * 0.5).to_dict()  # < 0.5: never beats a count

    def score(baskets: Sequence[Basket]) -> np.ndarray:
        out = []
        for basket in baskets:
            own = dict(basket.history)
            out.extend(own.get(item, 0) + tie_break.get(item, 0.0) for item in basket.candidates)
        return np.array(out, dtype=float)

    return Baseline("repeat frequency", score)


def _basket_item_matrix(past: pd.DataFrame, rows: str, index: dict[str, int]) -> tuple[sparse.csr_matrix, dict]:
    row_ids = {key: i for i, key in enumerate(past[rows].unique())}
    matrix = sparse.csr_matrix(
        (np.ones(len(past), dtype=np.float32), (past[rows].map(row_ids).to_numpy(), past["item"].map(index).to_numpy())),
        shape=(len(row_ids), len(index)),
    )
    return matrix, row_ids


def co_occurrence(past: pd.DataFrame) -> Baseline:
    index = {item: i for i, item in enumerate(sorted(past["item"].unique()))}
    baskets_items, _ = _basket_item_matrix(past, "invoice", index)
    baskets_items.data[:] = 1.0
    together = (baskets_items.T @ baskets_items).toarray()
    totals = np.sqrt(np.maximum(np.diag(together), 1.0))
    similarity = together / totals[:, None] / totals[None, :]
    np.fill_diagonal(similarity, 0.0)

    def score(baskets: Sequence[Basket]) -> np.ndarray:
        out = []
        for basket in baskets:
            seen = [index[item] for item, _ in basket.history if item in index]
            columns = [index.get(item, -1) for item in basket.candidates]
            known = np.array([c for c in columns if c >= 0], dtype=int)
            values = similarity[np.ix_(seen, known)].sum(axis=0) if seen and known.size else np.zeros(known.size)
            lookup = dict(zip(known.tolist(), values.tolist()))
            out.extend(lookup.get(c, 0.0) if c >= 0 else 0.0 for c in columns)
        return np.array(out, dtype=float)

    return Baseline("co-occurrence", score)


def als(past: pd.DataFrame, config: ALSConfig = ALSConfig()) -> Baseline:
    """implicit's ALS; the customer's factors are solved from the basket's history (fold-in)."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    index = {item: i for i, item in enumerate(sorted(past["item"].unique()))}
    user_items, _ = _basket_item_matrix(past, "customer", index)  # duplicates summed: baskets per item
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS threads would fight them
        model = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            random_state=config.seed,
        )
        model.fit(user_items.tocsr(), show_progress=False)
    items = np.asarray(model.item_factors)

    def score(baskets: Sequence[Basket]) -> np.ndarray:
        out = []
        with threadpool_limits(1, "blas"):
            for basket in tqdm(baskets, desc="ALS fold-in", leave=False):
                seen = [(index[item], count) for item, count in basket.history if item in index]
                columns = [index.get(item, -1) for item in basket.candidates]
                if not seen:
                    out.extend([0.0] * len(columns))
                    continue
                row = sparse.csr_matrix(
                    ([float(c) for _, c in seen], ([0] * len(seen), [i for i, _ in seen])), shape=(1, len(index))
                )
                user = np.asarray(model.recalculate_user(0, row)).reshape(-1)
                out.extend(float(items[c] @ user) if c >= 0 else 0.0 for c in columns)
        return np.array(out, dtype=float)

    return Baseline("ALS (implicit)", score)


def fit_baselines(prepared: PreparedData, split: str) -> list[Baseline]:
    """All baselines, fitted on the purchases before `split` starts."""
    past = history_before(prepared, split)
    return [popularity(past), repeat_frequency(past), co_occurrence(past), als(past)]
