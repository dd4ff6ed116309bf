"""Benchmark runners: one call signature for PyTorch and every ONNX Runtime session.

Each runner takes the cross-encoder's feeds (`edgerec.core.signatures.CROSS_ENCODER`
inputs, int64 [batch, sequence]) and returns its two outputs (float32 [batch])
as numpy arrays, in signature order, so the timing loop and the quality
scoring treat them all alike. The PyTorch eager model from the checkpoint is
the reference; torch is imported here only, and only when a PyTorch runner is
planned or loaded. ONNX Runtime sessions come from the one session factory
(`edgerec.core.sessions.create_session`), configured like the server's.

Every runner gets the same number of intra-op threads, so a speed-up is the
runner's and not a thread count's. GPU runners are planned like the others
but skipped, with the reason recorded, where there is no GPU, no
onnxruntime-gpu, or a provider that silently falls back to the CPU.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from edgerec.benchmarks.harness.memory import MemoryWatch
from edgerec.core.bundle import Bundle
from edgerec.core.errors import EdgeRecError
from edgerec.core.sessions import PROVIDER_NAMES, SessionConfig, TensorRTProfile, create_session
from edgerec.core.signatures import CROSS_ENCODER


@dataclasses.dataclass(frozen=True)
class RunnerKind:
    """What a runner name means: runtime, the precision it computes in, device, providers, variant file."""

    runtime: str  # "pytorch" or "onnxruntime"
    precision: str
    device: str  # "cpu" or "gpu"
    providers: tuple[str, ...] = ()  # ONNX Runtime providers (short names, `edgerec.core.sessions`), first one wanted
    file_precision: str = ""  # which variant file it loads (default: `precision`)


KINDS: dict[str, RunnerKind] = {
    "pytorch-fp32": RunnerKind("pytorch", "fp32", "cpu"),
    "ort-fp32": RunnerKind("onnxruntime", "fp32", "cpu", ("cpu",)),
    "ort-fp32-optimized": RunnerKind("onnxruntime", "fp32-optimized", "cpu", ("cpu",)),
    "ort-int8-dynamic": RunnerKind("onnxruntime", "int8-dynamic", "cpu", ("cpu",)),
    "ort-int8-static": RunnerKind("onnxruntime", "int8-static", "cpu", ("cpu",)),
    "pytorch-cuda-fp16": RunnerKind("pytorch", "fp16", "gpu"),
    "ort-cuda-fp16": RunnerKind("onnxruntime", "fp16", "gpu", ("cuda",)),
    # TensorRT builds its own fp16 engine from the plain fp32 graph (it does not know ORT's fused operators);
    # CUDA runs what TensorRT does not take.
    "ort-tensorrt-fp16": RunnerKind("onnxruntime", "fp16", "gpu", ("tensorrt", "cuda"), file_precision="fp32"),
}
REFERENCE = "pytorch-fp32"


@dataclasses.dataclass(frozen=True)
class RunnerSpec:
    """One runner of this run: where its model is, or why it is skipped."""

    name: str
    kind: RunnerKind
    path: Path | None
    skip_reason: str = ""

    @property
    def runnable(self) -> bool:
        return not self.skip_reason


class RunnerUnavailable(RuntimeError):
    """A runner that was planned cannot run here (e.g. its GPU provider fell back to the CPU)."""


Feeds = dict[str, np.ndarray]
Outputs = tuple[np.ndarray, ...]


class Runner:
    """A loaded runner: call it with feeds, read its size and the provider it really runs on."""

    spec: RunnerSpec
    size_bytes: int
    provider: str

    def __call__(self, feeds: Feeds) -> Outputs:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (sessions and tensors go with the object)."""


class OrtRunner(Runner):
    """An ONNX Runtime session from `create_session`, on the runner's providers."""

    def __init__(self, spec: RunnerSpec, config: SessionConfig) -> None:
        assert spec.path is not None
        try:
            opened = create_session(spec.path, config, CROSS_ENCODER)
        except EdgeRecError as exc:
            raise RunnerUnavailable(str(exc)) from exc
        # A GPU provider that cannot load its libraries falls back to the next one without an error.
        wanted = PROVIDER_NAMES[spec.kind.providers[0]]
        if opened.provider != wanted:
            raise RunnerUnavailable(f"{wanted} did not load (session runs on {opened.provider})")
        self.session = opened.session
        self.provider = opened.provider
        self.spec = spec
        self.size_bytes = spec.path.stat().st_size

    def __call__(self, feeds: Feeds) -> Outputs:
        inputs = {name: feeds[name] for name in CROSS_ENCODER.input_names}
        return tuple(self.session.run(list(CROSS_ENCODER.output_names), inputs))

    def close(self) -> None:
        del self.session


class TorchRunner(Runner):
    """The checkpoint's model in PyTorch eager mode: fp32 on the CPU, fp16 on CUDA."""

    def __init__(self, spec: RunnerSpec, threads: int) -> None:
        import torch

        from edgerec.export.model import ScoringModel, load_checkpoint

        assert spec.path is not None
        torch.set_num_threads(threads)
        self._torch = torch
        model = ScoringModel(load_checkpoint(spec.path).model).eval()
        if spec.kind.device == "gpu":
            self.device = torch.device("cuda")
            model = model.to(self.device, dtype=torch.float16)
            self.provider = f"torch {torch.__version__} CUDA ({torch.cuda.get_device_name()})"
        else:
            self.device = torch.device("cpu")
            self.provider = f"torch {torch.__version__} CPU, {threads} threads"
        self.model = model
        self.spec = spec
        self.size_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def __call__(self, feeds: Feeds) -> Outputs:
        torch = self._torch
        with torch.inference_mode():
            inputs = (torch.from_numpy(feeds[name]).to(self.device) for name in CROSS_ENCODER.input_names)
            return tuple(output.float().cpu().numpy() for output in self.model(*inputs))

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _gpu_skip_reason(kind: RunnerKind) -> str:
    """Why a GPU runner cannot run here, or "" if it can be tried."""
    if kind.runtime == "pytorch":
        import torch

        return "" if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"
    available = ort.get_available_providers()
    provider = PROVIDER_NAMES[kind.providers[0]]
    if provider not in available:
        return f"{provider} not in this onnxruntime (onnxruntime-gpu not installed; providers: {', '.join(available)})"
    return ""


def _variant_file(bundle: Bundle, precision: str, export_dir: Path) -> Path | None:
    """The cross-encoder's ONNX file of `precision`: the bundle's variant, else one the export left in `export_dir`."""
    for variant in bundle.model(CROSS_ENCODER.name).variants:
        if variant.precision == precision:
            return bundle.path(variant.file)
    found = sorted(Path(export_dir).rglob(f"model.{precision}.onnx")) if Path(export_dir).is_dir() else []
    return found[0] if found else None


def plan_runners(names: Sequence[str], bundle: Bundle, checkpoint: Path, export_dir: Path) -> list[RunnerSpec]:
    """One spec per requested runner name, each runnable or carrying its skip reason."""
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ValueError(f"unknown runner(s) {unknown}; choose from {', '.join(KINDS)}")
    specs = []
    for name in names:
        kind = KINDS[name]
        reason = _gpu_skip_reason(kind) if kind.device == "gpu" else ""
        if kind.runtime == "pytorch":
            path: Path | None = Path(checkpoint)
            if not (path / "model.safetensors").is_file():
                reason = reason or f"no checkpoint at {checkpoint} (the PyTorch runners load it)"
        else:
            file_precision = kind.file_precision or kind.precision
            path = _variant_file(bundle, file_precision, export_dir)
            if path is None:
                reason = reason or f"neither the bundle nor {export_dir} holds a {file_precision} variant"
        specs.append(RunnerSpec(name, kind, path, reason))
    return specs


def load_runner(
    spec: RunnerSpec,
    threads: int,
    spin_wait: bool = True,
    trt_profile: TensorRTProfile = TensorRTProfile(),
    trt_cache_dir: Path | None = None,
) -> Runner:
    """Load a runnable spec; raises `RunnerUnavailable` if it turns out not to run here.

    ONNX Runtime runners get the server's session settings, with `threads`
    intra-op threads, `spin_wait` and, for TensorRT, `trt_profile` (the
    batch and sequence ranges the engine must accept) and its engine cache
    `trt_cache_dir` (default: beside the model file).
    """
    if not spec.runnable:
        raise RunnerUnavailable(spec.skip_reason)
    if spec.kind.runtime == "pytorch":
        return TorchRunner(spec, threads)
    config = SessionConfig(
        providers=spec.kind.providers,
        intra_op_threads=threads,
        spin_wait=spin_wait,
        trt_profile=trt_profile,
        trt_cache_dir=trt_cache_dir,
    )
    return OrtRunner(spec, config)


def peak_rss_growth(action: Callable[[], Any], interval_s: float = 0.002) -> tuple[Any, int]:
    """Run `action`; return its result and how far this process's RSS rose above its start (bytes, sampled)."""
    start = psutil.Process().memory_info().rss
    watch = MemoryWatch(os.getpid(), interval_s)
    try:
        result = action()
    finally:
        watch.stop()
    return result, max(watch.peak_bytes(), psutil.Process().memory_info().rss) - start
