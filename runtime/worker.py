"""The worker: runs the scheduler's batches on the backend without blocking the event loop.

Two sides joined by a bounded channel, like TEI's batching and inference tasks:

- on the event loop, one task is the single owner of the queue: it asks the
  scheduler when to cut the next batch, cuts it, builds its backend input
  (`prepare(segments)`) and hands it over; at most two batches are in flight
  (one running, the next prepared), so the next batch is cut and prepared
  while one runs;
- the worker thread runs prepared batches back to back (`execute(prepared)`)
  and posts the outputs back to the loop, which scatters them into each
  request's pair order and answers requests once all their pairs are in.

Each request waits on a future. Its deadline timer, or its caller
cancelling, finishes it at once: its queued pairs are dropped before they
cost compute, and a prepared batch nobody waits for any more is not run.

When the backend fails on a batch of several requests, each of them runs
again alone, so one request the model cannot run (an id past its vocabulary,
a poisoned row) fails only itself: its neighbours are answered. A request
that fails alone gets INTERNAL "the model failed on this request; the server
log has details"; the engine's own text goes to the log with the request's
admission number, never to the client. Draining finishes everything admitted,
retries included, then stops the thread.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.runtime.admission import Admission
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.scheduler import Batch, Request, Scheduler, Segment

log = logging.getLogger(__name__)

Outputs = tuple[np.ndarray, ...]

IN_FLIGHT = 2  # batches handed to the worker thread and not yet completed: one running, the next prepared
# What a request that fails on its own is told (INTERNAL); the cause, engine text included, is logged.
MODEL_FAILED = "the model failed on this request; the server log has details"
PREPARE_FAILED = "the server could not prepare this request for the model; the server log has details"


class _Call(Request):
    """An admitted request and its caller: where its outputs go, and why it left if it did."""

    __slots__ = ("future", "outputs", "unfinished", "drop_reason", "timer", "deadline")

    def __init__(self, payload: Any, lengths: np.ndarray, arrival: float, future: asyncio.Future) -> None:
        super().__init__(payload, lengths, arrival)
        self.future = future
        self.outputs: list[np.ndarray] | None = None
        self.unfinished = self.size  # pairs not yet scored or dropped
        self.drop_reason: str | None = None  # why it left before it was scored ("deadline", "cancelled")
        self.timer: asyncio.TimerHandle | None = None
        self.deadline: float | None = None  # perf_counter() time after which nobody waits


class Worker:
    """Feeds the scheduler's batches to `execute` in its own thread, and answers the requests."""

    def __init__(
        self,
        scheduler: Scheduler,
        admission: Admission,
        prepare: Callable[[Sequence[Segment]], Any],
        execute: Callable[[Any], Outputs],
        metrics: Metrics,
        name: str,
        padded: bool = True,
    ) -> None:
        """`prepare(segments)` runs on the event loop and builds the backend input of one batch
        (rows in segment order); `execute(prepared)` runs in the worker thread and returns arrays
        whose first axis is the batch's rows. Requests come in through `admission`, whose permits
        the worker hands back as their pairs are scored and they are answered."""
        self.scheduler = scheduler
        self.admission = admission
        self._prepare = prepare
        self._execute = execute
        self.metrics = metrics
        self.name = name
        self.padded = padded  # rows padded to the batch's longest (else each row runs at its own length)
        self._live: set[_Call] = set()
        self._in_flight = 0  # batches handed to the worker thread and not yet completed (at most IN_FLIGHT)
        self._draining = False
        self._abandoned = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wakeup: asyncio.Event | None = None
        self._channel: queue.SimpleQueue = queue.SimpleQueue()  # prepared batches: event loop -> worker thread
        self._scheduling: asyncio.Task | None = None
        self._stopped: asyncio.Future | None = None

    # -- lifecycle ------------------------------------------------------------
    async def start(self) -> None:
        """Start the worker thread and the scheduling task on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._stopped = self._loop.create_future()
        threading.Thread(target=self._run_batches, name=f"edgerec-worker-{self.name}", daemon=True).start()
        self._scheduling = asyncio.create_task(self._schedule(), name=f"{self.name}-scheduling")

    async def drain(self, timeout: float | None = None) -> bool:
        """Finish every admitted request, then stop. True if all finished within `timeout` seconds;
        otherwise the leftovers fail with UNAVAILABLE and the worker thread stops after its batch."""
        if self._scheduling is None:
            return True
        self._draining = True
        self._wakeup.set()
        scheduling, self._scheduling = self._scheduling, None
        done, pending = await asyncio.wait([scheduling, self._stopped], timeout=timeout)
        if scheduling in done and not scheduling.cancelled() and scheduling.exception() is not None:
            log.error("%s: the scheduling task failed", self.name, exc_info=scheduling.exception())
        if not pending:
            return True
        self._abandoned = True  # the worker thread skips what is left and stops
        scheduling.cancel()
        error = EdgeRecError(ErrorCode.UNAVAILABLE, "the server stopped before this request was scored")
        for request in list(self._live):
            self._finish(request, error)
        return False

    # -- requests ---------------------------------------------------------------
    async def submit(self, payload: Any, lengths: np.ndarray, timeout: float | None) -> Outputs:
        """Queue a request admission has let in: the `len(lengths)` pairs of `payload` (lengths int64
        tokens per pair); returns its outputs in pair order.

        Raises EdgeRecError: DEADLINE_EXCEEDED if `timeout` seconds pass first, INTERNAL if the
        backend fails on a batch holding these pairs, UNAVAILABLE if a drain runs out of time first.
        Cancelling the caller drops the request's queued pairs.
        """
        request = _Call(payload, lengths, time.perf_counter(), self._loop.create_future())
        if timeout is not None:
            request.deadline = request.arrival + timeout
            request.timer = self._loop.call_later(timeout, self._expire, request)
        self.scheduler.add(request)
        self._live.add(request)
        self._publish_queue()
        self._wakeup.set()
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

    def _expire(self, request: _Call) -> None:
        self._finish(
            request,
            EdgeRecError(ErrorCode.DEADLINE_EXCEEDED, "the deadline passed before the request was scored"),
            reason="deadline",
        )

    def _finish(self, request: _Call, error: EdgeRecError | None, reason: str | None = None) -> None:
        """Take a request out of the system: answered (error None, reason None), failed, expired or cancelled."""
        if request.finished:
            return
        dropped = self.scheduler.finish(request)  # its queued pairs never run
        request.drop_reason = reason
        self._live.discard(request)
        self.admission.release(pairs=dropped, requests=1)
        if request.timer is not None:
            request.timer.cancel()
        if dropped:
            if reason is not None:
                self.metrics.dropped_requests.labels(reason).inc()
                self.metrics.dropped_pairs.labels(reason).inc(dropped)
            request.unfinished -= dropped
        self._publish_queue()
        if not request.future.done():
            if error is None:
                request.future.set_result(tuple(request.outputs))
            else:
                request.future.set_exception(error)
        self._wakeup.set()

    def _publish_queue(self) -> None:
        self.metrics.set_queue(self.scheduler.queued_pairs, self.admission.requests)

    # -- cutting batches (event loop) -----------------------------------------
    async def _schedule(self) -> None:
        try:
            await self._cut_batches_until_drained()
        finally:
            self._channel.put(None)  # the worker thread stops after the batches before this

    async def _cut_batches_until_drained(self) -> None:
        while True:
            self._wakeup.clear()
            if not self.scheduler.queued_pairs and self._draining and not self._in_flight:
                return  # in-flight batches may still hand back requests to run alone
            if self._in_flight >= IN_FLIGHT:
                await self._wakeup.wait()
                continue
            wait = self.scheduler.wait_time(time.perf_counter(), busy=self._in_flight > 0, draining=self._draining)
            if wait is None:
                await self._wakeup.wait()
                continue
            if wait > 0:
                alarm = self._loop.call_later(wait, self._wakeup.set)  # cheaper than wait_for
                await self._wakeup.wait()
                alarm.cancel()
                continue
            batch = self.scheduler.next_batch(time.perf_counter())
            self._publish_queue()
            if batch is None:
                continue
            for seconds in batch.queue_seconds:
                self.metrics.queue_seconds.observe(seconds)
            try:
                prepared = self._prepare(batch.segments)
            except Exception:  # a bug in preparing one batch must not stop the worker
                requests = _requests_of(batch)
                log.exception(
                    "%s: preparing a batch of %d pairs from requests %s failed%s", self.name, batch.rows,
                    ", ".join(f"#{r.seq}" for r in requests), "; preparing each alone" if len(requests) > 1 else "",
                )
                if len(requests) > 1:
                    self._run_alone(batch, requests)
                else:
                    self._fail_batch(batch, PREPARE_FAILED)
                continue
            self._in_flight += 1
            self._channel.put((batch, prepared))

    # -- running batches (worker thread) ----------------------------------------
    def _run_batches(self) -> None:
        """The worker thread: runs prepared batches back to back, without waiting for the event loop."""
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
                    wrong = [tuple(out.shape) for out in outputs if out.ndim < 1 or len(out) != batch.rows]
                    if wrong:  # answered as a model failure, never scattered wrongly
                        raise ValueError(f"the model returned outputs of shapes {wrong} for a batch of {batch.rows} rows")
                except Exception as exc:
                    error = exc
                if not self._post(self._complete, batch, outputs, time.perf_counter() - started, error):
                    return
        finally:
            self._post(self._stopped.set_result, None)

    def _post(self, callback: Callable[..., Any], *args: Any) -> bool:
        """Hand a callback to the event loop; False once that loop is closed (its owner has gone)."""
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False
        return True

    # -- answering (event loop) -------------------------------------------------
    def _complete(self, batch: Batch, outputs: Outputs | None, seconds: float, error: Exception | None) -> None:
        """Back on the event loop: hand a batch's outputs (or its failure) to its requests."""
        self._in_flight -= 1
        self._wakeup.set()
        if error is not None:
            self.metrics.batch_failures.inc()
            requests = _requests_of(batch)
            if len(requests) > 1:
                log.warning(
                    "%s: the model failed on a batch of %d pairs from requests %s (%s: %s); running each alone",
                    self.name, batch.rows, ", ".join(f"#{r.seq}" for r in requests), type(error).__name__, error,
                )
                self._run_alone(batch, requests)
            else:
                log.error(
                    "%s: the model failed on request #%d (%d pairs, alone)", self.name, requests[0].seq, batch.rows,
                    exc_info=error,
                )
                self._fail_batch(batch, MODEL_FAILED)
        elif outputs is None:
            for segment in batch.segments:  # everyone gave up while it waited: it was not run
                reason = segment.request.drop_reason or "failed"
                self.metrics.dropped_pairs.labels(reason).inc(len(segment.indices))
            self._release(batch)
        else:
            self.metrics.observe_batch(
                batch.rows, batch.real_tokens, batch.rows * batch.width if self.padded else batch.real_tokens, seconds
            )
            self.admission.observe_batch(batch.rows, seconds)
            self._scatter(batch, outputs)

    def _scatter(self, batch: Batch, outputs: Outputs) -> None:
        """Copy each segment's rows of `outputs` to its request's pair positions."""
        row = 0
        for segment in batch.segments:
            request, count = segment.request, len(segment.indices)
            if not request.finished:
                if request.outputs is None:
                    request.outputs = [np.empty((request.size, *out.shape[1:]), dtype=out.dtype) for out in outputs]
                for target, out in zip(request.outputs, outputs):
                    target[segment.indices] = out[row : row + count]
            row += count
        self._release(batch)

    def _release(self, batch: Batch) -> None:
        """Account for a batch's pairs leaving the system; answer requests that are complete."""
        for segment in batch.segments:
            request, count = segment.request, len(segment.indices)
            self.admission.release(pairs=count)
            request.unfinished -= count
            if request.unfinished == 0 and not request.finished:
                self._finish(request, None)

    def _run_alone(self, batch: Batch, requests: list[_Call]) -> None:
        """Queue each request of a failed batch as a batch of its own (those still waiting), ahead of new batches."""
        for request in requests:
            segments = [segment for segment in batch.segments if segment.request is request]
            alone = Batch(
                segments=segments,
                rows=sum(len(segment.indices) for segment in segments),
                width=max(int(segment.lengths.max()) for segment in segments),
                real_tokens=sum(int(segment.lengths.sum()) for segment in segments),
                queue_seconds=(),
            )
            if request.finished:  # expired or cancelled meanwhile: nothing to run
                self._release(alone)
                continue
            try:
                prepared = self._prepare(segments)
            except Exception:
                log.exception("%s: preparing request #%d alone failed", self.name, request.seq)
                self._fail_batch(alone, PREPARE_FAILED)
                continue
            self._in_flight += 1
            self._channel.put((alone, prepared))

    def _fail_batch(self, batch: Batch, details: str) -> None:
        """Fail every request of `batch` with INTERNAL `details`; what went wrong is in the log, not the status."""
        error = EdgeRecError(ErrorCode.INTERNAL, details)
        for segment in batch.segments:
            self._finish(segment.request, error)
        self._release(batch)


def _requests_of(batch: Batch) -> list[_Call]:
    """The distinct requests of a batch, in row order."""
    return list(dict.fromkeys(segment.request for segment in batch.segments))
