"""Turns clean purchase lines into baskets with histories and fixed candidates, split by time.

An invoice is a basket, at the invoice's (earliest) time. For every basket
whose customer bought something strictly earlier, the sample holds:
- the history: the customer's distinct past items, newest first, each with
  the number of earlier baskets that held it. Only baskets strictly before
  the basket's time count, so two invoices in the same minute never see each
  other. Items bought at the same time are ordered by that count (most
  re-bought first), then by their line position in the invoice: never by
  item id. The featurizer keeps as many entries as its token budget allows,
  so the context shows what was bought lately and how habitually.
- candidates: the basket's items (positives with their summed quantities, at
  most `max_positives`, a seeded sample) and negatives the customer did not
  buy in this basket: some from the customer's own past items, some from the
  split's cold items (valid/test), some popularity-weighted, some uniform.
  Candidates are shuffled once with the seed, so models that tie (a baseline
  giving every cold item 0) are ranked in a random, shared order. Each
  candidate records how it was drawn (`kinds`); the dedicated cold negatives
  are left out of the all/repeat/new slices, where they would be far above
  their natural share.

Splits are by global time: train before `valid_start`, valid until
`test_start`, test after. A candidate is *cold* when nobody bought it before
its split started: for valid that is "never bought in the training period";
for test it also excludes items first sold in the validation months, so that
for every model (baselines refit on all data before the test) only the text
can score a cold item.

Samples are stored under `<cache>/<fingerprint>/` so every model is scored on
the same candidates; the fingerprint is the sha256 of the clean lines and the
sample settings.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from edgerec.export.data import DataConfig, item_texts, load_clean
from edgerec.core.settings import dump_json, to_jsonable

SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Basket:
    """One basket with its history and its fixed, shuffled candidates."""

    customer_id: str
    invoice: str
    time: str
    history: tuple[tuple[str, int], ...]  # (item_id, count), newest first
    candidates: tuple[str, ...]
    labels: tuple[int, ...]
    quantities: tuple[float, ...]
    is_repeat: tuple[bool, ...]
    is_cold: tuple[bool, ...]
    # how each candidate got here: "positive", "history", "cold", "popular" or "uniform"; () = unknown.
    # Dedicated "cold" negatives serve the cold slice only (see `in_main_slices`).
    kinds: tuple[str, ...] = ()

    @property
    def in_main_slices(self) -> tuple[bool, ...]:
        """Candidates of the all/repeat/new slices: all but the dedicated cold negatives.

        Those are drawn ~12x above their natural share to give cold positives
        rivals; left in the main slices, every model that knows nobody bought
        them yet would get them right for free.
        """
        return tuple(kind != "cold" for kind in self.kinds) if self.kinds else tuple(True for _ in self.candidates)

    def to_json(self) -> dict:
        return {
            "customer_id": self.customer_id,
            "invoice": self.invoice,
            "time": self.time,
            "history": [list(entry) for entry in self.history],
            "candidates": list(self.candidates),
            "labels": list(self.labels),
            "quantities": list(self.quantities),
            "is_repeat": [int(x) for x in self.is_repeat],
            "is_cold": [int(x) for x in self.is_cold],
            "kinds": list(self.kinds),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Basket":
        return cls(
            customer_id=data["customer_id"],
            invoice=data["invoice"],
            time=data["time"],
            history=tuple((item, int(count)) for item, count in data["history"]),
            candidates=tuple(data["candidates"]),
            labels=tuple(int(x) for x in data["labels"]),
            quantities=tuple(float(x) for x in data["quantities"]),
            is_repeat=tuple(bool(x) for x in data["is_repeat"]),
            is_cold=tuple(bool(x) for x in data["is_cold"]),
            kinds=tuple(data.get("kinds", ())),
        )


@dataclasses.dataclass
class PreparedData:
    """Items, samples per split and provenance; `purchases` feeds the baselines."""

    items: dict[str, str]
    splits: dict[str, list[Basket]]
    fingerprint: str
    stats: dict
    config: DataConfig
    purchases: pd.DataFrame = dataclasses.field(repr=False)  # invoice, customer, time, item, quantity, line


def split_starts(config: DataConfig) -> dict[str, pd.Timestamp | None]:
    """When each split begins (train: the start of the data)."""
    return {"train": None, "valid": pd.Timestamp(config.valid_start), "test": pd.Timestamp(config.test_start)}


def split_of(time: pd.Timestamp, config: DataConfig) -> str:
    if time < pd.Timestamp(config.valid_start):
        return "train"
    return "valid" if time < pd.Timestamp(config.test_start) else "test"


def basket_lines(lines: pd.DataFrame) -> pd.DataFrame:
    """One row per (invoice, item): summed quantity, the invoice's earliest time, first line position."""
    invoice_time = lines.groupby("invoice")["time"].transform("min")
    invoice_customer = lines.groupby("invoice")["customer"].transform("first")
    frame = lines.assign(time=invoice_time, customer=invoice_customer)
    grouped = frame.groupby(["invoice", "item"], sort=False).agg(
        customer=("customer", "first"), time=("time", "first"), quantity=("quantity", "sum"), line=("line", "min")
    )
    out = grouped.reset_index()
    return out.sort_values(["time", "invoice", "line"], kind="stable").reset_index(drop=True)


def fingerprint_of(lines: pd.DataFrame, config: DataConfig) -> str:
    """sha256 of the clean lines (canonical CSV) and of the settings that shape the samples."""
    digest = hashlib.sha256()
    digest.update(lines.to_csv(index=False).encode())
    settings = {k: v for k, v in to_jsonable(config).items() if k != "csv_path"}
    digest.update(json.dumps({"format": FORMAT_VERSION, **settings}, sort_keys=True).encode())
    return digest.hexdigest()


def prepare(config: DataConfig, cache_dir: Path | None = None) -> PreparedData:
    """Clean the data, build (or load from `cache_dir`) the samples of every split."""
    lines = load_clean(config)
    if lines.empty:
        raise ValueError(f"{config.resolved_csv()}: no purchase lines left after cleaning")
    items = item_texts(lines)
    purchases = basket_lines(lines)
    fingerprint = fingerprint_of(lines, config)
    folder = Path(cache_dir) / fingerprint if cache_dir is not None else None
    if folder is not None and (folder / "stats.json").exists():
        splits = {name: _read_jsonl(folder / f"{name}.jsonl.gz") for name in SPLITS}
        stats = json.loads((folder / "stats.json").read_text())
        return PreparedData(items, splits, fingerprint, stats, config, purchases)
    splits, stats = build_samples(purchases, config)
    stats = {"source": str(config.resolved_csv()), "fingerprint": fingerprint, "clean_lines": len(lines), **stats}
    if folder is not None:
        _write_cache(folder, items, splits, stats)
    return PreparedData(items, splits, fingerprint, stats, config, purchases)


def build_samples(purchases: pd.DataFrame, config: DataConfig) -> tuple[dict[str, list[Basket]], dict]:
    """Histories, candidates and slices for every basket that has an earlier basket of its customer."""
    histories = _histories(purchases)
    first_sold = purchases.groupby("item")["time"].min()
    basket_items = purchases.groupby("invoice", sort=False)
    order = purchases.drop_duplicates("invoice")[["invoice", "customer", "time"]]
    order = order.assign(split=[split_of(t, config) for t in order["time"]])
    starts = split_starts(config)
    splits: dict[str, list[Basket]] = {}
    stats: dict = {
        "items": int(purchases["item"].nunique()),
        "customers": int(purchases["customer"].nunique()),
        "baskets": int(len(order)),
        "splits": {},
    }
    for index, name in enumerate(SPLITS):
        rows = order[order["split"] == name]
        start = starts[name]
        end = starts[SPLITS[index + 1]] if index + 1 < len(SPLITS) else None
        in_period = purchases[purchases["invoice"].isin(rows["invoice"])]
        on_sale = first_sold[first_sold < end].index.to_numpy() if end is not None else first_sold.index.to_numpy()
        popularity = in_period.groupby("item")["invoice"].nunique()
        cold = set() if start is None else set(first_sold[first_sold >= start].index) & set(popularity.index)
        pools = _Pools(
            on_sale=on_sale,
            popular=popularity.index.to_numpy(),
            popular_p=(popularity / popularity.sum()).to_numpy(),
            cold=np.array(sorted(cold), dtype=object),
        )
        rng = np.random.default_rng([config.sample_seed, index])
        baskets = []
        for invoice, customer, time in tqdm(
            rows[["invoice", "customer", "time"]].itertuples(index=False), total=len(rows), desc=f"samples {name}", leave=False
        ):
            history = histories[invoice]
            if not history:
                continue
            group = basket_items.get_group(invoice)
            baskets.append(_basket(customer, invoice, time, history, group, pools, cold, config, rng))
        splits[name] = baskets
        stats["splits"][name] = _split_stats(rows, baskets, cold, start, end)
    return splits, stats


@dataclasses.dataclass(frozen=True)
class _Pools:
    on_sale: np.ndarray
    popular: np.ndarray
    popular_p: np.ndarray
    cold: np.ndarray


def _histories(purchases: pd.DataFrame) -> dict[str, tuple[tuple[str, int], ...]]:
    """Invoice -> the customer's history strictly before its time, newest first."""
    frame = purchases.sort_values(["customer", "time", "invoice", "line"], kind="stable")
    customers = frame["customer"].tolist()
    times = frame["time"].astype("int64").tolist()
    invoices = frame["invoice"].tolist()
    items = frame["item"].tolist()
    lines = frame["line"].tolist()
    result: dict[str, tuple[tuple[str, int], ...]] = {}
    count: dict[str, int] = {}
    last: dict[str, tuple[int, int]] = {}  # item -> (time, line position) of its latest purchase
    row, rows = 0, len(frame)
    with tqdm(total=rows, desc="histories", leave=False) as progress:
        while row < rows:
            if row == 0 or customers[row] != customers[row - 1]:
                count, last = {}, {}
            end = row  # one moment: this customer's lines at this exact time
            while end < rows and customers[end] == customers[row] and times[end] == times[row]:
                end += 1
            ordered = sorted(count, key=lambda item: (-last[item][0], -count[item], last[item][1]))
            snapshot = tuple((item, count[item]) for item in ordered)
            for position in range(row, end):
                result.setdefault(invoices[position], snapshot)
            for position in range(row, end):  # one row per (invoice, item): each adds one basket
                item = items[position]
                count[item] = count.get(item, 0) + 1
                previous = last.get(item)
                if previous is None or previous[0] != times[position]:
                    last[item] = (times[position], lines[position])
                else:
                    last[item] = (previous[0], min(previous[1], lines[position]))
            progress.update(end - row)
            row = end
    return result


def _draw(rng: np.random.Generator, pool: np.ndarray, n: int, exclude: set, p: np.ndarray | None = None) -> list[str]:
    """Up to `n` distinct items of `pool` not in `exclude` (weighted by `p` if given)."""
    if n <= 0 or len(pool) == 0:
        return []
    chosen: list[str] = []
    for _ in range(4):
        for item in rng.choice(pool, size=3 * n + 8, p=p):
            if item not in exclude and item not in chosen:
                chosen.append(item)
                if len(chosen) == n:
                    return chosen
    rest = [item for item in pool if item not in exclude and item not in chosen]
    if rest:
        weights = None
        if p is not None:
            lookup = dict(zip(pool, p))
            weights = np.array([lookup[item] for item in rest])
            weights = weights / weights.sum()
        extra = rng.choice(np.array(rest, dtype=object), size=min(n - len(chosen), len(rest)), replace=False, p=weights)
        chosen.extend(extra)
    return chosen


def _basket(
    customer: str,
    invoice: str,
    time: pd.Timestamp,
    history: tuple[tuple[str, int], ...],
    group: pd.DataFrame,
    pools: _Pools,
    cold: set,
    config: DataConfig,
    rng: np.random.Generator,
) -> Basket:
    bought = dict(zip(group["item"], group["quantity"].astype(float)))
    positives = list(bought)
    if len(positives) > config.max_positives:
        keep = set(rng.choice(len(positives), size=config.max_positives, replace=False).tolist())
        positives = [item for i, item in enumerate(positives) if i in keep]
    past = {item for item, _ in history}
    exclude = set(bought)
    negatives: list[str] = []
    kinds = ["positive"] * len(positives)
    for kind, pool, n, p in (
        ("history", np.array([item for item, _ in history], dtype=object), config.history_negatives, None),
        ("cold", pools.cold, config.cold_negatives, None),
        ("popular", pools.popular, config.popular_negatives, pools.popular_p),
        ("uniform", pools.on_sale, config.uniform_negatives, None),
    ):
        drawn = _draw(rng, pool, n, exclude, p)
        negatives.extend(drawn)
        kinds.extend([kind] * len(drawn))
        exclude.update(drawn)
    candidates = positives + negatives
    labels = [1] * len(positives) + [0] * len(negatives)
    quantities = [bought[item] for item in positives] + [0.0] * len(negatives)
    shuffle = rng.permutation(len(candidates))
    candidates = [str(candidates[i]) for i in shuffle]
    return Basket(
        customer_id=customer,
        invoice=invoice,
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
        history=history,
        candidates=tuple(candidates),
        labels=tuple(labels[i] for i in shuffle),
        quantities=tuple(quantities[i] for i in shuffle),
        is_repeat=tuple(item in past for item in candidates),
        is_cold=tuple(item in cold for item in candidates),
        kinds=tuple(kinds[i] for i in shuffle),
    )


def _split_stats(rows: pd.DataFrame, baskets: list[Basket], cold: set, start, end) -> dict:
    labels = np.array([y for b in baskets for y in b.labels], dtype=int)
    repeat = np.array([r for b in baskets for r in b.is_repeat], dtype=bool)
    is_cold = np.array([c for b in baskets for c in b.is_cold], dtype=bool)
    return {
        "start": None if start is None else str(start.date()),
        "end": None if end is None else str(end.date()),
        "baskets": int(len(rows)),
        "customers": int(rows["customer"].nunique()),
        "samples": len(baskets),
        "candidates": int(labels.size),
        "positives": int(labels.sum()),
        "repeat_positives": int((labels.astype(bool) & repeat).sum()),
        "cold_items": len(cold),
        "cold_positives": int((labels.astype(bool) & is_cold).sum()),
        "cold_negatives": int((~labels.astype(bool) & is_cold).sum()),
        "mean_history": float(np.mean([len(b.history) for b in baskets])) if baskets else 0.0,
    }


def _write_cache(folder: Path, items: dict[str, str], splits: dict[str, list[Basket]], stats: dict) -> None:
    """Write into a temporary folder, then rename, so a half-written cache is never read."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    (partial / "items.json").write_text(json.dumps(items, sort_keys=True))
    for name, baskets in splits.items():
        with gzip.open(partial / f"{name}.jsonl.gz", "wt", compresslevel=6) as handle:
            for basket in baskets:
                handle.write(json.dumps(basket.to_json(), separators=(",", ":")) + "\n")
    dump_json(partial / "stats.json", stats)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _read_jsonl(path: Path) -> list[Basket]:
    with gzip.open(path, "rt") as handle:
        return [Basket.from_json(json.loads(line)) for line in handle]
