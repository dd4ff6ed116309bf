"""The accuracy cost of each runner, so no speed is shown without it.

Each runner's AUC and NDCG@10 on validation baskets, always next to the
PyTorch reference's on the same baskets:
- where the export's validation gate recorded both (the bundle manifest:
  each cross-encoder variant's `gate`, the reference under
  `metrics.validation.pytorch`), those figures are used: they cover the most
  baskets;
- every other runner (a GPU runner, a variant found outside the bundle, a
  bundle without gate figures) is scored here, with the reference, on a
  seeded sample of the validation baskets, through the export's own
  `score_baskets` / `ranking_report`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

from tqdm import tqdm

from edgerec.benchmarks.runners import REFERENCE, Runner
from edgerec.benchmarks.workload import validation_metrics
from edgerec.export.evaluate import ranking_report, score_baskets
from edgerec.export.samples import Basket
from edgerec.core.bundle import Bundle
from edgerec.core.featurize import Featurizer
from edgerec.core.signatures import CROSS_ENCODER


METRICS = ("auc", "ndcg@10")


def _figures(report: Mapping[str, Any] | None) -> dict[str, float] | None:
    """AUC and NDCG@10 from a gate entry or report (flat, or per slice with "all"), if both are numbers."""
    if not report:
        return None
    flat = report.get("all", report)
    values = {metric: flat.get(metric) for metric in METRICS}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values.values()):
        return {metric: float(v) for metric, v in values.items()}
    return None


def _relative(value: float, reference: float) -> float:
    return (value - reference) / abs(reference) if reference else float("nan")


def _entry(figures: dict[str, float], reference: dict[str, float], source: str, baskets: int) -> dict[str, Any]:
    return {
        **figures,
        "reference_auc": reference["auc"],
        "reference_ndcg@10": reference["ndcg@10"],
        "auc_relative_change": _relative(figures["auc"], reference["auc"]),
        "ndcg@10_relative_change": _relative(figures["ndcg@10"], reference["ndcg@10"]),
        "source": source,
        "baskets": baskets,
    }


def measure_quality(
    runners: Sequence[Runner],
    bundle: Bundle,
    validation: Sequence[Basket],
    featurizer: Featurizer,
    sample_size: int,
    batch_size: int,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Quality per runner name: AUC, NDCG@10, the reference's on the same baskets, and their source."""
    validation_figures = validation_metrics(bundle)
    gate_reference = _figures(validation_figures.get("pytorch"))
    gate_baskets = int(validation_figures.get("baskets") or 0)
    variant_gates = {bundle.path(v.file).resolve(): v.gate for v in bundle.model(CROSS_ENCODER.name).variants}
    results: dict[str, dict[str, Any]] = {}
    to_score: list[Runner] = []
    for runner in runners:
        gate = variant_gates.get(runner.spec.path.resolve()) if runner.spec.kind.runtime == "onnxruntime" else None
        figures = gate_reference if runner.spec.name == REFERENCE else _figures(gate)
        if gate_reference and figures and runner.spec.kind.device == "cpu":
            results[runner.spec.name] = _entry(figures, gate_reference, "export validation gate", gate_baskets)
        else:
            to_score.append(runner)
    if not to_score:
        return results
    if not validation:
        for runner in to_score:
            results[runner.spec.name] = {"status": "not measured", "reason": "no validation baskets found"}
        return results
    reference = next((r for r in runners if r.spec.name == REFERENCE), None)
    if reference is None:
        for runner in to_score:
            results[runner.spec.name] = {"status": "not measured", "reason": f"no {REFERENCE} runner to compare with"}
        return results
    chosen = list(validation)
    if sample_size < len(chosen):
        chosen = [chosen[i] for i in sorted(random.Random(seed).sample(range(len(chosen)), sample_size))]
    scored: dict[str, dict[str, float]] = {}
    for runner in tqdm([reference, *[r for r in to_score if r is not reference]], desc="quality", unit="runner"):
        outputs = score_baskets(chosen, featurizer, lambda batch, r=runner: r(batch.as_feeds()), batch_size, progress=False)
        figures = _figures(ranking_report(chosen, *outputs))
        scored[runner.spec.name] = figures or {metric: float("nan") for metric in METRICS}
    source = "scored here (seeded sample of validation baskets)"
    for runner in to_score:
        results[runner.spec.name] = _entry(scored[runner.spec.name], scored[REFERENCE], source, len(chosen))
    return results
