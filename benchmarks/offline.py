"""The offline benchmark: latency and throughput of each runner over batch size x sequence length.

The machine is shared and noisy, so runners are never timed one after the
other: every grid cell runs in rounds, each round calls every runner once
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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgerec.benchmarks.config import OfflineConfig
from edgerec.benchmarks.harness.results import latency_summary
from edgerec.benchmarks.limits import ModelShape, PeakEstimate
from edgerec.benchmarks.runners import REFERENCE, Runner, RunnerSpec, RunnerUnavailable, load_runner, peak_rss_growth
from edgerec.benchmarks.workload import exact_length_feeds
from edgerec.core.featurize import Featurizer
from edgerec.core.sessions import TensorRTProfile

log = logging.getLogger(__name__)


def grid_profile(config: OfflineConfig) -> TensorRTProfile:
    """The TensorRT profile that covers every cell of the grid, tuned for the goal's cell."""
    batches, lengths = config.batch_sizes, config.sequence_lengths
    return TensorRTProfile(
        min_batch=min(batches),
        opt_batch=min(max(config.goal_batch_size, min(batches)), max(batches)),
        max_batch=max(batches),
        min_sequence=min(lengths),
        opt_sequence=min(max(config.goal_sequence_length, min(lengths)), max(lengths)),
        max_sequence=max(lengths),
    )


def load_runners(
    specs: Sequence[RunnerSpec], featurizer: Featurizer, config: OfflineConfig, threads: int, trt_cache_dir: Path
) -> tuple[list[Runner], list[dict[str, Any]]]:
    """Load every runnable runner; describe all of them (size, memory, provider, or the skip reason).

    The TensorRT runner's engine covers the whole grid (`grid_profile`, past
    the server's batch limit), so it is cached in `trt_cache_dir`, away from
    the engine cache the server keeps beside the bundle's variant.

    Memory is the growth of this process's RSS from before the runner loads to
    the peak of its load plus one call at the grid's largest cell (sampled
    every 2 ms), runners loaded one at a time so each growth is its own.
    """
    largest = exact_length_feeds(featurizer, max(config.batch_sizes), max(config.sequence_lengths), config.seed)
    profile = grid_profile(config)
    runners, rows = [], []
    for spec in specs:
        row: dict[str, Any] = {
            "runner": spec.name,
            "runtime": spec.kind.runtime,
            "precision": spec.kind.precision,
            "device": spec.kind.device,
            "file": str(spec.path) if spec.path else None,
        }
        if not spec.runnable:
            rows.append({**row, "status": "skipped", "reason": spec.skip_reason})
            continue

        def load_and_call(spec: RunnerSpec = spec) -> tuple[Runner, float]:
            started = time.perf_counter()
            runner = load_runner(spec, threads, config.spin_wait, profile, trt_cache_dir)
            loaded = time.perf_counter() - started
            runner(largest)
            return runner, loaded

        try:
            (runner, load_s), growth = peak_rss_growth(load_and_call)
        except RunnerUnavailable as exc:
            rows.append({**row, "status": "skipped", "reason": str(exc)})
            continue
        runners.append(runner)
        rows.append(
            {
                **row,
                "status": "ran",
                "provider": runner.provider,
                "size_bytes": runner.size_bytes,
                "peak_rss_growth_bytes": growth,
                "load_s": load_s,
            }
        )
        log.info("loaded %s (%s, %.1f MB)", spec.name, runner.provider, runner.size_bytes / 1e6)
    return runners, rows


def time_grid(
    runners: Sequence[Runner],
    featurizer: Featurizer,
    config: OfflineConfig,
    shape: ModelShape | None,
    peak: PeakEstimate,
) -> list[dict[str, Any]]:
    """One row per (runner, batch, sequence): latency percentiles, pairs/s and share of the hardware peak."""
    cells = [(b, s) for s in sorted(config.sequence_lengths) for b in sorted(config.batch_sizes)]
    rows = []
    bar = tqdm(cells, desc="offline grid", unit="cell")
    for batch, sequence in bar:
        bar.set_postfix_str(f"batch {batch} x seq {sequence}")
        feeds = exact_length_feeds(featurizer, batch, sequence, config.seed)
        for runner in runners:
            for _ in range(config.warmup_runs):
                runner(feeds)
        samples: dict[str, list[float]] = {runner.spec.name: [] for runner in runners}
        started = time.perf_counter()
        rounds = 0
        while rounds < config.max_rounds and (
            rounds < config.min_rounds or time.perf_counter() - started < config.seconds_per_cell
        ):
            shift = rounds % len(runners)
            for runner in [*runners[shift:], *runners[:shift]]:
                begin = time.perf_counter()
                runner(feeds)
                samples[runner.spec.name].append(time.perf_counter() - begin)
            rounds += 1
        for runner in runners:
            stats = latency_summary(samples[runner.spec.name])
            pairs_per_s = batch / (stats["p50_ms"] / 1000.0)
            row = {
                "runner": runner.spec.name,
                "precision": runner.spec.kind.precision,
                "device": runner.spec.kind.device,
                "batch_size": batch,
                "sequence_length": sequence,
                "runs": len(samples[runner.spec.name]),
                **stats,
                "pairs_per_s": pairs_per_s,
            }
            if shape is not None and runner.spec.kind.device == "cpu":
                achieved = shape.flops_per_pair(sequence) * pairs_per_s / 1e9
                ceiling = peak.peak_gops(runner.spec.kind.precision)
                row.update(
                    achieved_gops=achieved,
                    peak_gops=ceiling,
                    peak_fraction=achieved / ceiling,
                    limit_pairs_per_s=ceiling * 1e9 / shape.flops_per_pair(sequence),
                )
            if REFERENCE in samples:
                paired = np.asarray(samples[REFERENCE]) / np.asarray(samples[runner.spec.name])
                row["speedup_vs_reference"] = float(np.median(paired))
            rows.append(row)
    return rows


def grid_estimate_s(config: OfflineConfig) -> float:
    """The grid's time budget (cells whose minimum rounds take longer run over it)."""
    return len(config.batch_sizes) * len(config.sequence_lengths) * config.seconds_per_cell
