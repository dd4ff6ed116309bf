"""TensorRT engines through ONNX Runtime's TensorRT execution provider (UNVERIFIED).

Status, honestly: TensorRT cannot be installed on the machines this project
is built and tested on (its PyPI package downloads from NVIDIA's index, and
`onnxruntime-gpu` cannot share a venv with `onnxruntime`), so this code has
never built an engine. It is kept thin on purpose: ONNX Runtime's TensorRT
provider does the building, and this module only passes it the options below.

How it would run on a GPU box (venv with `edgerec[gpu]`):
- fp16: the plain fp32 export (`model.fp32.onnx`: the fused CPU graph's
  contrib operators are not TensorRT layers) with `trt_fp16_enable`.
- int8: the QDQ engine (`model.int8-static.onnx`) with `trt_int8_enable`:
  TensorRT reads the explicit Q/DQ scales, so no calibration table is needed.
  Its fused contrib operators (Attention, SkipLayerNormalization, ...) are not
  TensorRT layers and run on the CUDA provider instead.
- one optimization profile spanning the server's batch and sequence ranges
  (`trt_profile_min/opt/max_shapes`); engines are cached in `cache_dir`
  (`trt_engine_cache_enable`), so a server started with the same options and
  cache path loads them instead of rebuilding.

ONNX Runtime falls back to other providers silently when TensorRT cannot
load, so a build only counts if the session reports TensorRT as its first
provider. Where it is not usable this step logs one line and is skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgerec.export.model import INPUT_NAMES
from edgerec.runtime.config import BatcherConfig
from edgerec.runtime.featurize import FeaturizerConfig
from edgerec.settings import setting

log = logging.getLogger(__name__)

PROVIDER = "TensorrtExecutionProvider"


@dataclasses.dataclass(frozen=True)
class TensorRTConfig:
    """The optimization profile (the server's batch and sequence ranges) of the TensorRT engines."""

    min_batch: int = setting(1, "smallest batch the engine accepts")
    opt_batch: int = setting(16, "batch TensorRT tunes its kernels for")
    max_batch: int = setting(
        BatcherConfig().max_batch_size, "largest batch the engine accepts (the server's default max_batch_size)"
    )
    min_sequence: int = setting(8, "shortest padded pair the engine accepts")
    opt_sequence: int = setting(64, "pair length TensorRT tunes its kernels for")
    max_sequence: int = setting(FeaturizerConfig().max_length, "longest pair the engine accepts (the featurizer's max_length)")
    workspace_mb: int = setting(2048, "TensorRT builder workspace, MB")


@dataclasses.dataclass(frozen=True)
class TensorRTEngine:
    """A TensorRT engine ONNX Runtime built and cached for one source model."""

    precision: str  # "fp16" or "int8"
    source: Path
    cache_dir: Path
    provider_options: dict


def _shapes(batch: int, sequence: int) -> str:
    return ",".join(f"{name}:{batch}x{sequence}" for name in INPUT_NAMES)


def provider_options(precision: str, cache_dir: Path, config: TensorRTConfig) -> dict:
    """ONNX Runtime TensorRT provider options for one engine precision ("fp16" or "int8")."""
    if precision not in ("fp16", "int8"):
        raise ValueError(f"TensorRT engines are fp16 or int8, not {precision!r}")
    return {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache_dir),
        "trt_timing_cache_enable": True,
        "trt_fp16_enable": True,  # int8 engines keep fp16 for the layers that are not quantized
        "trt_int8_enable": precision == "int8",
        "trt_max_workspace_size": config.workspace_mb << 20,
        "trt_profile_min_shapes": _shapes(config.min_batch, config.min_sequence),
        "trt_profile_opt_shapes": _shapes(config.opt_batch, config.opt_sequence),
        "trt_profile_max_shapes": _shapes(config.max_batch, config.max_sequence),
    }


def unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here, or None if ONNX Runtime offers its provider."""
    if PROVIDER not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} here has no {PROVIDER} (CPU build, or no GPU/TensorRT)"
    return None


def build_engines(
    sources: Mapping[str, Path], cache_dir: Path, config: TensorRTConfig = TensorRTConfig()
) -> list[TensorRTEngine]:
    """Build (or load from cache) one engine per {precision: ONNX source}; [] with one log line if unusable."""
    reason = unavailable_reason()
    if reason:
        log.info("TensorRT skipped (unverified path): %s", reason)
        return []
    return [engine for precision, source in sources.items() if (engine := _build(source, precision, Path(cache_dir), config))]


def _build(source: Path, precision: str, cache_dir: Path, config: TensorRTConfig) -> TensorRTEngine | None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    options = provider_options(precision, cache_dir, config)
    session = ort.InferenceSession(
        str(source), providers=[(PROVIDER, options), "CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != PROVIDER:
        log.warning("TensorRT %s engine not built: the session fell back to %s", precision, session.get_providers())
        return None
    # The engine for the profile is built at the first run; run once at the optimal shape.
    shape = (config.opt_batch, config.opt_sequence)
    session.run(None, {name: np.ones(shape, dtype=np.int64) for name in INPUT_NAMES})
    log.info("TensorRT %s engine for %s cached in %s", precision, Path(source).name, cache_dir)
    return TensorRTEngine(precision, Path(source), cache_dir, options)
