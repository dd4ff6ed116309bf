"""Offline evaluation: score the stored test candidates and compare the model with baselines.

Every model (the PyTorch checkpoint, each ONNX variant, each baseline) is
scored on exactly the candidates `samples.prepare` stored, through the same
`Featurizer`, and reported with the same `ranking_report`:
- slices: all candidates; repeat items (the customer bought them before) vs
  new-to-customer items, where only text and co-purchase knowledge help; and
  cold-start items (nobody bought them before the split began) ranked against
  cold negatives only, because next to established items being new alone
  would give a cold item away;
- metrics: AUC, GAUC (per-customer AUC weighted by impressions), NDCG@10,
  HR@10 and MRR per basket, and RMSE of the expected quantity on positives.

Scoring a cross-encoder is the expensive part on 2 CPU cores, so by default a
fixed, seeded subsample of test baskets is scored (their candidates except the
dedicated cold negatives), and the cold slice gets its own subsample of the
baskets that hold a cold item (only their cold candidates are scored). `--full`
scores everything. The report states the sample sizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from edgerec.export import metrics
from edgerec.export.data import DataConfig
from edgerec.export.samples import SPLITS, Basket, prepare
from edgerec.core.featurize import EncodedBatch, Featurizer, TokenIds
from edgerec.core.settings import add_arguments, dump_json, from_arguments, from_jsonable, setting, to_jsonable

Scorer = Callable[[EncodedBatch], tuple[np.ndarray, np.ndarray]]
SLICES = ("all", "repeat", "new", "cold")
SLICE_TITLES = {
    "all": "all candidates",
    "repeat": "repeat items (bought before by the customer)",
    "new": "new-to-customer items",
    "cold": "cold-start items vs cold negatives",
}
RANKING_METRICS = ("auc", "gauc", "ndcg@10", "hr@10", "mrr")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What to score and how much of it (sized to ~1-2 minutes on 2 CPU cores)."""

    checkpoint: Path = setting(Path("artifacts/checkpoint"), "checkpoint folder written by `edgerec train`")
    split: str = setting("test", "split to score: valid (for tuning) or test (for the final report)")
    data_dir: Path = setting(Path("artifacts/data"), "where the stored candidates are cached")
    baskets: int = setting(
        160,
        "baskets scored for the all/repeat/new slices (seeded subsample; ~52 candidates each, ~8k pairs)",
    )
    cold_baskets: int = setting(
        300, "baskets holding a cold item whose cold candidates are scored for the cold slice (seeded subsample)"
    )
    subsample_seed: int = setting(0, "seed of the basket subsamples")
    batch_size: int = setting(64, "pairs per forward pass")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    full: bool = setting(False, "score every basket of the split (slow: ~190k pairs on the test split)")
    baselines: bool = setting(True, "also score the baselines on the same candidates")


# -- scoring --------------------------------------------------------------------------------------


def basket_pairs(baskets: Sequence[Basket], featurizer: Featurizer) -> list[tuple[TokenIds, TokenIds]]:
    """(context, candidate) token pairs in basket/candidate order."""
    pairs = []
    for basket in baskets:
        pairs.extend(featurizer.catalog_pairs(basket.history, basket.candidates))
    return pairs


def score_baskets(
    baskets: Sequence[Basket],
    featurizer: Featurizer,
    scorer: Scorer,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat purchase probabilities and expected quantities, in basket/candidate order.

    Pairs are sorted by length so each batch pads little, then put back in order.
    """
    pairs = basket_pairs(baskets, featurizer)
    probabilities = np.zeros(len(pairs), dtype=np.float64)
    quantities = np.zeros(len(pairs), dtype=np.float64)
    order = sorted(range(len(pairs)), key=lambda i: featurizer.pair_length(*pairs[i]))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress, leave=False):
        index = order[start : start + batch_size]
        batch_probabilities, batch_quantities = scorer(featurizer.pack([pairs[i] for i in index]))
        probabilities[index] = np.asarray(batch_probabilities, dtype=np.float64).reshape(-1)
        quantities[index] = np.asarray(batch_quantities, dtype=np.float64).reshape(-1)
    return probabilities, quantities


def torch_scorer(model) -> Scorer:
    """A scorer running the PyTorch model (wrapped in `ScoringModel`) without gradients."""
    import torch

    from edgerec.export.model import ScoringModel

    scoring = ScoringModel(model).eval()

    def score(batch: EncodedBatch) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            feeds = {name: torch.from_numpy(array) for name, array in batch.as_feeds().items()}
            probabilities, quantities = scoring(**feeds)
        return probabilities.numpy(), quantities.numpy()

    return score


# -- metrics ----------------------------------------------------------------------------------------


def _slice_masks(baskets: Sequence[Basket]) -> dict[str, np.ndarray]:
    repeat = np.array([r for b in baskets for r in b.is_repeat], dtype=bool)
    cold = np.array([c for b in baskets for c in b.is_cold], dtype=bool)
    main = np.array([m for b in baskets for m in b.in_main_slices], dtype=bool)
    return {"all": main, "repeat": main & repeat, "new": main & ~repeat, "cold": cold}


def ranking_report(
    baskets: Sequence[Basket], probs: np.ndarray, quantities: np.ndarray | None = None
) -> dict[str, dict]:
    """Metrics per slice (all, repeat, new, cold) with their sample sizes.

    Per-basket metrics (NDCG@10, HR@10, MRR) average over baskets that have
    both a positive and a negative in the slice; AUC pools the slice's
    candidates; GAUC groups them by customer. RMSE compares expected and
    bought quantities on the slice's positives, in units and in log units.
    """
    probs = np.asarray(probs, dtype=float)
    labels = np.array([y for b in baskets for y in b.labels], dtype=int)
    bought = np.array([q for b in baskets for q in b.quantities], dtype=float)
    customers = np.array([b.customer_id for b in baskets for _ in b.candidates])
    if probs.shape != labels.shape:
        raise ValueError(f"got {probs.size} scores for {labels.size} candidates")
    bounds = np.cumsum([0] + [len(b.candidates) for b in baskets])
    report = {}
    for name, mask in _slice_masks(baskets).items():
        per_basket: dict[str, list[float]] = {"ndcg@10": [], "hr@10": [], "mrr": []}
        for start, end in zip(bounds[:-1], bounds[1:]):
            keep = mask[start:end]
            y, s = labels[start:end][keep], probs[start:end][keep]
            if y.size == 0 or y.all() or not y.any():
                continue
            per_basket["ndcg@10"].append(metrics.ndcg_at_k(y, s, 10))
            per_basket["hr@10"].append(metrics.hit_rate_at_k(y, s, 10))
            per_basket["mrr"].append(metrics.mrr(y, s))
        positives = mask & (labels == 1)
        entry = {
            "auc": metrics.auc(labels[mask], probs[mask]),
            "gauc": metrics.gauc(customers[mask], labels[mask], probs[mask]),
            **{key: float(np.mean(values)) if values else float("nan") for key, values in per_basket.items()},
            "rmse_quantity": float("nan"),
            "rmse_log_quantity": float("nan"),
            "ranked_baskets": len(per_basket["mrr"]),
            "candidates": int(mask.sum()),
            "positives": int(positives.sum()),
            "customers": int(len(np.unique(customers[mask]))),
        }
        if quantities is not None and positives.any():
            predicted = np.maximum(np.asarray(quantities, dtype=float)[positives], 1e-6)
            entry["rmse_quantity"] = metrics.rmse(bought[positives], predicted)
            entry["rmse_log_quantity"] = metrics.rmse(np.log(bought[positives]), np.log(predicted))
        report[name] = entry
    return report


# -- the `edgerec eval` stage ---------------------------------------------------------------------------


def subsample(baskets: Sequence[Basket], size: int, seed: int) -> list[Basket]:
    """A seeded subsample, kept in time order; all baskets when `size` is 0 or large enough."""
    if not size or size >= len(baskets):
        return list(baskets)
    chosen = np.random.default_rng(seed).choice(len(baskets), size=size, replace=False)
    return [baskets[i] for i in np.sort(chosen)]


def _keep(basket: Basket, keep: list[int]) -> Basket:
    """The basket with only the candidates at positions `keep`."""
    return dataclasses.replace(
        basket,
        candidates=tuple(basket.candidates[i] for i in keep),
        labels=tuple(basket.labels[i] for i in keep),
        quantities=tuple(basket.quantities[i] for i in keep),
        is_repeat=tuple(basket.is_repeat[i] for i in keep),
        is_cold=tuple(basket.is_cold[i] for i in keep),
        kinds=tuple(basket.kinds[i] for i in keep) if basket.kinds else (),
    )


def main_only(baskets: Sequence[Basket]) -> list[Basket]:
    """Baskets without their dedicated cold negatives (which only the cold slice uses)."""
    return [_keep(b, [i for i, main in enumerate(b.in_main_slices) if main]) for b in baskets]


def cold_only(baskets: Sequence[Basket]) -> list[Basket]:
    """Baskets holding a cold positive, reduced to their cold candidates (cold positives vs cold negatives)."""
    out = []
    for basket in baskets:
        keep = [i for i, cold in enumerate(basket.is_cold) if cold]
        if any(basket.labels[i] for i in keep):
            out.append(_keep(basket, keep))
    return out


def merged_report(
    main: Sequence[Basket], cold: Sequence[Basket], probs: np.ndarray, quantities: np.ndarray | None
) -> dict[str, dict]:
    """Slices all/repeat/new from the main sample and the cold slice from the cold sample.

    `probs`/`quantities` hold the main sample's scores followed by the cold sample's.
    """
    split = sum(len(b.candidates) for b in main)
    report = ranking_report(main, probs[:split], None if quantities is None else quantities[:split])
    report["cold"] = ranking_report(cold, probs[split:], None if quantities is None else quantities[split:])["cold"]
    return report


def markdown_table(results: dict[str, dict[str, dict]], sizes: dict) -> str:
    """One table per slice: a row per model, a column per metric."""
    lines = [
        f"# Offline evaluation ({sizes['split']} split)",
        "",
        f"Main sample: {sizes['baskets']} of {sizes['split_baskets']} baskets, {sizes['candidates']} candidates. "
        f"Cold slice: {sizes['cold_baskets']} of {sizes['split_cold_baskets']} baskets holding a cold item, "
        f"{sizes['cold_candidates']} cold candidates. Ties keep the stored (seeded random) candidate order.",
    ]
    columns = (*RANKING_METRICS, "rmse_log_quantity")
    for name in SLICES:
        any_model = next(iter(results.values()))[name]
        lines += [
            "",
            f"## {SLICE_TITLES[name]}",
            "",
            f"{any_model['ranked_baskets']} ranked baskets, {any_model['candidates']} candidates, "
            f"{any_model['positives']} positives, {any_model['customers']} customers",
            "",
            "| model | " + " | ".join(columns) + " |",
            "|---" * (len(columns) + 1) + "|",
        ]
        for model, slices in results.items():
            values = [slices[name][c] for c in columns]
            lines.append(f"| {model} | " + " | ".join("–" if np.isnan(v) else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def evaluate(config: EvalConfig) -> dict:
    """Score the model and the baselines; write eval_report.json and eval_report.md next to the checkpoint."""
    import torch

    from edgerec.export.baselines import fit_baselines
    from edgerec.export.model import load_checkpoint

    if config.split not in SPLITS[1:]:
        raise ValueError(f"split must be 'valid' or 'test', got {config.split!r}")
    if config.threads:
        torch.set_num_threads(config.threads)
    started = time.perf_counter()
    checkpoint = load_checkpoint(config.checkpoint)
    data_config = from_jsonable(DataConfig, checkpoint.info["train_settings"]["data"])
    prepared = prepare(data_config, config.data_dir)
    if prepared.fingerprint != checkpoint.info.get("data_fingerprint"):
        raise ValueError(
            f"{config.checkpoint} was trained on data {checkpoint.info.get('data_fingerprint')}, "
            f"but the data now gives {prepared.fingerprint}; retrain or point --csv-path/$EDGEREC_DATA at the same file"
        )
    split_baskets = prepared.splits[config.split]
    with_cold = cold_only(split_baskets)
    main = main_only(subsample(split_baskets, 0 if config.full else config.baskets, config.subsample_seed))
    cold = subsample(with_cold, 0 if config.full else config.cold_baskets, config.subsample_seed)
    sizes = {
        "split": config.split,
        "split_baskets": len(split_baskets),
        "baskets": len(main),
        "candidates": sum(len(b.candidates) for b in main),
        "split_cold_baskets": len(with_cold),
        "cold_baskets": len(cold),
        "cold_candidates": sum(len(b.candidates) for b in cold),
    }
    model_name = f"edgerec ({checkpoint.model.config.num_hidden_layers}-layer cross-encoder)"
    scoring_started = time.perf_counter()
    probs, quantities = score_baskets([*main, *cold], checkpoint.featurizer, torch_scorer(checkpoint.model), config.batch_size)
    scoring_seconds = time.perf_counter() - scoring_started
    results = {model_name: merged_report(main, cold, probs, quantities)}
    if config.baselines:
        for baseline in tqdm(fit_baselines(prepared, config.split), desc="baselines", leave=False):
            scores = baseline.score([*main, *cold])
            expected = baseline.quantity([*main, *cold]) if baseline.quantity else None
            results[baseline.name] = merged_report(main, cold, scores, expected)
    report = {
        "settings": to_jsonable(config),
        "checkpoint": str(config.checkpoint),
        "data_fingerprint": prepared.fingerprint,
        "sizes": sizes,
        "results": results,
        "timings": {
            "model_scoring_seconds": round(scoring_seconds, 2),
            "pairs_per_second": round(len(probs) / max(scoring_seconds, 1e-9), 1),
            "total_seconds": round(time.perf_counter() - started, 2),
        },
    }
    folder = Path(config.checkpoint)
    dump_json(folder / "eval_report.json", report)
    (folder / "eval_report.md").write_text(markdown_table(results, sizes))
    return report


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    config = from_arguments(EvalConfig, args)
    evaluate(config)
    print((Path(config.checkpoint) / "eval_report.md").read_text())
    return 0
