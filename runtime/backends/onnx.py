"""The ONNX Runtime backend: runs one variant of one bundle model in one session.

The session comes from the one session factory (`edgerec.core.sessions.
create_session`), so the server runs exactly the configuration the export's
gate and the benchmarks time. Providers are tried in the configured order
(TensorRT -> CUDA -> CPU by default). A provider that is missing, or that is
installed but fails to load (ONNX Runtime then falls back silently), is
detected from the session after it exists, and one log line names the
provider that really runs and the ones skipped. When no precision is forced
and the GPU provider cannot start, the model's CPU default variant is opened
instead of running its GPU variant (fp16) on the CPU.

With `execution` 'auto' a CPU session runs rows alone: one single-threaded
call per row, several rows at once (`Backend.rows_alone`). Measured on the
2-layer MiniLM with 2 cores over the same 1,500 real pairs: int8-dynamic
8.65 ms CPU and 229 pairs/s that way, against 10.47 ms and 188 pairs/s for
a default ONNX Runtime session fed padded batches of 32; fp32 13.6 ms and
141 pairs/s against 15.9 ms and 122 pairs/s batched (`benchmarks/yardstick.py`).
And no score then depends on its batch-mates: int8-dynamic quantizes each
call's activations with one scale, so batched, a row's score moved with the
rows beside it (issue 11, item 1).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from edgerec.core.bundle import Bundle, BundleModel, Variant
from edgerec.core.sessions import (
    CPU,
    OpenedSession,
    SessionConfig,
    available_cpus,
    create_session,
    provider_names,
    usable_providers,
)
from edgerec.runtime.backends.base import EXECUTION_MODES, Backend

log = logging.getLogger(__name__)


class OnnxBackend(Backend):
    """One ONNX Runtime session for one model of a bundle; `execute` is called from one worker thread at a time."""

    def __init__(
        self, bundle: Bundle, model: str, config: SessionConfig, precision: str | None = None, execution: str = "batched"
    ) -> None:
        """Cheap: nothing is loaded until `initialize`. `precision` None: the model's default for the device
        of the first usable provider. `execution` (`EXECUTION_MODES`): 'auto' runs rows alone when the
        session runs on the CPU. Raises EdgeRecError NOT_FOUND when the bundle has no such model."""
        if execution not in EXECUTION_MODES:
            raise ValueError(f"execution must be one of {', '.join(EXECUTION_MODES)}, got {execution!r}")
        self.bundle = bundle
        self.model: BundleModel = bundle.model(model)
        self.signature = self.model.signature
        self.config = config
        self.precision = precision
        self.execution = execution
        self._output_names = list(self.signature.output_names)
        self._opened: OpenedSession | None = None
        self._variant: Variant | None = None
        self._provider: str | None = None  # kept after `finalize`, for logs

    def initialize(self) -> None:
        """Open the variant on the first provider that works and log which one runs.

        Raises EdgeRecError: NOT_FOUND for a precision the model lacks,
        FAILED_PRECONDITION when no configured provider is available or the file does not load.
        """
        device = "gpu" if _first_usable(self.config.providers) not in (None, CPU) else "cpu"
        variant = self.model.variant(self.precision, device)
        opened = create_session(self.bundle.path(variant.file), self._config_for(device, self.config), self.signature)
        if device == "gpu" and opened.provider == CPU:
            # The GPU provider is installed but could not start: the GPU default (fp16) is no CPU variant,
            # and the CPU runs rows alone under 'auto'.
            if self.precision is None:
                variant = self.model.variant(None, "cpu")
            cpu_only = self._config_for("cpu", dataclasses.replace(self.config, providers=("cpu",)))
            opened = create_session(self.bundle.path(variant.file), cpu_only, self.signature)
        wanted = provider_names(self.config.providers)
        skipped = wanted[: wanted.index(opened.provider)] if opened.provider in wanted else wanted
        log.info(
            "model %s of %s %s (%s) runs on %s, %s%s",
            self.model.name,
            self.bundle.name,
            self.bundle.version,
            variant.precision,
            opened.provider,
            f"rows alone, {self.row_workers} at once" if self.rows_alone else "batched",
            f"; not usable here: {', '.join(skipped)}" if skipped else "",
        )
        self._opened, self._variant, self._provider = opened, variant, opened.provider

    def _wants_rows_alone(self, device: str) -> bool:
        return self.execution == "rows_alone" or (self.execution == "auto" and device == "cpu")

    def _config_for(self, device: str, config: SessionConfig) -> SessionConfig:
        """The session settings for `device`, and `rows_alone` / `row_workers` set to match: rows alone run
        single-threaded, `intra_op_threads` (0: every available CPU) of them at once."""
        self.rows_alone = self._wants_rows_alone(device)
        if not self.rows_alone:
            self.row_workers = 1
            return config
        self.row_workers = config.intra_op_threads or available_cpus()
        return dataclasses.replace(config, intra_op_threads=1)

    def execute(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._opened.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, outputs))

    def finalize(self) -> None:
        self._opened = None

    @property
    def variant(self) -> Variant:
        if self._variant is None:
            raise RuntimeError("the backend is not initialized")
        return self._variant

    @property
    def provider(self) -> str:
        if self._provider is None:
            raise RuntimeError("the backend is not initialized")
        return self._provider


def _first_usable(providers: tuple[str, ...]) -> str | None:
    """The first configured provider this onnxruntime offers; None if none (or an unknown name, which
    `create_session` then reports)."""
    try:
        usable = usable_providers(providers)
    except ValueError:
        return None
    return usable[0] if usable else None
