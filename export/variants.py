"""Builds every variant (precision file) of the cross-encoder: export, fusion, quantization, fp16.

This is the part of `edgerec export` that turns weights into ONNX files; the
pipeline adds training, validation and bundling around it, and the tests run
it on a tiny random BERT.
- fp32: the plain export; fp32-optimized: it fused by ONNX Runtime's
  transformer optimizer (`optimize.py`);
- int8 static: derived from the fused fp32 graph, so it shares its operator
  fusions; its calibration pairs are built from baskets exactly as in
  training (`Featurizer.catalog_pairs`); int8 dynamic: from the fused or the
  plain graph, by CPU (`quantize.dynamic_source_of`);
- fp16, the GPU variant: converted from the plain fp32 export, because the
  fused graph's ONNX Runtime contrib operators (Attention,
  SkipLayerNormalization, ...) are not layers TensorRT can run.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from edgerec.core.featurize import EncodedBatch, Featurizer
from edgerec.export.evaluate import basket_pairs
from edgerec.export.model import CrossEncoderRecommender
from edgerec.export.onnx_export import OPSET, ExportRecord, export_onnx
from edgerec.export.optimize import OptimizeRecord, optimize_onnx
from edgerec.export.quantize import (
    QuantizeConfig,
    convert_fp16,
    dynamic_source_of,
    pad_batch,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from edgerec.export.samples import Basket

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp32-optimized", "int8-dynamic", "int8-static", "fp16")
# The variant each derived variant is made from (see the module docstring); int8-dynamic's depends on the
# CPU and the settings, so `source_of` adds it.
SOURCE_OF = {"fp32-optimized": "fp32", "int8-static": "fp32-optimized", "fp16": "fp32"}


def source_of(quantize: QuantizeConfig = QuantizeConfig()) -> dict[str, str]:
    """`SOURCE_OF` with int8-dynamic's source (`quantize.dynamic_source_of` on this CPU)."""
    return {**SOURCE_OF, "int8-dynamic": dynamic_source_of(quantize)}


@dataclasses.dataclass(frozen=True)
class VariantSet:
    """The variant files of one model, by precision, how they were made, and what each derives from."""

    paths: dict[str, Path]
    export: ExportRecord
    optimize: OptimizeRecord
    sources: dict[str, str]  # derived precision -> the precision it was made from (`source_of`)


def sample(baskets: Sequence[Basket], count: int, seed: int) -> list[Basket]:
    """A seeded sample of `count` baskets (all of them if there are fewer), in their original order."""
    if count >= len(baskets):
        return list(baskets)
    chosen = sorted(random.Random(seed).sample(range(len(baskets)), count))
    return [baskets[i] for i in chosen]


def encode_batches(baskets: Sequence[Basket], featurizer: Featurizer, batch_size: int) -> list[EncodedBatch]:
    """The baskets' pairs, packed `batch_size` at a time."""
    pairs = basket_pairs(baskets, featurizer)
    return [featurizer.pack(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]


def calibration_feeds(batches: Sequence[EncodedBatch], pad_id: int) -> list[dict]:
    """Calibration batches padded to their common longest length (the calibrator needs one shape)."""
    length = max(batch.input_ids.shape[1] for batch in batches)
    return [pad_batch(batch, length, pad_id) for batch in batches]


def build_variants(
    model: CrossEncoderRecommender,
    workdir: Path,
    precisions: Sequence[str] = PRECISIONS,
    calibration: Sequence[EncodedBatch] = (),
    pad_id: int = 0,
    quantize: QuantizeConfig = QuantizeConfig(),
    opset: int = OPSET,
    progress: bool = True,
) -> VariantSet:
    """Write `model.<precision>.onnx` into `workdir` for each requested precision.

    fp32 and fp32-optimized are always written (every other variant derives
    from one of them) but returned only if requested. Raises ValueError for an unknown precision, or for
    int8-static without `calibration` batches.
    """
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision(s) {sorted(unknown)}; choose from {PRECISIONS}")
    if "int8-static" in precisions and not calibration:
        raise ValueError("int8-static needs calibration batches of training pairs")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    sources = source_of(quantize)
    steps = ["export", "optimize", *[p for p in precisions if p not in ("fp32", "fp32-optimized")]]
    bar = tqdm(steps, desc="variants", unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "export":
            exported = export_onnx(model, workdir / "model.fp32.onnx", opset)
            paths["fp32"] = exported.path
        elif step == "optimize":
            optimized = optimize_onnx(paths[sources["fp32-optimized"]], workdir / "model.fp32-optimized.onnx", model.config)
            paths["fp32-optimized"] = optimized.path
        elif step == "int8-dynamic":
            paths[step] = quantize_int8_dynamic(paths[sources[step]], workdir / "model.int8-dynamic.onnx", quantize)
        elif step == "int8-static":
            feeds = calibration_feeds(calibration, pad_id)
            paths[step] = quantize_int8_static(paths[sources[step]], workdir / "model.int8-static.onnx", feeds, quantize)
        elif step == "fp16":
            paths[step] = convert_fp16(paths[sources[step]], workdir / "model.fp16.onnx")
    wanted = {p: paths[p] for p in PRECISIONS if p in precisions}
    return VariantSet(paths=wanted, export=exported, optimize=optimized, sources={p: sources[p] for p in wanted if p in sources})
