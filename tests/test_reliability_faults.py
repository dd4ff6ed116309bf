"""Faults provoked for real against `edgerec serve` processes on 127.0.0.1.

Damaged bundles at start-up, broken hot reloads under load, SIGTERM with a
full queue, and a model that raises on marked batches (a real ONNX model
that fails at run time, not a mock). The damaged bundles are format 2,
whatever bundle they are made from. test_server.py and test_server_process.py
check each mechanism once; these check it under load, counting every request.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.benchmarks.harness.requests import RequestPool, catalog_ids, random_requests
from edgerec.benchmarks.reliability import bundles, drain, faults
from edgerec.benchmarks.reliability.config import QUICK, served_config
from edgerec.core.bundle import FORMAT, open_bundle, variant_file
from edgerec.core.signatures import CROSS_ENCODER


def requests_over(bundle: Path) -> RequestPool:
    """The scenarios' Score requests, over `bundle`'s catalog."""
    ids = catalog_ids(open_bundle(bundle))
    return RequestPool(random_requests(ids, 64, QUICK.min_candidates, QUICK.max_candidates, QUICK.max_history_items))


@pytest.fixture(scope="module")
def workload(tiny_bundle: Path) -> RequestPool:
    return requests_over(tiny_bundle)


def test_the_damaged_bundles_start_as_signed_format_2_copies_of_one_variant(tiny_bundle, tmp_path) -> None:
    slim = open_bundle(bundles.slim_copy(tiny_bundle, tmp_path / "slim", version="v9", precision="fp32"))
    assert slim.manifest["format"] == FORMAT and slim.version == "v9"
    model = slim.model(CROSS_ENCODER.name)
    assert model.precisions == ["fp32"] and model.default_variant == {"cpu": "fp32", "gpu": "fp32"}
    assert bundles.variant_path(slim.root) == slim.root / variant_file(CROSS_ENCODER.name, "fp32")
    assert sorted(slim.manifest["files"]) == sorted(["catalog.json", "tokenizer.json", variant_file(CROSS_ENCODER.name, "fp32")])
    root, word = bundles.poisoned_bundle(tiny_bundle, tmp_path / "poisoned")
    poisoned = open_bundle(root)  # re-signed: the checksums pass
    assert poisoned.model(CROSS_ENCODER.name).signature == CROSS_ENCODER and word


def test_a_truncated_or_altered_bundle_is_refused_at_start_naming_the_file_and_checksums(tiny_bundle, tmp_path) -> None:
    result = faults.corrupt_bundle(tiny_bundle, tmp_path, QUICK)
    assert result.passed, result.explain()
    assert [case["started"] for case in result.figures["cases"]] == [False, False, False]


def test_a_broken_hot_reload_under_load_keeps_the_old_version_serving(tiny_bundle, tmp_path, workload) -> None:
    result = faults.broken_reload(tiny_bundle, tmp_path, QUICK, workload)
    assert result.passed, result.explain()
    assert result.figures["lost"] == 0 and result.figures["reloads"] == {"failed": 2, "ok": 1}


def test_sigterm_under_load_answers_every_admitted_request_refuses_new_ones_and_exits_0(exported_bundle) -> None:
    """On `exported_bundle` (a real tiny BERT): the torch-free tiny model scores a burst before the signal lands."""
    result = drain.sigterm_under_load(exported_bundle, QUICK, requests_over(exported_bundle), served_config(()))
    assert result.passed, result.explain()
    assert result.figures["exit_code"] == 0 and result.figures["lost"] == 0


def test_a_backend_failure_fails_only_its_batch_and_the_server_carries_on(tiny_bundle, tmp_path, workload) -> None:
    result = faults.backend_fault(tiny_bundle, tmp_path, QUICK, workload, served_config(()))
    assert result.passed, result.explain()
    assert result.figures["failed_batches"] >= result.figures["poisoned_requests"] > 0
