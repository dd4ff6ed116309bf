"""Behavioural features: one code path for training and serving, never a fact from the basket's time or later."""

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from test_samples import COLD, A, Q, W, X, Y, Z, hand_made_shop

from edgerec.core.behaviour import (
    DAYS_CAP,
    FEATURE_NAMES,
    NUM_FEATURES,
    BehaviourTables,
    HistoryEntry,
    basket_features,
    behaviour_features,
)
from edgerec.export.baselines import behaviour_tables, co_occurrence, history_before, last_purchase_times
from edgerec.export.data import DataConfig
from edgerec.export.samples import prepare

TEST_START = "2011-11-01"
DAY = 86400.0


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    return prepare(DataConfig(csv_path=hand_made_shop(tmp_path_factory.mktemp("shop") / "shop.csv.gz")))


@pytest.fixture(scope="module")
def tables(shop):
    return behaviour_tables(shop.purchases, TEST_START)


def basket_5(shop):
    """Customer A's test basket at 2011-11-10 10:00: history X(2) Q(1) Y(2) Z(1) W(1), newest first."""
    return next(b for b in shop.splits["test"] if b.invoice == "5")


def column(features, name):
    return features[:, FEATURE_NAMES.index(name)]


def test_training_and_serving_give_the_same_features(shop, tables):
    basket = basket_5(shop)
    training = basket_features(basket, tables, last_purchase_times(shop.purchases, [basket])[0])
    # what a request carries: (item_key, count, days since last purchase), worked out by hand from the invoices
    sixty_one_days = 61.0  # invoice 4, 2011-09-10 10:00
    december = (340 * DAY + 3600) / DAY  # invoices 2 and 3, 2010-12-05 09:00
    request = [(X, 2, sixty_one_days), (Q, 1, sixty_one_days), (Y, 2, december), (Z, 1, december), (W, 1, december)]
    serving = behaviour_features(request, list(basket.candidates), tables, now=basket.time)
    assert training.dtype == np.float32 and training.shape == (len(basket.candidates), NUM_FEATURES)
    np.testing.assert_array_equal(training, serving)


def test_feature_values_units_and_defaults(shop, tables):
    basket = basket_5(shop)
    features = basket_features(basket, tables, last_purchase_times(shop.purchases, [basket])[0])
    row = {item: features[i] for i, item in enumerate(basket.candidates)}
    x, cold = dict(zip(FEATURE_NAMES, row[X])), dict(zip(FEATURE_NAMES, row[COLD]))
    assert x["log_times_bought"] == pytest.approx(math.log1p(2))
    assert x["days_since_bought"] == pytest.approx(61 / DAYS_CAP)
    assert x["new_to_customer"] == 0 and x["bought_time_unknown"] == 0
    # X before 2011-11-01: invoice 1, invoice 4 and customer B's Dec, Feb, Sep and Oct baskets; 2 buyers
    assert x["log_popularity"] == pytest.approx(math.log1p(6))
    assert x["log_baskets_per_buyer"] == pytest.approx(math.log(6 / 2))
    assert x["log_median_quantity"] == pytest.approx(math.log(1.0))  # quantities 1, 4, 1, 1, 1, 1
    assert x["log_history_items"] == pytest.approx(math.log1p(5))
    # COLD was first sold after the tables' cutoff: every shop-side fact takes its default
    expected = {**dict.fromkeys(FEATURE_NAMES, 0.0), "days_since_bought": 1.0, "new_to_customer": 1.0}
    expected["log_history_items"] = np.float32(math.log1p(5))
    assert {name: float(value) for name, value in cold.items()} == {k: float(v) for k, v in expected.items()}
    # a bought item whose time is unknown: flagged, days at the cap
    unknown = behaviour_features([(X, 2, None)], [X], tables)
    assert column(unknown, "bought_time_unknown")[0] == 1 and column(unknown, "days_since_bought")[0] == 1.0


def test_co_occurrence_matches_the_brute_force_baseline_when_nothing_is_cut(shop):
    """With k above the catalog size, cooc_sum is the existing co-occurrence baseline's score."""
    basket = basket_5(shop)
    wide = behaviour_tables(shop.purchases, TEST_START, k=10_000)
    expected = co_occurrence(history_before(shop, "test")).score([basket])
    np.testing.assert_allclose(column(basket_features(basket, wide), "cooc_sum"), expected, rtol=1e-6)
    features = basket_features(basket, wide)
    assert (column(features, "cooc_max") <= column(features, "cooc_sum") + 1e-6).all()
    # k=1 keeps each item's single strongest neighbour
    narrow = behaviour_tables(shop.purchases, TEST_START, k=1)
    assert all(len(narrow.neighbours(item)) <= 1 for item in narrow.item_ids)
    for item in narrow.item_ids:
        if narrow.neighbours(item):
            (weight,) = narrow.neighbours(item).values()
            assert weight == pytest.approx(max(wide.neighbours(item).values()))


def test_a_purchase_at_or_after_the_basket_time_changes_nothing(shop, tables):
    basket = basket_5(shop)
    extra = pd.DataFrame(
        {
            "invoice": ["later", "same-minute"],
            "item": [COLD, Z],
            "customer": [A, A],
            "time": pd.to_datetime(["2011-11-20 10:00:00", "2011-11-10 10:00:00"]),
            "quantity": [3.0, 1.0],
            "line": [10_000, 10_001],
        }
    )
    more = pd.concat([shop.purchases, extra], ignore_index=True)
    before = basket_features(basket, tables, last_purchase_times(shop.purchases, [basket])[0])
    after = basket_features(
        basket, behaviour_tables(more, TEST_START), last_purchase_times(more, [basket])[0]
    )
    np.testing.assert_array_equal(before, after)
    # a request entry that is not strictly in the past is dropped whole, like one never sent
    clean = [(X, 2, 61.0), (Y, 2, 340.0)]
    for late in ((Z, 1, 0.0), (Z, 3, -9.5), (COLD, 1, -1.0)):
        np.testing.assert_array_equal(
            behaviour_features([*clean, late], [X, Z, COLD], tables, now=basket.time),
            behaviour_features(clean, [X, Z, COLD], tables, now=basket.time),
        )


def test_tables_newer_than_the_basket_are_refused(shop):
    train_basket = next(b for b in shop.splits["train"] if b.invoice == "2")  # 2010-12-05
    with pytest.raises(ValueError, match="later than now"):
        basket_features(train_basket, behaviour_tables(shop.purchases, TEST_START))
    early = behaviour_tables(shop.purchases, "2010-12-05 09:00:00")  # invoice 1 only
    assert early.cutoff <= pd.Timestamp(train_basket.time).timestamp()
    assert basket_features(train_basket, early).shape == (len(train_basket.candidates), NUM_FEATURES)


def test_a_repeated_key_keeps_its_newest_entry_and_free_text_gets_defaults(tables):
    features = behaviour_features([HistoryEntry(X, 1, 5.0), HistoryEntry(X, 9, 100.0)], [X, "\0RED MUG"], tables)
    assert column(features, "log_times_bought")[0] == pytest.approx(math.log1p(1))
    assert column(features, "days_since_bought")[0] == pytest.approx(5.0 / DAYS_CAP)
    assert column(features, "new_to_customer")[1] == 1 and column(features, "log_popularity")[1] == 0
    assert behaviour_features([], [], tables).shape == (0, NUM_FEATURES)


def test_a_candidate_gets_its_own_facts_whatever_its_batch_mates_catalog_or_free_text(tables):
    """Vectorised lookups (table row for catalog items, key for free text) give each candidate its facts alone."""
    history = [
        HistoryEntry(X, 3, 2.0), HistoryEntry("\0RED MUG", 2, 7.0), HistoryEntry(Y, 1, None), HistoryEntry(Q, 4, 9.0)
    ]
    candidates = ["\0BLUE MUG", Z, "\0RED MUG", X, Y, COLD, X, W]
    together = behaviour_features(history, candidates, tables)
    alone = np.vstack([behaviour_features(history, [candidate], tables) for candidate in candidates])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_allclose(column(together, "log_times_bought"), np.log1p([0, 0, 2, 3, 1, 0, 3, 0]), rtol=1e-6)
    days = np.array([DAYS_CAP, DAYS_CAP, 7.0, 2.0, DAYS_CAP, DAYS_CAP, 2.0, DAYS_CAP])  # unknown or never: the cap
    np.testing.assert_allclose(column(together, "days_since_bought"), days / DAYS_CAP, rtol=1e-6)
    assert column(together, "bought_time_unknown").tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert column(together, "new_to_customer").tolist() == [1, 1, 0, 0, 0, 1, 0, 1]


def test_tables_round_trip_through_their_file(shop, tables, tmp_path):
    path = tables.save(tmp_path / "behaviour.npz")
    loaded = BehaviourTables.load(path)
    assert loaded.item_ids == tables.item_ids and loaded.meta == tables.meta
    for name in ("popularity", "buyers", "median_quantity", "indptr", "indices", "weights"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(tables, name))
    basket = basket_5(shop)
    np.testing.assert_array_equal(basket_features(basket, loaded), basket_features(basket, tables))
    assert dict(np.load(path, allow_pickle=False)).keys() >= {"item_ids", "meta", "weights"}


def test_the_feature_module_imports_without_torch_pandas_or_scipy():
    code = "import sys, edgerec.core.behaviour; print(sorted({'torch', 'pandas', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
