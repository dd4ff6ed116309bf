"""The server under load: batching on versus off, in the same run, back to back.

Two `edgerec serve` processes run side by side on 127.0.0.1 (ephemeral
ports, `edgerec.runtime.process.ServerProcess`): one with the batcher's
default maximum batch size, one with maximum batch size 1 (batching off).
Child processes, not threads of this process, so
the server's CPU use is measured on its own and the load generator never
holds the server's interpreter lock. Every load level runs on both servers
one right after the other, alternating which goes first, so both see the
same machine noise; the idle server uses no CPU meanwhile.

Per level, client side: requests/s, pairs/s, p50/p95/p99 latency, failures
by status code. Server side, from its Prometheus endpoint (differences of
the counters over the level): mean batch size, mean padding ratio, requests
refused by admission control, dropped requests, and the server's CPU use.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from edgerec.benchmarks.config import LoadConfig
from edgerec.benchmarks.loadgen import LOOPBACK, LevelResult, LoadGenerator
from edgerec.benchmarks.workload import RequestSpec
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.process import ServerProcess

# Prometheus samples keyed (metric sample name, sorted (label, value) pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class ServedMode:
    """One of the two servers: its batching mode and its `edgerec serve` child process."""

    mode: str
    max_batch_size: int
    server: ServerProcess

    @property
    def cpu_seconds(self) -> float:
        times = psutil.Process(self.server.process.pid).cpu_times()
        return times.user + times.system

    def scrape(self) -> Samples:
        """Every sample of the metrics endpoint, keyed (name, sorted labels)."""
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.server.metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


def serve_arguments(bundle: Path, max_batch_size: int, precision: str, threads: int, spin_wait: bool) -> list[str]:
    """`edgerec serve` flags: loopback only, free ports, CPU provider, the benchmark's threads."""
    arguments = [
        "--bundle", str(bundle),
        "--host", LOOPBACK, "--grpc-port", "0",
        "--metrics-host", LOOPBACK, "--metrics-port", "0",
        "--providers", "cpu",
        "--intra-op-threads", str(threads),
        "--spin-wait" if spin_wait else "--no-spin-wait",
        "--max-batch-size", str(max_batch_size),
        "--log-level", "WARNING",
    ]  # fmt: skip
    if precision:
        arguments += ["--precision", precision]
    return arguments


def _stop(process: ServerProcess) -> None:
    """SIGTERM and a graceful drain; `ServerProcess` kills a server that does not stop in time."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.terminate(15.0)


@contextlib.contextmanager
def running_servers(bundle: Path, config: LoadConfig, threads: int, spin_wait: bool) -> Iterator[dict[str, ServedMode]]:
    """Both servers (batching on, then off), each serving once started; stopped gracefully on exit."""
    batch_sizes = {"batching": config.max_batch_size or BatcherConfig().max_batch_size, "no_batching": 1}
    with contextlib.ExitStack() as stack:
        servers = {}
        for mode, size in batch_sizes.items():
            arguments = serve_arguments(bundle, size, config.engine, threads, spin_wait)
            process = stack.enter_context(ServerProcess(arguments, timeout=config.startup_timeout_s))
            stack.callback(_stop, process)
            servers[mode] = ServedMode(mode, size, process)
        yield servers


def _sum(samples: Samples, name: str) -> float:
    return sum(value for (sample, _), value in samples.items() if sample == name)


def _delta_by_label(before: Samples, after: Samples, name: str, label: str) -> dict[str, int]:
    """How much each value of `label` of counter `name` grew (zeros left out)."""
    grown: dict[str, float] = {}
    for sign, samples in ((1.0, after), (-1.0, before)):
        for (sample, labels), value in samples.items():
            if sample == name:
                key = dict(labels).get(label, "")
                grown[key] = grown.get(key, 0.0) + sign * value
    return {key: int(value) for key, value in grown.items() if value}


def server_side(before: Samples, after: Samples, cpu_seconds: float, wall_s: float) -> dict[str, Any]:
    """What the server's metrics say about one level: differences of its counters."""

    def delta(name: str) -> float:
        return _sum(after, name) - _sum(before, name)

    batches = delta("edgerec_batch_size_pairs_count")
    codes = _delta_by_label(before, after, "edgerec_requests_total", "code")
    return {
        "batches": int(batches),
        "pairs_scored": int(delta("edgerec_pairs_scored_total")),
        # Engine throughput, including pairs of requests the client cancelled at the level's end.
        "engine_pairs_per_s": delta("edgerec_pairs_scored_total") / wall_s if wall_s else float("nan"),
        "mean_batch_size": delta("edgerec_batch_size_pairs_sum") / batches if batches else float("nan"),
        "mean_padding_ratio": delta("edgerec_batch_padding_ratio_sum") / batches if batches else float("nan"),
        "responses_by_code": codes,
        # CANCELLED: the load generator gave up on requests still running when a level's time was up.
        "rejected_by_code": {code: n for code, n in codes.items() if code not in ("OK", "CANCELLED")},
        "dropped_by_reason": _delta_by_label(before, after, "edgerec_dropped_requests_total", "reason"),
        "cpu_cores_used": cpu_seconds / wall_s if wall_s else float("nan"),
    }


async def _measure(server: ServedMode, generator: LoadGenerator, run_level) -> dict[str, Any]:
    """Run one level against one server; client figures plus the server's counters over the level."""
    client = psutil.Process()
    before, cpu_before = server.scrape(), server.cpu_seconds
    client_before = sum(client.cpu_times()[:2])
    started = time.perf_counter()
    result: LevelResult = await run_level(generator)
    wall = time.perf_counter() - started
    after, cpu_after = server.scrape(), server.cpu_seconds
    summary = result.summary()
    summary["server"] = server_side(before, after, cpu_after - cpu_before, wall)
    summary["client_cpu_cores_used"] = (sum(client.cpu_times()[:2]) - client_before) / wall
    return summary


def _capacity(levels: Sequence[dict[str, Any]], requests: Sequence[RequestSpec]) -> float:
    """Requests/s a server sustains: its best closed-loop level; from engine pairs/s if none answered in time."""
    answered = max((level["requests_per_s"] for level in levels), default=0.0)
    if answered > 0:
        return answered
    pairs_per_request = float(np.mean([len(r.candidates) for r in requests]))
    return max((level["server"]["engine_pairs_per_s"] for level in levels), default=0.0) / pairs_per_request


async def _benchmark(servers: dict[str, ServedMode], requests: Sequence[RequestSpec], config: LoadConfig) -> dict[str, Any]:
    levels = len(config.concurrencies) + len(config.open_loop_loads)
    results: dict[str, dict[str, list]] = {mode: {"closed_loop": [], "open_loop": []} for mode in servers}
    async with contextlib.AsyncExitStack() as stack:
        generators = {
            mode: await stack.enter_async_context(LoadGenerator(served.server.port, requests, config.request_timeout_s))
            for mode, served in servers.items()
        }
        for generator in generators.values():
            await generator.warm_up(config.warmup_requests)
        bar = tqdm(total=levels * len(servers), desc="server load", unit="level")
        order = list(servers)
        for index, concurrency in enumerate(config.concurrencies):
            for mode in order if index % 2 == 0 else order[::-1]:
                bar.set_postfix_str(f"{mode}, closed loop, concurrency {concurrency}")
                summary = await _measure(
                    servers[mode],
                    generators[mode],
                    lambda g, c=concurrency: g.closed_loop(
                        c, config.seconds_per_level, config.max_requests_per_level, config.drain_s
                    ),
                )
                results[mode]["closed_loop"].append(summary)
                bar.update()
        capacity = {mode: _capacity(results[mode]["closed_loop"], requests) for mode in servers}
        rng = np.random.default_rng(config.seed)
        for index, load in enumerate(config.open_loop_loads):
            for mode in order if index % 2 == 0 else order[::-1]:
                rate = max(load * capacity[mode], 0.1)
                bar.set_postfix_str(f"{mode}, open loop, {rate:.1f} requests/s")
                summary = await _measure(
                    servers[mode],
                    generators[mode],
                    lambda g, r=rate: g.open_loop(
                        r, config.seconds_per_level, config.max_requests_per_level, config.max_in_flight, config.drain_s, rng
                    ),
                )
                summary["offered_fraction_of_capacity"] = load
                results[mode]["open_loop"].append(summary)
                bar.update()
        bar.close()
    return {
        mode: {"max_batch_size": servers[mode].max_batch_size, "capacity_requests_per_s": capacity[mode], **results[mode]}
        for mode in servers
    }


def run_server_bench(
    bundle: Path, requests: Sequence[RequestSpec], config: LoadConfig, threads: int, spin_wait: bool = True
) -> dict[str, Any]:
    """Start both servers, load them level by level, stop them; the results per mode."""
    with running_servers(bundle, config, threads, spin_wait) as servers:
        return asyncio.run(_benchmark(servers, requests, config))


def server_estimate_s(config: LoadConfig) -> float:
    """Seconds the load levels take (both servers), without start-up and drains."""
    return 2 * (len(config.concurrencies) + len(config.open_loop_loads)) * config.seconds_per_level
