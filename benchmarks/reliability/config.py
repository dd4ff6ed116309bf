"""Every setting of `edgerec reliability`, with its default, in one place, and the servers' own.

The defaults size a run to a few minutes on two CPU cores: capacity ~10 s,
soak 2 min at 70 % of capacity, overload 30 s at 3x capacity, the fault,
fuzz and access scenarios a few seconds each. `QUICK` shrinks every
scenario to a second or two for tests and smoke runs.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

from edgerec.benchmarks.harness.config import LoadTestConfig
from edgerec.core.settings import setting
from edgerec.runtime.config import Config, add_config_arguments, load_config

SCENARIOS = (
    "soak",
    "overload",
    "abandoned",
    "hostile",
    "corrupt-bundle",
    "broken-reload",
    "sigterm",
    "backend-fault",
    "access",
)


@dataclasses.dataclass(frozen=True)
class ReliabilityConfig(LoadTestConfig):
    """What runs, for how long, and the bounds each scenario is held to."""

    bundle: Path = setting(Path("artifacts/bundles/latest"), "bundle folder or .tar.gz to serve in every scenario")
    output_dir: Path = setting(Path("artifacts/reliability"), "folder for results.json and REPORT.md")
    quick: bool = setting(False, "every scenario a second or two (tests, smoke runs); flags still override")
    scenarios: tuple[str, ...] = setting(SCENARIOS, f"scenarios to run, of: {', '.join(SCENARIOS)}")
    server_config: Path | None = setting(
        None, "`edgerec serve --config` file (TOML/JSON) for the servers under test; default: the server's defaults"
    )
    max_history_items: int = setting(11, "most past items in one Score request (0..this many, drawn from the catalog)")
    capacity_s: float = setting(10.0, "closed-loop run that measures capacity (answered requests/s)")
    capacity_concurrency: int = setting(8, "requests in flight while capacity is measured")
    soak_fraction: float = setting(0.7, "soak load as a fraction of capacity (open loop)")
    soak_s: float = setting(120.0, "soak duration")
    soak_max_refused_fraction: float = setting(
        0.05,
        "soak passes if at most this share of its requests is refused at once (RESOURCE_EXHAUSTED: a Poisson "
        "burst queued more than the server's max_queue_wait_ms); nothing may be lost",
    )
    soak_memory_growth_mb: float = setting(
        24.0, "soak passes if resident memory grows at most this much from its first to its last fifth"
    )
    overload_factor: float = setting(3.0, "overload load as a multiple of capacity (open loop)")
    overload_s: float = setting(30.0, "overload duration")
    overload_memory_growth_mb: float = setting(
        96.0, "overload passes if peak resident memory exceeds the peak at capacity by at most this much"
    )
    p99_bound_factor: float = setting(
        3.0,
        "overload passes if the p99 of admitted requests is at most this many times "
        "(a full queue's drain time at capacity + the p99 at capacity)",
    )
    fault_load_s: float = setting(4.0, "background load around each fault (reload, SIGTERM, backend failure)")
    fault_concurrency: int = setting(4, "requests in flight in the background load around each fault")
    drain_burst_pairs: int = setting(2048, "SIGTERM: pairs admitted in a burst just before the signal (at most half the queue bound)")
    abandoned_requests: int = setting(40, "requests that give up (deadline or cancel) while queued")
    fuzz_examples: int = setting(
        300, "hostile messages generated per message kind (hostile.cases: Score, Rank, Recommend, ModelInfer of each "
        "served model, well-formed rows and feeds, raw bytes)"
    )
    batch_mates_bound: float | None = setting(
        0.0,
        "hostile passes if a candidate's probability alone and among batch-mates differs by at most this much "
        "(0: bit-identical, what the default execution gives); unset: measured and reported, not enforced",
    )

    def serve_flags(self) -> list[str]:
        """`edgerec serve` flags every server under test gets."""
        flags = ["--config", str(self.server_config)] if self.server_config else []
        return flags + (["--precision", self.precision] if self.precision else [])


QUICK = ReliabilityConfig(
    quick=True,
    min_candidates=16,
    max_candidates=48,
    request_timeout_s=15.0,
    capacity_s=1.5,
    soak_s=4.0,
    overload_s=3.0,
    fault_load_s=1.5,
    abandoned_requests=16,
    fuzz_examples=40,
    startup_timeout_s=60.0,
)


def served_config(flags: Sequence[str]) -> Config:
    """The configuration `edgerec serve <flags>` runs with (defaults, config file, EDGEREC_* variables, flags)."""
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args, _ = parser.parse_known_args(list(flags))
    return load_config(args)
