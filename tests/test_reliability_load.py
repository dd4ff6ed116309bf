"""Overload, soak and abandoned requests against real `edgerec serve` processes on 127.0.0.1.

The same scenario code runs, longer, in `edgerec reliability`; here each is
seconds long, and each check it makes can fail: lost requests, errors,
memory growth, refusals that wait, an unbounded p99, compute spent on
requests nobody waits for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgerec.benchmarks import reliability_drain, reliability_load
from edgerec.benchmarks.reliability_config import QUICK
from edgerec.benchmarks.reliability_harness import ScoreWorkload, ServerUnderTest, catalog_ids, served_config

# A tight admission bound: three seconds at 3x capacity fill it many times over.
TIGHT_QUEUE = ("--max-candidates", "256", "--max-queue-pairs", "512", "--max-queue-requests", "64")
# Large requests keep the request rate (3x capacity) well within what the Python load generator can send.
CONFIG = dataclasses.replace(QUICK, soak_s=4.0, overload_s=3.0, min_candidates=48, max_candidates=96)


@pytest.fixture(scope="module")
def workload(tiny_bundle: Path) -> ScoreWorkload:
    return ScoreWorkload(catalog_ids(tiny_bundle), CONFIG.min_candidates, CONFIG.max_candidates)


@pytest.fixture(scope="module")
def server(tiny_bundle: Path):
    """A server with the default settings."""
    with ServerUnderTest(tiny_bundle, startup_timeout_s=60) as running:
        yield running


@pytest.fixture(scope="module")
def capacity(server: ServerUnderTest, workload: ScoreWorkload) -> reliability_load.Capacity:
    return reliability_load.measure_capacity(server, workload, CONFIG)


def test_soak_at_70_percent_of_capacity_loses_nothing_and_keeps_memory_flat(server, workload, capacity) -> None:
    result = reliability_load.soak(server, workload, capacity, CONFIG)
    assert result.passed, result.explain()
    assert result.figures["sent"] > 0 and result.figures["answered"] == result.figures["sent"]


def test_overload_at_3x_capacity_refuses_the_excess_at_once_and_keeps_p99_bounded(tiny_bundle, workload, capacity) -> None:
    with ServerUnderTest(tiny_bundle, TIGHT_QUEUE, startup_timeout_s=60) as tight:
        result = reliability_load.overload(tight, workload, capacity, CONFIG, served_config(TIGHT_QUEUE))
    assert result.passed, result.explain()
    figures = result.figures
    assert figures["sent"] == figures["answered"] + figures["refused"]["RESOURCE_EXHAUSTED"]


def test_requests_that_time_out_or_cancel_in_the_queue_cost_no_compute(server, capacity, tiny_bundle) -> None:
    result = reliability_drain.abandoned(server, catalog_ids(tiny_bundle), capacity, CONFIG, served_config(()))
    assert result.passed, result.explain()
    assert result.figures["dropped_pairs"] == sum(result.figures["refused"].values())
