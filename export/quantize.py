"""Writes the lower-precision variants: int8 dynamic, int8 static (QDQ) and fp16.

- int8 dynamic (`quantize_dynamic`): weights int8 per output channel,
  activations quantized on the fly. From the fused graph it also quantizes
  the fused Attention and EmbedLayerNormalization operators (the 30522 x
  hidden word embeddings are most of the file), which is what makes the file
  about a quarter of fp32. On the fused graph ONNX's shape inference cannot
  type the contrib operators, hence `DefaultTensorType=FLOAT`. Which graph it
  is quantized from is `QuantizeConfig.dynamic_source` (`dynamic_source_of`):
  on a CPU with VNNI the plain graph, whose attention products become int8
  too, ran 11-15% faster per pair in three runs (e.g. 2.02 vs 2.34 ms, one
  row of ~118 tokens, one thread, rows alone as served; logits within 0.009
  of fp32 against 0.006-0.011 for the fused source; 2 AVX-512 VNNI cores,
  2026-12-01); elsewhere the fused graph, as measured on AVX2 (FACTS.md).
- int8 static (`quantize_static`, QDQ): activation ranges calibrated on
  training pairs padded to one length (the calibrator stacks batches). The
  static quantizer skips every tensor whose type it does not know, so ONNX
  Runtime's symbolic shape inference (which knows the contrib operators)
  types the fused graph first. Only
  the operator types in `static_op_types` are quantized: quantizing every op
  (the default) broke predictions on this model (FACTS.md).
- fp16 (`onnxruntime.transformers.float16`): float weights and compute in
  half precision with float32 inputs/outputs kept, for GPUs. It is converted
  from the plain (unfused) export, a graph of standard ONNX operators that
  TensorRT can run.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
from onnxruntime.transformers.float16 import convert_float_to_float16

from edgerec.core.featurize import EncodedBatch
from edgerec.core.sessions import has_vnni
from edgerec.core.settings import setting

log = logging.getLogger(__name__)

# On the fused graph ONNX shape inference leaves contrib-op outputs untyped; this types them float.
_FUSED_GRAPH_OPTIONS = {"DefaultTensorType": onnx.TensorProto.FLOAT}


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """How the int8 variants are quantized."""

    per_channel: bool = setting(True, "int8 weights get one scale per output channel (more accurate than per tensor)")
    reduce_range: bool = setting(False, "quantize weights to 7 bits (helps CPUs without VNNI, costs accuracy)")
    dynamic_op_types: tuple[str, ...] = setting(
        ("MatMul", "Attention", "EmbedLayerNormalization", "Gather"),
        "operator types int8 dynamic quantizes (the output heads are Gemm and stay float32; Gather: the plain "
        "graph's embedding tables, which the fused graph holds in EmbedLayerNormalization)",
    )
    static_op_types: tuple[str, ...] = setting(
        ("MatMul",), "operator types int8 static (QDQ) quantizes; quantizing all ops broke predictions"
    )
    static_unsigned_activations: bool = setting(
        False,
        "int8 static activations as uint8 (U8S8): faster on AVX-512 VNNI CPUs, but on AVX2-only CPUs the "
        "U8S8 kernels can saturate; signed (S8S8) is the safe default",
    )
    exclude_nodes: tuple[str, ...] = setting((), "graph node names never quantized (either int8 variant)")
    dynamic_source: str = setting(
        "auto",
        "graph int8 dynamic is quantized from: fp32 (plain), fp32-optimized (fused) or auto (plain on a CPU "
        "with VNNI, where it measured 11-15% faster per pair; fused elsewhere)",
    )
    calibration_pairs: int = setting(512, "training pairs used to calibrate int8 static activation ranges")
    calibration_batch_size: int = setting(32, "pairs per calibration batch")


DYNAMIC_SOURCES = ("fp32", "fp32-optimized")


def dynamic_source_of(config: QuantizeConfig, flags: set[str] | None = None) -> str:
    """The variant int8 dynamic is quantized from: `config.dynamic_source`, with "auto" read on this CPU
    ("fp32" where `has_vnni(flags)`, else "fp32-optimized"). Raises ValueError for another value."""
    if config.dynamic_source == "auto":
        return "fp32" if has_vnni(flags) else "fp32-optimized"
    if config.dynamic_source not in DYNAMIC_SOURCES:
        raise ValueError(f"dynamic_source must be auto or one of {DYNAMIC_SOURCES}, got {config.dynamic_source!r}")
    return config.dynamic_source


def quantize_int8_dynamic(source: Path, target: Path, config: QuantizeConfig = QuantizeConfig()) -> Path:
    """Write the int8 dynamic variant of `source` (an fp32 graph, plain or fused) to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=list(config.dynamic_op_types),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude_nodes),
        extra_options=dict(_FUSED_GRAPH_OPTIONS),
    )
    log.info("int8 dynamic: %s (%.1f MB)", target.name, target.stat().st_size / 1e6)
    return target


def pad_batch(batch: EncodedBatch, length: int, pad_id: int) -> dict[str, np.ndarray]:
    """Feeds for `batch` padded on the right to exactly `length` tokens (ValueError if it is wider)."""
    width = batch.input_ids.shape[1]
    if width > length:
        raise ValueError(f"batch is {width} tokens wide, longer than the calibration length {length}")
    extra = ((0, 0), (0, length - width))
    padded = EncodedBatch(
        np.pad(batch.input_ids, extra, constant_values=pad_id),
        np.pad(batch.attention_mask, extra, constant_values=0),
        np.pad(batch.token_type_ids, extra, constant_values=0),
    )
    return padded.as_feeds()


class FeedsReader(CalibrationDataReader):
    """Hands ONNX Runtime's calibrator a finite sequence of feed dicts."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        if not self._feeds:
            raise ValueError("calibration needs at least one batch of training pairs")
        self._iterator: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iterator, None)

    def rewind(self) -> None:
        self._iterator = iter(self._feeds)


def quantize_int8_static(
    source: Path,
    target: Path,
    calibration: Iterable[dict[str, np.ndarray]],
    config: QuantizeConfig = QuantizeConfig(),
) -> Path:
    """Write the int8 static QDQ variant of `source`, calibrated on `calibration` feeds of one shape."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    typed = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
    quantize_static(
        typed,
        str(target),
        FeedsReader(calibration),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(config.static_op_types),
        per_channel=config.per_channel,
        reduce_range=config.reduce_range,
        activation_type=QuantType.QUInt8 if config.static_unsigned_activations else QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(config.exclude_nodes),
        extra_options=dict(_FUSED_GRAPH_OPTIONS),
    )
    log.info("int8 static: %s (%.1f MB)", target.name, target.stat().st_size / 1e6)
    return target


def convert_fp16(source: Path, target: Path) -> Path:
    """Write the fp16 variant of `source` (the plain fp32 export); inputs and outputs keep their int64/float32 types."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    log.info("fp16: %s (%.1f MB)", target.name, target.stat().st_size / 1e6)
    return target
