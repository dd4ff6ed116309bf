"""The backend contract: what the serving core needs from the code that runs a model.

Shaped like a Triton python-backend model: `initialize()` loads (blocking,
before anything is served), `execute(feeds)` runs one batch, `finalize()`
frees. Tensors are named by the model's signature (`edgerec.core.signatures`),
so the core never hard-codes a model's inputs or outputs. `execute` is called
from one worker thread at a time (from up to `row_workers` threads at once
when `rows_alone`); `initialize` and `finalize` are not called concurrently
with it.
"""

from __future__ import annotations

import abc

import numpy as np

from edgerec.core.bundle import Variant
from edgerec.core.sessions import dummy_feeds
from edgerec.core.signatures import ModelSignature


# How a cut batch runs (`BackendConfig.execution`).
EXECUTION_MODES = ("auto", "batched", "rows_alone")


class Backend(abc.ABC):
    """Runs one variant of one model: named input arrays in, named output arrays out.

    `rows_alone`: the model is fed one row per `execute` call, cut to its own
    length, up to `row_workers` calls at once from different threads (each
    call single-threaded); otherwise one padded call per batch.
    """

    signature: ModelSignature
    rows_alone: bool = False
    row_workers: int = 1

    @abc.abstractmethod
    def initialize(self) -> None:
        """Load the variant; raises EdgeRecError (FAILED_PRECONDITION, NOT_FOUND) when it cannot run here."""

    @abc.abstractmethod
    def execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: `feeds` holds every input of the signature (first axis: rows); the result holds
        every output of the signature, keyed by name, one entry per row along the first axis."""

    @abc.abstractmethod
    def finalize(self) -> None:
        """Free what `initialize` loaded; `execute` must not be called afterwards."""

    @property
    @abc.abstractmethod
    def variant(self) -> Variant:
        """The variant being run (its precision and file); valid after `initialize`."""

    @property
    @abc.abstractmethod
    def provider(self) -> str:
        """What really runs the variant (e.g. `CPUExecutionProvider`); valid after `initialize`."""

    def warm_up(self, batch_sizes: tuple[int, ...], sequences: tuple[int, ...]) -> None:
        """Run every (batch, sequence) shape once with dummy inputs of the signature, so the first
        requests do not pay for lazy allocations or TensorRT engine builds. Every input is filled with 1
        (a real token id, attended, second segment): valid for the cross-encoder's int inputs."""
        for rows in sorted(set(batch_sizes)):
            for length in sorted(set(sequences)):
                self.execute(dummy_feeds(self.signature, rows, length, fill=1))
