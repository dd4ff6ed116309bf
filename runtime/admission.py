"""Admission: the in-flight bound in front of the scheduler (TEI's semaphore).

Work is admitted only while it fits, in time and in count:

- its estimated wait, the pairs admitted ahead of it divided by the
  measured service rate (pairs scored per second of the worker's compute,
  a moving average over recent batches), is at most `max_queue_wait_ms`.
  This bounds what an admitted request waits whatever the model's speed,
  so under overload the admitted are answered within a page's patience
  and the rest learn at once. Until the first batch has been timed, and
  whenever nothing is admitted, only the bounds below apply (a request
  alone is never refused for time);
- at most `max_queue_pairs` pairs and `max_queue_requests` requests are
  admitted and not yet answered (queued, prepared or running).

Beyond a bound a request is refused at once with RESOURCE_EXHAUSTED, so
overload never grows an unbounded queue and callers learn to back off. Nothing is admitted before the server starts or once it
drains (UNAVAILABLE), and a request whose deadline has already passed is
refused without being queued (DEADLINE_EXCEEDED). The worker hands the
permits back (`release`) as pairs are scored and requests answered.
"""

from __future__ import annotations

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.metrics import Metrics


SERVICE_RATE_DECAY = 0.9  # weight of the older batches in the service rate (about the last 10 batches count)


class ServiceRate:
    """Pairs scored per second of compute, a moving average over recent batches.

    Each batch's pairs and seconds enter decayed sums (older batches weigh
    `SERVICE_RATE_DECAY` per newer batch), and the rate is their ratio, so
    a batch counts by its size and the estimate follows a change of load or
    machine within about ten batches.
    """

    def __init__(self, decay: float = SERVICE_RATE_DECAY) -> None:
        self.decay = decay
        self._pairs = 0.0
        self._seconds = 0.0

    def observe(self, pairs: int, seconds: float) -> None:
        """One batch of `pairs` pairs took `seconds` seconds of compute."""
        if pairs <= 0 or seconds <= 0:
            return
        self._pairs = self._pairs * self.decay + pairs
        self._seconds = self._seconds * self.decay + seconds

    @property
    def pairs_per_s(self) -> float | None:
        """The estimate in pairs per second; None before the first batch."""
        return self._pairs / self._seconds if self._seconds > 0 else None

    def seconds_for(self, pairs: int) -> float | None:
        """Estimated seconds to score `pairs` pairs; None before the first batch."""
        rate = self.pairs_per_s
        return None if rate is None else pairs / rate


class Admission:
    """Counts pairs and requests in flight against the bounds; refuses what does not fit."""

    def __init__(self, config: BatcherConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.service_rate = ServiceRate()
        self._open = False
        self._pairs = 0
        self._requests = 0

    @property
    def accepting(self) -> bool:
        """Opened and not draining."""
        return self._open

    @property
    def pairs(self) -> int:
        """Pairs admitted and not yet scored (queued, prepared or running)."""
        return self._pairs

    @property
    def requests(self) -> int:
        """Requests admitted and not yet answered."""
        return self._requests

    def estimated_wait_s(self) -> float | None:
        """Seconds a request admitted now would wait for the pairs ahead of it; None before the first batch."""
        return self.service_rate.seconds_for(self._pairs)

    def observe_batch(self, pairs: int, seconds: float) -> None:
        """The worker scored a batch of `pairs` pairs in `seconds` seconds (feeds the service rate)."""
        self.service_rate.observe(pairs, seconds)
        rate = self.service_rate.pairs_per_s
        if rate is not None:
            self.metrics.service_rate.set(rate)

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        """Drain: admit nothing more; what is in flight keeps its permits until answered."""
        self._open = False

    def admit(self, pairs: int, timeout: float | None) -> None:
        """Take permits for one request of `pairs` pairs with `timeout` seconds to live (None: no deadline).

        Raises EdgeRecError, taking nothing: INVALID_ARGUMENT for no pairs, UNAVAILABLE while not
        accepting, DEADLINE_EXCEEDED if `timeout` <= 0 (counted as dropped for "deadline"),
        RESOURCE_EXHAUSTED if its estimated wait exceeds `max_queue_wait_ms` or the pairs or the
        request do not fit under the count bounds.
        """
        if pairs == 0:
            raise EdgeRecError(ErrorCode.INVALID_ARGUMENT, "a request needs at least one pair")
        if not self._open:
            raise EdgeRecError(ErrorCode.UNAVAILABLE, "the server is draining and admits no new requests")
        if timeout is not None and timeout <= 0:
            self.metrics.dropped_requests.labels("deadline").inc()
            self.metrics.dropped_pairs.labels("deadline").inc(pairs)
            raise EdgeRecError(ErrorCode.DEADLINE_EXCEEDED, "the deadline had passed before the request was queued")
        limit_ms = self.config.max_queue_wait_ms
        wait = self.estimated_wait_s() if limit_ms > 0 and self._pairs else None
        if wait is not None and wait * 1000.0 > limit_ms:
            raise EdgeRecError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"server overloaded: estimated wait {wait * 1000.0:.0f} ms for the {self._pairs} pairs ahead "
                f"(at {self.service_rate.pairs_per_s:.0f} pairs/s) exceeds max_queue_wait_ms {limit_ms:g}; retry later",
            )
        if self._pairs + pairs > self.config.max_queue_pairs:
            raise EdgeRecError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"server overloaded: {self._pairs} pairs in the queue, room for "
                f"{self.config.max_queue_pairs - self._pairs}, this request has {pairs}; retry later",
            )
        if self._requests >= self.config.max_queue_requests:
            raise EdgeRecError(
                ErrorCode.RESOURCE_EXHAUSTED,
                f"server overloaded: {self._requests} requests in the queue (max "
                f"{self.config.max_queue_requests}); retry later",
            )
        self._pairs += pairs
        self._requests += 1

    def release(self, pairs: int = 0, requests: int = 0) -> None:
        """Give back the permits of `pairs` pairs scored or dropped and `requests` requests answered."""
        self._pairs -= pairs
        self._requests -= requests
