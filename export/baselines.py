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

Two more read the ranker's behavioural features or the item texts (below,
`fit_behaviour_baselines`): a repeat + co-occurrence blend tuned on validation
and a TF-IDF text similarity (scikit-learn).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm import tqdm

from edgerec.core.behaviour import FEATURE_NAMES, BehaviourTables, basket_features, to_seconds
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


# -- baselines on the behavioural features (issue 12) --------------------------------------------------
#
# - repeat + co-occurrence blend: `repeat_count + w * cooc_sum`, both read from
#   `edgerec.core.behaviour.behaviour_features` (the ranker's own features, so
#   the blend is what the ranker must beat with the same facts); w is the
#   value of `BLEND_GRID` with the best NDCG@10 on the validation split (the
#   `all` slice unless asked otherwise), with tables built before the
#   validation split; popularity breaks
#   ties (1e-6 * log1p(popularity), below any real difference);
# - TF-IDF text similarity: scikit-learn's TfidfVectorizer fitted on the
#   catalog's item texts; the customer is the count-weighted sum of the
#   (l2-normalised) TF-IDF rows of their past items, a candidate scores the
#   cosine between that and its own row. Text only: cold items get real scores.

BLEND_GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


def behaviour_tables(purchases: pd.DataFrame, before, k: int = 100, min_together: int = 1) -> BehaviourTables:
    """`BehaviourTables` of the purchases (one row per basket and item) strictly before `before`."""
    return BehaviourTables.build(
        purchases["invoice"].to_numpy(),
        purchases["customer"].to_numpy(),
        purchases["item"].to_numpy(),
        purchases["quantity"].to_numpy(),
        purchases["time"].to_numpy(),
        cutoff=before,
        k=k,
        min_together=min_together,
    )


def last_purchase_times(purchases: pd.DataFrame, baskets: Sequence[Basket]) -> list[dict[str, float]]:
    """For each basket, its history items' latest purchase time (POSIX s) strictly before the basket's time.

    Baskets carry (item, count) only; this recovers what `behaviour.basket_history`
    needs from the purchase table (the invoice's time, as in `samples`).
    """
    frame = purchases.sort_values(["customer", "time"], kind="stable")
    seconds = frame["time"].to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6
    by_customer: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    customers = frame["customer"].to_numpy()
    bounds = np.flatnonzero(np.r_[True, customers[1:] != customers[:-1], True])
    items = frame["item"].to_numpy()
    for start, end in zip(bounds[:-1], bounds[1:]) if len(frame) else ():
        by_customer[customers[start]] = (seconds[start:end], items[start:end])
    out = []
    for basket in baskets:
        times, bought = by_customer.get(basket.customer_id, (np.zeros(0), np.zeros(0, dtype=object)))
        end = int(np.searchsorted(times, to_seconds(basket.time), side="left"))  # strictly earlier
        last = dict(zip(bought[:end].tolist(), times[:end].tolist()))  # later rows overwrite: the latest wins
        out.append({item: last[item] for item, _ in basket.history if item in last})
    return out


def _blend_parts(baskets: Sequence[Basket], tables: BehaviourTables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (repeat count, co-occurrence affinity, log1p popularity) of every candidate, from the features."""
    columns = [FEATURE_NAMES.index(n) for n in ("log_times_bought", "cooc_sum", "log_popularity")]
    parts = [basket_features(b, tables)[:, columns] for b in baskets]
    flat = np.concatenate(parts) if parts else np.zeros((0, 3))
    return np.rint(np.expm1(flat[:, 0].astype(np.float64))), flat[:, 1].astype(np.float64), flat[:, 2].astype(np.float64)


def blend_scores(baskets: Sequence[Basket], tables: BehaviourTables, weight: float) -> np.ndarray:
    """Flat `repeat_count + weight * cooc_sum` (+ a popularity tie-break) for every candidate."""
    repeat, cooc, popularity = _blend_parts(baskets, tables)
    return repeat + weight * cooc + 1e-6 * popularity


def tune_blend_weights(
    valid_baskets: Sequence[Basket],
    tables: BehaviourTables,
    grid: Sequence[float] = BLEND_GRID,
    objectives: Sequence[str] = ("all",),
) -> dict[str, tuple[float, dict[float, float]]]:
    """Per objective slice: the grid weight with the best NDCG@10 on validation baskets, and every weight's.

    The features are computed once and each weight is scored once for every objective.
    """
    from edgerec.export.evaluate import ranking_report

    repeat, cooc, popularity = _blend_parts(valid_baskets, tables)
    reports = {float(w): ranking_report(valid_baskets, repeat + w * cooc + 1e-6 * popularity) for w in grid}
    out = {}
    for objective in objectives:
        results = {w: report[objective]["ndcg@10"] for w, report in reports.items()}
        best = max(results, key=lambda w: (results[w], -w))  # ties: the smaller weight
        out[objective] = (best, results)
    return out


def tune_blend_weight(
    valid_baskets: Sequence[Basket], tables: BehaviourTables, grid: Sequence[float] = BLEND_GRID, objective: str = "all"
) -> tuple[float, dict[float, float]]:
    """The grid weight with the best NDCG@10 on the `objective` slice of validation baskets, and every weight's."""
    return tune_blend_weights(valid_baskets, tables, grid, (objective,))[objective]


def repeat_cooccurrence_blend(tables: BehaviourTables, weight: float, cache: dict | None = None) -> Baseline:
    """`repeat_count + weight * cooc_sum` as a baseline. Blends sharing `tables` may share a `cache`
    (a dict): each basket list's features are then computed once for all of them."""

    def score(baskets: Sequence[Basket]) -> np.ndarray:
        if cache is None:
            return blend_scores(baskets, tables, weight)
        held = cache.get(id(baskets))
        if held is None or held[0] is not baskets:
            held = cache[id(baskets)] = (baskets, _blend_parts(baskets, tables))
        repeat, cooc, popularity = held[1]
        return repeat + weight * cooc + 1e-6 * popularity

    return Baseline(f"repeat + co-occurrence (w={weight:g})", score)


def tfidf_similarity(items: dict[str, str]) -> Baseline:
    """Cosine of TF-IDF vectors: the customer's count-weighted history texts against the candidate's text."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    ids = sorted(items)
    index = {item: i for i, item in enumerate(ids)}
    matrix = TfidfVectorizer().fit_transform([items[i] for i in ids]).tocsr()  # rows l2-normalised

    def score(baskets: Sequence[Basket], chunk: int = 256) -> np.ndarray:
        out = []
        for first in range(0, len(baskets), chunk):
            part = baskets[first : first + chunk]
            rows, cols, counts = [], [], []
            for row, basket in enumerate(part):
                for item, count in basket.history:
                    if item in index:
                        rows.append(row)
                        cols.append(index[item])
                        counts.append(float(count))
            history = sparse.csr_matrix((counts, (rows, cols)), shape=(len(part), len(ids)))
            users = history @ matrix
            norms = np.sqrt(np.asarray(users.multiply(users).sum(axis=1)).reshape(-1))
            users = sparse.diags(1.0 / np.maximum(norms, 1e-12)) @ users
            similarity = (users @ matrix.T).toarray()
            for row, basket in enumerate(part):
                out.extend(similarity[row, index[c]] if c in index else 0.0 for c in basket.candidates)
        return np.array(out, dtype=float)

    return Baseline("TF-IDF text similarity", score)


def fit_behaviour_baselines(
    prepared: PreparedData,
    split: str,
    grid: Sequence[float] = BLEND_GRID,
    k: int = 100,
    objectives: Sequence[str] = ("all",),
) -> tuple[list[Baseline], dict]:
    """One blend per objective slice (tuned on validation, tables before `split`), then TF-IDF; plus what was tuned.

    The weight is chosen with tables built before the validation split and
    scored on validation baskets only (NDCG@10 of the objective slice); it is
    then applied with tables built on every purchase before `split` (as the
    other baselines are refit).
    """
    starts = split_starts(prepared.config)
    if starts[split] is None:
        raise ValueError("baselines need data before the split; the train split has none")
    tuning_tables = behaviour_tables(prepared.purchases, starts["valid"], k=k)
    tables = tuning_tables if split == "valid" else behaviour_tables(prepared.purchases, starts[split], k=k)
    baselines, tuned = [], {"tables_before": str(starts[split]), "k": k, "blends": {}}
    cache: dict = {}
    for objective, (weight, grid_ndcg) in tune_blend_weights(prepared.splits["valid"], tuning_tables, grid, objectives).items():
        blend = repeat_cooccurrence_blend(tables, weight, cache)
        if len(objectives) > 1:
            blend.name += f" [tuned on {objective}]"
        baselines.append(blend)
        tuned["blends"][objective] = {"weight": weight, "valid_ndcg@10": grid_ndcg}
    return [*baselines, tfidf_similarity(prepared.items)], tuned
