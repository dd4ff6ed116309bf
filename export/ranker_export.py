"""The two-tower ranker's export step: train, embed the catalog, export, gate, evaluate, hand to the bundle.

`build_ranker` runs what `edgerec export --ranker` adds to the export
(issue 12), on the same prepared data as the cross-encoder:
1. the frozen item tower (`RankerConfig.item_layers` of the pretrained
   MiniLM) embeds every catalog item; the ranker trains on the train split
   and keeps its best epoch on validation (`ranker_train.train_ranker`);
2. both graphs are exported (`ranker_onnx.build_ranker_variants`; fp32 and
   the fused fp32 tower, fp32 ranker: int8 failed the parity bounds on the
   real data and did not run faster, see `RANKER_PRECISIONS` below);
3. every (tower, ranker) combination is gated against PyTorch on the
   validation baskets (`ranker_onnx.run_ranker_gate`, the cross-encoder's
   rule), and the catalog is embedded with the serving tower variant;
4. the ranker and two baselines (the customer's repeat frequency, and the
   repeat + co-occurrence blend tuned on validation) are scored on the whole
   test split, on the stored candidates and against popularity negatives,
   with 95% intervals over customers (`evaluate.bootstrap_intervals`);
5. the behaviour tables for serving are built from every purchase, and the
   models and data go to the bundle (`ranker_onnx.ranker_bundle_parts`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from edgerec.core.bundle import ModelFiles
from edgerec.export.baselines import (
    behaviour_tables,
    fit_behaviour_baselines,
    history_before,
    popularity,
    repeat_frequency,
)
from edgerec.export.evaluate import (
    RERANK_OFFSET,
    bootstrap_intervals,
    main_only,
    matching_scores,
    paired_intervals,
    popularity_negatives,
    ranking_report,
    two_stage_scores,
)
from edgerec.export.ranker import ItemTower, save_ranker
from edgerec.export.ranker_onnx import (
    SERVING_COMBINATION,
    build_ranker_variants,
    combinations,
    gate_table,
    ranker_bundle_parts,
    run_ranker_gate,
)
from edgerec.export.ranker_train import (
    RankerConfig,
    encode_baskets,
    ranker_tables,
    score_encoded,
    train_ranker,
    validation_set,
)
from edgerec.export.samples import PreparedData, split_starts
from edgerec.export.validate import GateConfig, enforce

log = logging.getLogger(__name__)

TOWER_PRECISIONS = ("fp32", "fp32-optimized")
# int8 of either graph moved single logits by 0.6-1.0 and quantities by up to 41% on 2,984 real validation
# baskets (over the parity bounds) and the int8 ranker ran 10% slower to 26% faster: fp32 is served.
RANKER_PRECISIONS = ("fp32",)
EVAL_SLICES = ("all", "new")
RERANK_TOPS = (10, 20)  # the two-stage rows of the evaluation: the cross-encoder re-ranks the ranker's top R
TWO_STAGE = "two-stage (cross-encoder subsample)"  # the evaluation's key of those rows
EVAL_METRICS = ("auc", "gauc", "ndcg@10", "hr@10", "mrr", "rmse_log_quantity")


@dataclasses.dataclass(frozen=True)
class RankerBuild:
    """What the ranker step hands to the bundle, and its report."""

    models: list[ModelFiles]
    data: dict[str, Path]
    weights: Path  # the trained ranker's safetensors (part of the bundle version)
    report: dict[str, Any]


def tower_for(config: RankerConfig) -> ItemTower:
    return ItemTower.tiny(config.seed) if config.tiny else ItemTower.pretrained(config.item_layers)


BLEND_OBJECTIVES = ("all", "new")  # the repeat + co-occurrence blend is tuned (on validation) for each slice
MEDIAN_QUANTITY = "item past median quantity"  # quantity-only baseline: the item's median units per line


def evaluate_on_test(
    prepared: PreparedData,
    model,
    ids: list[str],
    matrix: np.ndarray,
    config: RankerConfig,
    resamples: int = 200,
    progress: bool = True,
    cross_encoder_scores: Path | None = None,
) -> dict[str, Any]:
    """The ranker and the baselines on the whole test split: stored candidates and popularity negatives.

    With `cross_encoder_scores` (the cross-encoder evaluation's `evaluate.EVAL_SCORES`, its subsample
    of test baskets), the two-stage rows too, under `TWO_STAGE`: on those baskets' stored candidates,
    the ranker alone, the cross-encoder alone and the ranker's top R re-ranked by the cross-encoder
    (`evaluate.two_stage_scores`, the served rule) for each R in `RERANK_TOPS`, with each one's
    paired difference from the ranker alone ("vs_ranker", 95% interval over customers).

    Baselines: the customer's repeat frequency, the repeat + co-occurrence blend tuned on validation
    for each of `BLEND_OBJECTIVES` (all baskets, new-to-customer items), TF-IDF text similarity, and
    for quantity only the item's past median quantity (units per line before the test split; its
    RMSE on log quantity sits beside the ranker's). Returns {candidate set: {model: {slice: {metric:
    value, "ci95": {metric: [low, high]}}}}, "sizes": ..., "timings": seconds per part}.
    """
    timings: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[name] = round(timings.get(name, 0.0) + now - mark, 2)
        mark = now

    starts = split_starts(prepared.config)
    test = main_only(prepared.splits["test"])
    index = {item: i for i, item in enumerate(ids)}
    tables = ranker_tables(prepared.purchases, starts["test"], config)
    train_popularity = behaviour_tables(prepared.purchases, starts["valid"]).popularity_of()
    bought = prepared.purchases.groupby("invoice")["item"].apply(set).to_dict()
    sets = {"stored": test, "popularity negatives": popularity_negatives(test, train_popularity, seed=0, exclude=bought)}
    past = history_before(prepared, "test")
    blends, tuned = fit_behaviour_baselines(prepared, "test", objectives=BLEND_OBJECTIVES)
    baselines = {"repeat frequency": repeat_frequency(past), **{b.name: b for b in blends}}
    median_quantity = popularity(past).quantity
    lap("baselines_s")
    out: dict[str, Any] = {"sizes": {name: {"baskets": len(b), "candidates": sum(len(x.candidates) for x in b)}
                                     for name, b in sets.items()},
                           "baseline_tuning": tuned, "resamples": resamples, "interval_unit": "customer"}
    for label, baskets in sets.items():
        encoded = encode_baskets(baskets, prepared.purchases, tables, index, config.max_history, progress)
        lap("ranker_features_s")
        scores = {"ranker": score_encoded(model, matrix, encoded)}
        if label == "stored":
            stored_ranker = scores["ranker"]
        lap("ranker_scoring_s")
        scores.update({name: (b.score(baskets), None) for name, b in baselines.items()})
        lap("baseline_scoring_s")
        table = {}
        for name, (probabilities, quantities) in scores.items():
            table[name] = model_row(baskets, probabilities, quantities, resamples)
            lap("metrics_s")
        quantity = ranking_report(baskets, np.zeros(sum(len(b.candidates) for b in baskets)), median_quantity(baskets))
        table[MEDIAN_QUANTITY] = {sl: {"rmse_log_quantity": quantity[sl]["rmse_log_quantity"]} for sl in EVAL_SLICES}
        lap("metrics_s")
        out[label] = table
    if cross_encoder_scores is not None:
        out[TWO_STAGE] = two_stage_table(test, stored_ranker, cross_encoder_scores, resamples)
        lap("two_stage_s")
    out["timings"] = timings
    return out


def model_row(baskets: list, score: np.ndarray, quantity: np.ndarray | None, resamples: int) -> dict[str, Any]:
    """One model's row of the evaluation: `EVAL_METRICS` per slice of `EVAL_SLICES`, with 95% intervals
    over customers for NDCG@10 and GAUC (`score` ranks the candidates, flat in basket order)."""
    report = ranking_report(baskets, score, quantity)
    intervals = bootstrap_intervals(baskets, score, resamples, seed=0, unit="customer", slices=EVAL_SLICES)
    return {
        sl: {
            **{m: report[sl][m] for m in EVAL_METRICS if m in report[sl]},
            "ci95": {m: [v["low"], v["high"]] for m, v in intervals[sl].items() if m in ("ndcg@10", "gauc")},
        }
        for sl in EVAL_SLICES
    }


def two_stage_table(
    baskets: list, ranker: tuple[np.ndarray, np.ndarray], cross_encoder_scores: Path, resamples: int
) -> dict[str, Any]:
    """The `TWO_STAGE` rows (see `evaluate_on_test`) on the baskets the cross-encoder scored."""
    matched = matching_scores(cross_encoder_scores, baskets)
    if matched is None:
        return {"skipped": f"{cross_encoder_scores} is missing or scored other baskets than these"}
    positions, cross_p, cross_q = matched
    offsets = np.cumsum([0] + [len(b.candidates) for b in baskets])
    subset = [baskets[i] for i in positions]
    ranker_p, ranker_q = (np.concatenate([a[offsets[i] : offsets[i + 1]] for i in positions]) for a in ranker)
    rows: dict[str, tuple[np.ndarray, np.ndarray]] = {"ranker": (ranker_p, ranker_q), "cross-encoder": (cross_p, cross_q)}
    for top in RERANK_TOPS:
        order, _ = two_stage_scores(subset, ranker_p, cross_p, top)
        rows[f"ranker, cross-encoder re-ranks top {top}"] = (order, np.where(order >= RERANK_OFFSET, cross_q, ranker_q))
    table: dict[str, Any] = {"baskets": len(subset), "candidates": int(len(ranker_p))}
    for name, (score, quantity) in rows.items():
        table[name] = model_row(subset, score, quantity, resamples)
        if name != "ranker":
            paired = paired_intervals(subset, score, ranker_p, resamples, seed=0, unit="customer", slices=EVAL_SLICES)
            for sl in EVAL_SLICES:
                table[name][sl]["vs_ranker"] = {m: paired[sl][m] for m in ("ndcg@10", "gauc")}
    return table


def build_ranker(
    prepared: PreparedData,
    workdir: Path,
    config: RankerConfig = RankerConfig(),
    gate: GateConfig = GateConfig(),
    resamples: int = 200,
    progress: bool = True,
    cross_encoder_scores: Path | None = None,
) -> RankerBuild:
    """Steps 1-5 of the module docstring; files go under `workdir`. Raises `validate.GateFailed` if a
    combination fails its gate, ValueError if the data has no validation baskets to gate on."""
    workdir = Path(workdir)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    tower = tower_for(config)
    ids = sorted(prepared.items)  # the catalog's order (catalog.json is written sorted)
    texts = [prepared.items[i] for i in ids]
    matrix = tower.embed_items(texts, progress=progress)
    timings["item_embeddings_s"] = time.perf_counter() - started
    index = {item: i for i, item in enumerate(ids)}
    valid = validation_set(prepared, index, config, progress)
    if valid is None or not valid.baskets:
        raise ValueError("the ranker's gate needs validation baskets")
    mark = time.perf_counter()
    run = train_ranker(prepared, config, embeddings=(ids, matrix), valid=valid, progress=progress)
    timings["training_s"] = time.perf_counter() - mark
    weights = save_ranker(workdir / "checkpoint", run.model, {"kept_epoch": run.report.get("kept_epoch")}) / "ranker.safetensors"

    mark = time.perf_counter()
    variants = build_ranker_variants(tower, run.model, workdir / "variants", TOWER_PRECISIONS, RANKER_PRECISIONS)
    gated = combinations(variants, tower.featurizer, texts)
    reference, results = run_ranker_gate(run.model, matrix, valid, gated, gate)
    print(gate_table(results))
    enforce(results)
    timings["export_and_gate_s"] = time.perf_counter() - mark
    serving = next(g for g in gated if (g.tower_precision, g.ranker_precision) == SERVING_COMBINATION)

    mark = time.perf_counter()
    evaluation = evaluate_on_test(prepared, run.model, ids, matrix, config, resamples, progress, cross_encoder_scores)
    timings["evaluation_s"] = time.perf_counter() - mark

    after_last = pd.Timestamp(prepared.purchases["time"].max()) + pd.Timedelta(seconds=1)
    tables = ranker_tables(prepared.purchases, after_last, config).save(workdir / "behaviour_tables.npz")
    models, data = ranker_bundle_parts(variants, results, serving.embeddings, tables, workdir)
    timings["total_s"] = time.perf_counter() - started
    report = {
        "settings": dataclasses.asdict(config),
        "training": {k: v for k, v in run.report.items() if k != "epochs"},
        "gate": {"reference": reference, "results": {name: r.as_manifest() for name, r in results.items()}},
        "evaluation": evaluation,
        "timings": {k: round(v, 2) for k, v in timings.items()},
        "catalog_items": len(ids),
    }
    return RankerBuild(models, data, weights, report)


def summary_table(report: dict[str, Any]) -> str:
    """Markdown: NDCG@10 and GAUC (95% interval over customers) and RMSE of log quantity of the ranker
    and each baseline, per candidate set; a quantity-only baseline fills its RMSE cells only."""
    lines = [
        "| candidates | model | NDCG@10 all | NDCG@10 new-to-customer | GAUC all | GAUC new-to-customer "
        "| RMSE log qty all | RMSE log qty new |",
        "|---|---|---|---|---|---|---|---|",
    ]
    evaluation = report["evaluation"]
    for label in ("stored", "popularity negatives"):
        for name, slices in evaluation[label].items():
            def cell(sl: str, metric: str) -> str:
                if metric not in slices[sl] or not np.isfinite(slices[sl][metric]):
                    return ""
                if metric not in slices[sl].get("ci95", {}):
                    return f"{slices[sl][metric]:.3f}"
                low, high = slices[sl]["ci95"][metric]
                return f"{slices[sl][metric]:.3f} [{low:.3f}, {high:.3f}]"
            cells = [cell(sl, m) for m in ("ndcg@10", "gauc") for sl in EVAL_SLICES]
            cells += [cell(sl, "rmse_log_quantity") for sl in EVAL_SLICES]
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    two_stage = evaluation.get(TWO_STAGE, {})
    if "skipped" in two_stage:
        lines.append(f"\n{TWO_STAGE}: skipped ({two_stage['skipped']})")
    elif two_stage:
        lines += [
            "",
            f"{TWO_STAGE}: {two_stage['baskets']} test baskets, {two_stage['candidates']} stored candidates; "
            "paired difference from the ranker alone, 95% interval over customers",
            "",
            "| model | NDCG@10 all | vs ranker | NDCG@10 new | vs ranker | GAUC all | vs ranker |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, slices in two_stage.items():
            if not isinstance(slices, dict):
                continue

            def delta(sl: str, metric: str) -> str:
                d = slices[sl].get("vs_ranker", {}).get(metric)
                return "" if d is None else f"{d['estimate']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"

            lines.append(
                f"| {name} | {slices['all']['ndcg@10']:.3f} | {delta('all', 'ndcg@10')} | {slices['new']['ndcg@10']:.3f} "
                f"| {delta('new', 'ndcg@10')} | {slices['all']['gauc']:.3f} | {delta('all', 'gauc')} |"
            )
    return "\n".join(lines)
