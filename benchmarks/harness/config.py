"""The settings every load test shares: what the servers serve, and the requests the clients send.

`edgerec bench` (`benchmarks.config.LoadConfig`) and `edgerec reliability`
(`benchmarks.reliability.config.ReliabilityConfig`) extend this class, so
each setting is declared and documented once.
"""

from __future__ import annotations

import dataclasses

from edgerec.core.settings import setting


@dataclasses.dataclass(frozen=True)
class LoadTestConfig:
    """The servers under test and the Score requests sent to them."""

    precision: str = setting("", "variant (precision) the servers serve; empty: the cross-encoder's default CPU variant")
    min_candidates: int = setting(10, "fewest candidates in one Score request")
    max_candidates: int = setting(100, "most candidates in one Score request")
    max_history_items: int = setting(
        64, "most recent past items one Score request carries (the featurizer reads ~10-20; the server caps the context)"
    )
    request_timeout_s: float = setting(30.0, "gRPC deadline of every request")
    startup_timeout_s: float = setting(120.0, "longest wait for a server to become ready")
    seed: int = setting(0, "seed of the requests, of the Poisson arrivals and of anything else drawn at random")
