"""The cross-encoder server under load: batching on versus off, in the same run, back to back.

Two `edgerec serve` processes run side by side on 127.0.0.1
(`harness.server.ServerUnderTest`): one with the default maximum batch size,
one with maximum batch size 1 (batching off). On a bundle that holds the
two-tower ranker the servers are told to re-rank every candidate
(`rerank_flags`), so that the cross-encoder scores every pair as before (the
ranker's pass over the same candidates first costs a few milliseconds, next
to ~5 ms of CPU per pair). Every load level runs on both servers one right
after the other, alternating which goes first, so both see
the same machine noise; the idle server uses no CPU meanwhile. The load
comes from the shared driver (`harness.driver`): closed-loop levels, then
open-loop (Poisson) levels at fractions of each server's closed-loop
capacity.

Per level, client side: requests/s, pairs/s, p50/p95/p99 latency, failures
by status code. Server side, from its Prometheus endpoint (differences of
the counters over the level): mean batch size, mean padding ratio, requests
refused by admission control, dropped requests, and the server's CPU use.
`measure_level` is also the two-stage benchmark's (`benchmarks.two_stage`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm import tqdm

from edgerec.benchmarks.config import LoadConfig
from edgerec.benchmarks.harness.driver import LOOPBACK, Call, LoadRun, closed_loop, open_loop, send
from edgerec.benchmarks.harness.prometheus import Samples
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.config import BatcherConfig

MODES = ("batching", "no_batching")
# A level's load: the call to make and the tally to record in -> how the run went.
Level = Callable[[Call, Tally], Awaitable[LoadRun]]


@dataclass
class ServedMode:
    """One of the two servers: its batching mode and the server under test."""

    mode: str
    max_batch_size: int
    server: ServerUnderTest


def serve_flags(max_batch_size: int, precision: str, threads: int, spin_wait: bool) -> list[str]:
    """`edgerec serve` flags: loopback only, CPU provider, the benchmark's threads, quiet logs, and
    admission's time bound off: a closed loop of 64 callers keeps ~15 s of cross-encoder work queued,
    which the default bound would refuse, and the sweep measures throughput and queueing, not refusals
    (`edgerec reliability`'s overload scenario checks the bound)."""
    flags = [
        "--host", LOOPBACK, "--metrics-host", LOOPBACK,
        "--max-queue-wait-ms", "0",
        "--providers", "cpu",
        "--intra-op-threads", str(threads),
        "--spin-wait" if spin_wait else "--no-spin-wait",
        "--max-batch-size", str(max_batch_size),
        "--log-level", "WARNING",
    ]  # fmt: skip
    return flags + (["--precision", precision] if precision else [])


def rerank_flags(candidates: int) -> list[str]:
    """Flags that make a two-stage server's cross-encoder re-score up to `candidates` candidates of every
    Score request (all of them, for requests of at most that many)."""
    return ["--rerank-top", str(candidates), "--max-rerank-top", str(candidates)]


@contextlib.contextmanager
def running_servers(
    bundle: Path, config: LoadConfig, threads: int, spin_wait: bool, extra_flags: Sequence[str] = ()
) -> Iterator[dict[str, ServedMode]]:
    """Both servers (batching on, then off), each serving once started; stopped gracefully on exit."""
    batch_sizes = {"batching": config.max_batch_size or BatcherConfig().max_batch_size, "no_batching": 1}
    with contextlib.ExitStack() as stack:
        servers = {}
        for mode in MODES:
            flags = serve_flags(batch_sizes[mode], config.precision, threads, spin_wait) + list(extra_flags)
            server = ServerUnderTest(bundle, flags, startup_timeout_s=config.startup_timeout_s, stop_grace_s=15.0)
            stack.enter_context(server)
            servers[mode] = ServedMode(mode, batch_sizes[mode], server)
        yield servers


def server_side(before: Samples, after: Samples, cpu_seconds: float, wall_s: float) -> dict[str, Any]:
    """What the server's metrics say about one level: differences of its counters."""
    grown = after.minus(before)
    batches = grown.total("edgerec_batch_size_pairs_count")
    scored = grown.total("edgerec_pairs_scored_total")
    codes = {code: int(n) for code, n in grown.by_label("edgerec_requests_total", "code").items() if n}
    dropped = grown.by_label("edgerec_dropped_requests_total", "reason")
    ranker_batches = grown.total("edgerec_ranker_batch_size_pairs_count")
    ranker_batch = grown.total("edgerec_ranker_batch_size_pairs_sum") / ranker_batches if ranker_batches else float("nan")
    return {
        "batches": int(batches),
        "pairs_scored": int(scored),
        # The server's throughput, including pairs of requests the client cancelled at the level's end.
        "scored_pairs_per_s": scored / wall_s if wall_s else float("nan"),
        "mean_batch_size": grown.total("edgerec_batch_size_pairs_sum") / batches if batches else float("nan"),
        "mean_padding_ratio": grown.total("edgerec_batch_padding_ratio_sum") / batches if batches else float("nan"),
        "responses_by_code": codes,
        # CANCELLED: the load driver gave up on requests still running when a level's time was up.
        "rejected_by_code": {code: n for code, n in codes.items() if code not in ("OK", "CANCELLED")},
        "dropped_by_reason": {reason: int(n) for reason, n in dropped.items() if n},
        "cpu_seconds": cpu_seconds,
        "cpu_cores_used": cpu_seconds / wall_s if wall_s else float("nan"),
        # The two-stage path: candidates each stage scored (`edgerec_stage_candidates_total`) and the ranker's batches.
        "stage_candidates": {stage: int(n) for stage, n in grown.by_label("edgerec_stage_candidates_total", "stage").items()},
        "ranker_batches": int(ranker_batches),
        "ranker_mean_batch_candidates": ranker_batch,
    }


async def measure_level(
    server: ServerUnderTest, call: Call, mode: str, level: float, run_level: Level
) -> dict[str, Any]:
    """Run one level against one server; client figures plus the server's counters over the level."""
    client = psutil.Process()
    before, cpu_before = server.scrape(), server.cpu_seconds
    client_before = sum(client.cpu_times()[:2])
    started = time.perf_counter()
    tally = Tally()
    run = await run_level(call, tally)
    wall = time.perf_counter() - started
    after, cpu_after = server.scrape(), server.cpu_seconds
    return {
        "mode": mode,
        "level": level,
        **tally.summary(run.seconds),
        "server": server_side(before, after, cpu_after - cpu_before, wall),
        "client_cpu_cores_used": (sum(client.cpu_times()[:2]) - client_before) / wall,
    }


def _capacity(levels: Sequence[dict[str, Any]], mean_pairs: float) -> float:
    """Requests/s a server sustains: its best closed-loop level; from scored pairs/s if none answered in time."""
    answered = max((level["requests_per_s"] for level in levels), default=0.0)
    if answered > 0:
        return answered
    return max((level["server"]["scored_pairs_per_s"] for level in levels), default=0.0) / mean_pairs


async def _benchmark(
    servers: dict[str, ServedMode], requests: Sequence[recommender_pb2.ScoreRequest], config: LoadConfig
) -> dict[str, Any]:
    results: dict[str, dict[str, list]] = {mode: {"closed_loop": [], "open_loop": []} for mode in servers}
    async with contextlib.AsyncExitStack() as stack:
        calls = {}
        for mode, served in servers.items():
            channel = await stack.enter_async_context(served.server.channel())
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            calls[mode] = RequestPool(requests).calls(stub, config.request_timeout_s)
            for _ in range(config.warmup_requests):  # one at a time, unmeasured
                await send(Tally(), calls[mode])
        levels = (len(config.concurrencies) + len(config.open_loop_loads)) * len(servers)
        bar = tqdm(total=levels, desc="server load", unit="level")
        order = list(servers)
        for index, concurrency in enumerate(config.concurrencies):
            for mode in order if index % 2 == 0 else order[::-1]:
                bar.set_postfix_str(f"{mode}, closed loop, concurrency {concurrency}")

                def closed(call: Call, tally: Tally, c: int = concurrency) -> Awaitable[LoadRun]:
                    return closed_loop(
                        call, tally, c, config.seconds_per_level, config.max_requests_per_level, config.drain_s
                    )

                summary = await measure_level(servers[mode].server, calls[mode], "closed", concurrency, closed)
                results[mode]["closed_loop"].append(summary)
                bar.update()
        mean_pairs = float(np.mean([len(request.candidates) for request in requests]))
        capacity = {mode: _capacity(results[mode]["closed_loop"], mean_pairs) for mode in servers}
        rng = np.random.default_rng(config.seed)
        for index, load in enumerate(config.open_loop_loads):
            for mode in order if index % 2 == 0 else order[::-1]:
                rate = max(load * capacity[mode], 0.1)
                bar.set_postfix_str(f"{mode}, open loop, {rate:.1f} requests/s")

                def opened(call: Call, tally: Tally, r: float = rate) -> Awaitable[LoadRun]:
                    return open_loop(
                        call, tally, r, config.seconds_per_level, rng, config.drain_s,
                        config.max_requests_per_level, config.max_in_flight,
                    )  # fmt: skip

                summary = await measure_level(servers[mode].server, calls[mode], "open", rate, opened)
                summary["offered_fraction_of_capacity"] = load
                results[mode]["open_loop"].append(summary)
                bar.update()
        bar.close()
    return {
        mode: {"max_batch_size": servers[mode].max_batch_size, "capacity_requests_per_s": capacity[mode], **results[mode]}
        for mode in servers
    }


def run_server_bench(
    bundle: Path,
    requests: Sequence[recommender_pb2.ScoreRequest],
    config: LoadConfig,
    threads: int,
    spin_wait: bool = True,
    extra_flags: Sequence[str] = (),
) -> dict[str, Any]:
    """Start both servers (`extra_flags` added to their command lines), load them level by level, stop them;
    the results per mode."""
    with running_servers(bundle, config, threads, spin_wait, extra_flags) as servers:
        return asyncio.run(_benchmark(servers, requests, config))


def server_estimate_s(config: LoadConfig) -> float:
    """Seconds the load levels take (both servers), without start-up and drains."""
    return 2 * (len(config.concurrencies) + len(config.open_loop_loads)) * config.seconds_per_level
