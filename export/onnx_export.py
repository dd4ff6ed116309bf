"""Exports the scoring model (sigmoid and exp inside) to one ONNX file, the plain fp32 variant.

It uses torch's legacy TorchScript exporter (`dynamo=False`) at opset 17: in
torch 2.13 the default dynamo exporter writes a graph in which ONNX Runtime's
transformer optimizer finds no attention to fuse, while the legacy graph fuses
fully (see /work/shared/FACTS.md). Input and output names and dynamic axes
come from the model's signature (`edgerec.core.signatures.CROSS_ENCODER`):
batch and sequence are dynamic, so one file serves every batch size and every
padded pair length. `export_graph` is the one `torch.onnx.export` call: the
two-tower ranker's graphs (`ranker_onnx.py`) are exported through it too.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import torch

from edgerec.core.signatures import CROSS_ENCODER, ModelSignature
from edgerec.export.model import CrossEncoderRecommender, ScoringModel

log = logging.getLogger(__name__)

OPSET = 17
EXPORTER = f"torch.onnx.export (TorchScript, dynamo=False) torch {torch.__version__}"


@dataclasses.dataclass(frozen=True)
class ExportRecord:
    """What was exported, and how."""

    path: Path
    opset: int
    exporter: str


def _example_inputs(vocab_size: int, batch: int = 2, sequence: int = 16) -> tuple[torch.Tensor, ...]:
    """A small batch whose two rows have different lengths, so padding and masking are traced."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, min(vocab_size, 2000), (batch, sequence), generator=generator)
    attention_mask = torch.ones(batch, sequence, dtype=torch.int64)
    attention_mask[1, sequence // 2 :] = 0
    token_type_ids = torch.zeros(batch, sequence, dtype=torch.int64)
    token_type_ids[:, sequence // 2 :] = 1
    return input_ids, attention_mask, token_type_ids


def dynamic_axes(signature: ModelSignature, fixed: tuple[str, ...] = ()) -> dict[str, dict[int, str]]:
    """torch.onnx's `dynamic_axes` for a signature: every named axis of every input and output, except
    those named in `fixed` (fixed per model, such as an embedding width: the graph keeps the traced size)."""
    return {
        spec.name: {axis: dim for axis, dim in enumerate(spec.shape) if isinstance(dim, str) and dim not in fixed}
        for spec in (*signature.inputs, *signature.outputs)
    }


def export_graph(
    module: torch.nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    signature: ModelSignature,
    opset: int = OPSET,
    fixed_axes: tuple[str, ...] = (),
) -> ExportRecord:
    """Write `module` (in eval mode), traced on `inputs`, to `path` with `signature`'s names and dynamic
    axes (but `fixed_axes`, see `dynamic_axes`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module.eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns about Python-side shape checks inside transformers (constant for BERT),
        # and torch warns that this exporter is the legacy one (chosen on purpose, see above).
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=list(signature.input_names),
            output_names=list(signature.output_names),
            dynamic_axes=dynamic_axes(signature, fixed_axes),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    log.info("exported %s (opset %d, %.1f MB)", path, opset, path.stat().st_size / 1e6)
    return ExportRecord(path=path, opset=opset, exporter=EXPORTER)


def export_onnx(model: CrossEncoderRecommender, path: Path, opset: int = OPSET) -> ExportRecord:
    """Write `ScoringModel(model)` to `path` with the `CROSS_ENCODER` signature (dynamic batch and sequence)."""
    return export_graph(ScoringModel(model), _example_inputs(model.config.vocab_size), path, CROSS_ENCODER, opset)
