"""What the clients of a load test saw, as typed figures.

Every request sent ends in exactly one of three places: answered (OK),
refused with a code the test expects (RESOURCE_EXHAUSTED under overload,
UNAVAILABLE while draining, ...), or lost: no answer at all, or a code nobody
should get (INTERNAL, UNKNOWN, ...). `lost = sent - answered - refused`, which
a reliability scenario holds to zero. A benchmark expects no refusal: every
code other than OK it sees is in `failures`.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np


def percentile_ms(seconds: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) of durations in seconds, in milliseconds; None without samples."""
    return float(np.percentile(np.asarray(seconds, dtype=float) * 1000.0, q)) if len(seconds) else None


def latency_summary(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 and mean of durations in seconds, in milliseconds (None without samples)."""
    mean = float(np.mean(seconds)) * 1000.0 if len(seconds) else None
    return {**{f"p{q}_ms": percentile_ms(seconds, q) for q in (50, 95, 99)}, "mean_ms": mean}


@dataclasses.dataclass
class Tally:
    """Requests of one load run or scenario: sent, answered, refused (by code) and lost.

    `refusal_codes`: the gRPC status names this test expects as a deliberate refusal.
    """

    refusal_codes: frozenset[str] = frozenset()
    sent: int = 0
    answered: int = 0
    answered_pairs: int = 0  # scores received (one per pair of an answered Score request)
    refused: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    unexpected: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # codes that count as lost
    unfinished: int = 0  # sent, then cancelled by the driver when a run's drain ended (counted as lost)
    dropped: int = 0  # open loop: arrivals never sent because `max_in_flight` requests were outstanding
    latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    refusal_latencies_s: list[float] = dataclasses.field(default_factory=list, repr=False)
    lags_s: list[float] = dataclasses.field(default_factory=list, repr=False)  # open loop: send time - arrival time
    examples: dict[str, str] = dataclasses.field(default_factory=dict)  # first details seen per non-OK code

    def record(self, code: str, seconds: float, details: str = "", pairs: int = 0) -> None:
        """One request's end: `code` is a gRPC status name ("OK" when answered), `pairs` the scores it got."""
        if code == "OK":
            self.answered += 1
            self.answered_pairs += pairs
            self.latencies_s.append(seconds)
            return
        self.examples.setdefault(code, details[:300])
        if code in self.refusal_codes:
            self.refused[code] += 1
            self.refusal_latencies_s.append(seconds)
        else:
            self.unexpected[code] += 1

    @property
    def lost(self) -> int:
        """Requests neither answered nor refused as expected: no answer, or an unexpected code."""
        return self.sent - self.answered - sum(self.refused.values())

    @property
    def failures(self) -> dict[str, int]:
        """Every code other than OK, refused or not, by code."""
        return dict(sorted((self.refused + self.unexpected).items()))

    def summary(self, seconds: float | None = None) -> dict:
        """The figures as plain JSON values; with `seconds` (the run's length), answered requests/s and pairs/s."""
        summary = {
            "sent": self.sent,
            "answered": self.answered,
            "refused": dict(sorted(self.refused.items())),
            "lost": self.lost,
            "lost_by_code": dict(sorted(self.unexpected.items())),
            "unanswered": self.lost - sum(self.unexpected.values()),
            "unfinished": self.unfinished,
            "dropped": self.dropped,
            "failures": self.failures,
            **latency_summary(self.latencies_s),
            "refusal_p50_ms": percentile_ms(self.refusal_latencies_s, 50),
            "refusal_p99_ms": percentile_ms(self.refusal_latencies_s, 99),
            "client_lag_p99_ms": percentile_ms(self.lags_s, 99),
            "details": dict(sorted(self.examples.items())),
        }
        if seconds is not None:
            summary["duration_s"] = seconds
            summary["requests_per_s"] = self.answered / seconds if seconds > 0 else 0.0
            summary["pairs_per_s"] = self.answered_pairs / seconds if seconds > 0 else 0.0
        return summary
