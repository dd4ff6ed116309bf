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

For the ranker (issue 12): `popularity_negatives` re-draws each basket's
negatives in proportion to item popularity, so a model that only learned
popularity does not look good; `bootstrap_intervals` gives 95% intervals over
baskets (or customers) for NDCG@10, HR@10, MRR and GAUC, and
`paired_intervals` the interval of one model minus another on the same
resamples.
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
from edgerec.core.ranking import top_indices
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


def _per_basket_metrics(
    baskets: Sequence[Basket], labels: np.ndarray, probs: np.ndarray, mask: np.ndarray
) -> dict[str, np.ndarray]:
    """NDCG@10, HR@10 and MRR of each basket's candidates in `mask`: {metric: float [n_baskets]}.

    nan for a basket whose masked candidates are not both positive and negative (it is not ranked).
    """
    basket_of = np.repeat(np.arange(len(baskets)), [len(b.candidates) for b in baskets])[mask]
    y = labels[mask]
    out = metrics.list_metrics(basket_of, y, probs[mask], len(baskets), 10)
    positives = np.bincount(basket_of, weights=y == 1, minlength=len(baskets))
    negatives = np.bincount(basket_of, weights=y == 0, minlength=len(baskets))
    ranked = (positives > 0) & (negatives > 0)
    return {key: np.where(ranked, values, np.nan) for key, values in out.items()}


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
    report = {}
    for name, mask in _slice_masks(baskets).items():
        per_basket = _per_basket_metrics(baskets, labels, probs, mask)
        ranked = ~np.isnan(per_basket["mrr"])
        positives = mask & (labels == 1)
        entry = {
            "auc": metrics.auc(labels[mask], probs[mask]),
            "gauc": metrics.gauc(customers[mask], labels[mask], probs[mask]),
            **{key: float(np.mean(values[ranked])) if ranked.any() else float("nan") for key, values in per_basket.items()},
            "rmse_quantity": float("nan"),
            "rmse_log_quantity": float("nan"),
            "ranked_baskets": int(ranked.sum()),
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
    n_main = sum(len(b.candidates) for b in main)
    save_basket_scores(folder / EVAL_SCORES, main, probs[:n_main], quantities[:n_main])
    return report


EVAL_SCORES = "eval_scores.npz"  # the model's scores of the main subsample, next to eval_report.json


def save_basket_scores(path: Path, baskets: Sequence[Basket], probabilities: np.ndarray, quantities: np.ndarray) -> Path:
    """Per-candidate scores of `baskets` (flat, basket order) with what identifies them (invoice, customer,
    candidate ids), so that a later step can pair them with another model's scores of the same candidates."""
    np.savez(
        path,
        invoice=np.array([b.invoice for b in baskets]),
        customer=np.array([b.customer_id for b in baskets]),
        sizes=np.array([len(b.candidates) for b in baskets], dtype=np.int64),
        candidates=np.array([c for b in baskets for c in b.candidates]),
        probabilities=np.asarray(probabilities, dtype=np.float32),
        quantities=np.asarray(quantities, dtype=np.float32),
    )
    return Path(path)


def matching_scores(path: Path, baskets: Sequence[Basket]) -> tuple[list[int], np.ndarray, np.ndarray] | None:
    """Scores saved by `save_basket_scores`, matched to `baskets` by (customer, invoice) with the same
    candidates in the same order: (positions in `baskets`, probabilities, quantities) in the saved order;
    None when the file is missing or a saved basket is not among `baskets` as saved."""
    path = Path(path)
    if not path.exists():
        return None
    saved = np.load(path)
    where = {(b.customer_id, b.invoice): i for i, b in enumerate(baskets)}
    positions, start = [], 0
    candidates = saved["candidates"].tolist()
    for customer, invoice, size in zip(saved["customer"].tolist(), saved["invoice"].tolist(), saved["sizes"].tolist()):
        i = where.get((customer, invoice))
        if i is None or tuple(candidates[start : start + size]) != baskets[i].candidates:
            return None
        positions.append(i)
        start += size
    return positions, saved["probabilities"], saved["quantities"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    config = from_arguments(EvalConfig, args)
    evaluate(config)
    print((Path(config.checkpoint) / "eval_report.md").read_text())
    return 0


# -- popularity-drawn negatives and intervals (issue 12) ---------------------------------------------


def popularity_negatives(
    baskets: Sequence[Basket],
    popularity: dict[str, float],
    seed: int = 0,
    negatives: int | None = None,
    exclude: dict[str, set] | None = None,
) -> list[Basket]:
    """The baskets with their stored negatives replaced by negatives drawn in proportion to `popularity`.

    What a shop's candidate generator hands a ranker is mostly popular items;
    against these, a model that only learned popularity gains nothing. For
    basket i (its own generator, seeded with `[seed, i]`), `negatives` items
    (default: as many as its stored non-cold negatives) are drawn without
    replacement, with probability proportional to `popularity` (items with 0
    are never drawn), never one of its positives nor one of `exclude[invoice]`
    (pass every item the invoice bought: a basket keeps at most
    `max_positives` of them). Positives keep their labels, quantities and
    flags; negatives get kind "popular", `is_cold` False and `is_repeat` from
    the history. Candidates are shuffled with the same generator. The cold
    slice then has no negatives: read the all/repeat/new slices.
    """
    pool = np.array([item for item, value in popularity.items() if value > 0], dtype=object)
    weights = np.array([popularity[item] for item in pool], dtype=float)
    position = {item: i for i, item in enumerate(pool)}
    out = []
    for i, basket in enumerate(baskets):
        rng = np.random.default_rng([seed, i])
        keep = [j for j, label in enumerate(basket.labels) if label]
        stored = sum(1 for label, main in zip(basket.labels, basket.in_main_slices) if main and not label)
        n = stored if negatives is None else negatives
        banned = {basket.candidates[j] for j in keep} | set((exclude or {}).get(basket.invoice, ()))
        banned_rows = [position[item] for item in banned if item in position]
        p = weights.copy()
        p[banned_rows] = 0.0
        n = min(n, int((p > 0).sum()))
        drawn = pool[rng.choice(len(pool), size=n, replace=False, p=p / p.sum())] if n > 0 else []
        past = {item for item, _ in basket.history}
        candidates = [basket.candidates[j] for j in keep] + [str(item) for item in drawn]
        labels = [1] * len(keep) + [0] * n
        quantities = [basket.quantities[j] for j in keep] + [0.0] * n
        repeat = [basket.is_repeat[j] for j in keep] + [item in past for item in drawn]
        cold = [basket.is_cold[j] for j in keep] + [False] * n
        kinds = ["positive"] * len(keep) + ["popular"] * n
        order = rng.permutation(len(candidates))
        out.append(
            dataclasses.replace(
                basket,
                candidates=tuple(candidates[j] for j in order),
                labels=tuple(labels[j] for j in order),
                quantities=tuple(quantities[j] for j in order),
                is_repeat=tuple(bool(repeat[j]) for j in order),
                is_cold=tuple(bool(cold[j]) for j in order),
                kinds=tuple(kinds[j] for j in order),
            )
        )
    return out


INTERVAL_METRICS = ("ndcg@10", "hr@10", "mrr", "gauc")


def resample_weights(baskets: Sequence[Basket], n_resamples: int = 1000, seed: int = 0, unit: str = "basket") -> np.ndarray:
    """[n_baskets, n_resamples]: how many times each basket is in each bootstrap resample (seeded)."""
    if unit not in ("basket", "customer"):
        raise ValueError(f"unit must be 'basket' or 'customer', got {unit!r}")
    rng = np.random.default_rng(seed)
    if unit == "basket":
        n = len(baskets)
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).T.astype(float)
    _, customer_of = np.unique(np.array([b.customer_id for b in baskets], dtype=str), return_inverse=True)
    n = int(customer_of.max()) + 1
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).T[customer_of].astype(float)


def bootstrap_replicates(
    baskets: Sequence[Basket],
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    unit: str = "basket",
    slices: Sequence[str] = SLICES,
) -> dict[str, dict[str, np.ndarray]]:
    """Each slice's NDCG@10, HR@10, MRR and GAUC over `n_resamples` bootstrap resamples: {slice: {metric: [R]}}.

    A resample draws baskets with replacement (`unit="basket"`), or customers
    with all their baskets (`unit="customer"`, wider when a customer's baskets
    agree); the same seed and baskets give the same resamples for every model,
    so two models' replicates can be subtracted (`paired_intervals`). Per-basket
    metrics average over the resample's ranked baskets; GAUC is computed
    exactly on the resample (a basket drawn twice counts twice in its
    customer's pooled AUC and weight), as `ranking_report` would on it.
    Resampling baskets changes a customer's mix of within-basket and
    cross-basket pairs, so GAUC's basket-bootstrap distribution sits off its
    estimate (on the real test split ~0.005 above it); `unit="customer"` keeps
    each customer's AUC intact and is the one to quote for GAUC.
    """
    from scipy import sparse

    probs = np.asarray(probs, dtype=float)
    labels = np.array([y for b in baskets for y in b.labels], dtype=int)
    if probs.shape != labels.shape:
        raise ValueError(f"got {probs.size} scores for {labels.size} candidates")
    bounds = np.cumsum([0] + [len(b.candidates) for b in baskets])
    customer_ids, customer_of = np.unique(np.array([b.customer_id for b in baskets], dtype=str), return_inverse=True)
    n_baskets, n_customers = len(baskets), len(customer_ids)
    weights = resample_weights(baskets, n_resamples, seed, unit)
    group = sparse.csr_matrix((np.ones(n_baskets), (customer_of, np.arange(n_baskets))), shape=(n_customers, n_baskets))
    by_customer: dict[int, list[int]] = {}
    for b, c in enumerate(customer_of):
        by_customer.setdefault(int(c), []).append(b)
    masks = _slice_masks(baskets)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in slices:
        mask = masks[name]
        per_basket = _per_basket_metrics(baskets, labels, probs, mask)
        positives, negatives = [], []
        for start, end in zip(bounds[:-1], bounds[1:]):
            keep = mask[start:end]
            y, s = labels[start:end][keep], probs[start:end][keep]
            positives.append(s[y == 1])
            negatives.append(np.sort(s[y == 0]))
        result = {}
        for metric, values in per_basket.items():
            ranked = ~np.isnan(values)
            total = weights[ranked].sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                result[metric] = (values[ranked] @ weights[ranked]) / total
        # GAUC: wins[b1, b2] = (positive of b1, negative of b2) pairs the positive wins, ties half (same customer)
        rows, cols, wins = [], [], []
        for members in by_customer.values():
            scores = [positives[b] for b in members]
            if not any(len(s) for s in scores) or not any(len(negatives[b]) for b in members):
                continue
            pooled = np.concatenate(scores)
            owner = np.repeat(np.arange(len(members)), [len(s) for s in scores])
            for b2 in members:
                if not len(negatives[b2]) or not pooled.size:
                    continue
                below = np.searchsorted(negatives[b2], pooled, side="left")
                tied = np.searchsorted(negatives[b2], pooled, side="right") - below
                column = np.bincount(owner, weights=below + 0.5 * tied, minlength=len(members))
                rows.extend(members)
                cols.extend([b2] * len(members))
                wins.extend(column.tolist())
        pair_wins = sparse.csr_matrix((wins, (rows, cols)), shape=(n_baskets, n_baskets))
        n_pos = np.array([len(p) for p in positives], dtype=float)
        n_neg = np.array([len(n) for n in negatives], dtype=float)
        won = group @ (weights * (pair_wins @ weights))
        pos, neg = group @ (weights * n_pos[:, None]), group @ (weights * n_neg[:, None])
        ranked = (pos > 0) & (neg > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = np.where(ranked, won / np.where(ranked, pos * neg, 1.0), 0.0)
            size = np.where(ranked, pos + neg, 0.0)
            result["gauc"] = (auc * size).sum(axis=0) / size.sum(axis=0)
        out[name] = result
    return out


def _interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0 * 100.0
    finite = replicates[np.isfinite(replicates)]
    if not finite.size:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_intervals(
    baskets: Sequence[Basket],
    probs: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "basket",
    slices: Sequence[str] = SLICES,
) -> dict[str, dict[str, dict[str, float]]]:
    """Percentile bootstrap intervals: {slice: {metric: {"estimate", "low", "high"}}} for `INTERVAL_METRICS`.

    `estimate` is the metric on the baskets as given (what `ranking_report` says).
    """
    replicates = bootstrap_replicates(baskets, probs, n_resamples, seed, unit, slices)
    point = ranking_report(baskets, probs)
    return {
        name: {
            metric: dict(zip(("estimate", "low", "high"), (point[name][metric], *_interval(values, level))))
            for metric, values in replicates[name].items()
        }
        for name in slices
    }


def paired_intervals(
    baskets: Sequence[Basket],
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    unit: str = "basket",
    slices: Sequence[str] = SLICES,
) -> dict[str, dict[str, dict[str, float]]]:
    """Intervals of model A minus model B on the same resamples (A beats B when `low` > 0)."""
    a = bootstrap_replicates(baskets, probs_a, n_resamples, seed, unit, slices)
    b = bootstrap_replicates(baskets, probs_b, n_resamples, seed, unit, slices)
    point_a, point_b = ranking_report(baskets, probs_a), ranking_report(baskets, probs_b)
    return {
        name: {
            metric: dict(
                zip(
                    ("estimate", "low", "high"),
                    (point_a[name][metric] - point_b[name][metric], *_interval(a[name][metric] - b[name][metric], level)),
                )
            )
            for metric in a[name]
        }
        for name in slices
    }


RERANK_OFFSET = 2.0  # added to the re-ranker's probability of a basket's top R: above every first-stage score


def two_stage_scores(
    baskets: Sequence[Basket], first: np.ndarray, second: np.ndarray, top: int
) -> tuple[np.ndarray, np.ndarray]:
    """The two-stage result: each basket's `top` candidates by `first` re-ranked by `second`.

    `first`, `second`: probabilities (float, one per candidate of `baskets`, in
    basket order), e.g. the ranker's and the cross-encoder's. Returns
    (`order`, `probabilities`): `order` ranks a basket's re-ranked candidates
    first, by `second`, then the rest by `first` (`second + RERANK_OFFSET` and
    `first`, so per-basket metrics such as NDCG@10 and GAUC read it as the
    served ranking); `probabilities` is what a two-stage reply serves, `second`
    for the re-ranked and `first` for the others (for AUC and quantity). Ties
    in `first` keep candidate order. Raises ValueError on mismatched sizes or
    a negative `top`.
    """
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    total = sum(len(b.candidates) for b in baskets)
    if first.shape != (total,) or second.shape != (total,):
        raise ValueError(f"{total} candidates, got {first.shape} first-stage and {second.shape} second-stage scores")
    if top < 0:
        raise ValueError(f"top must be >= 0, got {top}")
    order, probabilities = first.copy(), first.copy()
    start = 0
    for basket in baskets:
        end = start + len(basket.candidates)
        best = start + top_indices(first[start:end], top)  # the served rule (core.ranking)
        order[best] = second[best] + RERANK_OFFSET
        probabilities[best] = second[best]
        start = end
    return order, probabilities
