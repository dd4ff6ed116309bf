"""Baselines see only data from before the split and score the stored candidates."""

import math

import numpy as np
import pytest
from test_samples import COLD, X, Y, hand_made_shop

from edgerec.export.baselines import als, co_occurrence, fit_baselines, history_before, popularity, repeat_frequency
from edgerec.export.data import DataConfig
from edgerec.export.samples import prepare


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
