"""An asyncio gRPC load generator for the Recommender service (127.0.0.1 only).

Two ways to load a server, both bounded in requests and in time:
- closed loop: `concurrency` streams, each sending its next request as soon
  as the previous one is answered; measures capacity at a given parallelism;
- open loop: requests arrive as a Poisson process at a fixed rate, whatever
  the server's state, the way independent users arrive. Latency is counted
  from each request's scheduled arrival, so a server that falls behind is
  charged for the wait (no coordinated omission). At most `max_in_flight`
  requests are outstanding; arrivals beyond that are counted as dropped.

Both send for `seconds`, then let the requests in flight finish for at most
`drain_s` (their latencies and pairs count, and the level's duration includes
the drain); what is still running then is cancelled and counted as
unfinished, so a slow server cannot stretch a level without bound, and the
report shows how many latencies were cut short.

Failures are counted by gRPC status code (RESOURCE_EXHAUSTED is the
server's admission control refusing work), never raised.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Sequence

import grpc
import numpy as np

from edgerec.benchmarks.workload import RequestSpec
from edgerec.proto import recommender_pb2, recommender_pb2_grpc

LOOPBACK = "127.0.0.1"


def to_proto(spec: RequestSpec) -> recommender_pb2.ScoreRequest:
    return recommender_pb2.ScoreRequest(
        context=[recommender_pb2.ContextItem(item_id=item, count=count) for item, count in spec.history],
        candidates=[recommender_pb2.Candidate(item_id=item) for item in spec.candidates],
    )


@dataclasses.dataclass
class LevelResult:
    """What one load level measured, client side."""

    mode: str  # "closed" or "open"
    level: float  # concurrency (closed) or offered requests/s (open)
    duration_s: float = 0.0
    sent: int = 0
    ok: int = 0
    ok_pairs: int = 0
    dropped: int = 0  # open loop: arrivals not sent because max_in_flight requests were outstanding
    unfinished: int = 0  # cancelled by the client when the level's time was up
    failures: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)

    def summary(self) -> dict:
        ms = np.asarray(self.latencies_s, dtype=float) * 1000.0
        p50, p95, p99 = np.percentile(ms, [50, 95, 99]) if ms.size else (float("nan"),) * 3
        return {
            "mode": self.mode,
            "level": self.level,
            "duration_s": self.duration_s,
            "sent": self.sent,
            "ok": self.ok,
            "failures": dict(self.failures),
            "dropped": self.dropped,
            "unfinished": self.unfinished,
            "requests_per_s": self.ok / self.duration_s if self.duration_s else 0.0,
            "pairs_per_s": self.ok_pairs / self.duration_s if self.duration_s else 0.0,
            "p50_ms": float(p50),
            "p95_ms": float(p95),
            "p99_ms": float(p99),
            "mean_ms": float(ms.mean()) if ms.size else float("nan"),
        }


class LoadGenerator:
    """Sends pre-built Score requests round-robin to one server over one HTTP/2 channel."""

    def __init__(self, port: int, requests: Sequence[RequestSpec], timeout_s: float) -> None:
        if not requests:
            raise ValueError("the load generator needs at least one request")
        self.target = f"{LOOPBACK}:{port}"
        self.requests = [to_proto(spec) for spec in requests]
        self.pairs = [len(spec.candidates) for spec in requests]
        self.timeout_s = timeout_s
        self._next = 0
        self.channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> "LoadGenerator":
        self.channel = grpc.aio.insecure_channel(
            self.target, options=[("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]
        )
        await asyncio.wait_for(self.channel.channel_ready(), timeout=self.timeout_s)
        self.stub = recommender_pb2_grpc.RecommenderStub(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.channel is not None
        await self.channel.close()

    def _take(self) -> int:
        index = self._next
        self._next = (self._next + 1) % len(self.requests)
        return index

    async def _send(self, result: LevelResult, started: float) -> None:
        index = self._take()
        result.sent += 1
        try:
            await self.stub.Score(self.requests[index], timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            result.failures[exc.code().name] += 1
            return
        except asyncio.CancelledError:
            result.unfinished += 1
            raise
        result.ok += 1
        result.ok_pairs += self.pairs[index]
        result.latencies_s.append(time.perf_counter() - started)

    async def warm_up(self, count: int) -> None:
        """Send `count` requests one at a time, unmeasured."""
        scratch = LevelResult("warm-up", 1)
        for _ in range(count):
            await self._send(scratch, time.perf_counter())

    async def closed_loop(self, concurrency: int, seconds: float, max_requests: int, drain_s: float) -> LevelResult:
        result = LevelResult("closed", concurrency)
        start = time.perf_counter()
        stop_at = start + seconds

        async def stream() -> None:
            while time.perf_counter() < stop_at and result.sent < max_requests:
                await self._send(result, time.perf_counter())

        streams = [asyncio.create_task(stream()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(streams, timeout=seconds + drain_s)
        result.duration_s = time.perf_counter() - start
        await _cancel(pending)
        return result

    async def open_loop(
        self,
        rate: float,
        seconds: float,
        max_requests: int,
        max_in_flight: int,
        drain_s: float,
        rng: np.random.Generator,
    ) -> LevelResult:
        result = LevelResult("open", rate)
        start = time.perf_counter()
        in_flight: set[asyncio.Task] = set()
        arrival = start
        arrivals = 0
        while arrivals < max_requests:
            arrival += float(rng.exponential(1.0 / rate))
            if arrival - start > seconds:
                break
            await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
            arrivals += 1
            if len(in_flight) >= max_in_flight:
                result.dropped += 1
                continue
            task = asyncio.create_task(self._send(result, arrival))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        pending: set[asyncio.Task] = set()
        if in_flight:
            _, pending = await asyncio.wait(set(in_flight), timeout=drain_s)
        result.duration_s = time.perf_counter() - start
        await _cancel(pending)
        return result


async def _cancel(tasks: set[asyncio.Task]) -> None:
    """Cancel `tasks` and wait until they have finished cancelling."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
