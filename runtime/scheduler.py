"""The scheduler: which queued pairs run together in the next batch, and when.

Plain synchronous policy with no event loop, thread or model in it (vLLM's
`Scheduler.schedule()`, TEI's `Queue::next_batch`): the worker asks
`wait_time(now, ...)` whether a batch should be cut, then `next_batch(now)`
for it. Time is always an argument, so tests drive it with a fake clock.

- pairs wait in length buckets `length_bucket_width` tokens wide; a batch
  starts from the bucket holding the oldest request's pairs and fills from
  the nearest buckets, so short pairs are not padded to long ones and
  nobody starves;
- a batch holds at most `max_batch_size` pairs and `max_batch_tokens`
  tokens counted with padding (pairs x longest pair); a lone pair over the
  budget still runs, alone;
- a request with many pairs is split across batches, one `Segment` each;
- a full batch is cut at once; a partial one waits while the worker is
  busy, else until `max_queue_delay_ms` after its oldest pair arrived;
  while draining nothing waits;
- a finished request (answered, failed, expired, cancelled) leaves the
  counts at once; its queued segments are skipped when met, never cut.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from typing import Any

import numpy as np

from edgerec.runtime.config import BatcherConfig


class Request:
    """A request as the scheduler sees it: `size` pairs of known token lengths, and what is still queued."""

    __slots__ = ("payload", "lengths", "size", "arrival", "seq", "queued", "queued_tokens", "started", "finished")

    def __init__(self, payload: Any, lengths: np.ndarray, arrival: float) -> None:
        """`payload`: opaque, holds the pairs; `lengths`: int64 [size], tokens of each pair (>= 1);
        `arrival`: clock time of admission in seconds (perf_counter() in the server)."""
        self.payload = payload
        self.lengths = lengths
        self.size = len(lengths)
        self.arrival = arrival
        self.seq = -1  # admission order, set by Scheduler.add
        self.queued = self.size  # pairs not yet cut into a batch
        self.queued_tokens = int(lengths.sum())
        self.started = False  # some pair was cut into a batch
        self.finished = False  # answered, failed, expired or cancelled: see Scheduler.finish


@dataclasses.dataclass(frozen=True)
class Segment:
    """Some pairs of one request that run in one batch: `indices` (int64) into the request's pairs,
    and their token `lengths`, ascending."""

    request: Request
    indices: np.ndarray
    lengths: np.ndarray

    @property
    def payload(self) -> Any:
        return self.request.payload


@dataclasses.dataclass(frozen=True)
class Batch:
    """A cut batch: its segments in row order, and its shape."""

    segments: list[Segment]
    rows: int  # pairs
    width: int  # tokens of the longest pair: every row is padded to it
    real_tokens: int  # tokens before padding
    queue_seconds: tuple[float, ...]  # for each request whose first pairs this batch holds: seconds since arrival


class Scheduler:
    """The queue of admitted pairs, in length buckets, and the policy that cuts it into batches."""

    def __init__(self, config: BatcherConfig) -> None:
        self.config = config
        self._buckets: dict[int, deque[Segment]] = {}
        self._seq = itertools.count()
        self._queued_pairs = 0
        self._queued_tokens = 0

    @property
    def queued_pairs(self) -> int:
        """Pairs of unfinished requests waiting for a batch."""
        return self._queued_pairs

    @property
    def queued_tokens(self) -> int:
        """Tokens (without padding) of the queued pairs."""
        return self._queued_tokens

    @property
    def has_full_batch(self) -> bool:
        """The queue holds a full batch's pairs or tokens: waiting would not make the next batch bigger."""
        return self._queued_pairs >= self.config.max_batch_size or self._queued_tokens >= self.config.max_batch_tokens

    # -- entering and leaving -------------------------------------------------
    def add(self, request: Request) -> None:
        """Queue the request's pairs, shortest first, in their length buckets."""
        request.seq = next(self._seq)
        lengths = request.lengths
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order]
        width = self.config.length_bucket_width
        if width <= 0:
            self._buckets.setdefault(0, deque()).append(Segment(request, order, sorted_lengths))
        else:
            buckets = (sorted_lengths - 1) // width
            cuts = np.flatnonzero(np.diff(buckets)) + 1
            for start, stop in zip(itertools.chain((0,), cuts), itertools.chain(cuts, (len(order),))):
                self._buckets.setdefault(int(buckets[start]), deque()).append(
                    Segment(request, order[start:stop], sorted_lengths[start:stop])
                )
        self._queued_pairs += request.queued
        self._queued_tokens += request.queued_tokens

    def finish(self, request: Request) -> int:
        """Mark the request finished; returns how many of its pairs were still queued, now dropped uncut.

        Its queued segments stay in their buckets and are skipped when met.
        """
        request.finished = True
        dropped = request.queued
        self._queued_pairs -= dropped
        self._queued_tokens -= request.queued_tokens
        request.queued = request.queued_tokens = 0
        if not self._queued_pairs:
            self._buckets.clear()  # whatever is left belongs to finished requests
        return dropped

    # -- policy -----------------------------------------------------------------
    def wait_time(self, now: float, *, busy: bool, draining: bool) -> float | None:
        """Seconds to wait before cutting the next batch: 0.0 cut it now; None wait for a change
        (nothing queued, or a partial batch while the worker is `busy` with another batch).

        A partial batch waits for the idle worker at most `max_queue_delay_ms` after its oldest
        pair arrived; a full batch, or any batch while `draining`, does not wait.
        """
        if not self._queued_pairs:
            return None
        if self.has_full_batch or draining:
            return 0.0
        if busy:
            return None  # the worker frees up later: meanwhile the batch gathers pairs
        self._drop_finished_heads()
        oldest = min(queue[0].request.arrival for queue in self._buckets.values())
        return max(0.0, oldest + self.config.max_queue_delay_ms / 1000.0 - now)

    def next_batch(self, now: float) -> Batch | None:
        """Cut the next batch: from the bucket of the oldest request, then its nearest neighbours.

        None if nothing is queued. Cut pairs leave the queue; `now` dates `Batch.queue_seconds`.
        """
        self._drop_finished_heads()
        if not self._buckets:
            return None
        anchor = min(self._buckets, key=lambda b: self._buckets[b][0].request.seq)
        order = sorted(self._buckets, key=lambda b: (abs(b - anchor), b))
        max_rows, budget = self.config.max_batch_size, self.config.max_batch_tokens
        segments: list[Segment] = []
        waited: list[float] = []
        rows = width = real = 0
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
                    waited.append(now - request.arrival)
            if not queue:
                del self._buckets[bucket]
            if rows >= max_rows or (segments and (rows + 1) * width > budget):
                break
        return Batch(segments, rows, width, real, tuple(waited)) if segments else None

    def _drop_finished_heads(self) -> None:
        """Drop finished requests' segments from the front of each bucket, and empty buckets."""
        for bucket in list(self._buckets):
            queue = self._buckets[bucket]
            while queue and queue[0].request.finished:
                queue.popleft()
            if not queue:
                del self._buckets[bucket]
