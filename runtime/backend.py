"""The engine behind the batcher: an ONNX Runtime session for one bundle engine.

`Backend` is the contract the serving core relies on (as Triton's model is
`initialize`/`execute`/`finalize`): `run(EncodedBatch) -> (purchase
probabilities, expected quantities)`, one row per pair, and `close()`.
`OnnxBackend` loads a bundle's engine with the configured provider order
(TensorRT -> CUDA -> CPU by default). A provider that is missing, or that is
installed but fails to load (ONNX Runtime then falls back silently), is
detected from `session.get_providers()` after the session exists, and the
choice is logged in one line. Knows nothing of gRPC or batching.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort

from edgerec.runtime.bundle import Bundle, EngineEntry
from edgerec.runtime.config import PROVIDER_NAMES, BackendConfig
from edgerec.runtime.errors import EdgeRecError, ErrorCode
from edgerec.runtime.featurize import EncodedBatch

log = logging.getLogger(__name__)

CPU = PROVIDER_NAMES["cpu"]
TENSORRT = PROVIDER_NAMES["tensorrt"]
OUTPUT_NAMES = ("purchase_probability", "expected_quantity")


class Backend(Protocol):
    """What the serving core needs from an engine."""

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
        """(purchase_probability, expected_quantity), float32, one per row of `batch`."""

    def close(self) -> None:
        """Free the engine."""


class OnnxBackend:
    """One ONNX Runtime session; `run` is called from one worker thread at a time."""

    def __init__(self, session: ort.InferenceSession, entry: EngineEntry, provider: str) -> None:
        self.session = session
        self.entry = entry
        self.provider = provider

    @classmethod
    def load(cls, bundle: Bundle, config: BackendConfig) -> "OnnxBackend":
        """Open the bundle's engine on the first provider of `config.providers` that works."""
        available = set(ort.get_available_providers())
        wanted = [PROVIDER_NAMES[name] for name in config.providers]
        usable = [p for p in wanted if p in available]
        if not usable:
            raise EdgeRecError(
                ErrorCode.FAILED_PRECONDITION,
                f"none of the providers {list(config.providers)} is available; this onnxruntime has {sorted(available)}",
            )
        device = "cpu" if usable[0] == CPU else "gpu"
        entry = bundle.engine(config.precision, device)
        session = _session(bundle, entry, usable, config)
        provider = session.get_providers()[0]
        if device == "gpu" and provider == CPU and config.precision is None:
            # The GPU provider is installed but could not start: its default (fp16) engine is no CPU engine.
            entry = bundle.engine(None, "cpu")
            session = _session(bundle, entry, [CPU], config)
            provider = CPU
        skipped = wanted[: wanted.index(provider)] if provider in wanted else wanted
        log.info(
            "engine %s %s (%s) runs on %s%s",
            bundle.name,
            bundle.version,
            entry.precision,
            provider,
            f"; not usable here: {', '.join(skipped)}" if skipped else "",
        )
        return cls(session, entry, provider)

    def run(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
        probabilities, quantities = self.session.run(OUTPUT_NAMES, batch.as_feeds())
        return probabilities, quantities

    def warm_up(self, pad_id: int, max_batch_size: int, max_length: int) -> None:
        """Run the shapes serving will see most (1 and a full batch, short and full length)."""
        for rows in sorted({1, max_batch_size}):
            for length in sorted({max(4, max_length // 4), max_length}):
                ids = np.full((rows, length), pad_id, dtype=np.int64)
                self.run(EncodedBatch(ids, np.ones_like(ids), np.zeros_like(ids)))

    def close(self) -> None:
        self.session = None


def _session(bundle: Bundle, entry: EngineEntry, providers: list[str], config: BackendConfig) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if config.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.enable_cpu_mem_arena = config.cpu_memory_arena
    options.log_severity_level = 3  # errors only: provider fallbacks are reported by our own log line
    if not config.spin_wait:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    with_options: list = []
    for provider in providers:
        if provider == TENSORRT:
            cache = Path(config.trt_cache_dir or bundle.root / ".trt-cache")
            cache.mkdir(parents=True, exist_ok=True)
            with_options.append((provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache)}))
        else:
            with_options.append(provider)
    try:
        return ort.InferenceSession(str(bundle.path(entry.file)), sess_options=options, providers=with_options)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION, f"cannot load engine {bundle.path(entry.file)}: {type(exc).__name__}: {exc}"
        ) from exc
