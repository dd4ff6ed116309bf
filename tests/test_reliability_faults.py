"""Faults provoked for real against `edgerec serve` processes on 127.0.0.1.

Damaged bundles at start-up, broken hot reloads under load, SIGTERM with a
full queue, and an engine that raises on marked batches (a real ONNX model
that fails at run time, not a mock). test_server.py and test_server_process.py
check each mechanism once; these check it under load, counting every request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.benchmarks import reliability_drain, reliability_faults
from edgerec.benchmarks.reliability_config import QUICK
from edgerec.benchmarks.reliability_harness import ScoreWorkload, catalog_ids, served_config


@pytest.fixture(scope="module")
def workload(tiny_bundle: Path) -> ScoreWorkload:
    return ScoreWorkload(catalog_ids(tiny_bundle), QUICK.min_candidates, QUICK.max_candidates)


def test_a_truncated_or_altered_bundle_is_refused_at_start_naming_the_file_and_checksums(tiny_bundle, tmp_path) -> None:
    result = reliability_faults.corrupt_bundle(tiny_bundle, tmp_path, QUICK)
    assert result.passed, result.explain()
    assert [case["started"] for case in result.figures["cases"]] == [False, False, False]


def test_a_broken_hot_reload_under_load_keeps_the_old_version_serving(tiny_bundle, tmp_path, workload) -> None:
    result = reliability_faults.broken_reload(tiny_bundle, tmp_path, QUICK, workload)
    assert result.passed, result.explain()
    assert result.figures["lost"] == 0 and result.figures["reloads"] == {"failed": 2, "ok": 1}


def test_sigterm_under_load_answers_every_admitted_request_refuses_new_ones_and_exits_0(tiny_bundle, workload) -> None:
    result = reliability_drain.sigterm_under_load(tiny_bundle, QUICK, workload, served_config(()))
    assert result.passed, result.explain()
    assert result.figures["exit_code"] == 0 and result.figures["lost"] == 0


def test_an_engine_failure_fails_only_its_batch_and_the_server_carries_on(tiny_bundle, tmp_path, workload) -> None:
    result = reliability_faults.engine_fault(tiny_bundle, tmp_path, QUICK, workload, served_config(()))
    assert result.passed, result.explain()
    assert result.figures["failed_batches"] >= result.figures["poisoned_requests"] > 0
