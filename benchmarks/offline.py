"""The offline engine benchmark: latency and throughput over batch size x sequence length.

The machine is shared and noisy, so engines are never timed one after the
other: every grid cell runs in rounds, each round calls every engine once
(in a rotated order), and the cell reports medians. Speed-ups over the
PyTorch reference are the median of per-round ratios, so a slow moment hits
both sides of a ratio alike. A cell runs rounds until its time budget is
spent, with at least `min_rounds`, so big cells stay measured and small ones
get many samples.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from edgerec.benchmarks.config import OfflineConfig
from edgerec.benchmarks.engines import REFERENCE, Engine, EngineSpec, EngineUnavailable, load_engine, peak_rss_growth
from edgerec.benchmarks.limits import ModelShape, PeakEstimate
from edgerec.benchmarks.workload import exact_length_feeds
from edgerec.runtime.featurize import Featurizer

log = logging.getLogger(__name__)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, p95, p99 and mean of call latencies, in milliseconds."""
    ms = np.asarray(seconds, dtype=float) * 1000.0
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "mean_ms": float(ms.mean())}


def load_engines(
    specs: Sequence[EngineSpec], featurizer: Featurizer, config: OfflineConfig, threads: int
) -> tuple[list[Engine], list[dict[str, Any]]]:
    """Load every runnable engine; describe all of them (size, memory, provider, or the skip reason).

    Memory is the growth of this process's RSS from before the engine loads to
    the peak of its load plus one call at the grid's largest cell (sampled
    every 2 ms), engines loaded one at a time so each growth is its own.
    """
    largest = exact_length_feeds(featurizer, max(config.batch_sizes), max(config.sequence_lengths), config.seed)
    engines, rows = [], []
    for spec in specs:
        row: dict[str, Any] = {
            "engine": spec.name,
            "runtime": spec.kind.runtime,
            "precision": spec.kind.precision,
            "device": spec.kind.device,
            "file": str(spec.path) if spec.path else None,
        }
        if not spec.runnable:
            rows.append({**row, "status": "skipped", "reason": spec.skip_reason})
            continue

        def load_and_call(spec: EngineSpec = spec) -> tuple[Engine, float]:
            started = time.perf_counter()
            engine = load_engine(spec, threads, config.spin_wait)
            loaded = time.perf_counter() - started
            engine(largest)
            return engine, loaded

        try:
            (engine, load_s), growth = peak_rss_growth(load_and_call)
        except EngineUnavailable as exc:
            rows.append({**row, "status": "skipped", "reason": str(exc)})
            continue
        engines.append(engine)
        rows.append(
            {
                **row,
                "status": "ran",
                "provider": engine.provider,
                "size_bytes": engine.size_bytes,
                "peak_rss_growth_bytes": growth,
                "load_s": load_s,
            }
        )
        log.info("loaded %s (%s, %.1f MB)", spec.name, engine.provider, engine.size_bytes / 1e6)
    return engines, rows


def time_grid(
    engines: Sequence[Engine],
    featurizer: Featurizer,
    config: OfflineConfig,
    shape: ModelShape | None,
    peak: PeakEstimate,
) -> list[dict[str, Any]]:
    """One row per (engine, batch, sequence): latency percentiles, pairs/s and share of the hardware peak."""
    cells = [(b, s) for s in sorted(config.sequence_lengths) for b in sorted(config.batch_sizes)]
    rows = []
    bar = tqdm(cells, desc="offline grid", unit="cell")
    for batch, sequence in bar:
        bar.set_postfix_str(f"batch {batch} x seq {sequence}")
        feeds = exact_length_feeds(featurizer, batch, sequence, config.seed)
        for engine in engines:
            for _ in range(config.warmup_runs):
                engine(feeds)
        samples: dict[str, list[float]] = {engine.spec.name: [] for engine in engines}
        started = time.perf_counter()
        rounds = 0
        while rounds < config.max_rounds and (
            rounds < config.min_rounds or time.perf_counter() - started < config.seconds_per_cell
        ):
            shift = rounds % len(engines)
            for engine in [*engines[shift:], *engines[:shift]]:
                begin = time.perf_counter()
                engine(feeds)
                samples[engine.spec.name].append(time.perf_counter() - begin)
            rounds += 1
        for engine in engines:
            stats = latency_summary(samples[engine.spec.name])
            pairs_per_s = batch / (stats["p50_ms"] / 1000.0)
            row = {
                "engine": engine.spec.name,
                "precision": engine.spec.kind.precision,
                "device": engine.spec.kind.device,
                "batch_size": batch,
                "sequence_length": sequence,
                "runs": len(samples[engine.spec.name]),
                **stats,
                "pairs_per_s": pairs_per_s,
            }
            if shape is not None and engine.spec.kind.device == "cpu":
                achieved = shape.flops_per_pair(sequence) * pairs_per_s / 1e9
                ceiling = peak.peak_gops(engine.spec.kind.precision)
                row.update(
                    achieved_gops=achieved,
                    peak_gops=ceiling,
                    peak_fraction=achieved / ceiling,
                    limit_pairs_per_s=ceiling * 1e9 / shape.flops_per_pair(sequence),
                )
            if REFERENCE in samples:
                paired = np.asarray(samples[REFERENCE]) / np.asarray(samples[engine.spec.name])
                row["speedup_vs_reference"] = float(np.median(paired))
            rows.append(row)
    return rows


def grid_estimate_s(config: OfflineConfig) -> float:
    """The grid's time budget (cells whose minimum rounds take longer run over it)."""
    return len(config.batch_sizes) * len(config.sequence_lengths) * config.seconds_per_cell
