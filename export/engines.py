"""Builds every engine file of one model: export, fusion, quantization, fp16.

This is the part of `edgerec export` that turns weights into ONNX files; the
pipeline adds training, validation and bundling around it, and the tests run
it on a tiny random BERT. Every lower precision is derived from the fused
fp32 graph, so all CPU engines share its operator fusions. The calibration
pairs for int8 static are built from baskets exactly as in training.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from edgerec.export.model import CrossEncoderRecommender
from edgerec.export.onnx_export import OPSET, ExportRecord, export_onnx
from edgerec.export.optimize import OptimizeRecord, optimize_onnx
from edgerec.export.quantize import QuantizeConfig, convert_fp16, pad_batch, quantize_int8_dynamic, quantize_int8_static
from edgerec.export.evaluate import basket_pairs
from edgerec.export.samples import Basket
from edgerec.runtime.featurize import EncodedBatch, Featurizer

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp32-optimized", "int8-dynamic", "int8-static", "fp16")


@dataclasses.dataclass(frozen=True)
class EngineSet:
    """The engine files of one model, by precision, and how they were made."""

    paths: dict[str, Path]
    export: ExportRecord
    optimize: OptimizeRecord


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


def build_engines(
    model: CrossEncoderRecommender,
    workdir: Path,
    precisions: Sequence[str] = PRECISIONS,
    calibration: Sequence[EncodedBatch] = (),
    pad_id: int = 0,
    quantize: QuantizeConfig = QuantizeConfig(),
    opset: int = OPSET,
    progress: bool = True,
) -> EngineSet:
    """Write the requested engines into `workdir`; int8 static needs `calibration` batches."""
    unknown = set(precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"unknown precision(s) {sorted(unknown)}; choose from {PRECISIONS}")
    if "int8-static" in precisions and not calibration:
        raise ValueError("int8-static needs calibration batches of training pairs")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    steps = ["export", "optimize", *[p for p in precisions if p not in ("fp32", "fp32-optimized")]]
    bar = tqdm(steps, desc="engines", unit="step", disable=not progress)
    for step in bar:
        bar.set_postfix_str(step)
        if step == "export":
            exported = export_onnx(model, workdir / "model.fp32.onnx", opset)
            paths["fp32"] = exported.path
        elif step == "optimize":
            optimized = optimize_onnx(exported.path, workdir / "model.fp32-optimized.onnx", model.config)
            paths["fp32-optimized"] = optimized.path
        elif step == "int8-dynamic":
            paths[step] = quantize_int8_dynamic(optimized.path, workdir / "model.int8-dynamic.onnx", quantize)
        elif step == "int8-static":
            feeds = calibration_feeds(calibration, pad_id)
            paths[step] = quantize_int8_static(optimized.path, workdir / "model.int8-static.onnx", feeds, quantize)
        elif step == "fp16":
            paths[step] = convert_fp16(optimized.path, workdir / "model.fp16.onnx")
    wanted = {p: paths[p] for p in PRECISIONS if p in precisions}
    return EngineSet(paths=wanted, export=exported, optimize=optimized)
