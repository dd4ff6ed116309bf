"""Load scenarios: capacity, soak (~70 % of it, for minutes) and overload (3x it).

Capacity is what one server answers with `capacity_concurrency` requests in
flight. The soak sends Poisson arrivals below capacity and must see no error
and no growth of the server's resident memory. The overload sends Poisson
arrivals at three times capacity: the server must stay up, refuse the excess
with RESOURCE_EXHAUSTED at once (refusals are timed), keep the p99 of what
it admitted bounded by its queue bound, hold its memory and never answer
INTERNAL. All traffic stays on 127.0.0.1 and every run ends by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edgerec.benchmarks.harness.driver import closed_loop, open_loop
from edgerec.benchmarks.harness.memory import MB
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.harness.results import Tally, percentile_ms
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability.config import ReliabilityConfig
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime.config import Config

Progress = Callable[[float], None]


@dataclasses.dataclass(frozen=True)
class Capacity:
    """What the server answers when it is kept busy (closed loop)."""

    requests_per_s: float
    pairs_per_s: float
    p99_ms: float
    peak_rss_mb: float
    concurrency: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_capacity(server: ServerUnderTest, workload: RequestPool, config: ReliabilityConfig) -> Capacity:
    """Closed loop at `capacity_concurrency` for `capacity_s` (after a short unmeasured warm-up)."""

    async def main() -> tuple[Tally, float]:
        async with server.channel() as channel:
            call = workload.calls(recommender_pb2_grpc.RecommenderStub(channel), config.request_timeout_s)
            await closed_loop(call, Tally(), config.capacity_concurrency, min(1.0, config.capacity_s / 4))
            tally = Tally()
            run = await closed_loop(call, tally, config.capacity_concurrency, config.capacity_s)
            return tally, tally.answered / run.seconds

    started = time.perf_counter()
    tally, rate = asyncio.run(main())
    if tally.lost or not tally.answered:
        raise RuntimeError(f"capacity could not be measured: {tally.summary()}")
    return Capacity(
        requests_per_s=rate,
        pairs_per_s=rate * workload.mean_pairs,
        p99_ms=percentile_ms(tally.latencies_s, 99),
        peak_rss_mb=server.memory.peak_mb(started),
        concurrency=config.capacity_concurrency,
    )


def _run_open_loop(
    server: ServerUnderTest,
    workload: RequestPool,
    rate: float,
    seconds: float,
    tally: Tally,
    config: ReliabilityConfig,
    progress: Progress | None,
) -> float:
    """Poisson arrivals at `rate` for `seconds`, answers awaited up to their deadline; the achieved arrival rate."""

    async def main() -> float:
        async with server.channel() as channel:
            call = workload.calls(recommender_pb2_grpc.RecommenderStub(channel), config.request_timeout_s)
            rng = np.random.default_rng(config.seed)
            run = await open_loop(call, tally, rate, seconds, rng, config.request_timeout_s + 5.0, tick=progress)
            return run.arrival_rate

    return asyncio.run(main())


def rss_trend(memory: Any, start: float, stop: float) -> tuple[float, float]:
    """Least-squares slope (MiB per minute) of the RSS samples taken in [start, stop], and their noise:
    the standard deviation (MiB) of the samples around that line. NaN with fewer than 3 samples."""
    samples = [(t, rss / MB) for t, rss in list(memory.samples) if start <= t <= stop]
    if len(samples) < 3:
        return float("nan"), float("nan")
    times, mb = (np.array(column, dtype=float) for column in zip(*samples))
    slope, intercept = np.polyfit(times - times[0], mb, 1)
    return float(slope * 60.0), float(np.std(mb - (slope * (times - times[0]) + intercept)))


def soak(
    server: ServerUnderTest,
    workload: RequestPool,
    capacity: Capacity,
    config: ReliabilityConfig,
    progress: Progress | None = None,
) -> Scenario:
    """Open loop at `soak_fraction` of capacity for `soak_s`: nothing lost, few refusals, no memory growth.

    Poisson arrivals at 70 % of capacity still bring bursts whose queue exceeds admission's time bound
    (`max_queue_wait_ms`) now and then; those requests are refused at once (RESOURCE_EXHAUSTED) by
    design, so the soak counts them as refusals and bounds their share (`soak_max_refused_fraction`).
    """
    rate = config.soak_fraction * capacity.requests_per_s
    tally = Tally(refusal_codes=frozenset({"RESOURCE_EXHAUSTED"}))
    started = time.perf_counter()
    achieved = _run_open_loop(server, workload, rate, config.soak_s, tally, config, progress)
    stopped = time.perf_counter()
    fifth = (stopped - started) / 5
    first, last = server.memory.mb_between(started, started + fifth), server.memory.mb_between(stopped - fifth, stopped)
    growth = float(np.median(last) - np.median(first)) if first.size and last.size else float("nan")
    trend, noise = rss_trend(server.memory, started + fifth, stopped)
    figures = {
        **tally.summary(),
        "seconds": config.soak_s,
        "offered_requests_per_s": rate,
        "achieved_requests_per_s": achieved,
        "fraction_of_capacity": config.soak_fraction,
        "refused_fraction": sum(tally.refused.values()) / tally.sent if tally.sent else 0.0,
        "rss_first_fifth_mb": float(np.median(first)) if first.size else None,
        "rss_last_fifth_mb": float(np.median(last)) if last.size else None,
        "rss_growth_mb": growth,
        "rss_growth_mb_per_min": growth / (stopped - started) * 60.0,
        "peak_rss_mb": server.memory.peak_mb(started, stopped),
        # After the first fifth (warm-up): least-squares slope of RSS, and the samples' spread around it.
        "rss_trend_mb_per_min": trend,
        "rss_noise_mb": noise,
    }
    checks = [
        Check("nothing lost", tally.lost == 0, f"lost {tally.lost} of {tally.sent} ({dict(tally.unexpected)})"),
        Check(
            "few refusals",
            sum(tally.refused.values()) <= config.soak_max_refused_fraction * tally.sent and not tally.unexpected,
            f"refused {dict(tally.refused)} of {tally.sent} at once by admission's time bound (at most "
            f"{config.soak_max_refused_fraction:.0%}); other errors {dict(tally.unexpected)}",
        ),
        Check(
            "memory flat",
            growth <= config.soak_memory_growth_mb,
            f"RSS grew {growth:.1f} MiB from the first to the last fifth (bound {config.soak_memory_growth_mb} MiB)",
        ),
        Check("server up", server.alive() and server.healthy(), "health check after the soak"),
    ]
    return Scenario("soak", f"{config.soak_fraction:.0%} of capacity for {config.soak_s:.0f} s", figures, checks)


def overload(
    server: ServerUnderTest,
    workload: RequestPool,
    capacity: Capacity,
    config: ReliabilityConfig,
    served: Config,
    progress: Progress | None = None,
) -> Scenario:
    """Open loop at `overload_factor` x capacity: up, bounded, refusing the excess at once, never INTERNAL."""
    # what admission lets wait at most: the pairs of its time bound at capacity, the pair bound, or the
    # request bound of the largest requests, whichever is least
    bounds = [served.batcher.max_queue_pairs, served.batcher.max_queue_requests * max(workload.pairs)]
    if served.batcher.max_queue_wait_ms > 0:
        bounds.append(int(served.batcher.max_queue_wait_ms / 1000.0 * capacity.pairs_per_s) + max(workload.pairs))
    queue_bound_pairs = min(bounds)
    rate = config.overload_factor * capacity.requests_per_s
    tally = Tally(refusal_codes=frozenset({"RESOURCE_EXHAUSTED"}))
    started = time.perf_counter()
    achieved = _run_open_loop(server, workload, rate, config.overload_s, tally, config, progress)
    stopped = time.perf_counter()
    summary = tally.summary()
    queue_drain_ms = queue_bound_pairs / capacity.pairs_per_s * 1000.0
    fill_s = queue_drain_ms / 1000.0 / max(config.overload_factor - 1.0, 1e-9)  # when the excess fills the queue
    p99_bound_ms = config.p99_bound_factor * (queue_drain_ms + capacity.p99_ms)
    peak = server.memory.peak_mb(started, stopped)
    p50, refusal_p50, p99 = summary["p50_ms"], summary["refusal_p50_ms"], summary["p99_ms"]
    figures = {
        **summary,
        "seconds": config.overload_s,
        "offered_requests_per_s": rate,
        "achieved_requests_per_s": achieved,
        "factor_of_capacity": config.overload_factor,
        "refused_fraction": sum(tally.refused.values()) / tally.sent if tally.sent else 0.0,
        "queue_bound_pairs": queue_bound_pairs,
        "queue_drain_ms": queue_drain_ms,
        "queue_fills_after_s": fill_s,
        "p99_bound_ms": p99_bound_ms,
        "rss_at_capacity_mb": capacity.peak_rss_mb,
        "peak_rss_mb": peak,
    }
    checks = [
        Check("server up", server.alive() and server.healthy(), "process alive and health SERVING after the overload"),
        Check("nothing lost", tally.lost == 0, f"lost {tally.lost} of {tally.sent} ({dict(tally.unexpected)})"),
        Check("no INTERNAL", "INTERNAL" not in tally.unexpected, f"codes other than OK/RESOURCE_EXHAUSTED: {dict(tally.unexpected)}"),
        Check(
            "excess refused",
            tally.refused["RESOURCE_EXHAUSTED"] > 0 and tally.answered > 0,
            f"answered {tally.answered}, refused {dict(tally.refused)} of {tally.sent}; the admission bound "
            f"({queue_bound_pairs} pairs = {queue_drain_ms / 1000:.1f} s of work) fills after ~{fill_s:.1f} s of overload",
        ),
        Check(
            "refused at once",
            refusal_p50 is not None and p50 is not None and refusal_p50 < p50,
            f"refusal p50 {_ms(refusal_p50)} vs admitted p50 {_ms(p50)} (refusals must not wait in the queue)",
        ),
        Check(
            "admitted p99 bounded",
            p99 is not None and p99 <= p99_bound_ms,
            f"p99 {_ms(p99)}, bound {p99_bound_ms:.0f} ms = {config.p99_bound_factor} x (queue drain "
            f"{queue_drain_ms:.0f} ms + p99 at capacity {capacity.p99_ms:.0f} ms)",
        ),
        Check(
            "memory bounded",
            peak - capacity.peak_rss_mb <= config.overload_memory_growth_mb,
            f"peak RSS {peak:.0f} MiB vs {capacity.peak_rss_mb:.0f} MiB at capacity "
            f"(bound +{config.overload_memory_growth_mb} MiB)",
        ),
    ]
    return Scenario("overload", f"{config.overload_factor:g}x capacity for {config.overload_s:.0f} s", figures, checks)


def _ms(value: float | None) -> str:
    return "none" if value is None else f"{value:.0f} ms"
