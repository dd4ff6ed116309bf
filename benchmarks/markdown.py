"""Markdown for the REPORT.md files of `edgerec bench` and `edgerec reliability`: tables and figures as text."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def number(value: Any, digits: int = 1, suffix: str = "") -> str:
    """A figure with thousands separators; "–" for one not measured (None, NaN, infinite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def percent(value: Any, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:+.{digits}%}" if signed else f"{value:.{digits}%}"


def codes(counts: Mapping[str, int] | None) -> str:
    """gRPC status counts as "CODE n, CODE n" (zeros left out); "0" when there are none."""
    return ", ".join(f"{code} {n}" for code, n in sorted((counts or {}).items()) if n) or "0"


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines, then a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]
