"""Dynamic batching for one instance: admission -> scheduler -> worker, composed.

Knows nothing of gRPC or ONNX. A request is an opaque `payload` holding n
pairs plus each pair's token length; pairs from many requests are merged
into batches for `prepare(segments)` / `execute(prepared)`, and each
request gets its outputs back in pair order. The parts, in request order:

- `admission.Admission`: the in-flight bound; overload is refused at once;
- `scheduler.Scheduler`: plain policy cutting the queue into batches (length
  buckets, token budget, batch size, queue delay);
- `worker.Worker`: the event-loop task that feeds the worker thread,
  deadlines and cancellation, answering requests, drain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edgerec.runtime.admission import Admission
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.scheduler import Scheduler, Segment
from edgerec.runtime.worker import Outputs, Worker


class Batcher:
    """Merges requests into batches; `await submit(...)` returns the request's outputs in pair order."""

    def __init__(
        self,
        config: BatcherConfig,
        prepare: Callable[[Sequence[Segment]], Any],
        execute: Callable[[Any], Outputs],
        metrics: Metrics | None = None,
        name: str = "batcher",
        padded: bool = True,
    ) -> None:
        """`prepare(segments)` runs on the event loop and builds the backend input of one batch
        (rows in segment order); `execute(prepared)` runs in the worker thread and returns
        arrays whose first axis is the batch's rows. `name` labels the thread and the logs.
        `padded`: whether `prepare` pads rows to the batch's longest (False: rows run alone), for
        the padding metric."""
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.name = name
        self.admission = Admission(config, self.metrics)
        self.scheduler = Scheduler(config)
        self.worker = Worker(self.scheduler, self.admission, prepare, execute, self.metrics, name, padded)

    async def start(self) -> "Batcher":
        await self.worker.start()
        self.admission.open()
        return self

    @property
    def accepting(self) -> bool:
        """Started and not draining."""
        return self.admission.accepting

    @property
    def queued_pairs(self) -> int:
        """Pairs admitted and waiting for a batch."""
        return self.scheduler.queued_pairs

    @property
    def admitted_requests(self) -> int:
        """Requests admitted and not yet answered."""
        return self.admission.requests

    @property
    def admitted_pairs(self) -> int:
        """Pairs admitted and not yet scored (queued, prepared or running)."""
        return self.admission.pairs

    async def submit(self, payload: Any, lengths: np.ndarray, timeout: float | None = None) -> Outputs:
        """Score the `len(lengths)` pairs of `payload` (`lengths`: tokens of each pair); outputs come
        back in pair order, each array's first axis the request's pairs.

        Raises EdgeRecError: RESOURCE_EXHAUSTED at once if the queue is full, DEADLINE_EXCEEDED if
        `timeout` seconds pass first (at once if `timeout` <= 0), UNAVAILABLE while draining,
        INTERNAL if the backend fails on a batch holding these pairs, INVALID_ARGUMENT for no pairs.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        self.admission.admit(len(lengths), timeout)
        return await self.worker.submit(payload, lengths, timeout)

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop admitting, finish every admitted request, stop. True if all finished within `timeout` s."""
        self.admission.close()
        return await self.worker.drain(timeout)
