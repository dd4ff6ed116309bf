"""Behavioural features φ(customer, item): one code path for training, evaluation and serving.

Why it exists: a ranker that reads how a customer buys (what, how often, how
lately) and how items are bought together must see the same numbers when it
is trained on stored baskets and when a request arrives. Both callers turn
their input into `HistoryEntry` rows and call `behaviour_features`; nothing
else computes a feature. numpy only at load and scoring time, so the runtime
imports it; building the tables (export side) also uses scipy's sparse product.

The customer's side comes from the history the caller passes: one
`HistoryEntry(key, count, days_ago)` per distinct past item, newest first,
where `key` is the `featurize.item_key` (the catalog id, else "\\0" + free text),
`count` how many earlier baskets held it and `days_ago` how long before `now`
it was last bought (None: unknown). An entry that is not strictly in the past
(`days_ago <= 0`) or with `count < 1` is dropped whole, so a purchase at or
after the basket's time can never leak into its features; if a key repeats,
the newest (first) entry wins, as in `Featurizer.build_pairs`.

The shop's side comes from `BehaviourTables`, built from purchases strictly
before a cutoff (`cutoff`, POSIX seconds, naive times read as UTC) and checked
against `now` (`behaviour_features` refuses tables newer than the moment it
scores for, so training baskets inside the tables' window are caught).

Columns of `behaviour_features` (float32, in `FEATURE_NAMES` order); the
default is what a candidate gets when the fact is missing:

| # | name | unit / how | default |
|---|---|---|---|
| 0 | log_times_bought | log1p(earlier baskets of this customer that held the item) | 0 (never bought) |
| 1 | days_since_bought | min(days since the customer last bought it, DAYS_CAP) / DAYS_CAP, in [0, 1] | 1.0 (never bought, or time unknown) |
| 2 | bought_time_unknown | 1 if bought before but its last purchase time is unknown, else 0 | 0 |
| 3 | new_to_customer | 1 if the customer never bought it, else 0 | 1 |
| 4 | log_popularity | log1p(baskets in the tables' window that held the item) | 0 (item unknown to the tables) |
| 5 | log_baskets_per_buyer | log(those baskets / distinct customers who bought it): how habitually it is re-bought | 0 |
| 6 | log_median_quantity | log(median units of the item per basket in the window) | 0 (= 1 unit) |
| 7 | cooc_sum | Σ over the customer's past items h of w(h, item) (the item's own entry excluded) | 0 |
| 8 | cooc_max | max over past items h of w(h, item) | 0 |
| 9 | cooc_recent | Σ of w(h, item) over the RECENT_ITEMS newest past items | 0 |
| 10 | log_history_items | log1p(distinct past items of the customer), the same for every candidate | 0 |

w(h, c) = n(h, c) / sqrt(n(h) n(c)), baskets holding both over the geometric
mean of baskets holding each (cosine of the basket-incidence columns, in
(0, 1]), kept only for the `k` largest per h among pairs seen together in at
least `min_together` baskets; w(h, c) = 0 otherwise, and for every unknown
item.

The table file (`save`/`load`) is one `.npz` (no pickles) holding the arrays
`item_ids` (unicode, sorted), `popularity` (int64), `buyers` (int64),
`median_quantity` (float32), the neighbour lists in CSR form `indptr` (int64,
n_items + 1), `indices` (int32, column = index into `item_ids`), `weights`
(float32, w(h, c), each row sorted by weight descending), and `meta`, a JSON
string: format version, cutoff, window start, k, min_together, baskets,
weight name.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

FORMAT_VERSION = 1
DAYS_CAP = 365.0  # days_since_bought saturates here (and is this value when unknown)
RECENT_ITEMS = 10  # past items, newest first, that cooc_recent reads
SECONDS_PER_DAY = 86400.0

FEATURE_NAMES = (
    "log_times_bought",
    "days_since_bought",
    "bought_time_unknown",
    "new_to_customer",
    "log_popularity",
    "log_baskets_per_buyer",
    "log_median_quantity",
    "cooc_sum",
    "cooc_max",
    "cooc_recent",
    "log_history_items",
)
NUM_FEATURES = len(FEATURE_NAMES)
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


class HistoryEntry(NamedTuple):
    """One distinct past item of a customer, as a request or a stored basket carries it."""

    key: str  # featurize.item_key: catalog id, else "\0" + free text
    count: int  # earlier baskets that held it (>= 1)
    days_ago: float | None = None  # days between its last purchase and `now`; None: unknown


def to_seconds(value) -> float:
    """POSIX seconds of a time: a number (already seconds), an ISO string, a datetime, a numpy or pandas time.

    Naive times are read as UTC, so stored basket times and purchase tables agree.
    """
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, np.datetime64):
        return float(value.astype("datetime64[us]").astype(np.int64)) / 1e6
    if isinstance(value, str):
        value = _dt.datetime.fromisoformat(value)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return value.timestamp()
    raise TypeError(f"cannot read a time from {type(value).__name__}")


@dataclasses.dataclass(frozen=True, eq=False)
class BehaviourTables:
    """Item popularity, habit, typical quantity and top-k co-occurrence neighbours of one time window."""

    item_ids: tuple[str, ...]
    popularity: np.ndarray  # int64 [n]: baskets holding the item
    buyers: np.ndarray  # int64 [n]: distinct customers who bought it
    median_quantity: np.ndarray  # float32 [n]: median units per basket
    indptr: np.ndarray  # int64 [n + 1]
    indices: np.ndarray  # int32 [nnz]
    weights: np.ndarray  # float32 [nnz]
    meta: dict  # format, cutoff (POSIX s), start, k, min_together, baskets, weight

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {item: i for i, item in enumerate(self.item_ids)})

    @property
    def cutoff(self) -> float:
        """POSIX seconds: every purchase in the tables is strictly earlier."""
        return float(self.meta["cutoff"])

    def index_of(self, key: str) -> int:
        """Row of an item key, -1 when the tables do not know it (free text, cold item)."""
        return self._index.get(key, -1)

    def popularity_of(self) -> dict[str, int]:
        """Item id -> baskets in the window that held it."""
        return dict(zip(self.item_ids, self.popularity.tolist()))

    def neighbours(self, key: str) -> dict[str, float]:
        """The kept neighbours of an item with their weight w(key, neighbour)."""
        row = self.index_of(key)
        if row < 0:
            return {}
        span = slice(self.indptr[row], self.indptr[row + 1])
        return {self.item_ids[c]: float(w) for c, w in zip(self.indices[span], self.weights[span])}

    # -- building (export side) -------------------------------------------------------------
    @classmethod
    def build(
        cls,
        invoices: Sequence,
        customers: Sequence,
        items: Sequence,
        quantities: Sequence[float],
        times: Sequence,
        cutoff,
        k: int = 100,
        min_together: int = 1,
    ) -> BehaviourTables:
        """Tables from purchase rows (one per invoice line) strictly before `cutoff`.

        Rows at or after `cutoff` are dropped here, so a caller may pass every
        purchase. Lines of one item in one invoice count as one basket, their
        quantities summed. `times` are POSIX seconds or numpy datetime64.
        """
        from scipy import sparse

        cutoff_s = to_seconds(cutoff)
        seconds = _as_seconds(times)
        keep = seconds < cutoff_s
        invoices = np.asarray(invoices, dtype=object)[keep]
        customers = np.asarray(customers, dtype=object)[keep]
        items = np.asarray(items).astype(str)[keep]
        quantities = np.asarray(quantities, dtype=np.float64)[keep]
        item_ids, item_col = np.unique(items, return_inverse=True)
        _, basket_row = np.unique(invoices.astype(str), return_inverse=True)
        _, customer_row = np.unique(customers.astype(str), return_inverse=True)
        n_items, n_baskets = len(item_ids), int(basket_row.max()) + 1 if len(basket_row) else 0
        # one row per (basket, item), quantities summed
        code = basket_row.astype(np.int64) * max(n_items, 1) + item_col
        pair, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        pair_item, pair_basket = item_col[first], basket_row[first]
        pair_quantity = np.bincount(inverse, weights=quantities, minlength=len(pair))
        popularity = np.bincount(pair_item, minlength=n_items).astype(np.int64)
        buyer_pairs = np.unique(customer_row.astype(np.int64) * max(n_items, 1) + item_col)
        buyers = np.bincount(buyer_pairs % max(n_items, 1), minlength=n_items).astype(np.int64)
        median = _median_by_group(pair_item, pair_quantity, n_items)

        incidence = sparse.csr_matrix(
            (np.ones(len(pair), dtype=np.float32), (pair_basket, pair_item)), shape=(n_baskets, n_items)
        )
        together = (incidence.T @ incidence).tocsr()
        together.setdiag(0)
        together.eliminate_zeros()
        indptr, indices, weights = [0], [], []
        norm = np.sqrt(np.maximum(popularity, 1).astype(np.float64))
        for row in range(n_items):
            span = slice(together.indptr[row], together.indptr[row + 1])
            cols, counts = together.indices[span], together.data[span]
            ok = counts >= min_together
            cols, counts = cols[ok], counts[ok]
            w = counts / (norm[row] * norm[cols])
            if len(w) > k:
                top = np.argpartition(-w, k - 1)[:k]
                cols, w = cols[top], w[top]
            order = np.lexsort((cols, -w))  # by weight, then by column: deterministic
            indices.append(cols[order].astype(np.int32))
            weights.append(w[order].astype(np.float32))
            indptr.append(indptr[-1] + len(order))
        start = float(seconds[keep].min()) if keep.any() else None
        meta = {
            "format": FORMAT_VERSION,
            "cutoff": cutoff_s,
            "start": start,
            "k": int(k),
            "min_together": int(min_together),
            "baskets": n_baskets,
            "weight": "cosine: n(h,c) / sqrt(n(h) n(c))",
        }
        return cls(
            item_ids=tuple(str(i) for i in item_ids),
            popularity=popularity,
            buyers=buyers,
            median_quantity=median.astype(np.float32),
            indptr=np.asarray(indptr, dtype=np.int64),
            indices=np.concatenate(indices) if indices else np.zeros(0, np.int32),
            weights=np.concatenate(weights) if weights else np.zeros(0, np.float32),
            meta=meta,
        )

    # -- the file --------------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write the tables to one `.npz` (the format is in the module docstring)."""
        path = Path(path)
        with path.open("wb") as handle:
            np.savez(
                handle,
                item_ids=np.asarray(self.item_ids, dtype=np.str_),
                popularity=self.popularity,
                buyers=self.buyers,
                median_quantity=self.median_quantity,
                indptr=self.indptr,
                indices=self.indices,
                weights=self.weights,
                meta=np.asarray(json.dumps(self.meta, sort_keys=True)),
            )
        return path

    @classmethod
    def load(cls, path: Path) -> BehaviourTables:
        """Read tables written by `save` (no pickles are ever loaded)."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: behaviour tables format {meta.get('format')}, expected {FORMAT_VERSION}")
            return cls(
                item_ids=tuple(str(i) for i in data["item_ids"]),
                popularity=data["popularity"].astype(np.int64),
                buyers=data["buyers"].astype(np.int64),
                median_quantity=data["median_quantity"].astype(np.float32),
                indptr=data["indptr"].astype(np.int64),
                indices=data["indices"].astype(np.int32),
                weights=data["weights"].astype(np.float32),
                meta=meta,
            )


def _as_seconds(times) -> np.ndarray:
    array = np.asarray(times)
    if np.issubdtype(array.dtype, np.datetime64):
        return array.astype("datetime64[us]").astype(np.int64) / 1e6
    if array.dtype == object or array.dtype.kind in "US":
        return np.array([to_seconds(t) for t in array], dtype=np.float64)
    return array.astype(np.float64)


def _median_by_group(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of `values` per group id in [0, n); 1.0 for a group with none."""
    out = np.ones(n, dtype=np.float64)
    if len(groups) == 0:
        return out
    order = np.lexsort((values, groups))
    groups, values = groups[order], values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(groups)) + 1]
    ends = np.r_[starts[1:], len(groups)]
    low, high = values[starts + (ends - starts - 1) // 2], values[starts + (ends - starts) // 2]
    out[groups[starts]] = (low + high) / 2.0
    return out


# -- the one feature function --------------------------------------------------------------------


def clean_history(history: Iterable) -> list[HistoryEntry]:
    """The entries features may read: strictly in the past, count >= 1, the newest entry per key."""
    seen: set[str] = set()
    out = []
    for entry in history:
        key, count, days_ago = HistoryEntry(*entry)
        if count is None or int(count) < 1 or key in seen:
            continue
        if days_ago is not None and not float(days_ago) > 0.0:  # at or after now: never visible
            continue
        seen.add(key)
        out.append(HistoryEntry(key, int(count), None if days_ago is None else float(days_ago)))
    return out


def behaviour_features(
    history: Iterable, candidates: Sequence[str], tables: BehaviourTables, now=None
) -> np.ndarray:
    """φ(customer, candidate) for every candidate: float32 [len(candidates), NUM_FEATURES].

    `history`: `HistoryEntry` rows or plain `(key, count, days_ago)` tuples,
    newest first (see the module docstring). `candidates`: item keys.
    `now`: the moment scored for (anything `to_seconds` reads); when given,
    tables built with purchases at or after it are refused (ValueError), since
    they would hold the future. Serving may pass the wall clock or None.
    """
    if now is not None and tables.cutoff > to_seconds(now):
        raise ValueError(
            f"behaviour tables hold purchases up to {tables.cutoff} (POSIX s), later than now={to_seconds(now)}: "
            "build them before the baskets they describe"
        )
    entries = clean_history(history)
    n = len(candidates)
    out = np.zeros((n, NUM_FEATURES), dtype=np.float32)
    # Vectorised over the candidates (a whole-catalog call has thousands): one dict lookup each.
    cand_rows = np.fromiter(map(tables._index.get, candidates, itertools.repeat(-1, n)), dtype=np.int64, count=n)
    known = cand_rows >= 0
    rows = cand_rows[known]

    # The customer's own facts per candidate: catalog items through their table row, and only the
    # candidates the tables do not know (free text) by key, so no Python loop runs over the catalog.
    past = np.array([tables.index_of(e.key) for e in entries], dtype=np.int64)
    entry_count = np.array([e.count for e in entries], dtype=np.float64)
    entry_days = np.array([np.nan if e.days_ago is None else e.days_ago for e in entries], dtype=np.float64)
    own_row = np.full(len(tables.item_ids) + 1, -1, dtype=np.int64)  # table row -> entry; the last slot: none
    own_row[past[past >= 0]] = np.flatnonzero(past >= 0)
    entry_of = own_row[cand_rows]  # an unknown candidate's row is -1: the last slot
    if not known.all():
        unknown = np.flatnonzero(~known)
        free = {e.key: j for j, e in enumerate(entries) if past[j] < 0}
        entry_of[unknown] = [free.get(candidates[i], -1) for i in unknown]
    mine = entry_of >= 0
    counts = np.zeros(n, dtype=np.float64)
    days = np.full(n, np.nan, dtype=np.float64)
    counts[mine] = entry_count[entry_of[mine]]
    days[mine] = entry_days[entry_of[mine]]
    bought = counts > 0
    out[:, _COLUMN["log_times_bought"]] = np.log1p(counts)
    out[:, _COLUMN["days_since_bought"]] = np.where(np.isnan(days), DAYS_CAP, np.minimum(days, DAYS_CAP)) / DAYS_CAP
    out[:, _COLUMN["bought_time_unknown"]] = bought & np.isnan(days)
    out[:, _COLUMN["new_to_customer"]] = ~bought

    popularity = tables.popularity[rows].astype(np.float64)
    out[known, _COLUMN["log_popularity"]] = np.log1p(popularity)
    out[known, _COLUMN["log_baskets_per_buyer"]] = np.log(popularity / np.maximum(tables.buyers[rows], 1))
    out[known, _COLUMN["log_median_quantity"]] = np.log(np.maximum(tables.median_quantity[rows], 1e-6))

    recent = np.arange(len(entries)) < RECENT_ITEMS
    recent, past = recent[past >= 0], past[past >= 0]
    if past.size and rows.size:
        lengths = tables.indptr[past + 1] - tables.indptr[past]
        # Every past item's neighbour span of the CSR table, concatenated in history order.
        spans = np.repeat(tables.indptr[past] - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())
        neighbour, weight = tables.indices[spans], tables.weights[spans].astype(np.float64)
        from_recent = np.repeat(recent, lengths)
        size = len(tables.item_ids)
        total = np.bincount(neighbour, weights=weight, minlength=size)
        latest = np.bincount(neighbour[from_recent], weights=weight[from_recent], minlength=size)
        best = np.zeros(size)
        np.maximum.at(best, neighbour, weight)
        out[known, _COLUMN["cooc_sum"]] = total[rows]
        out[known, _COLUMN["cooc_max"]] = best[rows]
        out[known, _COLUMN["cooc_recent"]] = latest[rows]
    out[:, _COLUMN["log_history_items"]] = np.log1p(len(entries))
    return out


def basket_history(
    history: Sequence[tuple[str, int]], last_bought: Mapping[str, object] | None, now
) -> list[HistoryEntry]:
    """A stored basket's `(item_id, count)` history as `HistoryEntry` rows, given each item's last purchase time.

    `last_bought` maps an item id to its latest purchase time strictly before
    the basket (anything `to_seconds` reads); an item missing from it (or
    `last_bought` None) gets `days_ago=None`, the documented default.
    """
    now_s = to_seconds(now)
    last_bought = last_bought or {}
    out = []
    for item, count in history:
        when = last_bought.get(item)
        out.append(HistoryEntry(item, int(count), None if when is None else (now_s - to_seconds(when)) / SECONDS_PER_DAY))
    return out


def basket_features(basket, tables: BehaviourTables, last_bought: Mapping[str, object] | None = None) -> np.ndarray:
    """`behaviour_features` of a stored basket (anything with `history`, `candidates`, `time`): the training way."""
    return behaviour_features(
        basket_history(basket.history, last_bought, basket.time), basket.candidates, tables, now=basket.time
    )
