"""What the benchmark feeds the engines and the server.

- Offline grid cells need batches whose every pair is exactly `sequence`
  tokens long (no padding, so the FLOP count is exact). They are built with
  the bundle's featurizer from real catalog items: `[CLS] "<n>x item ;" ...
  [SEP] candidate [SEP]`, the context cut to the length wanted.
- Quality is measured on validation baskets, and the load generator
  replays real customers from the test split: their
  histories and 10-100 candidates per request. Both come from the export's
  sample cache (`artifacts/data/<fingerprint>/`); without one, requests are
  drawn from the catalog and quality is reported as not measured.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np

from edgerec.export.samples import Basket
from edgerec.runtime.bundle import Bundle
from edgerec.runtime.featurize import ContextEntry, Featurizer, FeaturizerConfig
from edgerec.settings import from_jsonable


def bundle_featurizer(bundle: Bundle) -> Featurizer:
    """The bundle's featurizer with its catalog, exactly as the server builds it."""
    config = from_jsonable(FeaturizerConfig, bundle.manifest["featurizer"])
    return Featurizer.from_files(bundle.tokenizer_path, config, bundle.catalog_path)


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


def default_samples_dir(bundle: Bundle, data_dir: Path = Path("artifacts/data")) -> Path:
    """Where the export cached the samples of the data the bundle was trained on."""
    return Path(data_dir) / str(bundle.manifest.get("data_fingerprint", ""))


def load_baskets(samples_dir: Path | None, split: str) -> list[Basket]:
    """The baskets of `split` from a sample cache folder; [] when there is none."""
    if samples_dir is None:
        return []
    path = Path(samples_dir) / f"{split}.jsonl.gz"
    if not path.is_file():
        return []
    with gzip.open(path, "rt") as handle:
        return [Basket.from_json(json.loads(line)) for line in handle]


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """One Score request: a customer's history (newest first) and the candidate item ids."""

    history: tuple[tuple[str, int], ...]
    candidates: tuple[str, ...]
    mean_pair_tokens: float  # as the featurizer will build them (context + candidate + 3 specials)


def request_pool(
    baskets: list[Basket],
    featurizer: Featurizer,
    size: int,
    min_candidates: int,
    max_candidates: int,
    max_history: int = 64,
    seed: int = 0,
) -> tuple[list[RequestSpec], str]:
    """`size` requests with `min_candidates`..`max_candidates` candidates each, and where they came from.

    A request carries at most `max_history` past items, the most recent (a
    client sends a customer's recent history, not all of it).

    From test baskets when there are any (a request's candidates are its
    basket's, topped up from the catalog when a basket has fewer than drawn),
    else from random catalog histories.
    """
    rng = np.random.default_rng(seed)
    catalog = list(featurizer.catalog)
    known = [b for b in baskets if b.candidates and all(c in featurizer.catalog for c in b.candidates)]
    pool = []
    for _ in range(size):
        wanted = int(rng.integers(min_candidates, max_candidates + 1))
        if known:
            basket = known[int(rng.integers(len(known)))]
            known_history = [(item, count) for item, count in basket.history if item in featurizer.catalog]
            history = tuple(known_history[:max_history])
            candidates = list(basket.candidates[:wanted])
        else:
            picks = rng.choice(len(catalog), size=int(rng.integers(0, min(30, max_history) + 1)))
            history = tuple((catalog[i], int(rng.integers(1, 6))) for i in dict.fromkeys(picks.tolist()))
            candidates = []
        while len(candidates) < wanted:
            candidates.append(catalog[int(rng.integers(len(catalog)))])
        lengths = [featurizer.pair_length(*pair) for pair in featurizer.catalog_pairs(history, candidates)]
        pool.append(RequestSpec(history, tuple(candidates), float(np.mean(lengths))))
    source = f"{len(known)} test baskets" if known else "random catalog histories (no test baskets found)"
    return pool, source
