"""What every reliability scenario needs: a watched server, traffic, and an honest tally.

- `ServerUnderTest`: `edgerec serve` in its own process on 127.0.0.1 (so
  its resident memory is its own and signals are real), its RSS sampled in
  a background thread, its Prometheus endpoint scraped on demand.
- `Tally`: what the clients saw. Every request sent ends in exactly one of
  three places: answered (OK), refused with a code the scenario expects
  (RESOURCE_EXHAUSTED under overload, UNAVAILABLE while draining, ...), or
  lost: no answer at all, or a code nobody should ever get (INTERNAL,
  UNKNOWN, ...). `lost = sent - answered - refused` must be zero.
- `closed_loop` / `open_loop`: asyncio load drivers, bounded in time and
  requests. Open-loop latency counts from each request's scheduled arrival,
  so a server that falls behind is charged for the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from edgerec.proto import recommender_pb2
from edgerec.runtime.config import Config, add_config_arguments, load_config
from edgerec.runtime.process import ServerProcess

LOOPBACK = "127.0.0.1"
MB = 1024 * 1024
SERVING = health_pb2.HealthCheckResponse.SERVING


# -- the server ---------------------------------------------------------------------
class MemoryWatch:
    """Samples a process's resident memory every `interval_s` in a daemon thread."""

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self._process = psutil.Process(pid)
        self._interval_s = interval_s
        self.samples: list[tuple[float, int]] = []  # (time.perf_counter(), rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-watch", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter(), self._process.memory_info().rss))
            except psutil.Error:  # the process is gone
                return
            self._stop.wait(self._interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def current_mb(self) -> float:
        return self._process.memory_info().rss / MB

    def between(self, start: float, stop: float = float("inf")) -> np.ndarray:
        """RSS samples (MiB) taken in [start, stop] (perf_counter times)."""
        return np.array([rss for t, rss in list(self.samples) if start <= t <= stop], dtype=float) / MB

    def peak_mb(self, start: float = 0.0, stop: float = float("inf")) -> float:
        window = self.between(start, stop)
        return float(window.max()) if window.size else self.current_mb()


class ServerUnderTest:
    """`edgerec serve --bundle ... <flags>` on 127.0.0.1 free ports, with its memory watched."""

    def __init__(self, bundle: Path, flags: Sequence[str] = (), startup_timeout_s: float = 120.0) -> None:
        args = ["--bundle", str(bundle), "--grpc-port", "0", "--metrics-port", "0", "--log-level", "INFO", *flags]
        self.process = ServerProcess(args, timeout=startup_timeout_s)
        self.memory = MemoryWatch(self.process.process.pid)

    @property
    def pid(self) -> int:
        return self.process.process.pid

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def metrics_port(self) -> int:
        return self.process.metrics_port

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def alive(self) -> bool:
        return self.process.process.poll() is None

    def log(self) -> str:
        return self.process.log()

    def scrape(self) -> "Samples":
        return scrape(self.metrics_port)

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return health_check(self.target, timeout_s)

    def terminate(self, timeout_s: float = 60.0) -> int:
        try:
            return self.process.terminate(timeout_s)
        finally:
            self.memory.stop()

    def close(self) -> None:
        self.memory.stop()
        self.process.__exit__(None, None, None)

    def __enter__(self) -> "ServerUnderTest":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def health_check(target: str, timeout_s: float = 5.0) -> bool:
    """True if the standard health service answers SERVING within `timeout_s` (a fresh channel)."""
    with grpc.insecure_channel(target) as channel:
        return serving(channel, timeout_s)


def serving(channel: grpc.Channel, timeout_s: float = 5.0) -> bool:
    """True if the standard health service answers SERVING on `channel` within `timeout_s`."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == SERVING


class Samples(dict):
    """One scrape of a Prometheus endpoint: (sample name, sorted label items) -> value."""

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples named `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.items() if sample == name and wanted <= set(items))

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        """Samples named `name` whose labels include `labels`, summed by the value of `label`."""
        wanted = set(labels.items())
        out: dict[str, float] = collections.defaultdict(float)
        for (sample, items), value in self.items():
            if sample == name and wanted <= set(items):
                out[dict(items).get(label, "")] += value
        return dict(out)


def scrape(port: int, timeout_s: float = 5.0) -> Samples:
    with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/metrics", timeout=timeout_s) as response:
        text = response.read().decode()
    samples = Samples()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
    return samples


# -- what the clients saw ---------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    """Requests of one scenario: sent, answered, refused (by code) and lost."""

    refusal_codes: frozenset[str] = frozenset()  # codes this scenario expects as a deliberate refusal
    sent: int = 0
    answered: int = 0
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unexpected: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # codes that count as lost
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    refusal_latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)  # first details seen per non-OK code
    lags_s: list[float] = dataclasses.field(default_factory=list, repr=False)  # open loop: send time - arrival time

    def record(self, code: str, seconds: float, details: str = "") -> None:
        """One request's end: `code` is a gRPC status name ("OK" when answered)."""
        if code == "OK":
            self.answered += 1
            self.latencies_s.append(seconds)
            return
        self.examples.setdefault(code, details[:300])
        if code in self.refusal_codes:
            self.refused[code] += 1
            self.refusal_latencies_s.append(seconds)
        else:
            self.unexpected[code] += 1

    @property
    def lost(self) -> int:
        """Requests neither answered nor refused as the scenario expects: no answer, or an unexpected code."""
        return self.sent - self.answered - sum(self.refused.values())

    def summary(self) -> dict:
        return {
            "sent": self.sent,
            "answered": self.answered,
            "refused": dict(sorted(self.refused.items())),
            "lost": self.lost,
            "lost_by_code": dict(sorted(self.unexpected.items())),
            "unanswered": self.lost - sum(self.unexpected.values()),
            "p50_ms": percentile_ms(self.latencies_s, 50),
            "p99_ms": percentile_ms(self.latencies_s, 99),
            "refusal_p50_ms": percentile_ms(self.refusal_latencies_s, 50),
            "refusal_p99_ms": percentile_ms(self.refusal_latencies_s, 99),
            "client_lag_p99_ms": percentile_ms(self.lags_s, 99),
            "details": dict(sorted(self.examples.items())),
        }


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if len(seconds) else None


async def send(tally: Tally, call: Callable[[], Awaitable[object]], started: float | None = None) -> str:
    """Make one call and record how it ended; latency counts from `started` (default: now). Returns the code."""
    if started is None:
        started = time.perf_counter()
    else:  # how late the client itself sends: latency is charged from `started` all the same
        tally.lags_s.append(time.perf_counter() - started)
    tally.sent += 1
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        code, details = exc.code().name, exc.details() or ""
    except asyncio.CancelledError:
        raise  # never answered: stays counted as lost
    else:
        code, details = "OK", ""
    tally.record(code, time.perf_counter() - started, details)
    return code


# -- traffic ----------------------------------------------------------------------------
class ScoreWorkload:
    """A pool of Score requests over the bundle's catalog: a short history and n candidates each."""

    def __init__(self, item_ids: Sequence[str], min_candidates: int, max_candidates: int, size: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        ids = list(item_ids)
        self.requests: list[recommender_pb2.ScoreRequest] = []
        for _ in range(size):
            history = rng.choice(len(ids), size=int(rng.integers(0, 12)), replace=False) if ids else []
            candidates = rng.integers(len(ids), size=int(rng.integers(min_candidates, max_candidates + 1)))
            self.requests.append(
                recommender_pb2.ScoreRequest(
                    context=[recommender_pb2.ContextItem(item_id=ids[i], count=int(rng.integers(1, 5))) for i in history],
                    candidates=[recommender_pb2.Candidate(item_id=ids[i]) for i in candidates],
                )
            )
        self.pairs = [len(r.candidates) for r in self.requests]
        self._next = 0

    def take(self) -> recommender_pb2.ScoreRequest:
        request = self.requests[self._next]
        self._next = (self._next + 1) % len(self.requests)
        return request

    @property
    def mean_pairs(self) -> float:
        return float(np.mean(self.pairs))


def catalog_ids(bundle: Path) -> list[str]:
    """Item ids of a bundle folder's catalog, sorted."""
    return sorted(json.loads((Path(bundle) / "catalog.json").read_text()))


async def closed_loop(
    call: Callable[[], Awaitable[object]],
    concurrency: int,
    seconds: float,
    tally: Tally,
    stop: asyncio.Event | None = None,
) -> float:
    """`concurrency` streams send back to back for `seconds` or until `stop` is set (each finishes the
    request it has in flight); returns answered requests per second."""
    started = time.perf_counter()
    stop_at = started + seconds
    stop = stop or asyncio.Event()

    async def stream() -> None:
        while time.perf_counter() < stop_at and not stop.is_set():
            await send(tally, call)

    await asyncio.gather(*(stream() for _ in range(concurrency)))
    return tally.answered / (time.perf_counter() - started)


async def open_loop(
    call: Callable[[], Awaitable[object]],
    rate: float,
    seconds: float,
    tally: Tally,
    rng: np.random.Generator,
    drain_s: float,
    tick: Callable[[float], None] | None = None,
) -> float:
    """Poisson arrivals at `rate` per second for `seconds`, whatever the server does; then wait up to
    `drain_s` for the last answers (requests still open then are cancelled: lost). Returns the achieved rate.
    `tick(elapsed_s)` is called about once a second (progress bars)."""
    start = time.perf_counter()
    arrival, arrivals, next_tick = start, 0, 1.0
    in_flight: set[asyncio.Task] = set()
    while True:
        arrival += float(rng.exponential(1.0 / rate))
        if arrival - start > seconds:
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        arrivals += 1
        task = asyncio.create_task(send(tally, call, started=arrival))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        if tick is not None and arrival - start >= next_tick:
            tick(arrival - start)
            next_tick += 1.0
    achieved = arrivals / max(time.perf_counter() - start, 1e-9)
    if in_flight:
        _, pending = await asyncio.wait(set(in_flight), timeout=drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    return achieved


# -- the server's own account ----------------------------------------------------------------
def requests_done(server: ServerUnderTest, method: str = "Score") -> float:
    return server.scrape().total("edgerec_requests_total", method=method)


async def until_admitted(server: ServerUnderTest, done_before: float, sent: int, timeout_s: float) -> float:
    """Wait until the server has admitted (or finished) all `sent` requests; returns how many it holds now."""
    deadline = time.perf_counter() + timeout_s
    while True:
        samples = await asyncio.to_thread(server.scrape)
        held = samples.total("edgerec_queue_requests")
        if samples.total("edgerec_requests_total", method="Score") - done_before + held >= sent:
            return held
        if time.perf_counter() > deadline:
            raise TimeoutError(f"the server did not admit {sent} requests in {timeout_s} s")
        await asyncio.sleep(0.005)


async def until_metric(server: ServerUnderTest, name: str, value: float, timeout_s: float, **labels: str) -> None:
    deadline = time.perf_counter() + timeout_s
    while (await asyncio.to_thread(server.scrape)).total(name, **labels) < value:
        if time.perf_counter() > deadline or not server.alive():
            raise TimeoutError(f"{name}{labels} did not reach {value} in {timeout_s} s:\n{server.log()[-2000:]}")
        await asyncio.sleep(0.02)


# -- results ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Check:
    """One thing a scenario must show, whether it did, and the figures that decided it."""

    name: str
    passed: bool
    detail: str


@dataclasses.dataclass
class Scenario:
    """One scenario's figures and checks; it passes when every check does."""

    name: str
    shows: str  # what the scenario demonstrates, in one sentence
    figures: dict
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def explain(self) -> str:
        """The failed checks and the figures, for an assertion message."""
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]
        return f"{self.name} failed: " + "; ".join(failed) + f"\nfigures: {json.dumps(self.figures, default=str)}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "shows": self.shows,
            "passed": self.passed,
            "figures": self.figures,
            "checks": [dataclasses.asdict(c) for c in self.checks],
        }


def served_config(flags: Sequence[str]) -> Config:
    """The configuration `edgerec serve <flags>` runs with (defaults, config file, EDGEREC_* variables, flags)."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args, _ = parser.parse_known_args(list(flags))
    return load_config(args)
