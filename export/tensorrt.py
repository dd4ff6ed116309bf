"""The TensorRT engine cache of a bundle, built the way the server will load it.

The server runs a bundle's GPU default variant (fp16) on ONNX Runtime's
TensorRT provider with the provider options of `edgerec.core.sessions`
(`tensorrt_options`: one optimization profile, `TensorRTProfile`, from the
model's signature, the server's largest batch and the featurizer's longest
pair) and its engine cache in `<bundle>/.trt-cache`. This step opens that
same file, through the same `create_session`, with the same profile and
cache folder, and runs one batch at the profile's optimal shape: TensorRT
builds its engine then, and a server started on this bundle loads it from
the cache instead of spending minutes building it. The cache is a
dot-folder, so it is neither checksummed nor packed into the archive
(engines are specific to a GPU and TensorRT version).

Status, honestly: TensorRT cannot be installed on the machines this project
is built and tested on (its PyPI package downloads from NVIDIA's index, and
`onnxruntime-gpu` cannot share a venv with `onnxruntime`), so this path has
never built an engine. Where ONNX Runtime offers no TensorRT provider it logs
one line, "TensorRT skipped (unverified path): ...", and the manifest's
`tensorrt` entry says `verified: false` with the reason. ONNX Runtime falls
back to other providers silently when TensorRT cannot load, so a build only
counts if the session reports TensorRT as the provider it runs on.

There is no TensorRT int8 engine: the int8 static (QDQ) variant is a fused
CPU graph whose contrib operators TensorRT cannot run, and the one set of
TensorRT options has no int8 mode, so a cache built from it would not be the
one the server uses.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort

from edgerec.core.bundle import TRT_CACHE, open_bundle
from edgerec.core.sessions import TENSORRT, SessionConfig, TensorRTProfile, create_session, dummy_feeds, tensorrt_options
from edgerec.core.settings import to_jsonable
from edgerec.core.signatures import CROSS_ENCODER, ModelSignature
from edgerec.export.bundle import record_model_info
from edgerec.runtime.config import BatcherConfig

log = logging.getLogger(__name__)

PROVIDERS = ("tensorrt", "cuda", "cpu")  # the server's default providers


def unavailable_reason() -> str | None:
    """Why TensorRT cannot be used here, or None if ONNX Runtime offers its provider."""
    if TENSORRT not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} here has no {TENSORRT} (CPU build, or no GPU/TensorRT)"
    return None


@dataclasses.dataclass(frozen=True)
class EngineCache:
    """What the TensorRT step did for one model of a bundle (the manifest's `tensorrt` entry)."""

    verified: bool
    variant: str  # the precision whose file TensorRT built from (the GPU default)
    file: str
    cache_dir: str  # relative to the bundle folder
    provider: str  # the provider the session ran on; "" when none was opened
    note: str
    provider_options: dict[str, Any]
    build_seconds: float = 0.0

    def as_manifest(self) -> dict[str, Any]:
        return to_jsonable(dataclasses.asdict(self))


def build_engine_cache(
    root: Path, model: str = CROSS_ENCODER.name, max_batch: int = BatcherConfig().max_batch_size
) -> EngineCache:
    """Build the TensorRT engine cache for `model`'s GPU default variant in `<root>/.trt-cache`; record it.

    Opens the variant as the server does (providers tensorrt, cuda, cpu; the
    profile of `TensorRTProfile.for_serving`) and runs one batch at the profile's optimal
    shape. Writes the result into the model's manifest entry (`tensorrt`).
    Never raises for a missing or failing TensorRT: the result says why it is
    unverified (one log line). Raises EdgeRecError if the bundle does not verify.
    """
    root = Path(root)
    bundle = open_bundle(root)
    entry = bundle.model(model)
    variant = entry.variant(device="gpu")
    featurizer = bundle.featurizer_config
    config = SessionConfig(
        providers=PROVIDERS,
        trt_cache_dir=bundle.trt_cache_path,
        trt_profile=TensorRTProfile.for_serving(max_batch, featurizer.max_length),
    )
    options = tensorrt_options(entry.signature, config, Path(TRT_CACHE))
    result = dict(variant=variant.precision, file=variant.file, cache_dir=TRT_CACHE, provider_options=options)
    reason = unavailable_reason()
    if reason:
        log.info("TensorRT skipped (unverified path): %s", reason)
        cache = EngineCache(verified=False, provider="", note=f"skipped: {reason}", **result)
    else:
        cache = _build(bundle.path(variant.file), config, entry.signature, result)
    record_model_info(root, model, {"tensorrt": cache.as_manifest()})
    return cache


def _build(path: Path, config: SessionConfig, signature: ModelSignature, result: dict[str, Any]) -> EngineCache:
    started = time.perf_counter()
    profile = config.trt_profile
    try:
        opened = create_session(path, config, signature)
        if opened.provider == TENSORRT:
            # TensorRT builds the profile's engine at the first run; run once at the optimal shape.
            opened.session.run(None, dummy_feeds(signature, profile.opt_batch, profile.opt_sequence, fill=1))
    except Exception as exc:  # EdgeRecError, or onnxruntime's own errors from a TensorRT build that fails
        log.warning("TensorRT engine not built: %s", exc)
        return EngineCache(verified=False, provider="", note=f"failed: {exc}", **result)
    if opened.provider != TENSORRT:
        log.warning("TensorRT engine not built: the session fell back to %s", opened.provider)
        return EngineCache(verified=False, provider=opened.provider, note=f"fell back to {opened.provider}", **result)
    seconds = time.perf_counter() - started
    log.info("TensorRT engine for %s cached in %s (%.1f s)", path.name, config.trt_cache_dir, seconds)
    return EngineCache(
        verified=True, provider=opened.provider, note="engine built and run once at the optimal shape",
        build_seconds=round(seconds, 2), **result,
    )
