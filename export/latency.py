"""Offline latency of the bundle's served variants, measured by the export (issue 12).

One table, from one run on this machine: the two-tower ranker's user side +
head (its served variant in the bundle, one call per customer, in a session
from `edgerec.core.sessions.create_session` configured like the server's, as
`runtime/ranker.py` runs it) for 1, 100 and every catalog candidate, beside the
cross-encoder's served CPU variant for 100 candidates (rows alone through
`edgerec.core.sessions.RowRunner`, as the server runs it on the CPU:
`validate.OnnxScorer`). Customers are real test baskets (their stored
histories); candidates are catalog items drawn with a fixed seed. Times are
wall-clock milliseconds per customer, p50 and p99 over the timed customers,
after one untimed warm-up call per row of the table. The ranker's behaviour
features (NumPy, `core.behaviour.behaviour_features`) are timed apart from its
ONNX call, so both are visible.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.core.behaviour import BehaviourTables, basket_history, behaviour_features
from edgerec.core.bundle import Bundle
from edgerec.core.featurize import Featurizer
from edgerec.core.ranker_inputs import history_arrays, ranker_feeds
from edgerec.core.sessions import SessionConfig, create_session
from edgerec.core.settings import setting
from edgerec.core.signatures import CROSS_ENCODER, RANKER
from edgerec.export.samples import Basket
from edgerec.export.validate import OnnxScorer


@dataclasses.dataclass(frozen=True)
class LatencyConfig:
    """How many customers the latency table times (its whole cost stays well under 30 s on 2 cores)."""

    ranker_customers: int = setting(50, "test customers timed for each ranker row (1, 100, all candidates)")
    cross_encoder_customers: int = setting(
        12, "test customers timed for the cross-encoder (100 pairs each, ~0.5 s per customer at int8 on 2 cores)"
    )
    candidates: tuple[int, ...] = setting((1, 100), "ranker candidate counts timed besides the whole catalog")
    cross_encoder_candidates: int = setting(100, "candidates per cross-encoder call")
    max_history: int = setting(200, "history entries the ranker reads (RankerConfig.max_history / the server's)")
    threads: int = setting(0, "ranker intra-op threads and cross-encoder row workers (0: the server's default)")
    seed: int = setting(0, "seed of the customer sample and the candidate draw")


def _percentiles(ms: Sequence[float]) -> dict[str, float]:
    values = np.asarray(ms, dtype=float)
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3),
            "customers": int(values.size)}


def _customers(baskets: Sequence[Basket], n: int, seed: int) -> list[Basket]:
    """`n` baskets of distinct customers with a history, drawn with `seed`."""
    by_customer = {}
    for basket in baskets:
        if basket.history:
            by_customer.setdefault(basket.customer_id, basket)
    chosen = list(by_customer.values())
    order = np.random.default_rng(seed).permutation(len(chosen))[:n]
    return [chosen[i] for i in sorted(order)]


def ranker_latency(
    bundle: Bundle, baskets: Sequence[Basket], config: LatencyConfig = LatencyConfig()
) -> list[dict[str, Any]]:
    """Rows {model, variant, candidates, onnx p50/p99 ms, features p50/p99 ms} of the bundle's ranker."""
    featurizer = bundle.featurizer()
    ids = list(featurizer.catalog)
    index = {item: row for row, item in enumerate(ids)}
    embeddings = np.load(bundle.data_path("item_embeddings"))
    tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
    variant = bundle.model(RANKER.name).variant()
    session = create_session(bundle.path(variant.file), SessionConfig(intra_op_threads=config.threads), RANKER).session
    outputs = list(RANKER.output_names)
    rng = np.random.default_rng(config.seed)
    customers = _customers(baskets, config.ranker_customers, config.seed)
    rows = []
    for n in (*config.candidates, len(ids)):
        candidate_rows = np.sort(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
        keys = [ids[r] for r in candidate_rows]
        onnx_ms, feature_ms = [], []
        for i, basket in enumerate([customers[0], *customers]):  # the first call warms up, untimed
            start = time.perf_counter()
            entries = basket_history(basket.history, None, basket.time)
            features = behaviour_features(entries, keys, tables)
            feeds = ranker_feeds(embeddings, history_arrays(entries, index, config.max_history), candidate_rows, features)
            built = time.perf_counter()
            session.run(outputs, feeds)
            done = time.perf_counter()
            if i:
                feature_ms.append((built - start) * 1e3)
                onnx_ms.append((done - built) * 1e3)
        rows.append({"model": RANKER.name, "variant": variant.precision, "candidates": len(keys),
                     "onnx": _percentiles(onnx_ms), "features": _percentiles(feature_ms)})
    return rows


def cross_encoder_latency(
    bundle: Bundle, featurizer: Featurizer, baskets: Sequence[Basket], config: LatencyConfig = LatencyConfig()
) -> dict[str, Any]:
    """A row {model, variant, candidates, onnx p50/p99 ms} of the bundle's CPU cross-encoder, rows alone."""
    variant = bundle.model(CROSS_ENCODER.name).variant()
    scorer = OnnxScorer(bundle.path(variant.file), config.threads)
    ids = list(featurizer.catalog)
    rng = np.random.default_rng(config.seed + 1)
    customers = _customers(baskets, config.cross_encoder_customers, config.seed)
    ms = []
    try:
        for i, basket in enumerate([customers[0], *customers]):  # the first call warms up, untimed
            candidates = [ids[r] for r in rng.choice(len(ids), size=min(config.cross_encoder_candidates, len(ids)), replace=False)]
            batch = featurizer.pack(featurizer.catalog_pairs(basket.history, candidates))
            start = time.perf_counter()
            scorer(batch)
            if i:
                ms.append((time.perf_counter() - start) * 1e3)
    finally:
        scorer._rows.close()
    return {"model": CROSS_ENCODER.name, "variant": variant.precision, "candidates": len(candidates),
            "onnx": _percentiles(ms)}


def latency_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown of the rows: model, variant, candidates, model call p50/p99, features p50/p99 (ms per customer)."""
    lines = ["| model (served variant) | candidates | model call p50 / p99 (ms) | features p50 / p99 (ms) | customers |",
             "|---|---|---|---|---|"]
    for row in rows:
        feats = row.get("features")
        feature_cell = f"{feats['p50_ms']:.2f} / {feats['p99_ms']:.2f}" if feats else "(tokenized outside the timing)"
        lines.append(
            f"| {row['model']} ({row['variant']}) | {row['candidates']} | "
            f"{row['onnx']['p50_ms']:.2f} / {row['onnx']['p99_ms']:.2f} | {feature_cell} | {row['onnx']['customers']} |"
        )
    return "\n".join(lines)


def measure(bundle_root: Path, baskets: Sequence[Basket], config: LatencyConfig = LatencyConfig()) -> dict[str, Any]:
    """The whole table for the bundle folder `bundle_root`: {"rows": [...], "markdown": ..., "seconds": ...}.

    The ranker rows are left out when the bundle holds no ranker.
    """
    from edgerec.core.bundle import open_bundle

    started = time.perf_counter()
    bundle = open_bundle(Path(bundle_root))
    rows = []
    if RANKER.name in bundle.models:
        rows.extend(ranker_latency(bundle, baskets, config))
    rows.append(cross_encoder_latency(bundle, bundle.featurizer(), baskets, config))
    return {"rows": rows, "markdown": latency_table(rows), "seconds": round(time.perf_counter() - started, 2),
            "unit": "ms per customer, wall clock, this machine", "settings": dataclasses.asdict(config)}

