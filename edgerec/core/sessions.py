"""The one ONNX Runtime session factory: the gate, the benchmarks and the server open models here.

Every session edgerec creates goes through `create_session`, so the
validation gate and the "fastest int8" timing measure sessions configured
exactly like the server's (threads, memory arena, spinning), and TensorRT
gets one set of provider options everywhere (`tensorrt_options`: profile
shapes from the model's signature and the server's batch limits, one engine
cache). ONNX Runtime falls back to the next provider silently when one cannot
load (a CUDA or TensorRT library missing), so the provider that really runs is
read from `session.get_providers()` after the session exists.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.settings import setting
from edgerec.core.signatures import ModelSignature

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
CPU = PROVIDER_NAMES["cpu"]
CUDA = PROVIDER_NAMES["cuda"]
TENSORRT = PROVIDER_NAMES["tensorrt"]


@dataclasses.dataclass(frozen=True)
class TensorRTProfile:
    """The one TensorRT optimization profile: the batch and sequence ranges the server sends.

    `max_batch` follows the server's `max_batch_size` and `max_sequence` the
    featurizer's `max_length` (callers pass them in); the engine built for
    this profile is cached and reused by every session with the same options.
    """

    min_batch: int = setting(1, "smallest batch the TensorRT engine accepts")
    opt_batch: int = setting(16, "batch TensorRT tunes its kernels for")
    max_batch: int = setting(32, "largest batch the engine accepts: the server's max_batch_size")
    min_sequence: int = setting(8, "shortest padded pair the engine accepts")
    opt_sequence: int = setting(64, "pair length TensorRT tunes its kernels for")
    max_sequence: int = setting(128, "longest pair the engine accepts: the featurizer's max_length")
    workspace_mb: int = setting(2048, "TensorRT builder workspace, MB")

    @classmethod
    def for_serving(cls, max_batch: int, max_sequence: int) -> "TensorRTProfile":
        """The profile the server and the export's engine build share: up to the server's batch and the featurizer's length."""
        default = cls()
        return cls(
            max_batch=max_batch,
            max_sequence=max_sequence,
            min_batch=min(default.min_batch, max_batch),
            opt_batch=min(default.opt_batch, max_batch),
            opt_sequence=min(default.opt_sequence, max_sequence),
            min_sequence=min(default.min_sequence, max_sequence),
        )


@dataclasses.dataclass(frozen=True)
class SessionConfig:
    """How an ONNX Runtime session is made; defaults are the server's.

    - `intra_op_threads` 0: ONNX Runtime's default, one thread per physical core.
    - `spin_wait` False: threads sleep between operators instead of spinning
      (spinning burnt CPU the other thread needed on a 2-core box).
    - `cpu_memory_arena` True and `memory_pattern` False: activations come
      from ONNX Runtime's arena, reused across runs, without one allocation
      plan kept per input shape. See `runtime.config.BackendConfig` for the
      measurements that chose these.
    """

    providers: tuple[str, ...] = ("cpu",)
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    spin_wait: bool = False
    cpu_memory_arena: bool = True
    memory_pattern: bool = False
    trt_cache_dir: Path | None = None
    trt_profile: TensorRTProfile = TensorRTProfile()
    trt_fp16: bool = True
    log_severity_level: int = 3  # errors only: fallbacks are reported by the caller's own line
    # True: every option at ONNX Runtime's own default except providers and intra_op_threads
    # (the benchmark's yardstick: what a server that leaves ONNX Runtime alone runs).
    onnxruntime_defaults: bool = False


@dataclasses.dataclass(frozen=True)
class OpenedSession:
    """A session and the provider it really runs on (`skipped`: wanted providers that did not load)."""

    session: ort.InferenceSession
    provider: str
    skipped: tuple[str, ...]

    @property
    def device(self) -> str:
        return "cpu" if self.provider == CPU else "gpu"


def cpu_flags() -> set[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def has_vnni(flags: set[str] | None = None) -> bool:
    """Whether the CPU has an int8 dot-product instruction (AVX-512 VNNI or AVX-VNNI), which ONNX Runtime's
    int8 kernels use: four int8 products summed per fp32 lane in one instruction (`flags`: `cpu_flags()`)."""
    flags = cpu_flags() if flags is None else flags
    return "avx512_vnni" in flags or "avx_vnni" in flags


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; all of them where that is unknown)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def provider_names(names: tuple[str, ...]) -> list[str]:
    """ONNX Runtime provider names for short names (`tensorrt`, `cuda`, `cpu`); ValueError names unknown ones."""
    unknown = [name for name in names if name not in PROVIDER_NAMES]
    if unknown:
        raise ValueError(f"unknown provider(s) {unknown}; choose from {sorted(PROVIDER_NAMES)}")
    return [PROVIDER_NAMES[name] for name in names]


def usable_providers(names: tuple[str, ...]) -> list[str]:
    """The wanted providers this onnxruntime build offers, in order."""
    available = set(ort.get_available_providers())
    return [p for p in provider_names(names) if p in available]


def _shapes(signature: ModelSignature, batch: int, sequence: int) -> str:
    dims = {"batch": batch, "sequence": sequence}
    return ",".join(
        f"{spec.name}:" + "x".join(str(dims.get(d, d)) for d in spec.shape) for spec in signature.inputs
    )


def tensorrt_options(signature: ModelSignature, config: SessionConfig, cache_dir: Path) -> dict[str, Any]:
    """ONNX Runtime TensorRT provider options: the profile over the signature's dynamic axes and the engine cache."""
    profile = config.trt_profile
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_fp16_enable": config.trt_fp16,
        "trt_max_workspace_size": profile.workspace_mb << 20,
        "trt_profile_min_shapes": _shapes(signature, profile.min_batch, profile.min_sequence),
        "trt_profile_opt_shapes": _shapes(signature, profile.opt_batch, profile.opt_sequence),
        "trt_profile_max_shapes": _shapes(signature, profile.max_batch, profile.max_sequence),
    }


def session_options(config: SessionConfig) -> ort.SessionOptions:
    """`ort.SessionOptions` for `config` (full graph optimization, threads, arena, spinning)."""
    options = ort.SessionOptions()
    if config.onnxruntime_defaults:
        options.intra_op_num_threads = config.intra_op_threads
        return options
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if config.inter_op_threads > 1 else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    options.enable_cpu_mem_arena = config.cpu_memory_arena
    options.enable_mem_pattern = config.memory_pattern
    options.log_severity_level = config.log_severity_level
    spin = "1" if config.spin_wait else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def create_session(
    path: Path, config: SessionConfig = SessionConfig(), signature: ModelSignature | None = None
) -> OpenedSession:
    """Open `path` on the first provider of `config.providers` that loads.

    TensorRT needs `signature` (its profile shapes) and a cache folder
    (`config.trt_cache_dir`; bundles keep theirs at `Bundle.trt_cache_path`).
    Raises EdgeRecError FAILED_PRECONDITION when no wanted provider is in
    this onnxruntime build or the file does not load.
    """
    path = Path(path)
    try:
        wanted = provider_names(config.providers)
    except ValueError as exc:
        raise EdgeRecError(ErrorCode.FAILED_PRECONDITION, str(exc)) from exc
    usable = usable_providers(config.providers)
    if not usable:
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION,
            f"none of the providers {list(config.providers)} is available; this onnxruntime has "
            f"{sorted(ort.get_available_providers())}",
        )
    with_options: list[Any] = []
    for provider in usable:
        if provider == TENSORRT:
            if signature is None:
                raise ValueError("TensorRT sessions need the model's signature for their profile shapes")
            if config.trt_cache_dir is None:
                raise ValueError("TensorRT sessions need a cache folder (SessionConfig.trt_cache_dir)")
            cache = Path(config.trt_cache_dir)
            cache.mkdir(parents=True, exist_ok=True)
            with_options.append((provider, tensorrt_options(signature, config, cache)))
        else:
            with_options.append(provider)
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(config), providers=with_options)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise EdgeRecError(
            ErrorCode.FAILED_PRECONDITION, f"cannot load model {path}: {type(exc).__name__}: {exc}"
        ) from exc
    provider = session.get_providers()[0]
    skipped = tuple(wanted[: wanted.index(provider)] if provider in wanted else wanted)
    return OpenedSession(session, provider, skipped)


def dummy_feeds(
    signature: ModelSignature, batch: int, sequence: int, fill: int | dict[str, int] = 0
) -> dict[str, np.ndarray]:
    """Feeds of the signature's shapes (dynamic axes set to `batch`/`sequence`), for warm-up and engine builds.

    `fill` is one value for every input, or a value per input name (others 0).
    """
    dims = {"batch": batch, "sequence": sequence}
    feeds = {}
    for spec in signature.inputs:
        shape = tuple(dims.get(d, d) if isinstance(d, str) else d for d in spec.shape)
        value = fill.get(spec.name, 0) if isinstance(fill, dict) else fill
        feeds[spec.name] = np.full(shape, value, dtype=spec.numpy_dtype)
    return feeds


Feeds = dict[str, np.ndarray]


def cut_rows(feeds: Feeds, mask_name: str) -> list[Feeds]:
    """Each row of a padded batch as a batch of one, cut after its last attended token.

    `feeds`: arrays of shape [rows, sequence] sharing the attention mask `mask_name`; each row
    keeps columns up to its mask's last non-zero, so a row's input never depends on the batch's
    longest (a row with no attended token, which the server refuses, keeps every column).
    """
    mask = feeds[mask_name]
    lengths = mask.shape[1] - np.argmax(mask[:, ::-1] != 0, axis=1)
    return [{name: values[row : row + 1, : lengths[row]] for name, values in feeds.items()} for row in range(len(mask))]


class RowRunner:
    """Runs the rows of a batch as separate calls, `workers` at once (the server's CPU execution).

    `run(feeds)` scores one row and returns its outputs (arrays whose first
    axis is 1). With n workers, thread k runs rows k, k + n, k + 2n, ...: one
    hand-off per thread and batch rather than per row (rows sorted by length
    within a batch give each thread about the same cost). The server's
    instances, the validation gate and the benchmark's yardstick all run rows
    alone through this class, so they time and score the same way.
    """

    def __init__(self, run: Callable[[Feeds], Sequence[np.ndarray]], workers: int, name: str = "rows") -> None:
        self._run = run
        self.workers = max(1, int(workers))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix=name) if self.workers > 1 else None

    def __call__(self, rows: Sequence[Feeds]) -> tuple[np.ndarray, ...]:
        """Outputs of every row, concatenated in row order (first axis: rows). Raises what `run` raised first."""
        if self._pool is None or len(rows) == 1:
            outputs = [self._run(feeds) for feeds in rows]
        else:
            workers = min(self.workers, len(rows))
            shares = list(self._pool.map(self._run_share, (rows[k::workers] for k in range(workers))))
            outputs = [None] * len(rows)
            for k, share in enumerate(shares):
                outputs[k::workers] = share
        return tuple(np.concatenate(column) for column in zip(*outputs))

    def _run_share(self, rows: Sequence[Feeds]) -> list[Sequence[np.ndarray]]:
        return [self._run(feeds) for feeds in rows]

    def close(self) -> None:
        """Stop the threads (waiting for a running batch)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
