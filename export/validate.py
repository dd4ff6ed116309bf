"""The validation gate: every variant is checked against the PyTorch model before it is bundled.

Each variant scores the same held-out validation baskets as the PyTorch model
(`edgerec.export.evaluate.score_baskets`, so pairs are built exactly as in
training and serving), in an ONNX Runtime session made by
`edgerec.core.sessions.create_session` with the server's settings (threads
that do not spin, the memory arena without memory patterns, one inter-op
thread) and fed as the server feeds it on the CPU (rows alone, several at
once), so what is gated and timed is what the server runs. Per variant, two kinds of checks:
- parity: the largest absolute difference of `purchase_probability` and the
  largest relative difference of `expected_quantity` (quantities span orders
  of magnitude, so they are compared relative to PyTorch's value);
- quality: the relative drop of AUC and NDCG@10 versus the PyTorch model,
  `(torch - variant) / torch`. Only a drop counts against a variant: a gain
  is recorded but never fails it.

Bounds depend on the precision family (fp32, fp16, int8) and are settings.
A variant over any bound raises `GateFailed`, whose message names the
artifact, the metric, the value and the bound; nothing is bundled then.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.core.featurize import EncodedBatch, Featurizer
from edgerec.core.sessions import RowRunner, SessionConfig, available_cpus, create_session, cut_rows
from edgerec.core.settings import setting
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.evaluate import ranking_report, score_baskets, torch_scorer
from edgerec.export.model import CrossEncoderRecommender

log = logging.getLogger(__name__)

QUALITY_METRICS = ("auc", "ndcg@10")
GATED_SLICE = "all"  # ranking_report's slice the gate compares: every candidate of every basket


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Bounds every variant must meet against the PyTorch model on validation baskets."""

    fp32_max_abs_diff: float = setting(1e-4, "fp32 variants: largest |probability difference| (and relative quantity difference)")
    fp32_max_metric_drop: float = setting(1e-3, "fp32 variants: largest relative drop of AUC and of NDCG@10")
    fp16_max_abs_diff: float = setting(1e-2, "fp16 variants: largest |probability difference| (and relative quantity difference)")
    fp16_max_metric_drop: float = setting(5e-3, "fp16 variants: largest relative drop of AUC and of NDCG@10")
    int8_max_abs_diff: float = setting(
        0.25,
        "int8 variants: largest |probability difference| (and relative quantity difference); a sanity bound "
        "(int8 moves single logits by up to ~0.5): the metric drops below are int8's quality gate",
    )
    int8_max_quantity_rel_diff: float = setting(
        0.5,
        "int8 variants: largest relative expected-quantity difference, a sanity bound on the same scale as the "
        "probability's (a move of ~0.4 in log quantity). Fed rows alone, as the server runs them, each pair's "
        "activations get their own int8 scale: on the real model 1 of ~5,800 validation pairs moved 27.7% "
        "(2026-12-01), where batched it had moved at most 11.6%",
    )
    int8_max_metric_drop: float = setting(5e-3, "int8 variants: largest relative drop of AUC and of NDCG@10 (0.5%)")

    def bounds(self, precision: str) -> tuple[float, float]:
        """(max abs diff, max relative metric drop) for a variant of `precision`."""
        family = precision.split("-")[0]
        if family not in ("fp32", "fp16", "int8"):
            raise ValueError(f"no gate bounds for precision {precision!r}")
        return getattr(self, f"{family}_max_abs_diff"), getattr(self, f"{family}_max_metric_drop")

    def quantity_bound(self, precision: str) -> float:
        """Largest relative expected-quantity difference for a variant of `precision` (int8 has its own)."""
        if precision.split("-")[0] == "int8":
            return self.int8_max_quantity_rel_diff
        return self.bounds(precision)[0]


@dataclasses.dataclass(frozen=True)
class Check:
    """One gate check: a measured value against its bound."""

    metric: str
    value: float
    bound: float

    @property
    def passed(self) -> bool:
        return bool(self.value <= self.bound)


@dataclasses.dataclass(frozen=True)
class GateResult:
    """The gate's verdict on one variant, with its own ranking metrics."""

    artifact: str
    precision: str
    checks: tuple[Check, ...]
    report: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[str]:
        return [
            f"{self.artifact}: {c.metric} = {c.value:.6g} exceeds its bound {c.bound:.6g}" for c in self.checks if not c.passed
        ]

    def as_manifest(self) -> dict[str, Any]:
        """The variant's `gate` entry in the bundle manifest."""
        return {
            "passed": self.passed,
            "checks": [{"metric": c.metric, "value": c.value, "bound": c.bound, "passed": c.passed} for c in self.checks],
            **{metric: self.report.get(metric) for metric in QUALITY_METRICS},
        }


class GateFailed(Exception):
    """At least one variant is over a gate bound; the message lists each failing check."""

    def __init__(self, results: Sequence[GateResult]) -> None:
        self.results = list(results)
        lines = [line for result in self.results for line in result.failures()]
        super().__init__("validation gate failed:\n  " + "\n  ".join(lines))


def cpu_session_config(threads: int = 0) -> SessionConfig:
    """The server's CPU session settings (`SessionConfig` defaults) with `threads` intra-op threads (0: one per core)."""
    return SessionConfig(providers=("cpu",), intra_op_threads=threads)


class OnnxScorer:
    """Scores encoded batches with one ONNX variant of the cross-encoder, fed as the server feeds it on the CPU.

    By default rows alone (`BackendConfig.execution` 'auto' on the CPU): each
    row is one single-threaded call cut to its own length, `threads` rows at
    once (0: every available CPU), in a session configured like the
    server's; `rows_alone=False` scores each batch as one padded call with
    `threads` intra-op threads. Raises EdgeRecError FAILED_PRECONDITION if the
    file does not load.
    """

    def __init__(self, path: Path, threads: int = 0, rows_alone: bool = True) -> None:
        self.path = Path(path)
        self.rows_alone = rows_alone
        self.workers = (threads or available_cpus()) if rows_alone else 1
        config = cpu_session_config(1 if rows_alone else threads)
        self.session = create_session(self.path, config, CROSS_ENCODER).session
        self._outputs = list(CROSS_ENCODER.output_names)
        self._rows = RowRunner(self._run, self.workers, "gate-rows")

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self._outputs, feeds)

    def __call__(self, batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
        """(purchase_probability, expected_quantity), float32 of shape [batch]."""
        feeds = batch.as_feeds()
        if not self.rows_alone:
            probabilities, quantities = self._run(feeds)
        else:
            probabilities, quantities = self._rows(cut_rows(feeds, CROSS_ENCODER.input_names[1]))
        return probabilities, quantities


def _relative_drop(reference: float, value: float) -> float:
    return float((reference - value) / abs(reference)) if reference else float(reference - value)


def judge(
    artifact: str,
    precision: str,
    outputs: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    report: Mapping[str, float],
    reference_report: Mapping[str, float],
    config: GateConfig,
) -> GateResult:
    """Compare one variant's validation outputs and metrics (one slice of `ranking_report`) with PyTorch's."""
    max_diff, max_drop = config.bounds(precision)
    probabilities, quantities = outputs
    ref_probabilities, ref_quantities = reference
    checks = [
        Check("max_abs_diff(purchase_probability)", float(np.max(np.abs(probabilities - ref_probabilities))), max_diff),
        Check(
            "max_rel_diff(expected_quantity)",
            float(np.max(np.abs(quantities - ref_quantities) / np.maximum(np.abs(ref_quantities), 1e-6))),
            config.quantity_bound(precision),
        ),
    ]
    checks += [
        Check(f"relative_drop({metric})", _relative_drop(reference_report[metric], report[metric]), max_drop)
        for metric in QUALITY_METRICS
    ]
    return GateResult(artifact, precision, tuple(checks), dict(report))


def _numbers(report: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries of one slice of a ranking report."""
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float, np.floating, np.integer))}


def run_gate(
    variants: Mapping[str, Path],
    model: CrossEncoderRecommender,
    featurizer: Featurizer,
    baskets: Sequence,
    config: GateConfig = GateConfig(),
    batch_size: int = 64,
    threads: int = 0,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, GateResult]]:
    """Score `baskets` with PyTorch and every variant ({precision: file}); returns (PyTorch report, results by precision).

    Does not raise: call `enforce` on the results (the pipeline prints its table first).
    """
    if not baskets:
        raise ValueError("the validation gate needs at least one validation basket")
    model.eval()
    reference = score_baskets(baskets, featurizer, torch_scorer(model), batch_size, progress)
    reference_report = _numbers(ranking_report(baskets, *reference)[GATED_SLICE])
    results = {}
    for precision, path in variants.items():
        outputs = score_baskets(baskets, featurizer, OnnxScorer(path, threads), batch_size, progress)
        report = _numbers(ranking_report(baskets, *outputs)[GATED_SLICE])
        results[precision] = judge(Path(path).name, precision, outputs, reference, report, reference_report, config)
        verdict = "passed" if results[precision].passed else "FAILED"
        log.info("gate %s: %s %s", precision, verdict, results[precision].as_manifest()["checks"])
    return reference_report, results


def enforce(results: Mapping[str, GateResult]) -> None:
    """Raise `GateFailed` if any variant failed its gate."""
    failed = [result for result in results.values() if not result.passed]
    if failed:
        raise GateFailed(failed)
