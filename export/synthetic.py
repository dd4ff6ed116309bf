"""A small fake shop export in the exact UCI Online Retail columns, for tests.

Tests must not need the real 540k-row file or a fine-tuned model, yet they
should meet the same quirks: cancellations (`C…` invoices with negative
quantities), postage and manual-fee lines, guest sales without a customer,
write-offs with price 0, blank descriptions, exact duplicate rows, codes with
two spellings, and items launched late (cold-start items in the validation and
test periods). Customers have a favourite theme and re-buy their own items,
so a model has something learnable. Output is deterministic for a seed.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from edgerec.export.data import COLUMNS

THEMES = ("RETROSPOT", "VINTAGE PAISLEY", "CHRISTMAS STAR", "GARDEN BIRD")
OBJECTS = ("MUG", "LUNCH BAG", "CAKE TIN", "T-LIGHT HOLDER", "NAPKINS", "JUMBO BAG", "DOORMAT", "BUNTING", "CANDLE")
COLOURS = ("RED", "PINK", "BLUE", "WHITE", "GREEN", "IVORY")
START = datetime(2010, 12, 1, 8, 0)
END = datetime(2011, 12, 9, 12, 0)


def _items(count: int, rng: random.Random) -> list[tuple[str, str, int, datetime]]:
    """(stock code, description, theme, launch time); the last ~25% launch in the valid/test periods."""
    items = []
    for index in range(count):
        theme = index % len(THEMES)
        code = f"{21000 + index * 37}" + ("A" if index % 5 == 0 else "")
        text = f"{COLOURS[(index // len(THEMES)) % len(COLOURS)]} {THEMES[theme]} {OBJECTS[index % len(OBJECTS)]}"
        if index >= count * 0.85:
            launch = datetime(2011, 11, 3) + timedelta(days=rng.randint(0, 10))
        elif index >= count * 0.72:
            launch = datetime(2011, 9, 5) + timedelta(days=rng.randint(0, 20))
        else:
            launch = START
        items.append((code, text, theme, launch))
    return items


def write_synthetic_csv(
    path: Path,
    customers: int = 40,
    items: int = 60,
    seed: int = 0,
    invoices_per_customer: tuple[int, int] = (4, 9),
    lines_per_invoice: tuple[int, int] = (3, 8),
) -> Path:
    """Write a gzipped CSV of fake invoice lines to `path` and return it."""
    rng = random.Random(seed)
    catalog = _items(items, rng)
    rows: list[tuple] = []
    span = (END - START).total_seconds()
    invoice_number = 536365
    for customer_index in range(customers):
        customer_id = str(12346 + customer_index * 13)
        country = "United Kingdom" if customer_index % 4 else "France"
        favourite = customer_index % len(THEMES)
        bought: list[int] = []
        times = sorted(START + timedelta(seconds=rng.random() * span) for _ in range(rng.randint(*invoices_per_customer)))
        for when in times:
            when = when.replace(second=0, microsecond=0)
            on_sale = [i for i, item in enumerate(catalog) if item[3] <= when]
            themed = [i for i in on_sale if catalog[i][2] == favourite]
            basket: set[int] = set()
            for _ in range(rng.randint(*lines_per_invoice)):
                roll = rng.random()
                pool = bought if roll < 0.45 and bought else themed if roll < 0.85 else on_sale
                basket.add(rng.choice(pool))
            invoice = str(invoice_number)
            invoice_number += 1
            stamp = when.strftime("%Y-%m-%d %H:%M:%S")
            for i in sorted(basket, key=lambda _: rng.random()):
                code, text, _, _ = catalog[i]
                if rng.random() < 0.05:  # a minority spelling of the same code
                    text = text.title()
                quantity = rng.choice((1, 2, 3, 4, 6, 12, 24))
                rows.append((invoice, code, text, quantity, stamp, round(0.5 + (i % 9) * 0.6, 2), customer_id, country))
            bought.extend(sorted(basket))
            if rng.random() < 0.3:
                rows.append((invoice, "POST", "POSTAGE", 1, stamp, 18.0, customer_id, country))
            if rng.random() < 0.1:
                rows.append(rows[-1])  # an exact duplicate line
            if rng.random() < 0.15:  # a cancellation of the first line, minutes later
                first = next(r for r in rows if r[0] == invoice)
                later = (when + timedelta(minutes=7)).strftime("%Y-%m-%d %H:%M:%S")
                rows.append(("C" + str(invoice_number), first[1], first[2], -first[3], later, first[5], customer_id, country))
                invoice_number += 1
    for _ in range(max(2, customers // 4)):  # guest sales, write-offs and manual fees
        when = (START + timedelta(seconds=rng.random() * span)).strftime("%Y-%m-%d %H:%M:%S")
        code, text, _, _ = catalog[rng.randrange(len(catalog) // 2)]
        rows.append((str(invoice_number), code, text, 2, when, 1.25, "", "United Kingdom"))
        rows.append((str(invoice_number + 1), code, "", -5, when, 0.0, "", "United Kingdom"))
        rows.append((str(invoice_number + 2), "M", "Manual", 1, when, 3.0, "12346", "United Kingdom"))
        rows.append((str(invoice_number + 2), code, text.lower() + " (damaged)", 1, when, 0.0, "12346", "United Kingdom"))
        invoice_number += 3
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0})
    return path
