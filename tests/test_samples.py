"""Baskets, histories, candidates and the time split: built right and without leakage."""

from pathlib import Path

import pandas as pd
import pytest

from edgerec.export.data import COLUMNS, DataConfig
from edgerec.export.samples import SPLITS, prepare, split_of

A, B = "17850", "13047"
X, Y, Z, W, Q, COLD = "50000", "60000", "90000", "10000", "20000", "84000"


def hand_made_shop(path: Path) -> Path:
    """Customer A's invoices have known histories; customer B keeps the other items selling."""
    rows = [
        ("1", X, "RED MUG", 1, "2010-12-01 08:00:00", 1.0, A),
        ("1", Y, "BLUE BAG", 2, "2010-12-01 08:00:00", 1.0, A),
        ("2", Z, "GREEN TIN", 3, "2010-12-05 09:00:00", 1.0, A),  # Z's line comes before W's
        ("2", Y, "BLUE BAG", 1, "2010-12-05 09:00:00", 1.0, A),
        ("3", W, "PINK CANDLE", 1, "2010-12-05 09:00:00", 1.0, A),  # same minute as invoice 2
        ("4", X, "RED MUG", 4, "2011-09-10 10:00:00", 1.0, A),
        ("4", Q, "IVORY NAPKINS", 2, "2011-09-10 10:00:00", 1.0, A),
        ("4", Q, "IVORY NAPKINS", 3, "2011-09-10 10:00:00", 1.0, A),  # same item twice: 5 units
        ("5", X, "RED MUG", 1, "2011-11-10 10:00:00", 1.0, A),
        ("5", COLD, "GOLD STAR GARLAND", 6, "2011-11-10 10:00:00", 1.0, A),
    ]
    others = ["30000", "31000", "32000", "33000", "34000", "35000", "36000", "37000"]
    for month, day in (("2010-12", "10"), ("2011-02", "11"), ("2011-09", "20"), ("2011-10", "03"), ("2011-11", "02")):
        invoice = f"9{month[2:4]}{month[5:]}"
        for code in [*others, X, Y, Z]:
            rows.append((invoice, code, f"ITEM {code}", 1, f"{month}-{day} 12:00:00", 1.0, B))
    rows.append(("91111", COLD, "GOLD STAR GARLAND", 1, "2011-11-02 12:00:00", 1.0, B))
    for code in ("85000", "85001", "85002"):  # first sold in the test period: cold there
        rows.append(("91112", code, f"NEW ITEM {code}", 1, "2011-11-03 12:00:00", 1.0, B))
    frame = pd.DataFrame([r + ("United Kingdom",) for r in rows], columns=list(COLUMNS))
    frame.to_csv(path, index=False, compression="gzip")
    return path


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    path = hand_made_shop(tmp_path_factory.mktemp("hand") / "shop.csv.gz")
    return prepare(DataConfig(csv_path=path, uniform_negatives=3, popular_negatives=3, history_negatives=2, cold_negatives=2))


def basket(prepared, invoice):
    return next(b for name in SPLITS for b in prepared.splits[name] if b.invoice == invoice)


def test_history_is_strictly_earlier_newest_first_with_counts(hand_made):
    # invoices 2 and 3 share a minute: neither sees the other, both see invoice 1 (X before Y by line)
    assert basket(hand_made, "2").history == ((X, 1), (Y, 1))
    assert basket(hand_made, "3").history == ((X, 1), (Y, 1))
    # at 2010-12-05: Y was in 2 baskets, Z and W in 1; Z's line came first although W's id sorts first
    assert basket(hand_made, "4").history == ((Y, 2), (Z, 1), (W, 1), (X, 1))
    assert basket(hand_made, "5").history == ((X, 2), (Q, 1), (Y, 2), (Z, 1), (W, 1))


def test_first_basket_of_a_customer_has_no_sample(hand_made):
    assert all(b.invoice != "1" for name in SPLITS for b in hand_made.splits[name])


def test_positives_carry_summed_quantities_and_splits_follow_time(hand_made):
    valid = basket(hand_made, "4")
    assert valid in hand_made.splits["valid"]
    bought = {c: q for c, y, q in zip(valid.candidates, valid.labels, valid.quantities) if y}
    assert bought == {X: 4.0, Q: 5.0}
    assert basket(hand_made, "2") in hand_made.splits["train"]
    assert basket(hand_made, "5") in hand_made.splits["test"]


def test_slices_repeat_and_cold(hand_made):
    test = basket(hand_made, "5")
    flags = {c: (r, k) for c, r, k in zip(test.candidates, test.is_repeat, test.is_cold)}
    assert flags[X] == (True, False)
    assert flags[COLD] == (False, True)  # first sold 2011-11-02, after the test split began
    cold_negatives = [c for c, y, k in zip(test.candidates, test.labels, test.is_cold) if k and not y]
    assert cold_negatives and set(cold_negatives) <= {"85000", "85001", "85002"}
    assert all(not k for b in hand_made.splits["train"] for k in b.is_cold)


def test_split_of_uses_global_dates():
    config = DataConfig()
    assert split_of(pd.Timestamp("2011-08-31 23:59"), config) == "train"
    assert split_of(pd.Timestamp("2011-09-01 00:00"), config) == "valid"
    assert split_of(pd.Timestamp("2011-11-01 00:00"), config) == "test"


def test_no_leakage_on_the_synthetic_shop(tiny_data):
    purchases = tiny_data.purchases
    by_invoice = purchases.groupby("invoice")
    seen_invoices = set()
    for name in SPLITS:
        for b in tiny_data.splits[name]:
            assert b.invoice not in seen_invoices  # no basket in two splits
            seen_invoices.add(b.invoice)
            time = pd.Timestamp(b.time)
            assert split_of(time, tiny_data.config) == name
            earlier = purchases[(purchases["customer"] == b.customer_id) & (purchases["time"] < time)]
            expected = earlier.groupby("item")["invoice"].nunique().to_dict()
            assert dict(b.history) == expected  # exactly the strictly earlier items, with basket counts
            last = earlier.groupby("item")["time"].max()
            times = [last[item] for item, _ in b.history]
            assert times == sorted(times, reverse=True)  # newest first
            in_basket = set(by_invoice.get_group(b.invoice)["item"])
            for item, label, kind in zip(b.candidates, b.labels, b.kinds):
                assert (item in in_basket) == bool(label)  # a negative is never in the basket
                assert (kind == "positive") == bool(label)
            assert len(set(b.candidates)) == len(b.candidates)
            assert all(r == (item in expected) for item, r in zip(b.candidates, b.is_repeat))


def test_cold_flags_mean_nobody_bought_the_item_before_the_split(tiny_data):
    first_sold = tiny_data.purchases.groupby("item")["time"].min()
    for name, start in (("valid", tiny_data.config.valid_start), ("test", tiny_data.config.test_start)):
        baskets = tiny_data.splits[name]
        assert any(k and not y for b in baskets for k, y in zip(b.is_cold, b.labels))
        for b in baskets:
            for item, cold in zip(b.candidates, b.is_cold):
                assert cold == (first_sold[item] >= pd.Timestamp(start))


def test_samples_are_cached_by_fingerprint_and_reproducible(tiny_data, tmp_path):
    first = prepare(tiny_data.config, tmp_path)
    assert first.fingerprint == tiny_data.fingerprint
    assert first.splits == tiny_data.splits
    stored = tmp_path / first.fingerprint
    assert {p.name for p in stored.iterdir()} == {"items.json", "stats.json", "train.jsonl.gz", "valid.jsonl.gz", "test.jsonl.gz"}
    again = prepare(tiny_data.config, tmp_path)
    assert again.splits == first.splits and again.stats == first.stats
    other = prepare(DataConfig(csv_path=tiny_data.config.csv_path, sample_seed=1))
    assert other.fingerprint != first.fingerprint
    assert [b.candidates for b in other.splits["test"]] != [b.candidates for b in first.splits["test"]]


def test_items_cover_every_item_of_the_clean_data(tiny_data):
    assert set(tiny_data.items) == set(tiny_data.purchases["item"])
    assert all(text for text in tiny_data.items.values())
