"""Hostile input, fuzzed with hypothesis against one real `edgerec serve` process on 127.0.0.1.

Score, Rank and ModelInfer messages (random and huge lists, empty and
enormous strings, odd Unicode, absurd numbers, wrong dtypes and shapes) and
raw bytes: the only acceptable answers are OK, INVALID_ARGUMENT and
RESOURCE_EXHAUSTED (and NOT_FOUND for a ModelInfer naming a model this
server does not serve), and the server must answer a health check after
every case. The last tests pin down the findings the fuzzer made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgerec.benchmarks import reliability_hostile as hostile
from edgerec.benchmarks.reliability_harness import ServerUnderTest
from edgerec.proto import recommender_pb2

# Bounded in time: a fixed number of cases and no shrinking (shrinking megabyte messages against a live
# server can take minutes; a failure reports its case, cut to a readable length, as it was generated).
FUZZ = settings(
    max_examples=100,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def facts(tiny_bundle: Path) -> hostile.ModelFacts:
    return hostile.ModelFacts.of(tiny_bundle)


@pytest.fixture(scope="module")
def client(tiny_bundle: Path, facts: hostile.ModelFacts):
    """One server for the whole fuzz session."""
    with ServerUnderTest(tiny_bundle, startup_timeout_s=60) as server:
        client = hostile.HostileClient(server.target, facts.model_name, facts.model_version)
        yield client
        client.close()
        assert server.alive(), server.log()[-3000:]


def _check(client: hostile.HostileClient, method: str, message: object) -> None:
    code, details, healthy = client.check(method, message)
    assert code in hostile.ALLOWED, f"{method} answered {code}: {details[:500]}\nfor {hostile.describe(message)}"
    assert healthy, f"no healthy answer after {method} {hostile.describe(message)}"


@FUZZ
@given(data=st.data())
def test_hostile_score_requests(client, facts, data) -> None:
    _check(client, "Score", data.draw(hostile.score_requests(facts.item_ids), label="ScoreRequest"))


@FUZZ
@given(data=st.data())
def test_hostile_rank_requests(client, facts, data) -> None:
    _check(client, "Rank", data.draw(hostile.rank_requests(facts.item_ids), label="RankRequest"))


@FUZZ
@given(data=st.data())
def test_hostile_model_infer_requests(client, facts, data) -> None:
    request = data.draw(hostile.infer_requests(facts.model_name, facts.vocab_size, facts.max_length), label="ModelInferRequest")
    _check(client, "ModelInfer", request)


@FUZZ
@given(method=st.sampled_from(sorted(hostile.METHODS)), message=hostile.raw_messages)
def test_raw_bytes_to_every_method(client, method, message) -> None:
    _check(client, method, message)


# -- what the fuzzer found, pinned down -----------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(hostile.METHODS))
def test_bytes_that_are_no_protobuf_get_invalid_argument(client, method) -> None:
    """Found by the fuzzer: grpc answers UNKNOWN when the request cannot be parsed."""
    code, details, healthy = client.check(method, b"\xff\xff\xff\xff\x01 not a protobuf message")
    assert (code, healthy) == ("INVALID_ARGUMENT", True), details


def test_invalid_utf8_in_a_string_field_gets_invalid_argument(client) -> None:
    """Found by the fuzzer: a candidate whose item_id is not UTF-8 cannot be parsed (proto3 strings must be)."""
    code, details, healthy = client.check("Score", hostile.bad_utf8_candidate(b"\xfe"))
    assert (code, healthy) == ("INVALID_ARGUMENT", True), details


def test_an_enormous_unknown_item_id_gets_a_short_invalid_argument(client) -> None:
    """Found by the fuzzer: the error message echoed a 20 kB item id, more status details than a client
    accepts (8 KiB of metadata by default), so the client saw RESOURCE_EXHAUSTED instead of the server's answer."""
    request = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(item_id="x" * 20_000)])
    code, details, healthy = client.check("Score", request)
    assert code == "INVALID_ARGUMENT" and healthy, f"{code}: {details[:300]}"
    assert "candidates[0]" in details and len(details) <= 2048
