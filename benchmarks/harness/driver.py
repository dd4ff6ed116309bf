"""The one load driver: closed loop or open loop, bounded in requests and in time, 127.0.0.1 only.

- closed loop: `concurrency` streams, each sending its next request as soon as
  the previous one ends; measures what a server answers at that parallelism;
- open loop: requests arrive as a Poisson process at `rate` per second,
  whatever the server's state, the way independent users arrive. Latency
  counts from each request's scheduled arrival, so a server that falls behind
  is charged for the wait (no coordinated omission); the client's own send
  delay is recorded as its lag. At most `max_in_flight` requests are
  outstanding; arrivals beyond that are counted as dropped, never sent.

Both send for `seconds` (or `max_requests` requests, or until `stop` is set),
then give the requests in flight `drain_s` to finish (None: until their gRPC
deadlines); what is still running then is cancelled and counted as
unfinished, so a slow server cannot stretch a run without bound. Every end of
a request is recorded in a `Tally` by gRPC status code, never raised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

import grpc
import numpy as np

from edgerec.benchmarks.harness.results import Tally
from edgerec.proto import recommender_pb2

LOOPBACK = "127.0.0.1"
# One call: a coroutine factory such as `lambda: stub.Score(request, timeout=30)`.
Call = Callable[[], Awaitable[object]]


@dataclasses.dataclass(frozen=True)
class LoadRun:
    """How long one closed- or open-loop run took, and how many requests it meant to send."""

    arrivals: int  # requests the driver started (open loop: dropped ones included)
    sending_s: float  # from the start until the driver stopped sending
    seconds: float  # from the start until the last answer, or the end of the drain

    @property
    def arrival_rate(self) -> float:
        """Requests started per second while sending."""
        return self.arrivals / max(self.sending_s, 1e-9)


def scores_in(reply: object) -> int:
    """Pairs an answer scored: one per pair of a Score answer, 0 for any other answer."""
    return len(reply.purchase_probability) if isinstance(reply, recommender_pb2.ScoreResponse) else 0


async def send(tally: Tally, call: Call, started: float | None = None) -> str:
    """Make one call and record how it ended; latency counts from `started` (default: now). Returns the code.

    A call cancelled before it ends is counted unfinished (and lost), and the cancellation goes on.
    """
    if started is None:
        started = time.perf_counter()
    else:  # how late the client itself sends: latency is charged from `started` all the same
        tally.lags_s.append(time.perf_counter() - started)
    tally.sent += 1
    try:
        reply = await call()
    except grpc.aio.AioRpcError as exc:
        code, details, pairs = exc.code().name, exc.details() or "", 0
    except asyncio.CancelledError:
        tally.unfinished += 1
        raise
    else:
        code, details, pairs = "OK", "", scores_in(reply)
    tally.record(code, time.perf_counter() - started, details, pairs)
    return code


async def _finish(tasks: set[asyncio.Task], drain_s: float | None) -> None:
    """Let `tasks` finish for `drain_s` (None: as long as they take), then cancel the rest and wait for them."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=drain_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def closed_loop(
    call: Call,
    tally: Tally,
    concurrency: int,
    seconds: float,
    max_requests: int | None = None,
    drain_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> LoadRun:
    """`concurrency` streams send back to back until `seconds` pass, `max_requests` are sent or `stop` is set."""
    start = time.perf_counter()
    stop_at = start + seconds
    stop = stop or asyncio.Event()
    started = 0

    async def stream() -> None:
        nonlocal started
        while time.perf_counter() < stop_at and not stop.is_set() and (max_requests is None or started < max_requests):
            started += 1
            await send(tally, call)

    streams = {asyncio.create_task(stream()) for _ in range(concurrency)}
    _, sending = await asyncio.wait(streams, timeout=seconds)  # streams end by themselves on a count or `stop`
    sending_s = time.perf_counter() - start
    await _finish(sending, drain_s)
    return LoadRun(started, sending_s, time.perf_counter() - start)


async def open_loop(
    call: Call,
    tally: Tally,
    rate: float,
    seconds: float,
    rng: np.random.Generator,
    drain_s: float | None = None,
    max_requests: int | None = None,
    max_in_flight: int | None = None,
    tick: Callable[[float], None] | None = None,
) -> LoadRun:
    """Poisson arrivals at `rate` per second for `seconds` (at most `max_requests`), whatever the server does.

    `tick(elapsed_s)` is called about once a second (progress bars).
    """
    start = time.perf_counter()
    arrival, arrivals, next_tick = start, 0, 1.0
    in_flight: set[asyncio.Task] = set()
    while max_requests is None or arrivals < max_requests:
        arrival += float(rng.exponential(1.0 / rate))
        if arrival - start > seconds:
            break
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        arrivals += 1
        if tick is not None and arrival - start >= next_tick:
            tick(arrival - start)
            next_tick += 1.0
        if max_in_flight is not None and len(in_flight) >= max_in_flight:
            tally.dropped += 1
            continue
        task = asyncio.create_task(send(tally, call, started=arrival))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    sending_s = time.perf_counter() - start
    await _finish(set(in_flight), drain_s)
    return LoadRun(arrivals, sending_s, time.perf_counter() - start)
