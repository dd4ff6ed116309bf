"""Baselines see only data from before the split and score the stored candidates."""

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from test_samples import COLD, X, Y, hand_made_shop

from edgerec.core.behaviour import BehaviourTables
from edgerec.export.baselines import (
    als,
    behaviour_tables,
    blend_scores,
    co_occurrence,
    fit_baselines,
    fit_behaviour_baselines,
    history_before,
    last_purchase_times,
    popularity,
    repeat_frequency,
    tfidf_similarity,
    tune_blend_weight,
)
from edgerec.export.data import DataConfig
from edgerec.export.samples import Basket, prepare, split_starts


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return prepare(DataConfig(csv_path=hand_made_shop(tmp_path_factory.mktemp("shop") / "shop.csv.gz")))


def scores_of(baseline, basket):
    return dict(zip(basket.candidates, baseline.score([basket])))


def test_popularity_counts_only_baskets_before_the_split(shop):
    valid_basket = next(b for b in shop.splits["valid"] if b.invoice == "4")
    test_basket = next(b for b in shop.splits["test"] if b.invoice == "5")
    # X before 2011-09-01: invoice 1 and customer B's Dec and Feb baskets
    assert scores_of(popularity(history_before(shop, "valid")), valid_basket)[X] == 3
    # before 2011-11-01 also invoice 4 and B's Sep and Oct baskets
    test_scores = scores_of(popularity(history_before(shop, "test")), test_basket)
    assert test_scores[X] == 6
    assert test_scores[COLD] == 0  # first sold after the test split began
    with pytest.raises(ValueError):
        history_before(shop, "train")


def test_repeat_frequency_ranks_by_own_counts_and_breaks_ties_by_popularity(shop):
    test_basket = next(b for b in shop.splits["test"] if b.invoice == "5")
    scores = scores_of(repeat_frequency(history_before(shop, "test")), test_basket)
    assert 2 <= scores[X] < 2.5  # bought in 2 earlier baskets
    assert all(0 <= s < 0.5 for item, s in scores.items() if item not in dict(test_basket.history))


def test_co_occurrence_matches_a_brute_force_count(shop):
    past = history_before(shop, "test")
    test_basket = next(b for b in shop.splits["test"] if b.invoice == "5")
    baskets = past.groupby("invoice")["item"].apply(set)

    def expected(candidate):
        total = 0.0
        for item, _ in test_basket.history:
            if item == candidate:
                continue
            both = sum(1 for s in baskets if item in s and candidate in s)
            n_item = sum(1 for s in baskets if item in s)
            n_candidate = sum(1 for s in baskets if candidate in s)
            total += both / math.sqrt(max(n_item, 1) * max(n_candidate, 1)) if n_candidate else 0.0
        return total

    scores = scores_of(co_occurrence(past), test_basket)
    for candidate, value in scores.items():
        assert value == pytest.approx(expected(candidate))
    assert scores[Y] > 0 and scores[COLD] == 0


def test_als_scores_known_items_and_gives_cold_items_zero(shop):
    test_basket = next(b for b in shop.splits["test"] if b.invoice == "5")
    scores = scores_of(als(history_before(shop, "test")), test_basket)
    assert all(np.isfinite(list(scores.values())))
    assert scores[COLD] == 0.0
    assert any(value != 0.0 for value in scores.values())


def test_every_baseline_scores_every_candidate(tiny_data):
    baskets = tiny_data.splits["test"][:5]
    for baseline in fit_baselines(tiny_data, "test"):
        scores = baseline.score(baskets)
        assert scores.shape == (sum(len(b.candidates) for b in baskets),), baseline.name
        assert np.isfinite(scores).all()


# -- the behavioural baselines (issue 12) ------------------------------------------------------------


def test_last_purchase_times_are_the_latest_strictly_before_the_basket(shop):
    basket = next(b for b in shop.splits["test"] if b.invoice == "5")  # 2011-11-10 10:00, customer A
    times = last_purchase_times(shop.purchases, [basket])[0]
    assert set(times) == {item for item, _ in basket.history}
    assert times[X] == pd.Timestamp("2011-09-10 10:00:00").timestamp()  # invoice 4, not invoice 5 itself
    assert times[Y] == pd.Timestamp("2010-12-05 09:00:00").timestamp()


def chosen_item_tables() -> BehaviourTables:
    """Items r (a repeat item), n (new, co-bought with h), o (new, never co-bought), h (in the history)."""
    rows = [("b1", "h"), ("b1", "n"), ("b2", "h"), ("b2", "n"), ("b3", "o"), ("b4", "o"), ("b5", "r"), ("b6", "o")]
    invoices, items = zip(*rows)
    return BehaviourTables.build(invoices, ["c"] * len(rows), items, [1.0] * len(rows), [0.0] * len(rows), cutoff=1.0)


def cooc_basket(customer: str, positive: str) -> Basket:
    candidates = ("r", "n", "o")
    labels = tuple(int(c == positive) for c in candidates)
    return Basket(customer, "i" + customer, "2011-01-01 00:00:00", (("r", 1), ("h", 1)), candidates, labels,
                  tuple(float(y) for y in labels), (True, False, False), (False,) * 3, ("positive",) * 3)


def test_blend_weight_is_the_best_on_the_baskets_it_is_given():
    tables = chosen_item_tables()
    co_bought = [cooc_basket(str(i), "n") for i in range(4)]  # the co-bought new item is what they buy
    repeat = [cooc_basket(str(i), "r") for i in range(4)]  # the repeat item is what they buy
    weight, grid = tune_blend_weight(co_bought, tables, grid=(0.0, 0.5, 2.0))
    assert weight == 2.0 and grid[2.0] > grid[0.0]  # w * cooc(n) = w * 1.0 beats r's repeat count 1 only when w > 1
    assert tune_blend_weight(repeat, tables, grid=(0.0, 0.5, 2.0))[0] == 0.0
    scores = blend_scores(co_bought[:1], tables, 2.0)
    assert scores.argmax() == 1 and scores[0] == pytest.approx(1.0, abs=1e-5)


def test_blend_weight_is_tuned_on_validation_only(shop):
    _, tuned = fit_behaviour_baselines(shop, "test", grid=(0.0, 1.0, 10.0))
    flipped = {
        "test": [dataclasses.replace(b, labels=tuple(1 - y for y in b.labels)) for b in shop.splits["test"]],
    }
    other = dataclasses.replace(shop, splits={**shop.splits, **flipped})
    assert fit_behaviour_baselines(other, "test", grid=(0.0, 1.0, 10.0))[1] == tuned
    reversed_valid = dataclasses.replace(
        shop, splits={**shop.splits, "valid": [dataclasses.replace(b, labels=tuple(1 - y for y in b.labels))
                                                for b in shop.splits["valid"]]}
    )
    grid_valid = tuned["blends"]["all"]["valid_ndcg@10"]
    assert fit_behaviour_baselines(reversed_valid, "test", grid=(0.0, 1.0, 10.0))[1]["blends"]["all"]["valid_ndcg@10"] != grid_valid


def test_tfidf_scores_the_matching_text_highest():
    items = {
        "a": "RED ENAMEL TEAPOT",
        "b": "BLUE GLASS VASE",
        "c": "RED ENAMEL MUG",
        "d": "WOODEN SPOON",
        "e": "BLUE GLASS BOWL",
    }
    baseline = tfidf_similarity(items)

    def scores(history, candidates=("b", "c", "d", "e")):
        basket = Basket("u", "i", "2011-01-01 00:00:00", history, candidates, (0,) * len(candidates),
                        (0.0,) * len(candidates), (False,) * len(candidates), (False,) * len(candidates))
        return dict(zip(candidates, baseline.score([basket])))

    one = scores((("a", 1),))
    assert max(one, key=one.get) == "c" and one["d"] == 0.0  # shares "RED ENAMEL", the spoon shares nothing
    weighted = scores((("a", 1), ("b", 5)))
    assert weighted["e"] > weighted["c"]  # five blue glass baskets outweigh one red enamel one
    itself = scores((("a", 1),), ("a", "zzz"))
    assert itself["a"] == pytest.approx(1.0) and itself["zzz"] == 0.0  # an item the catalog lacks scores 0


def test_behaviour_baselines_score_every_candidate(tiny_data):
    baselines, tuned = fit_behaviour_baselines(tiny_data, "test")
    baskets = tiny_data.splits["test"][:5]
    assert set(tuned["blends"]) == {"all"}
    for baseline in baselines:
        scores = baseline.score(baskets)
        assert scores.shape == (sum(len(b.candidates) for b in baskets),), baseline.name
        assert np.isfinite(scores).all()


def test_a_blend_is_tuned_per_slice_each_as_if_tuned_alone(shop):
    """The new-to-customer blend is chosen on validation's new slice, beside the one chosen on all baskets."""
    grid = (0.0, 1.0, 10.0)
    baselines, tuned = fit_behaviour_baselines(shop, "test", grid=grid, objectives=("all", "new"))
    starts = split_starts(shop.config)
    tables = behaviour_tables(shop.purchases, starts["valid"])
    for objective in ("all", "new"):
        weight, scores = tune_blend_weight(shop.splits["valid"], tables, grid, objective)
        assert tuned["blends"][objective] == {"weight": weight, "valid_ndcg@10": scores}
    names = [b.name for b in baselines]
    assert names[:2] == [f"repeat + co-occurrence (w={tuned['blends'][o]['weight']:g}) [tuned on {o}]" for o in ("all", "new")]
    # the two blends share one feature pass, and score as a blend built alone would
    test = shop.splits["test"]
    alone = blend_scores(test, behaviour_tables(shop.purchases, starts["test"]), tuned["blends"]["new"]["weight"])
    np.testing.assert_allclose(baselines[1].score(test), alone)
    all_weight = tuned["blends"]["all"]["weight"]
    np.testing.assert_allclose(baselines[0].score(test), blend_scores(test, behaviour_tables(shop.purchases, starts["test"]), all_weight))
