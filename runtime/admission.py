"""Admission: the in-flight bound in front of the scheduler (TEI's semaphore).

Work is admitted only while it fits: `max_queue_pairs` pairs and
`max_queue_requests` requests admitted and not yet answered (queued,
prepared or running). Beyond the bound a request is refused at once with
RESOURCE_EXHAUSTED, so overload never grows an unbounded queue and callers
learn to back off. Nothing is admitted before the server starts or once it
drains (UNAVAILABLE), and a request whose deadline has already passed is
refused without being queued (DEADLINE_EXCEEDED). The worker hands the
permits back (`release`) as pairs are scored and requests answered.
"""

from __future__ import annotations

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.metrics import Metrics


class Admission:
    """Counts pairs and requests in flight against the bound; refuses what does not fit."""

    def __init__(self, config: BatcherConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
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

    def open(self) -> None:
        self._open = True

    def close(self) -> None:
        """Drain: admit nothing more; what is in flight keeps its permits until answered."""
        self._open = False

    def admit(self, pairs: int, timeout: float | None) -> None:
        """Take permits for one request of `pairs` pairs with `timeout` seconds to live (None: no deadline).

        Raises EdgeRecError, taking nothing: INVALID_ARGUMENT for no pairs, UNAVAILABLE while not
        accepting, DEADLINE_EXCEEDED if `timeout` <= 0 (counted as dropped for "deadline"),
        RESOURCE_EXHAUSTED if the pairs or the request do not fit under the bound.
        """
        if pairs == 0:
            raise EdgeRecError(ErrorCode.INVALID_ARGUMENT, "a request needs at least one pair")
        if not self._open:
            raise EdgeRecError(ErrorCode.UNAVAILABLE, "the server is draining and admits no new requests")
        if timeout is not None and timeout <= 0:
            self.metrics.dropped_requests.labels("deadline").inc()
            self.metrics.dropped_pairs.labels("deadline").inc(pairs)
            raise EdgeRecError(ErrorCode.DEADLINE_EXCEEDED, "the deadline had passed before the request was queued")
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
