"""The two-tower ranker on tiny data: output shapes and units, leak-free inputs, a falling loss, a fixed seed."""

import dataclasses

import numpy as np
import pytest
import torch

from edgerec.core.behaviour import DAYS_CAP, NUM_FEATURES, to_seconds
from edgerec.export.evaluate import ranking_report
from edgerec.export.ranker import ItemTower, TwoTowerRanker, history_arrays, load_ranker, save_ranker
from edgerec.export.ranker_train import (
    RankerConfig,
    TrainingLists,
    item_embeddings,
    month_start,
    ranker_tables,
    score_encoded,
    train_ranker,
    validation_set,
)

TINY = RankerConfig(tiny=True, epochs=4, batch_baskets=8, proj_dim=16, hidden=32, learning_rate=3e-3, threads=1)


def random_inputs(pooling_seed=0, batch=3, history=5, candidates=7, dim=32):
    generator = torch.Generator().manual_seed(pooling_seed)
    mask = torch.ones(batch, history, dtype=torch.bool)
    mask[1, 2:] = False  # a short history
    mask[2] = False  # a customer with no history at all
    return (
        torch.randn(batch, history, dim, generator=generator),
        torch.randint(1, 5, (batch, history), generator=generator).float(),
        torch.rand(batch, history, generator=generator) * DAYS_CAP,
        mask,
        torch.randn(batch, candidates, dim, generator=generator),
        torch.randn(batch, candidates, NUM_FEATURES, generator=generator),
    )


@pytest.mark.parametrize("pooling", ["weighted", "attention"])
@pytest.mark.parametrize("similarity", [True, False])
def test_head_outputs_have_one_probability_and_one_positive_quantity_per_candidate(pooling, similarity):
    torch.manual_seed(0)
    model = TwoTowerRanker(item_dim=32, proj_dim=8, hidden=16, pooling=pooling, similarity_features=similarity).eval()
    inputs = random_inputs()
    logit, log_quantity = model(*inputs)
    probability, quantity = model.score(*inputs)
    assert logit.shape == log_quantity.shape == probability.shape == quantity.shape == (3, 7)
    assert probability.dtype == quantity.dtype == torch.float32
    assert torch.isfinite(probability).all() and torch.isfinite(quantity).all()
    assert ((probability >= 0) & (probability <= 1)).all() and (quantity > 0).all()
    torch.testing.assert_close(probability, torch.sigmoid(logit))
    torch.testing.assert_close(quantity, torch.exp(log_quantity))


def concatenated_head(model: TwoTowerRanker, history, counts, days, mask, items, features):
    """The head as the module docstring writes it: MLP([u W_u, i W_i, (u W_u) ⊙ (i W_i), sim, φ']), each
    part computed and concatenated in full (weighted pooling): the reference for the factored forward."""
    prior = model.prior(counts, days, mask)
    any_history = mask.any(dim=1, keepdim=True)
    weights = torch.softmax(torch.where(any_history, prior, torch.zeros_like(prior)), dim=1) * mask
    pooled = torch.einsum("bh,bhd->bd", weights, history)
    item_z = model.item_projection(items)
    user_z = model.user_projection(pooled).unsqueeze(1).expand_as(item_z)
    unit_items = torch.nn.functional.normalize(items, dim=-1)
    cosine = torch.einsum("bnd,bhd->bnh", unit_items, torch.nn.functional.normalize(history, dim=-1))
    nearest = cosine.masked_fill(~mask.unsqueeze(1), -1.0).max(dim=2).values.masked_fill(~any_history, 0.0)
    to_user = (unit_items * torch.nn.functional.normalize(pooled, dim=-1).unsqueeze(1)).sum(dim=-1)
    rest = torch.cat([nearest.unsqueeze(-1), to_user.unsqueeze(-1), (features - model.feature_mean) / model.feature_std], -1)
    hidden = model.body(torch.cat([user_z, item_z, user_z * item_z, rest], dim=-1))
    logit = model.purchase_head(hidden).squeeze(-1)
    if model.wide_weight is not None:
        logit = logit + (rest * model.wide_weight).sum(dim=-1)
    return logit, model.quantity_head(hidden).squeeze(-1)


@pytest.mark.parametrize("wide", [False, True])
def test_the_factored_head_computes_the_concatenated_one(wide):
    torch.manual_seed(0)
    model = TwoTowerRanker(item_dim=32, proj_dim=8, hidden=16, wide=wide).eval()
    if wide:
        torch.nn.init.normal_(model.wide_weight)
    inputs = random_inputs()
    for got, expected in zip(model(*inputs), concatenated_head(model, *inputs)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_padding_and_batch_mates_do_not_change_a_customers_scores():
    torch.manual_seed(0)
    model = TwoTowerRanker(item_dim=32, proj_dim=8, hidden=16, pooling="attention").eval()
    history, counts, days, mask, items, features = random_inputs()
    alone = model(history[1:2, :2], counts[1:2, :2], days[1:2, :2], mask[1:2, :2], items[1:2], features[1:2])[0]
    batched = model(history, counts, days, mask, items, features)[0][1:2]
    torch.testing.assert_close(alone, batched)


def test_history_arrays_keep_only_the_past_newest_first_and_default_unknown_days():
    index = {"a": 0, "b": 1, "c": 2, "d": 3}
    history = [("a", 2, 3.0), ("b", 1, 0.0), ("zz", 4, 1.0), ("c", 1, None), ("a", 5, 9.0), ("d", 1, 999.0)]
    rows, counts, days = history_arrays(history, index, max_history=10)
    # b bought at "now" is not in the past; zz has no embedding; the repeated a keeps its newest entry
    assert rows.tolist() == [0, 2, 3] and counts.tolist() == [2, 1, 1]
    assert days.tolist() == [3.0, DAYS_CAP, DAYS_CAP]
    assert history_arrays(history, index, max_history=1)[0].tolist() == [0]


def test_item_tower_embeds_each_text_the_same_whatever_its_batch():
    tower = ItemTower.tiny(seed=0)
    texts = ["RED RETROSPOT MUG", "PINK GARDEN BIRD CANDLE HOLDER SET OF 3", "MUG"]
    together = tower.embed_items(texts, batch_size=8, progress=False)
    one_by_one = np.concatenate([tower.embed_items([t], progress=False) for t in texts])
    assert together.dtype == np.float32 and together.shape == (3, tower.dim)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    assert not np.allclose(together[0], together[2])


@pytest.fixture(scope="module")
def tiny_parts(tiny_data):
    """Embeddings, training lists and validation set of the synthetic shop, shared by the training tests."""
    embeddings = item_embeddings(tiny_data, TINY, progress=False)
    index = {item: i for i, item in enumerate(embeddings[0])}
    return embeddings, TrainingLists(tiny_data, index, TINY, progress=False), validation_set(tiny_data, index, TINY, progress=False)


def test_training_features_come_from_tables_built_before_each_baskets_month(tiny_data, tiny_parts):
    _, lists, _ = tiny_parts
    assert lists.baskets, "the synthetic shop has train baskets"
    for basket in lists.baskets:
        tables = lists.tables[basket.month]
        assert tables.cutoff == to_seconds(month_start(basket.time)) <= to_seconds(basket.time)
        assert all(entry.days_ago is None or entry.days_ago > 0 for entry in basket.entries)


def test_a_table_window_keeps_only_the_last_months_before_the_cutoff(tiny_data):
    cutoff = "2011-09-01"
    everything = ranker_tables(tiny_data.purchases, cutoff, dataclasses.replace(TINY, table_months=0))
    one_month = ranker_tables(tiny_data.purchases, cutoff, dataclasses.replace(TINY, table_months=1))
    assert one_month.cutoff == everything.cutoff == to_seconds(cutoff)
    assert one_month.meta["start"] >= to_seconds("2011-08-01") > everything.meta["start"]
    assert one_month.meta["baskets"] < everything.meta["baskets"]


def test_training_lists_hold_every_positive_and_the_configured_negatives(tiny_data, tiny_parts):
    _, lists, _ = tiny_parts
    history, rows, phi, labels, log_units = lists.epoch(0)[0]
    basket = lists.baskets[0]
    assert labels.sum() == min(len(basket.positives), TINY.max_positives)
    assert 0 < (labels == 0).sum() <= TINY.history_negatives + TINY.popular_negatives + TINY.uniform_negatives
    assert phi.shape == (len(rows), NUM_FEATURES) and (rows >= 0).all()
    assert (log_units[labels == 0] == 0).all() and (log_units[labels > 0] >= 0).all()
    again = lists.epoch(0)[0]
    np.testing.assert_array_equal(rows, again[1])  # the negatives are drawn from the seed
    assert not np.array_equal(rows, lists.epoch(1)[0][1])  # and re-drawn each epoch


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tiny_parts):
    embeddings, lists, valid = tiny_parts
    return train_ranker(tiny_data, TINY, embeddings=embeddings, lists=lists, valid=valid, progress=False)


def test_a_tiny_ranker_trains_and_its_loss_falls(tiny_run):
    epochs = tiny_run.report["epochs"]
    assert len(epochs) == TINY.epochs
    assert epochs[-1]["purchase_loss"] < 0.9 * epochs[0]["purchase_loss"]
    assert all(np.isfinite(c["loss"]) for c in tiny_run.report["loss_curve"])
    assert "all/ndcg@10" in epochs[-1]["valid"]


def test_training_is_reproducible_with_its_seed(tiny_data, tiny_parts, tiny_run):
    embeddings, lists, valid = tiny_parts
    again = train_ranker(tiny_data, TINY, embeddings=embeddings, lists=lists, valid=valid, progress=False)
    for name, value in tiny_run.model.state_dict().items():
        torch.testing.assert_close(value, again.model.state_dict()[name], rtol=0, atol=0)
    other = train_ranker(
        tiny_data, dataclasses.replace(TINY, seed=1, epochs=1), embeddings=embeddings, lists=lists, valid=valid, progress=False
    )
    assert not torch.equal(other.model.purchase_head.weight, tiny_run.model.purchase_head.weight)


def test_scores_cover_every_stored_candidate_and_survive_a_save(tiny_parts, tiny_run, tmp_path):
    embeddings, _, valid = tiny_parts
    probs, units = score_encoded(tiny_run.model, embeddings[1], valid)
    assert probs.shape == units.shape == (sum(len(b.candidates) for b in valid.baskets),)
    assert ((probs >= 0) & (probs <= 1)).all() and (units > 0).all()
    report = ranking_report(valid.baskets, probs, units)
    assert 0.0 <= report["all"]["ndcg@10"] <= 1.0
    loaded = load_ranker(save_ranker(tmp_path / "ranker", tiny_run.model))
    np.testing.assert_array_equal(score_encoded(loaded, embeddings[1], valid)[0], probs)
