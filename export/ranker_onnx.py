"""The two-tower ranker as ONNX: export, int8 variants, the catalog embedded by the exported tower, and its gate.

Why it exists: the ranker is served by ONNX Runtime like the cross-encoder,
so its graphs must be exported, quantized and checked against PyTorch the
same way (issue 12, "Export, gate, bundle"). Two graphs, two signatures
(`edgerec.core.signatures`):
- `item_tower` (`ItemTower`): item text ids -> item embedding. Variants fp32,
  fp32-optimized (ONNX Runtime's BERT fusions, `optimize.optimize_onnx`) and
  int8-dynamic (from the fused graph, `quantize.quantize_int8_dynamic`), as
  for the cross-encoder.
- `ranker` (`RankerGraph` over `TwoTowerRanker`): ONE customer's padded
  history and N candidates -> N scores. One customer per call is what a
  request is: the user side runs once and the head is vectorized over the N
  candidate rows. Variants fp32 and int8-dynamic (its MatMuls; the graph is
  traced with a leading batch axis of 1 so nn.Linear exports as MatMul,
  which dynamic quantization handles, not Gemm, which it does not).

A candidate's fp32 scores do not depend on the other candidates of the call
(each head row is its own computation). int8 dynamic quantizes activations
with one scale per tensor, so an int8 ranker's scores DO depend on the other
candidates (through the largest activation of the call): measure that bound
before serving it. The item tower is run one item per call, without padding
(`catalog_embeddings`), so an item's int8 embedding depends on nothing else.

`catalog_embeddings` computes the catalog's item-embedding matrix with the
exported tower variant through `create_session`, so the matrix the export
ships is what the server would compute for the same text.

The gate (`run_ranker_gate`) scores given customers (validation baskets)
end to end, per combination of item-tower and ranker variants, against the
PyTorch tower and ranker fed the same arrays (`ranker_feeds`): the largest
|logit difference| (bounds in `RankerGateConfig`), plus the cross-encoder's
gate rule (`validate.judge` with a `GateConfig`: probability and relative
quantity parity, relative AUC and NDCG@10 drop on the "all" slice).

Measured on the real data (trained ranker, 2-layer MiniLM tower, 2,984
validation baskets, 158,273 candidates; 2 shared AVX2 cores, 2026-12-01):
fp32 combinations pass with logits within 5e-6. int8 keeps AUC and NDCG@10
within 0.3% but fails the parity bounds at the tail: the int8 tower moves
logits by 0.086 on average, 1.03 at most (relative quantity 0.41); the
int8 ranker by 0.038 and 0.59 (0.37), and it is 10% slower to 26% faster
than fp32 (p50 for all 3,659 candidates and 66 past items: 18.0 ms fp32,
16.7 ms int8), so the head's int8 does not pay. The int8 tower is 15.6 MB
instead of 62 MB and embeds one item in 0.8 ms instead of 1.7 ms; the
catalog is embedded offline either way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgerec.core.behaviour import DAYS_CAP
from edgerec.core.bundle import ModelFiles
from edgerec.core.ranker_inputs import encode_item_texts, ranker_feeds
from edgerec.core.featurize import Featurizer
from edgerec.core.sessions import RowRunner, available_cpus, create_session, cut_rows
from edgerec.core.settings import setting
from edgerec.core.signatures import ITEM_TOWER, RANKER
from edgerec.export.evaluate import ranking_report
from edgerec.export.onnx_export import OPSET, ExportRecord, export_graph
from edgerec.export.optimize import OptimizeRecord, optimize_onnx
from edgerec.export.quantize import QuantizeConfig, quantize_int8_dynamic
from edgerec.export.ranker import ItemTower, TwoTowerRanker
from edgerec.export.ranker_train import EncodedBaskets
from edgerec.export.validate import GATED_SLICE, Check, GateConfig, GateResult, _numbers, cpu_session_config, judge

log = logging.getLogger(__name__)

TOWER_PRECISIONS = ("fp32", "fp32-optimized", "int8-dynamic")
RANKER_PRECISIONS = ("fp32", "int8-dynamic")
# The variant each derived variant is made from (as `variants.source_of` for the cross-encoder).
TOWER_SOURCE_OF = {"fp32-optimized": "fp32", "int8-dynamic": "fp32-optimized"}
RANKER_SOURCE_OF = {"int8-dynamic": "fp32"}

# Named axes whose size is fixed per model (the embedding width): the graphs keep the traced size,
# so ONNX Runtime refuses a feed of the wrong width by name.
FIXED_AXES = ("dim",)

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


# -- the graphs ------------------------------------------------------------------------------------------


class RankerGraph(nn.Module):
    """`TwoTowerRanker` for one customer, with the `RANKER` signature's inputs and outputs (see its descriptions).

    A candidate's fp32 scores are bit-identical whatever else is in the call, because ONNX Runtime's
    CPU matrix product, given a single row or a single column, rounds some results differently in the
    last bit depending on the other dimension (measured on a tiny ranker: 1 to 5 candidates in 100
    scored alone differed from themselves scored among 40 to 4,000 others, by up to 3e-8 in the logit). So the graph appends one zero candidate row (its
    scores dropped) and one masked history slot, and `TwoTowerRanker` takes the cosine to the user
    vector as a product and sum, not a one-column product.
    """

    def __init__(self, model: TwoTowerRanker) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        history_embeddings: torch.Tensor,
        history_counts: torch.Tensor,
        history_days: torch.Tensor,
        history_mask: torch.Tensor,
        candidate_embeddings: torch.Tensor,
        candidate_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """[H, D], [H], [H], int64 [H], [N, D], [N, F] -> purchase logit, probability, log quantity, units, each [N]."""
        history = torch.cat([history_embeddings, history_embeddings.new_zeros(1, history_embeddings.shape[1])])
        counts = torch.cat([history_counts, history_counts.new_zeros(1)])
        days = torch.cat([history_days, history_days.new_full((1,), DAYS_CAP)])
        mask = torch.cat([history_mask != 0, history_mask.new_zeros(1, dtype=torch.bool)])
        items = torch.cat([candidate_embeddings, candidate_embeddings.new_zeros(1, candidate_embeddings.shape[1])])
        features = torch.cat([candidate_features, candidate_features.new_zeros(1, candidate_features.shape[1])])
        logit, log_quantity = self.model(
            history.unsqueeze(0),
            counts.unsqueeze(0),
            days.unsqueeze(0),
            mask.unsqueeze(0),
            items.unsqueeze(0),
            features.unsqueeze(0),
        )
        logit, log_quantity = logit[0, :-1], log_quantity[0, :-1]  # drop the appended row
        return logit, torch.sigmoid(logit), log_quantity, torch.exp(log_quantity)


def _tower_example(tower: ItemTower) -> tuple[torch.Tensor, torch.Tensor]:
    """Two item texts of different lengths, so padding and masking are traced."""
    ids, mask = encode_item_texts(tower.featurizer, ["RED RETROSPOT CAKE STAND", "MUG"])
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _ranker_example(model: TwoTowerRanker) -> tuple[torch.Tensor, ...]:
    """A customer with 3 history slots (one padded) and 4 candidates."""
    generator = torch.Generator().manual_seed(0)
    dim, features = model.hparams["item_dim"], model.hparams["num_features"]
    return (
        torch.randn(3, dim, generator=generator),
        torch.tensor([2.0, 1.0, 0.0]),
        torch.tensor([3.0, 40.0, DAYS_CAP]),
        torch.tensor([1, 1, 0], dtype=torch.int64),
        torch.randn(4, dim, generator=generator),
        torch.randn(4, features, generator=generator),
    )


def export_item_tower(tower: ItemTower, path: Path, opset: int = OPSET) -> ExportRecord:
    """Write the item tower (fp32) to `path` with the `ITEM_TOWER` signature (dynamic items and sequence)."""
    return export_graph(tower, _tower_example(tower), path, ITEM_TOWER, opset, FIXED_AXES)


def export_ranker(model: TwoTowerRanker, path: Path, opset: int = OPSET) -> ExportRecord:
    """Write the user side and head (fp32) to `path` with the `RANKER` signature (one customer, N candidates)."""
    return export_graph(RankerGraph(model), _ranker_example(model), path, RANKER, opset, FIXED_AXES)


@dataclasses.dataclass(frozen=True)
class RankerVariants:
    """The variant files of both graphs, by precision, and how they were made."""

    item_tower: dict[str, Path]
    ranker: dict[str, Path]
    exports: dict[str, ExportRecord]  # by graph name
    optimize: OptimizeRecord  # the item tower's fusion


def build_ranker_variants(
    tower: ItemTower,
    model: TwoTowerRanker,
    workdir: Path,
    tower_precisions: Sequence[str] = TOWER_PRECISIONS,
    ranker_precisions: Sequence[str] = RANKER_PRECISIONS,
    quantize: QuantizeConfig = QuantizeConfig(),
    opset: int = OPSET,
) -> RankerVariants:
    """Write `<workdir>/<graph>/model.<precision>.onnx` (the bundle's layout) for each requested precision.

    Every variant a requested one derives from is written too, but only the requested ones are
    returned. Raises ValueError for a precision a graph does not offer.
    """
    for graph, wanted, offered in (("item_tower", tower_precisions, TOWER_PRECISIONS), ("ranker", ranker_precisions, RANKER_PRECISIONS)):
        unknown = set(wanted) - set(offered)
        if unknown:
            raise ValueError(f"{graph}: unknown precision(s) {sorted(unknown)}; choose from {offered}")
    workdir = Path(workdir)
    tower_dir, ranker_dir = workdir / ITEM_TOWER.name, workdir / RANKER.name

    tower_export = export_item_tower(tower, tower_dir / "model.fp32.onnx", opset)
    towers = {"fp32": tower_export.path}
    optimized = optimize_onnx(towers["fp32"], tower_dir / "model.fp32-optimized.onnx", tower.encoder.config)
    towers["fp32-optimized"] = optimized.path
    if "int8-dynamic" in tower_precisions:
        source = towers[TOWER_SOURCE_OF["int8-dynamic"]]
        towers["int8-dynamic"] = quantize_int8_dynamic(source, tower_dir / "model.int8-dynamic.onnx", quantize)

    ranker_export = export_ranker(model, ranker_dir / "model.fp32.onnx", opset)
    rankers = {"fp32": ranker_export.path}
    if "int8-dynamic" in ranker_precisions:
        source = rankers[RANKER_SOURCE_OF["int8-dynamic"]]
        rankers["int8-dynamic"] = quantize_int8_dynamic(source, ranker_dir / "model.int8-dynamic.onnx", quantize)

    return RankerVariants(
        item_tower={p: towers[p] for p in TOWER_PRECISIONS if p in tower_precisions},
        ranker={p: rankers[p] for p in RANKER_PRECISIONS if p in ranker_precisions},
        exports={ITEM_TOWER.name: tower_export, RANKER.name: ranker_export},
        optimize=optimized,
    )


# -- running them ----------------------------------------------------------------------------------------


def catalog_embeddings(path: Path, featurizer: Featurizer, texts: Sequence[str], threads: int = 0) -> np.ndarray:
    """float32 [len(texts), dim]: each item text embedded by the exported tower `path`, one item per call.

    Each call is one row cut to its own length (no padding, no batch mates), in a single-threaded
    session configured like the server's, `threads` items at once (0: every available CPU); so an
    item's embedding is the same whatever else is embedded, in the catalog or at request time.
    """
    session = create_session(Path(path), cpu_session_config(1), ITEM_TOWER).session
    if not len(texts):
        return np.zeros((0, session.get_outputs()[0].shape[-1]), np.float32)  # the graph's fixed width
    ids, mask = encode_item_texts(featurizer, texts)
    names = ITEM_TOWER.input_names
    output = [ITEM_TOWER.outputs[0].name]
    runner = RowRunner(lambda feeds: session.run(output, feeds), threads or available_cpus(), "item-tower")
    try:
        (embeddings,) = runner(cut_rows({names[0]: ids, names[1]: mask}, names[1]))  # as the server runs rows
    finally:
        runner.close()
    return embeddings.astype(np.float32, copy=False)


class OnnxRanker:
    """Scores one customer's feeds with one ONNX variant of the ranker (a session like the server's)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = Path(path)
        self.session = create_session(self.path, cpu_session_config(threads), RANKER).session

    def __call__(self, feeds: Feeds) -> Outputs:
        """The `RANKER` outputs by name, each float32 [N]."""
        return dict(zip(RANKER.output_names, self.session.run(list(RANKER.output_names), feeds)))


class TorchRanker:
    """`RankerGraph` in PyTorch on the same feeds: the gate's reference."""

    def __init__(self, model: TwoTowerRanker) -> None:
        self.graph = RankerGraph(model).eval()

    @torch.inference_mode()
    def __call__(self, feeds: Feeds) -> Outputs:
        outputs = self.graph(*(torch.from_numpy(feeds[name]) for name in RANKER.input_names))
        return {name: value.numpy() for name, value in zip(RANKER.output_names, outputs)}


def score_customers(scorer: Callable[[Feeds], Outputs], embeddings: np.ndarray, encoded: EncodedBaskets) -> Outputs:
    """Every stored candidate of every basket, one call per basket: the outputs flat, in basket/candidate order."""
    columns: dict[str, list[np.ndarray]] = {name: [] for name in RANKER.output_names}
    for history, rows, features in zip(encoded.histories, encoded.rows, encoded.features):
        outputs = scorer(ranker_feeds(embeddings, history, rows, features))
        for name in RANKER.output_names:
            columns[name].append(outputs[name])
    return {name: np.concatenate(values) if values else np.zeros(0, np.float32) for name, values in columns.items()}


# -- the gate --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RankerGateConfig:
    """Logit parity bounds of the ranker's gate; probability, quantity and metric bounds are `GateConfig`'s."""

    fp32_max_logit_diff: float = setting(1e-4, "fp32 item tower and ranker: largest |purchase logit difference|")
    int8_max_logit_diff: float = setting(
        1.0,
        "an int8 item tower or ranker: largest |purchase logit difference|, a sanity bound (int8 moves single "
        "logits); the relative AUC and NDCG@10 drops of GateConfig are int8's quality gate",
    )

    def bound(self, precision: str) -> float:
        family = precision.split("-")[0]
        if family not in ("fp32", "int8"):
            raise ValueError(f"no ranker gate bound for precision {precision!r}")
        return getattr(self, f"{family}_max_logit_diff")


@dataclasses.dataclass(frozen=True)
class GatedVariant:
    """One serving combination: the catalog embedded by an item-tower variant, scored by a ranker variant."""

    tower_precision: str
    ranker_precision: str
    embeddings: np.ndarray  # float32 [n_items, D] from `catalog_embeddings` of the tower variant
    ranker_path: Path

    @property
    def name(self) -> str:
        return f"{ITEM_TOWER.name}:{self.tower_precision}+{RANKER.name}:{self.ranker_precision}"

    @property
    def precision(self) -> str:
        """The lower precision family of the two: the bounds the combination is held to."""
        both = (self.tower_precision, self.ranker_precision)
        return "int8" if any(p.startswith("int8") for p in both) else "fp32"


def combinations(
    variants: RankerVariants, featurizer: Featurizer, texts: Sequence[str], threads: int = 0
) -> list[GatedVariant]:
    """Every (item-tower variant, ranker variant) pair, each tower's catalog embedded once (`texts` in row order)."""
    catalogs = {p: catalog_embeddings(path, featurizer, texts, threads) for p, path in variants.item_tower.items()}
    return [
        GatedVariant(tower, ranker, catalogs[tower], path)
        for tower in variants.item_tower
        for ranker, path in variants.ranker.items()
    ]


def run_ranker_gate(
    model: TwoTowerRanker,
    reference_embeddings: np.ndarray,
    encoded: EncodedBaskets,
    gated: Sequence[GatedVariant],
    gate: GateConfig = GateConfig(),
    config: RankerGateConfig = RankerGateConfig(),
) -> tuple[dict[str, float], dict[str, GateResult]]:
    """Score `encoded` baskets with PyTorch (tower embeddings `reference_embeddings`) and every combination.

    Returns (PyTorch's report on the gated slice, results by combination name). Does not raise: call
    `validate.enforce` on the results.
    """
    if not encoded.baskets:
        raise ValueError("the ranker's gate needs at least one basket")
    reference = score_customers(TorchRanker(model), reference_embeddings, encoded)
    reference_report = _numbers(ranking_report(encoded.baskets, reference["purchase_probability"], reference["expected_quantity"])[GATED_SLICE])
    results = {}
    for variant in gated:
        outputs = score_customers(OnnxRanker(variant.ranker_path), variant.embeddings, encoded)
        pair = (outputs["purchase_probability"].astype(np.float64), outputs["expected_quantity"].astype(np.float64))
        report = _numbers(ranking_report(encoded.baskets, *pair)[GATED_SLICE])
        judged = judge(
            variant.name,
            variant.precision,
            pair,
            (reference["purchase_probability"].astype(np.float64), reference["expected_quantity"].astype(np.float64)),
            report,
            reference_report,
            gate,
        )
        logit_diff = float(np.max(np.abs(outputs["purchase_logit"] - reference["purchase_logit"])))
        logit = Check("max_abs_diff(purchase_logit)", logit_diff, config.bound(variant.precision))
        results[variant.name] = GateResult(variant.name, variant.precision, (logit, *judged.checks), judged.report)
        log.info("ranker gate %s: %s", variant.name, "passed" if results[variant.name].passed else "FAILED")
    return reference_report, results


def gate_table(results: Mapping[str, GateResult]) -> str:
    """A markdown table of every combination's checks (value / bound) and verdict."""
    metrics = list(dict.fromkeys(c.metric for r in results.values() for c in r.checks))
    lines = ["| combination | " + " | ".join(metrics) + " | passed |", "|---" * (len(metrics) + 2) + "|"]
    for name, result in results.items():
        values = {c.metric: f"{c.value:.3g} / {c.bound:.3g}" for c in result.checks}
        lines.append(f"| {name} | " + " | ".join(values.get(m, "") for m in metrics) + f" | {result.passed} |")
    return "\n".join(lines)


# -- into the bundle -------------------------------------------------------------------------------------

SERVING_COMBINATION = ("fp32-optimized", "fp32")  # (item tower, ranker) precisions the CPU server uses


def ranker_bundle_parts(
    variants: RankerVariants,
    results: Mapping[str, GateResult],
    embeddings: np.ndarray,
    tables_path: Path,
    workdir: Path,
    serving: tuple[str, str] = SERVING_COMBINATION,
) -> tuple[list[ModelFiles], dict[str, Path]]:
    """The ranker's two models and its data, for `core.bundle.write_bundle(models=..., data=...)`.

    `results`: `run_ranker_gate`'s verdicts by combination; the `serving` combination
    (item-tower precision, ranker precision) must have passed, and it is each model's
    CPU default. A variant enters the bundle only if every combination it takes part in
    passed; its manifest gate entry is the verdict of its combination with the other
    model's serving variant. `embeddings` (float32 [catalog items, dim], catalog order)
    must come from the serving tower variant; it is written to `workdir` as .npy.
    Raises ValueError if the serving combination was not gated or failed.
    """
    tower_serving, ranker_serving = serving
    name = f"{ITEM_TOWER.name}:{tower_serving}+{RANKER.name}:{ranker_serving}"
    if name not in results or not results[name].passed:
        verdict = "was not gated" if name not in results else "failed its gate"
        raise ValueError(f"the serving combination {name} {verdict}; the ranker cannot be bundled")

    def passed_with(graph: str, precision: str) -> bool:
        combos = [r for key, r in results.items() if f"{graph}:{precision}" in key.split("+")]
        return bool(combos) and all(r.passed for r in combos)

    def verdict(tower: str, ranker: str) -> dict:
        return results[f"{ITEM_TOWER.name}:{tower}+{RANKER.name}:{ranker}"].as_manifest()

    towers = {p: path for p, path in variants.item_tower.items() if p == tower_serving or passed_with(ITEM_TOWER.name, p)}
    rankers = {p: path for p, path in variants.ranker.items() if p == ranker_serving or passed_with(RANKER.name, p)}
    models = [
        ModelFiles(
            name=ITEM_TOWER.name,
            signature=ITEM_TOWER,
            variants=towers,
            default_variant={"cpu": tower_serving, "gpu": tower_serving},
            gates={p: verdict(p, ranker_serving) for p in towers},
        ),
        ModelFiles(
            name=RANKER.name,
            signature=RANKER,
            variants=rankers,
            default_variant={"cpu": ranker_serving, "gpu": ranker_serving},
            gates={p: verdict(tower_serving, p) for p in rankers},
        ),
    ]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    embeddings_path = workdir / "item_embeddings.npy"
    np.save(embeddings_path, np.ascontiguousarray(embeddings, dtype=np.float32))
    return models, {"item_embeddings": embeddings_path, "behaviour_tables": Path(tables_path)}
