"""Access, as figures: nobody who should be refused gets in, refusals cost no compute, loopback by default.

One run of the access scenario (two real `edgerec serve` processes started
with their default bind address, certificates made with the `openssl`
command line) feeds these tests. test_server_security.py checks each
mechanism (tokens, TLS, mTLS) on its own; here every kind of client is
counted (sent, answered, refused by code, lost), including the ones it does
not try: a client that does not trust the server, a certificate from
another CA, an answer over the message limit, and what the server listens on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.benchmarks.reliability import access as access_scenario
from edgerec.benchmarks.reliability.config import QUICK
from edgerec.benchmarks.reliability.report import Scenario
from server_helpers import catalog_ids

pytestmark = pytest.mark.skipif(not access_scenario.openssl_available(), reason="needs the openssl command line")


@pytest.fixture(scope="module")
def access(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return access_scenario.access(tiny_bundle, tmp_path_factory.mktemp("access"), QUICK, catalog_ids(tiny_bundle))


def _assert_checks(result: Scenario, *names: str) -> None:
    checks = {check.name: check for check in result.checks}
    failed = [f"{name}: {checks[name].detail}" for name in names if not checks[name].passed]
    assert not failed, "\n".join(failed)


def test_no_client_that_should_be_refused_gets_in_and_refusals_cost_no_compute(access) -> None:
    assert access.passed, access.explain()
    figures = access.figures
    assert figures["let_in"] == 0 and figures["lost"] == 0
    assert figures["sent"] == figures["answered"] + sum(figures["refused"].values())
    assert {"UNAVAILABLE", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED"} <= set(figures["refused"])


def test_tls_clients_refuse_a_server_they_do_not_trust_and_mtls_refuses_another_cas_certificate(access) -> None:
    _assert_checks(access, "client not trusting the server's CA", "mTLS client with another CA's certificate")


def test_the_default_bind_address_is_loopback(access) -> None:
    _assert_checks(access, "default bind is loopback")
    assert access.figures["listening_on"]


def test_an_answer_over_the_message_limit_gets_resource_exhausted_not_internal(access) -> None:
    _assert_checks(access, "request with an oversized answer", "oversized request")


def test_an_answer_too_large_to_send_is_counted_as_refused_in_the_server_metrics(access) -> None:
    """Found here: the handler returns, then gRPC refuses to send the answer; the server counts the call
    as OK (and gRPC logs a traceback) although the client got RESOURCE_EXHAUSTED."""
    counted = access.figures["rank_calls_in_metrics"]
    assert counted.get("OK", 0) == 0 and counted.get("RESOURCE_EXHAUSTED") == access_scenario.ATTEMPTS, counted
