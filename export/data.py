"""Reads a shop's invoice lines (UCI Online Retail columns) and cleans them into purchase lines.

Everything downstream (samples, training, baselines, evaluation) starts from
the table `load_clean` returns, so the cleaning rules live in one place:
cancellations, returns, write-offs, zero prices, guest sales, non-product
codes (postage, fees, vouchers, manual adjustments) and exact duplicate rows
are dropped, and each item's text is its most frequent description.

The shipped copy of the real data is read by default; `--csv-path` or the
environment variable `EDGEREC_DATA` point at another export in the same columns.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pandas as pd

from edgerec.core.settings import setting

COLUMNS = ("InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country")
SHIPPED_CSV = Path(__file__).resolve().parents[1] / "data" / "uci_online_retail" / "online_retail.csv.gz"
DATA_ENV = "EDGEREC_DATA"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the shop data is, how it is split in time and how candidates are sampled."""

    csv_path: Path | None = setting(
        None, f"invoice lines in the UCI Online Retail columns; unset: ${DATA_ENV}, else the shipped copy"
    )
    valid_start: str = setting("2011-09-01", "first day of the validation split (train is everything before)")
    test_start: str = setting("2011-11-01", "first day of the test split (validation ends the day before)")
    product_code_pattern: str = setting(
        r"\d{5}[A-Za-z]*",
        "regex a StockCode must match in full to be a product; the rest (POST, DOT, M, C2, D, S, "
        "BANK CHARGES, AMAZONFEE, CRUK, PADS, B, gift_0001_*, DCGS*) are fees, postage, vouchers or adjustments",
    )
    sample_seed: int = setting(0, "seed of the candidate sampling (positives cap and negatives)")
    max_positives: int = setting(
        20, "most positives kept per basket (a seeded sample; wholesale baskets reach hundreds of lines)"
    )
    uniform_negatives: int = setting(15, "negatives per basket drawn uniformly from the items on sale up to the split's end")
    popular_negatives: int = setting(
        15, "negatives per basket drawn by popularity (baskets holding the item within the split's period)"
    )
    history_negatives: int = setting(
        10, "negatives per basket drawn from the customer's own past items (so repeat items have negatives too)"
    )
    cold_negatives: int = setting(
        10, "negatives per valid/test basket drawn from the split's cold items (cold positives need cold rivals)"
    )

    def resolved_csv(self) -> Path:
        """The CSV to read: the setting, else $EDGEREC_DATA, else the copy shipped in data/."""
        if self.csv_path is not None:
            return Path(self.csv_path)
        if os.environ.get(DATA_ENV):
            return Path(os.environ[DATA_ENV])
        return SHIPPED_CSV


def read_raw(path: Path) -> pd.DataFrame:
    """Read invoice lines as the data README prescribes: codes as text, only real blanks missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no shop data at {path} (set --csv-path or ${DATA_ENV})")
    frame = pd.read_csv(
        path,
        dtype={"InvoiceNo": str, "StockCode": str, "Description": str, "Country": str, "CustomerID": str},
        keep_default_na=False,
        na_values={"Description": [""], "CustomerID": [""]},
    )
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected the UCI Online Retail columns {list(COLUMNS)}")
    return frame[list(COLUMNS)]


def clean(raw: pd.DataFrame, product_code_pattern: str = DataConfig.product_code_pattern) -> pd.DataFrame:
    """Purchase lines only; columns invoice, item, quantity, time, customer, line (original row order).

    Exact duplicates are dropped before anything else (they are repeated rows
    of the source, not repeated purchases). The customer id is normalised
    (`"17850.0"` and `"17850"` are one customer).
    """
    frame = raw.drop_duplicates()
    frame = frame[
        ~frame["InvoiceNo"].str.upper().str.startswith("C")
        & (frame["Quantity"] > 0)
        & (frame["UnitPrice"] > 0)
        & frame["CustomerID"].notna()
        & frame["StockCode"].str.fullmatch(product_code_pattern)
    ]
    customer = frame["CustomerID"].str.strip().str.replace(r"\.0+$", "", regex=True)
    return pd.DataFrame(
        {
            "invoice": frame["InvoiceNo"].to_numpy(),
            "item": frame["StockCode"].to_numpy(),
            "description": frame["Description"].fillna("").str.strip().to_numpy(),
            "quantity": frame["Quantity"].astype("float64").to_numpy(),
            "time": pd.to_datetime(frame["InvoiceDate"]).to_numpy(),
            "customer": customer.to_numpy(),
            "line": frame.index.to_numpy(),
        }
    )


def item_texts(lines: pd.DataFrame) -> dict[str, str]:
    """Item id -> its most frequent non-empty description (ties: the one seen first)."""
    named = lines[lines["description"] != ""]
    counts = named.groupby(["item", "description"], sort=False).agg(n=("line", "size"), first=("line", "min"))
    counts = counts.reset_index().sort_values(["item", "n", "first"], ascending=[True, False, True])
    best = counts.drop_duplicates("item")
    texts = dict(zip(best["item"], best["description"]))
    for item in lines["item"].unique():  # an item with no description at all is still an item
        texts.setdefault(item, item)
    return dict(sorted(texts.items()))


def load_clean(config: DataConfig) -> pd.DataFrame:
    """Read and clean the configured CSV."""
    return clean(read_raw(config.resolved_csv()), config.product_code_pattern)
