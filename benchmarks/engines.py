"""Engine adapters: one call signature for PyTorch and every ONNX Runtime session.

Each engine takes the model's feeds (`input_ids`, `attention_mask`,
`token_type_ids`, int64 [batch, sequence]) and returns
(`purchase_probability`, `expected_quantity`) as numpy arrays, so the timing
loop and the quality scoring treat them all alike. The PyTorch eager model
from the checkpoint is the reference; torch is imported here only, and only
when a PyTorch engine is planned or loaded.

Every engine gets the same number of intra-op threads, so a speed-up is the
engine's and not a thread count's. GPU engines are planned like the others
but skipped, with the reason recorded, where there is no GPU, no
onnxruntime-gpu, or a provider that silently falls back to the CPU.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from edgerec.runtime.bundle import Bundle

# The bundle's output contract (edgerec.export.model.OUTPUT_NAMES), repeated so
# that timing ONNX engines never imports torch.
OUTPUTS = ("purchase_probability", "expected_quantity")


@dataclasses.dataclass(frozen=True)
class EngineKind:
    """What an engine name means: runtime, the precision it computes in, device, provider, file."""

    runtime: str  # "pytorch" or "onnxruntime"
    precision: str
    device: str  # "cpu" or "gpu"
    provider: str = ""  # ONNX Runtime execution provider
    file_precision: str = ""  # which bundle engine file it loads (default: `precision`)


KINDS: dict[str, EngineKind] = {
    "pytorch-fp32": EngineKind("pytorch", "fp32", "cpu"),
    "ort-fp32": EngineKind("onnxruntime", "fp32", "cpu", "CPUExecutionProvider"),
    "ort-fp32-optimized": EngineKind("onnxruntime", "fp32-optimized", "cpu", "CPUExecutionProvider"),
    "ort-int8-dynamic": EngineKind("onnxruntime", "int8-dynamic", "cpu", "CPUExecutionProvider"),
    "ort-int8-static": EngineKind("onnxruntime", "int8-static", "cpu", "CPUExecutionProvider"),
    "pytorch-cuda-fp16": EngineKind("pytorch", "fp16", "gpu"),
    "ort-cuda-fp16": EngineKind("onnxruntime", "fp16", "gpu", "CUDAExecutionProvider"),
    # TensorRT builds its own fp16 engine from the plain fp32 graph (it does not know ORT's fused operators).
    "ort-tensorrt-fp16": EngineKind("onnxruntime", "fp16", "gpu", "TensorrtExecutionProvider", file_precision="fp32"),
}
REFERENCE = "pytorch-fp32"


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine of this run: where its model is, or why it is skipped."""

    name: str
    kind: EngineKind
    path: Path | None
    skip_reason: str = ""

    @property
    def runnable(self) -> bool:
        return not self.skip_reason


class EngineUnavailable(RuntimeError):
    """An engine that was planned cannot run here (e.g. its GPU provider fell back to the CPU)."""


Feeds = dict[str, np.ndarray]
Outputs = tuple[np.ndarray, np.ndarray]


class Engine:
    """A loaded engine: call it with feeds, read its size and the provider it really runs on."""

    spec: EngineSpec
    size_bytes: int
    provider: str

    def __call__(self, feeds: Feeds) -> Outputs:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (sessions and tensors go with the object)."""


class OrtEngine(Engine):
    """An ONNX Runtime inference session on one execution provider."""

    def __init__(self, spec: EngineSpec, threads: int, spin_wait: bool = True) -> None:
        assert spec.path is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
        options.log_severity_level = 3
        providers: list[Any] = [spec.kind.provider]
        if spec.kind.provider == "TensorrtExecutionProvider":
            providers = [(spec.kind.provider, {"trt_fp16_enable": True}), "CUDAExecutionProvider"]
        self.session = ort.InferenceSession(str(spec.path), options, providers=providers)
        # A GPU provider that cannot load its libraries falls back to the CPU without an error.
        self.provider = self.session.get_providers()[0]
        if self.provider != spec.kind.provider:
            raise EngineUnavailable(f"{spec.kind.provider} did not load (session runs on {self.provider})")
        self.spec = spec
        self.size_bytes = spec.path.stat().st_size
        self._inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, feeds: Feeds) -> Outputs:
        probabilities, quantities = self.session.run(list(OUTPUTS), {name: feeds[name] for name in self._inputs})
        return probabilities, quantities

    def close(self) -> None:
        del self.session


class TorchEngine(Engine):
    """The checkpoint's model in PyTorch eager mode: fp32 on the CPU, fp16 on CUDA."""

    def __init__(self, spec: EngineSpec, threads: int) -> None:
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
            inputs = (feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"])
            probabilities, quantities = self.model(*(torch.from_numpy(array).to(self.device) for array in inputs))
            return probabilities.float().cpu().numpy(), quantities.float().cpu().numpy()

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()


def physical_cores() -> int:
    return psutil.cpu_count(logical=False) or psutil.cpu_count() or 1


def _gpu_skip_reason(kind: EngineKind) -> str:
    """Why a GPU engine cannot run here, or "" if it can be tried."""
    if kind.runtime == "pytorch":
        import torch

        return "" if torch.cuda.is_available() else "no CUDA GPU (torch.cuda.is_available() is False)"
    available = ort.get_available_providers()
    if kind.provider not in available:
        return f"{kind.provider} not in this onnxruntime (onnxruntime-gpu not installed; providers: {', '.join(available)})"
    return ""


def _engine_file(bundle: Bundle, precision: str, export_dir: Path) -> Path | None:
    """The ONNX file of `precision`: the bundle's, else one the export left in `export_dir`."""
    for entry in bundle.engines:
        if entry.precision == precision:
            return bundle.path(entry.file)
    found = sorted(Path(export_dir).rglob(f"model.{precision}.onnx")) if Path(export_dir).is_dir() else []
    return found[0] if found else None


def plan_engines(names: Sequence[str], bundle: Bundle, checkpoint: Path, export_dir: Path) -> list[EngineSpec]:
    """One spec per requested engine name, each runnable or carrying its skip reason."""
    unknown = [name for name in names if name not in KINDS]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; choose from {', '.join(KINDS)}")
    specs = []
    for name in names:
        kind = KINDS[name]
        reason = _gpu_skip_reason(kind) if kind.device == "gpu" else ""
        if kind.runtime == "pytorch":
            path: Path | None = Path(checkpoint)
            if not (path / "model.safetensors").is_file():
                reason = reason or f"no checkpoint at {checkpoint} (the PyTorch engines load it)"
        else:
            file_precision = kind.file_precision or kind.precision
            path = _engine_file(bundle, file_precision, export_dir)
            if path is None:
                reason = reason or f"neither the bundle nor {export_dir} holds a {file_precision} engine"
        specs.append(EngineSpec(name, kind, path, reason))
    return specs


def load_engine(spec: EngineSpec, threads: int, spin_wait: bool = True) -> Engine:
    """Load a runnable spec; raises `EngineUnavailable` if it turns out not to run here."""
    if not spec.runnable:
        raise EngineUnavailable(spec.skip_reason)
    return TorchEngine(spec, threads) if spec.kind.runtime == "pytorch" else OrtEngine(spec, threads, spin_wait)


def peak_rss_growth(action: Callable[[], Any], interval_s: float = 0.002) -> tuple[Any, int]:
    """Run `action`; return its result and how far this process's RSS rose above its start (sampled)."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = start
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(interval_s)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = action()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, process.memory_info().rss)
    return result, peak - start
