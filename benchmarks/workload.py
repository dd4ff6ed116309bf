"""What the benchmark feeds the runners and the servers.

- Offline grid cells need batches whose every pair is exactly `sequence`
  tokens long (no padding, so the FLOP count is exact). They are built with
  the bundle's featurizer from real catalog items: `[CLS] "<n>x item ;" ...
  [SEP] candidate [SEP]`, the context cut to the length wanted.
- Quality is measured on validation baskets, and the servers are sent real
  customers from the test split: their histories and 10-100 candidates per
  request. Both come from the export's sample cache
  (`artifacts/data/<fingerprint>/`); without one, requests are drawn from the
  catalog (`harness.requests.random_requests`) and quality is reported as not
  measured.
- The two-stage server is sent test-split customers too (`customer_pool`):
  their history as context with counts and the days since each item's last
  purchase (the ranker's recency feature), recovered from the customer's
  earlier baskets in the same cache (`last_purchase_days`), and a fixed
  number of candidates (their basket's, topped up from the catalog).
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from edgerec.benchmarks.harness.requests import history_of, random_requests, score_request
from edgerec.core.bundle import Bundle
from edgerec.core.featurize import ContextEntry, Featurizer
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.samples import Basket
from edgerec.proto import recommender_pb2

# Catalog histories (without test baskets) carry at most this many past items.
RANDOM_HISTORY_ITEMS = 30
SECONDS_PER_DAY = 86400.0


def exact_length_feeds(featurizer: Featurizer, batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of `batch` pairs, each exactly `sequence` tokens, from random catalog items."""
    if sequence < 4:
        raise ValueError(f"a pair needs at least 4 tokens ([CLS] x [SEP] y [SEP]), got {sequence}")
    rng = np.random.default_rng([seed, batch, sequence])
    items = list(featurizer.catalog.values())
    if not items:
        raise ValueError("the bundle's catalog is empty: no items to build benchmark pairs from")
    pairs = []
    for _ in range(batch):
        candidate = items[rng.integers(len(items))][: max(1, sequence // 4)]
        wanted = sequence - 3 - len(candidate)
        context: list[int] = []
        while len(context) < wanted:
            history = [ContextEntry(items[i], int(rng.integers(1, 6))) for i in rng.integers(len(items), size=8)]
            context.extend(featurizer.context_tokens(history) or history[0].tokens)
        pairs.append((tuple(context[:wanted]), candidate))
    batch_inputs = featurizer.pack(pairs)
    assert batch_inputs.input_ids.shape == (batch, sequence) and batch_inputs.real_tokens == batch * sequence
    return batch_inputs.as_feeds()


def data_fingerprint(bundle: Bundle) -> str:
    """The fingerprint of the data the cross-encoder was trained on ("" if its manifest entry does not say)."""
    return str(bundle.model(CROSS_ENCODER.name).info.get("data_fingerprint") or "")


def validation_metrics(bundle: Bundle) -> dict:
    """The export's validation figures for the cross-encoder (`metrics.validation`), {} if it recorded none."""
    return dict(bundle.model(CROSS_ENCODER.name).info.get("metrics", {}).get("validation", {}))


def default_samples_dir(bundle: Bundle, data_dir: Path = Path("artifacts/data")) -> Path:
    """Where the export cached the samples of the data the bundle was trained on."""
    return Path(data_dir) / data_fingerprint(bundle)


def load_baskets(samples_dir: Path | None, split: str) -> list[Basket]:
    """The baskets of `split` from a sample cache folder; [] when there is none."""
    if samples_dir is None:
        return []
    path = Path(samples_dir) / f"{split}.jsonl.gz"
    if not path.is_file():
        return []
    with gzip.open(path, "rt") as handle:
        return [Basket.from_json(json.loads(line)) for line in handle]


def request_pool(
    baskets: Sequence[Basket],
    featurizer: Featurizer,
    size: int,
    min_candidates: int,
    max_candidates: int,
    max_history: int = 64,
    seed: int = 0,
) -> tuple[list[recommender_pb2.ScoreRequest], str]:
    """`size` Score requests with `min_candidates`..`max_candidates` candidates each, and where they came from.

    A request carries at most `max_history` past items, the most recent (a
    client sends a customer's recent history, not all of it).

    From test baskets when there are any (a request's candidates are its
    basket's, topped up from the catalog when a basket has fewer than drawn),
    else from random catalog histories.
    """
    catalog = list(featurizer.catalog)
    known = [b for b in baskets if b.candidates and all(c in featurizer.catalog for c in b.candidates)]
    if not known:
        history = min(max_history, RANDOM_HISTORY_ITEMS)
        pool = random_requests(catalog, size, min_candidates, max_candidates, history, seed)
        return pool, "random catalog histories (no test baskets found)"
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(size):
        wanted = int(rng.integers(min_candidates, max_candidates + 1))
        basket = known[int(rng.integers(len(known)))]
        history = [(item, count) for item, count in basket.history if item in featurizer.catalog][:max_history]
        candidates = list(basket.candidates[:wanted])
        while len(candidates) < wanted:
            candidates.append(catalog[int(rng.integers(len(catalog)))])
        pool.append(score_request(history, candidates))
    return pool, f"{len(known)} test baskets"


def mean_pair_tokens(featurizer: Featurizer, request: recommender_pb2.ScoreRequest) -> float:
    """Mean tokens per pair of a Score request as the server builds them (context + candidate + 3 specials)."""
    candidates = [candidate.item_id for candidate in request.candidates]
    pairs = featurizer.catalog_pairs(history_of(request), candidates)
    return float(np.mean([featurizer.pair_length(*pair) for pair in pairs]))


def _seconds(time: str) -> float:
    """A basket's time ("YYYY-MM-DD HH:MM:SS") in seconds since the epoch."""
    return float(np.datetime64(time.replace(" ", "T"), "s").astype(np.int64))


def last_purchase_days(basket: Basket, earlier: Sequence[Basket]) -> dict[str, float]:
    """Days from each history item's last purchase to `basket`, for the items the cache can date.

    A basket's history counts the earlier invoices that held each item, so
    between two of the customer's consecutive baskets A and B the items whose
    count grew were bought at A's invoice (or at an invoice between them that
    is no sample): they are dated A's time. `earlier`: the customer's baskets
    before `basket`, in any order. Items bought only before the customer's
    first sample basket cannot be dated and are left out (a request leaves
    their `days_ago` unset).
    """
    when = _seconds(basket.time)
    days: dict[str, float] = {}
    later = dict(basket.history)
    for previous in sorted(earlier, key=lambda b: b.time, reverse=True):
        counts = dict(previous.history)
        for item, count in later.items():
            if item not in days and count > counts.get(item, 0):
                days[item] = max(0.0, (when - _seconds(previous.time)) / SECONDS_PER_DAY)
        later = counts
    return {item: days[item] for item, _ in basket.history if item in days}


@dataclasses.dataclass(frozen=True)
class Customer:
    """One customer as a two-stage request carries them: context and candidates (catalog ids)."""

    context: tuple[tuple[str, str, int, float | None], ...]  # (item id, "", count, days ago or None), newest first
    candidates: tuple[str, ...]


def customer_pool(
    test: Sequence[Basket],
    earlier: Iterable[Basket],
    catalog: Sequence[str],
    size: int,
    candidates: int,
    max_history: int = 64,
    seed: int = 0,
) -> tuple[list[Customer], dict]:
    """`size` customers of test baskets (drawn with replacement), each with exactly `candidates` candidates,
    and where they came from (`source`, `dated_context_share`: context items whose days_ago is known).

    `earlier`: baskets of any split (test included) that date the context
    (`last_purchase_days`). A request's candidates are its basket's, topped up
    with catalog items drawn at random. Without test baskets in the catalog,
    random catalog histories without dates.
    """
    known = set(catalog)
    usable = [b for b in test if b.candidates and all(c in known for c in b.candidates)]
    rng = np.random.default_rng(seed)
    ids = list(catalog)
    if not usable:
        pool = random_requests(ids, size, candidates, candidates, min(max_history, RANDOM_HISTORY_ITEMS), seed)
        customers = [
            Customer(tuple((c.item_id, "", c.count, None) for c in r.context), tuple(c.item_id for c in r.candidates))
            for r in pool
        ]
        return customers, {"source": "random catalog histories (no test baskets found)", "dated_context_share": 0.0}
    by_customer: dict[str, list[Basket]] = collections.defaultdict(list)
    wanted = {b.customer_id for b in usable}
    for basket in earlier:
        if basket.customer_id in wanted:
            by_customer[basket.customer_id].append(basket)
    customers, dated, total = [], 0, 0
    for _ in range(size):
        basket = usable[int(rng.integers(len(usable)))]
        before = [b for b in by_customer[basket.customer_id] if b.time < basket.time]
        days = last_purchase_days(basket, before)
        history = [(item, count) for item, count in basket.history if item in known][:max_history]
        context = tuple((item, "", count, days.get(item)) for item, count in history)
        chosen = list(basket.candidates[:candidates])
        while len(chosen) < candidates:
            chosen.append(ids[int(rng.integers(len(ids)))])
        customers.append(Customer(context, tuple(chosen)))
        dated += sum(entry[3] is not None for entry in context)
        total += len(context)
    source = f"{len(usable)} test baskets of {len(wanted)} customers"
    return customers, {"source": source, "dated_context_share": dated / total if total else 0.0}
