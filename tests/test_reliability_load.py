"""Overload, soak and abandoned requests against real `edgerec serve` processes on 127.0.0.1.

The same scenario code runs, longer, in `edgerec reliability`; here each is
seconds long, and each check it makes can fail: lost requests, errors,
memory growth, refusals that wait, an unbounded p99, compute spent on
requests nobody waits for.

The server serves `exported_bundle` (a real, if tiny, BERT): overload is
only overload where scoring costs more than refusing, and the torch-free
`tiny_bundle` scores about as fast as gRPC can refuse.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

import pytest

from edgerec.benchmarks.harness.requests import RequestPool, catalog_ids, random_requests
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability import drain, load
from edgerec.benchmarks.reliability.config import QUICK, served_config
from edgerec.core.bundle import open_bundle

# A tight admission bound: three seconds at 3x capacity fill it many times over.
TIGHT_QUEUE = ("--max-candidates", "256", "--max-queue-pairs", "512", "--max-queue-requests", "64")
# Large requests keep the request rate (3x capacity) well within what the Python load generator can send.
CONFIG = dataclasses.replace(QUICK, soak_s=4.0, overload_s=3.0, min_candidates=48, max_candidates=96)


@pytest.fixture(scope="module")
def item_ids(exported_bundle: Path) -> list[str]:
    return catalog_ids(open_bundle(exported_bundle))


@pytest.fixture(scope="module")
def workload(item_ids: list[str]) -> RequestPool:
    return RequestPool(random_requests(item_ids, 64, CONFIG.min_candidates, CONFIG.max_candidates, CONFIG.max_history_items))


@pytest.fixture(scope="module")
def server(exported_bundle: Path):
    """A server with the default settings."""
    with ServerUnderTest(exported_bundle, startup_timeout_s=60) as running:
        yield running


@pytest.fixture(scope="module")
def capacity(server: ServerUnderTest, workload: RequestPool) -> load.Capacity:
    return load.measure_capacity(server, workload, CONFIG)


def test_soak_at_70_percent_of_capacity_loses_nothing_and_keeps_memory_flat(server, workload, capacity) -> None:
    result = load.soak(server, workload, capacity, CONFIG)
    assert result.passed, result.explain()
    figures = result.figures
    assert figures["sent"] > 0 and figures["answered"] + sum(figures["refused"].values()) == figures["sent"]


def test_overload_at_3x_capacity_refuses_the_excess_at_once_and_keeps_p99_bounded(exported_bundle, workload, capacity) -> None:
    with ServerUnderTest(exported_bundle, TIGHT_QUEUE, startup_timeout_s=60) as tight:
        result = load.overload(tight, workload, capacity, CONFIG, served_config(TIGHT_QUEUE))
    assert result.passed, result.explain()
    figures = result.figures
    assert figures["sent"] == figures["answered"] + figures["refused"]["RESOURCE_EXHAUSTED"]


def test_requests_that_time_out_or_cancel_in_the_queue_cost_no_compute(server, capacity, item_ids) -> None:
    result = drain.abandoned(server, item_ids, capacity, CONFIG, served_config(()))
    assert result.passed, result.explain()
    assert result.figures["dropped_pairs"] == sum(result.figures["refused"].values())


def test_the_soak_trend_is_the_slope_of_rss_and_its_noise_the_spread_around_it() -> None:
    from types import SimpleNamespace

    from edgerec.benchmarks.harness.memory import MB
    from edgerec.benchmarks.reliability.load import rss_trend

    wobble = [0.5, -0.5] * 30
    samples = [(float(t), (400 + 2.0 * t / 60 + wobble[t]) * MB) for t in range(60)]  # +2 MiB/min, +-0.5 MiB
    trend, noise = rss_trend(SimpleNamespace(samples=samples), 0.0, 59.0)
    assert trend == pytest.approx(2.0, abs=0.1) and noise == pytest.approx(0.5, abs=0.05)
    assert np.isnan(rss_trend(SimpleNamespace(samples=samples[:2]), 0.0, 59.0)[0])
