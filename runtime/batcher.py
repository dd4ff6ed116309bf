"""Dynamic batching: merges pairs from many requests into engine batches.

Knows nothing of gRPC or ONNX. A request is an opaque `payload` holding n
pairs plus each pair's token length; the batcher decides which pairs run
together and hands `prepare(segments)` / `execute(prepared)` the result:

- batches are cut by a pair count (`max_batch_size`), a token budget
  (`max_batch_tokens`, counted with padding: pairs x longest pair) and a
  queue delay (`max_queue_delay_ms`): an idle engine waits at most that long
  for a batch to fill;
- pairs wait in length buckets; a batch starts from the bucket holding the
  oldest pair and fills from the nearest buckets, so short pairs are not
  padded to long ones and nobody starves;
- a request with many pairs is split across batches, and its outputs are
  scattered back into request order;
- batching and execution overlap: the engine runs batches back to back in
  its own thread (the event loop keeps admitting meanwhile), and while one
  runs the next full batch is already cut and prepared; a partial batch
  instead waits for the engine to free up, gathering more pairs;
- admission is bounded (pairs and requests in the system): beyond the bound a
  request fails at once with RESOURCE_EXHAUSTED;
- a request whose deadline passes or whose caller cancels leaves the queue at
  once; its pairs are dropped before they cost compute;
- an engine failure fails only the requests of that batch.

All queue state is owned by the event loop thread (the single owner); the
engine thread only takes prepared batches from a channel and posts the
outputs back to the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.errors import EdgeRecError, ErrorCode
from edgerec.runtime.metrics import Metrics

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, ...]


class _Request:
    """One admitted request: its pairs, where its outputs go, and whether it is still wanted."""

    __slots__ = (
        "payload", "size", "seq", "arrival", "future", "outputs", "unfinished", "queued", "queued_tokens",
        "started", "finished", "drop_reason", "timer", "deadline",
    )

    def __init__(self, payload: Any, lengths: np.ndarray, seq: int, arrival: float, future: asyncio.Future) -> None:
        self.payload = payload
        self.size = len(lengths)
        self.seq = seq
        self.arrival = arrival
        self.future = future
        self.outputs: list[np.ndarray] | None = None
        self.unfinished = self.size  # pairs not yet scored or dropped
        self.queued = self.size  # pairs not yet cut into a batch
        self.queued_tokens = int(lengths.sum())
        self.started = False  # some pair was cut into a batch
        self.finished = False  # answered, failed, expired or cancelled
        self.drop_reason: str | None = None  # why it left before it was scored ("deadline", "cancelled")
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None  # perf_counter() time after which nobody waits


@dataclasses.dataclass(frozen=True)
class Segment:
    """Some pairs of one request that run in one batch: `indices` into the request's pairs."""

    request: _Request
    indices: np.ndarray
    lengths: np.ndarray

    @property
    def payload(self) -> Any:
        return self.request.payload


@dataclasses.dataclass(frozen=True)
class Batch:
    """A cut batch: its segments in row order, and its shape."""

    segments: list[Segment]
    rows: int
    width: int
    real_tokens: int


class Batcher:
    """Merges requests into batches; `await submit(...)` returns the request's outputs in pair order."""

    def __init__(
        self,
        config: BatcherConfig,
        prepare: Callable[[Sequence[Segment]], Any],
        execute: Callable[[Any], Outputs],
        metrics: Metrics | None = None,
        name: str = "engine",
    ) -> None:
        """`prepare(segments)` runs on the event loop and builds the engine input of one batch
        (rows in segment order); `execute(prepared)` runs in a worker thread and returns
        arrays whose first axis is the batch's rows."""
        self.config = config
        self._prepare = prepare
        self._execute = execute
        self.metrics = metrics if metrics is not None else Metrics()
        self.name = name
        self._buckets: dict[int, deque[Segment]] = {}
        self._seq = itertools.count()
        self._queued_pairs = 0
        self._queued_tokens = 0
        self._admitted_pairs = 0
        self._live: set[_Request] = set()
        self._in_flight = 0  # batches handed to the engine thread and not yet completed (at most 2)
        self._closing = False
        self._abandoned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._channel: queue.SimpleQueue = queue.SimpleQueue()  # prepared batches: event loop -> engine thread
        self._former: asyncio.Task | None = None
        self._engine_stopped: asyncio.Future | None = None

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> "Batcher":
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._engine_stopped = self._loop.create_future()
        threading.Thread(target=self._run_batches, name=f"edgerec-{self.name}", daemon=True).start()
        self._former = asyncio.create_task(self._form_batches(), name=f"{self.name}-batcher")
        return self

    @property
    def accepting(self) -> bool:
        return self._former is not None and not self._closing

    @property
    def queued_pairs(self) -> int:
        """Pairs admitted and waiting for a batch."""
        return self._queued_pairs

    @property
    def admitted_requests(self) -> int:
        """Requests admitted and not yet answered."""
        return len(self._live)

    @property
    def admitted_pairs(self) -> int:
        """Pairs admitted and not yet scored (queued, prepared or running)."""
        return self._admitted_pairs

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop admitting, finish every admitted request, stop. True if all finished in time."""
        if self._former is None:
            return True
        self._closing = True
        self._wakeup.set()
        former, self._former = self._former, None
        done, pending = await asyncio.wait([former, self._engine_stopped], timeout=timeout)
        if former in done and not former.cancelled() and former.exception() is not None:
            log.error("%s: the batcher task failed", self.name, exc_info=former.exception())
        if not pending:
            return True
        self._abandoned = True  # the engine thread skips what is left and stops
        former.cancel()
        error = EdgeRecError(ErrorCode.UNAVAILABLE, "the server stopped before this request was scored")
        for request in list(self._live):
            self._finish(request, error)
        self._buckets.clear()
        return False

    # -- admission ------------------------------------------------------------
    async def submit(self, payload: Any, lengths: np.ndarray, timeout: float | None = None) -> Outputs:
        """Score the `len(lengths)` pairs of `payload`; outputs come back in pair order.

        Raises EdgeRecError: RESOURCE_EXHAUSTED at once if the queue is full,
        DEADLINE_EXCEEDED if `timeout` seconds pass first, UNAVAILABLE while
        draining, INTERNAL if the engine fails on a batch holding these pairs.
        """
        request = self._admit(payload, np.asarray(lengths, dtype=np.int64), timeout)
        try:
            return await request.future
        except asyncio.CancelledError:
            # gRPC cancels the handler when the client's deadline passes, racing our own timer:
            # a cancellation after the deadline is an expiry, and is counted as one.
            if request.deadline is not None and time.perf_counter() >= request.deadline:
                self._expire(request)
            else:
                self._finish(request, EdgeRecError(ErrorCode.CANCELLED, "the caller cancelled"), reason="cancelled")
            raise

    def _admit(self, payload: Any, lengths: np.ndarray, timeout: float | None) -> _Request:
        size = len(lengths)
        if size == 0:
            raise EdgeRecError(ErrorCode.INVALID_ARGUMENT, "a request needs at least one pair")
        if not self.accepting:
            raise EdgeRecError(ErrorCode.UNAVAILABLE, "the server is draining and admits no new requests")
        if timeout is not None and timeout <= 0:
            self.metrics.dropped_requests.labels("deadline").inc()
            self.metrics.dropped_pairs.labels("deadline").inc(size)
            raise EdgeRecError(ErrorCode.DEADLINE_EXCEEDED, "the deadline had passed before the request was queued")
        if self._admitted_pairs + size > self.config.max_queue_pairs:
            raise EdgeRecError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"server overloaded: {self._admitted_pairs} pairs in the queue, room for "
                f"{self.config.max_queue_pairs - self._admitted_pairs}, this request has {size}; retry later",
            )
        if len(self._live) >= self.config.max_queue_requests:
            raise EdgeRecError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"server overloaded: {len(self._live)} requests in the queue (max "
                f"{self.config.max_queue_requests}); retry later",
            )
        request = _Request(payload, lengths, next(self._seq), time.perf_counter(), self._loop.create_future())
        if timeout is not None:
            request.deadline = request.arrival + timeout
            request.timer = self._loop.call_later(timeout, self._expire, request)
        self._enqueue(request, lengths)
        self._live.add(request)
        self._admitted_pairs += size
        self._queued_pairs += size
        self._queued_tokens += request.queued_tokens
        self.metrics.set_queue(self._queued_pairs, len(self._live))
        self._wakeup.set()
        return request

    def _enqueue(self, request: _Request, lengths: np.ndarray) -> None:
        """Put the request's pairs, shortest first, into their length buckets."""
        order = np.argsort(lengths, kind="stable")
        width = self.config.length_bucket_width
        if width <= 0:
            self._buckets.setdefault(0, deque()).append(Segment(request, order, lengths[order]))
            return
        sorted_lengths = lengths[order]
        buckets = (sorted_lengths - 1) // width
        cuts = np.flatnonzero(np.diff(buckets)) + 1
        for start, stop in zip(itertools.chain((0,), cuts), itertools.chain(cuts, (len(order),))):
            bucket = int(buckets[start])
            self._buckets.setdefault(bucket, deque()).append(
                Segment(request, order[start:stop], sorted_lengths[start:stop])
            )

    # -- leaving the queue ----------------------------------------------------
    def _expire(self, request: _Request) -> None:
        self._finish(
            request,
            EdgeRecError(ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before the request was scored"),
            reason="deadline",
        )

    def _finish(self, request: _Request, error: EdgeRecError | None, reason: str | None = None) -> None:
        """Take a request out of the system: answered (error None, reason None), failed, expired or cancelled."""
        if request.finished:
            return
        request.finished = True
        request.drop_reason = reason
        self._live.discard(request)
        if request.timer is not None:
            request.timer.cancel()
        if request.queued:
            # Its queued segments stay in the buckets and are skipped when met: they never run.
            if reason is not None:
                self.metrics.dropped_requests.labels(reason).inc()
                self.metrics.dropped_pairs.labels(reason).inc(request.queued)
            self._queued_pairs -= request.queued
            self._queued_tokens -= request.queued_tokens
            self._admitted_pairs -= request.queued
            request.unfinished -= request.queued
            request.queued = request.queued_tokens = 0
        self.metrics.set_queue(self._queued_pairs, len(self._live))
        if not request.future.done():
            if error is None:
                request.future.set_result(tuple(request.outputs))
            else:
                request.future.set_exception(error)
        self._wakeup.set()

    # -- cutting batches (event loop) -----------------------------------------
    def _drop_dead_heads(self) -> None:
        for bucket in list(self._buckets):
            queue = self._buckets[bucket]
            while queue and queue[0].request.finished:
                queue.popleft()
            if not queue:
                del self._buckets[bucket]

    def _oldest_arrival(self) -> float:
        return min(queue[0].request.arrival for queue in self._buckets.values())

    def _cut(self) -> Batch | None:
        """The next batch: from the bucket holding the oldest pair, then its nearest neighbours."""
        self._drop_dead_heads()
        if not self._buckets:
            return None
        anchor = min(self._buckets, key=lambda b: self._buckets[b][0].request.seq)
        order = sorted(self._buckets, key=lambda b: (abs(b - anchor), b))
        max_rows, budget = self.config.max_batch_size, self.config.max_batch_tokens
        segments: list[Segment] = []
        rows = width = real = 0
        now = time.perf_counter()
        for bucket in order:
            queue = self._buckets[bucket]
            while queue and rows < max_rows:
                segment = queue[0]
                request = segment.request
                if request.finished:
                    queue.popleft()
                    continue
                lengths = segment.lengths
                widths = np.maximum(width, lengths[: max_rows - rows])
                fits = (rows + np.arange(1, len(widths) + 1)) * widths <= budget
                take = int(fits.sum()) if rows else max(1, int(fits.sum()))
                if take == 0:
                    break
                if take == len(lengths):
                    queue.popleft()
                    taken = segment
                else:
                    taken = Segment(request, segment.indices[:take], lengths[:take])
                    queue[0] = Segment(request, segment.indices[take:], lengths[take:])
                segments.append(taken)
                rows += take
                width = max(width, int(taken.lengths[-1]))
                tokens = int(taken.lengths.sum())
                real += tokens
                request.queued -= take
                request.queued_tokens -= tokens
                self._queued_pairs -= take
                self._queued_tokens -= tokens
                if not request.started:
                    request.started = True
                    self.metrics.queue_seconds.observe(now - request.arrival)
            if not queue:
                del self._buckets[bucket]
            if rows >= max_rows or (segments and (rows + 1) * width > budget):
                break
        self.metrics.set_queue(self._queued_pairs, len(self._live))
        return Batch(segments, rows, width, real) if segments else None

    def _batch_is_ready(self) -> bool:
        return self._queued_pairs >= self.config.max_batch_size or self._queued_tokens >= self.config.max_batch_tokens

    async def _form_batches(self) -> None:
        try:
            await self._cut_batches_until_drained()
        finally:
            self._channel.put(None)  # the engine thread stops after the batches before this

    async def _cut_batches_until_drained(self) -> None:
        delay = self.config.max_queue_delay_ms / 1000.0
        while True:
            self._wakeup.clear()
            self._drop_dead_heads()
            if not self._buckets:
                if self._closing:
                    return
                await self._wakeup.wait()
                continue
            if self._in_flight >= 2:
                await self._wakeup.wait()  # one batch runs and the next is prepared: enough
                continue
            if not self._batch_is_ready() and not self._closing:
                if self._in_flight:
                    await self._wakeup.wait()  # a partial batch waits for the engine, collecting pairs
                    continue
                remaining = self._oldest_arrival() + delay - time.perf_counter()
                if remaining > 0:
                    alarm = self._loop.call_later(remaining, self._wakeup.set)  # cheaper than wait_for
                    await self._wakeup.wait()
                    alarm.cancel()
                    continue
            batch = self._cut()
            if batch is None:
                continue
            try:
                prepared = self._prepare(batch.segments)
            except Exception as exc:  # a bug in preparing one batch must not stop the batcher
                log.exception("%s: preparing a batch of %d pairs failed", self.name, batch.rows)
                self._fail_batch(batch, exc)
                continue
            self._in_flight += 1
            self._channel.put((batch, prepared))

    # -- running batches (engine thread) ----------------------------------------
    def _run_batches(self) -> None:
        """The engine thread: runs prepared batches back to back, without waiting for the event loop."""
        try:
            while True:
                item = self._channel.get()
                if item is None or self._abandoned:
                    return
                batch, prepared = item
                if all(segment.request.finished for segment in batch.segments):
                    if not self._post(self._complete, batch, None, 0.0, None):  # nobody waits for it
                        return
                    continue
                started = time.perf_counter()
                outputs, error = None, None
                try:
                    outputs = self._execute(prepared)
                except Exception as exc:
                    error = exc
                if not self._post(self._complete, batch, outputs, time.perf_counter() - started, error):
                    return
        finally:
            self._post(self._engine_stopped.set_result, None)

    def _post(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Hand a callback to the event loop; False once that loop is closed (its owner has gone)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    def _complete(self, batch: Batch, outputs: Outputs | None, seconds: float, error: Exception | None) -> None:
        """Back on the event loop: hand a batch's outputs (or its failure) to its requests."""
        self._in_flight -= 1
        self._wakeup.set()
        if error is not None:
            log.error("%s: the engine failed on a batch of %d pairs", self.name, batch.rows, exc_info=error)
            self.metrics.batch_failures.inc()
            self._fail_batch(batch, error)
        elif outputs is None:
            for segment in batch.segments:  # everyone gave up while it waited: it was not run
                reason = segment.request.drop_reason or "failed"
                self.metrics.dropped_pairs.labels(reason).inc(len(segment.indices))
            self._release(batch)
        else:
            self.metrics.observe_batch(batch.rows, batch.real_tokens, batch.rows * batch.width, seconds)
            self._scatter(batch, outputs)

    def _scatter(self, batch: Batch, outputs: Outputs) -> None:
        row = 0
        for segment in batch.segments:
            request, count = segment.request, len(segment.indices)
            if not request.finished:
                if request.outputs is None:
                    request.outputs = [np.empty(request.size, dtype=out.dtype) for out in outputs]
                for target, out in zip(request.outputs, outputs):
                    target[segment.indices] = out[row : row + count]
            row += count
        self._release(batch)

    def _release(self, batch: Batch) -> None:
        """Account for a batch's pairs leaving the system; answer requests that are complete."""
        for segment in batch.segments:
            request, count = segment.request, len(segment.indices)
            self._admitted_pairs -= count
            request.unfinished -= count
            if request.unfinished == 0 and not request.finished:
                self._finish(request, None)

    def _fail_batch(self, batch: Batch, exc: BaseException) -> None:
        error = EdgeRecError(
            ErrorCode.INTERNAL,
            f"the engine failed on the batch holding this request ({type(exc).__name__}: {exc}); "
            "other requests are unaffected, retrying may succeed",
        )
        for segment in batch.segments:
            self._finish(segment.request, error)
        self._release(batch)
