"""Fuses the exported BERT graph with ONNX Runtime's transformer optimizer.

The optimizer rewrites attention, LayerNorm + residual and GELU subgraphs into
single fused operators. It does so silently when a pattern is not recognised,
so this module counts every fused operator kind and compares the counts with
what a BERT of this depth should give; a missing fusion is logged as a warning
and recorded as a finding in the bundle manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import onnx
from onnxruntime.transformers import optimizer
from transformers import BertConfig

log = logging.getLogger(__name__)

# Fused operators that count as "the GELU" and "the attention" of one layer.
GELU_KINDS = ("Gelu", "FastGelu", "BiasGelu", "GemmFastGelu")
ATTENTION_KINDS = ("Attention", "MultiHeadAttention")


@dataclasses.dataclass(frozen=True)
class OptimizeRecord:
    """The optimized graph, its fused operator counts and any fusion that did not happen."""

    path: Path
    fused: dict[str, int]
    nodes_before: int
    nodes_after: int
    findings: tuple[str, ...]


def expected_fusions(layers: int) -> dict[str, int]:
    """Fused-operator counts of a fully fused `layers`-deep BERT encoder."""
    return {
        "EmbedLayerNormalization": 1,
        "Attention": layers,
        "SkipLayerNormalization": 2 * layers,
        "Gelu (any kind)": layers,
    }


def fusion_findings(fused: dict[str, int], layers: int) -> list[str]:
    """One sentence per fusion that is missing or short of what `layers` layers should give."""
    observed = {
        "EmbedLayerNormalization": fused.get("EmbedLayerNormalization", 0),
        "Attention": sum(fused.get(kind, 0) for kind in ATTENTION_KINDS),
        "SkipLayerNormalization": fused.get("SkipLayerNormalization", 0),
        "Gelu (any kind)": sum(fused.get(kind, 0) for kind in GELU_KINDS),
    }
    return [
        f"{kind}: fused {observed[kind]} of the {want} expected for {layers} layer(s)"
        for kind, want in expected_fusions(layers).items()
        if observed[kind] < want
    ]


def optimize_onnx(source: Path, target: Path, config: BertConfig) -> OptimizeRecord:
    """Fuse `source` for CPU and write it to `target`; warn about every fusion that did not happen."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # opt_level=0: only the optimizer's own pattern fusions, so the graph stays portable across
    # execution providers (ONNX Runtime applies its provider-specific rewrites at load time).
    model = optimizer.optimize_model(
        str(source),
        model_type="bert",
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=0,
    )
    nodes_before = len(onnx.load(str(source), load_external_data=False).graph.node)
    fused = {kind: count for kind, count in model.get_fused_operator_statistics().items() if count}
    findings = fusion_findings(fused, config.num_hidden_layers)
    for finding in findings:
        log.warning("fusion did not happen: %s", finding)
    model.save_model_to_file(str(target))
    nodes_after = len(model.model.graph.node)
    log.info("optimized %s: %d -> %d nodes, fused %s", target.name, nodes_before, nodes_after, fused)
    return OptimizeRecord(target, fused, nodes_before, nodes_after, tuple(findings))
