"""Cleaning rules of the shop data, on a small CSV written here row by row."""

from pathlib import Path

import pandas as pd
import pytest

from edgerec.export.data import COLUMNS, SHIPPED_CSV, DataConfig, clean, item_texts, load_clean, read_raw


def write_rows(path: Path, rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False, compression="gzip")
    return path


ROWS = [
    # invoice, code, description, qty, time, price, customer, country
    ("536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 6, "2010-12-01 08:26:00", 2.55, "17850", "United Kingdom"),
    ("536365", "71053", "WHITE METAL LANTERN", 6, "2010-12-01 08:26:00", 3.39, "17850", "United Kingdom"),
    ("536365", "71053", "WHITE METAL LANTERN", 6, "2010-12-01 08:26:00", 3.39, "17850", "United Kingdom"),  # duplicate
    ("536366", "71053", "WHITE METAL LANTERN ", 2, "2010-12-02 09:00:00", 3.39, "17850", "United Kingdom"),
    ("536367", "71053", "LANTERN, WHITE METAL", 1, "2010-12-03 09:00:00", 3.39, "13047", "United Kingdom"),
    ("536367", "POST", "POSTAGE", 1, "2010-12-03 09:00:00", 18.0, "13047", "United Kingdom"),
    ("536367", "DOT", "DOTCOM POSTAGE", 1, "2010-12-03 09:00:00", 11.0, "13047", "United Kingdom"),
    ("536367", "M", "Manual", 1, "2010-12-03 09:00:00", 0.85, "13047", "United Kingdom"),
    ("536367", "BANK CHARGES", "Bank Charges", 1, "2010-12-03 09:00:00", 15.0, "13047", "United Kingdom"),
    ("536367", "gift_0001_10", "Dotcomgiftshop Gift Voucher £10.00", 1, "2010-12-03 09:00:00", 8.5, "13047", "United Kingdom"),
    ("536367", "DCGS0003", "BOXED GLASS ASHTRAY", 1, "2010-12-03 09:00:00", 2.5, "13047", "United Kingdom"),
    ("536367", "C2", "CARRIAGE", 1, "2010-12-03 09:00:00", 50.0, "13047", "United Kingdom"),
    ("C536368", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", -6, "2010-12-03 10:00:00", 2.55, "17850", "United Kingdom"),
    ("536369", "22633", "HAND WARMER UNION JACK", 6, "2010-12-03 11:00:00", 1.85, "", "United Kingdom"),  # guest
    ("536370", "22632", "", -12, "2010-12-03 12:00:00", 0.0, "", "United Kingdom"),  # write-off
    ("536371", "22632", "HAND WARMER RED POLKA DOT", 3, "2010-12-03 12:00:00", 0.0, "13047", "United Kingdom"),  # free
    ("536372", "22632", "HAND WARMER RED POLKA DOT", 0, "2010-12-03 12:00:00", 1.85, "13047", "United Kingdom"),
    ("536373", "84029G", "NA", 2, "2010-12-04 12:00:00", 3.39, "12583", "France"),  # "NA" is a text, not missing
]


def test_clean_drops_everything_that_is_not_a_purchase_of_a_product(tmp_path):
    lines = clean(read_raw(write_rows(tmp_path / "shop.csv.gz", ROWS)))
    assert sorted(zip(lines["invoice"], lines["item"])) == [
        ("536365", "71053"),
        ("536365", "85123A"),
        ("536366", "71053"),
        ("536367", "71053"),
        ("536373", "84029G"),
    ]
    assert set(lines["customer"]) == {"17850", "13047", "12583"}
    assert lines["time"].min() == pd.Timestamp("2010-12-01 08:26:00")


def test_missing_values_follow_the_data_readme(tmp_path):
    raw = read_raw(write_rows(tmp_path / "shop.csv.gz", ROWS))
    assert raw.loc[raw["InvoiceNo"] == "536373", "Description"].item() == "NA"
    assert raw["CustomerID"].isna().sum() == 2
    assert raw["Description"].isna().sum() == 1


def test_customer_ids_written_as_floats_are_the_same_customer(tmp_path):
    rows = [ROWS[0], ROWS[3][:6] + ("17850.0", "United Kingdom")]
    lines = clean(read_raw(write_rows(tmp_path / "shop.csv.gz", rows)))
    assert set(lines["customer"]) == {"17850"}


def test_item_text_is_the_most_frequent_description(tmp_path):
    lines = clean(read_raw(write_rows(tmp_path / "shop.csv.gz", ROWS)))
    texts = item_texts(lines)
    # 71053: "WHITE METAL LANTERN" twice (the duplicate counts once; one copy had a trailing space)
    # against "LANTERN, WHITE METAL" once
    assert texts["71053"] == "WHITE METAL LANTERN"
    assert texts["85123A"] == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert texts["84029G"] == "NA"
    assert set(texts) == set(lines["item"])


def test_missing_columns_are_a_clear_error(tmp_path):
    path = tmp_path / "other.csv"
    pd.DataFrame({"InvoiceNo": ["1"], "StockCode": ["85123A"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="missing column"):
        read_raw(path)
    with pytest.raises(FileNotFoundError, match="EDGEREC_DATA"):
        read_raw(tmp_path / "absent.csv.gz")


def test_data_location_setting_then_environment_then_shipped_copy(tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEREC_DATA", raising=False)
    assert DataConfig().resolved_csv() == SHIPPED_CSV
    assert SHIPPED_CSV.exists()
    other = write_rows(tmp_path / "env.csv.gz", ROWS)
    monkeypatch.setenv("EDGEREC_DATA", str(other))
    assert DataConfig().resolved_csv() == other
    assert len(load_clean(DataConfig())) == 5
    explicit = tmp_path / "explicit.csv.gz"
    assert DataConfig(csv_path=explicit).resolved_csv() == explicit
