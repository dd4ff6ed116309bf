"""Hostile input, fuzzed with hypothesis against one real `edgerec serve` process on 127.0.0.1.

Score, Rank and ModelInfer messages (random and huge lists, empty and
enormous strings, odd Unicode, absurd numbers, wrong dtypes and shapes) and
raw bytes: the only acceptable answers are OK, INVALID_ARGUMENT and
RESOURCE_EXHAUSTED (and NOT_FOUND for a ModelInfer naming a model this
server does not serve), and the server must answer a health check after
every case. The cases are the ones `edgerec reliability` sends
(`edgerec.benchmarks.reliability.hostile`), their choices drawn here from
hypothesis strategies instead of a seeded generator. The last tests pin
down the findings the fuzzer made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability import hostile
from edgerec.proto import recommender_pb2

# Bounded in time: a fixed number of cases and no shrinking (shrinking megabyte messages against a live
# server can take minutes; a failure reports its case, cut to a readable length, as it was generated).
FUZZ = settings(
    max_examples=100,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# protobuf cannot encode lone surrogates, so they are left to the raw-bytes cases
ANY_CHARACTER = st.characters(exclude_categories=("Cs",))


class HypothesisSource:
    """A `hostile.Source` whose choices are hypothesis draws, so hypothesis explores (and replays) the cases."""

    def __init__(self, data: st.DataObject) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options):
        return self.data.draw(st.sampled_from(options))

    def text(self, max_size: int) -> str:
        return self.data.draw(st.text(ANY_CHARACTER, max_size=max_size))

    def binary(self, min_size: int, max_size: int) -> bytes:
        return self.data.draw(st.binary(min_size=min_size, max_size=max_size))


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
    _check(client, "Score", hostile.score_request(HypothesisSource(data), facts.item_ids))


@FUZZ
@given(data=st.data())
def test_hostile_rank_requests(client, facts, data) -> None:
    _check(client, "Rank", hostile.rank_request(HypothesisSource(data), facts.item_ids))


@FUZZ
@given(data=st.data())
def test_hostile_model_infer_requests(client, facts, data) -> None:
    request = hostile.infer_request(HypothesisSource(data), facts.model_name, facts.vocab_size, facts.max_length)
    _check(client, "ModelInfer", request)


@FUZZ
@given(method=st.sampled_from(sorted(hostile.METHODS)), data=st.data())
def test_raw_bytes_to_every_method(client, method, data) -> None:
    _check(client, method, hostile.raw_message(HypothesisSource(data)))


def test_the_seeded_cases_are_repeatable_and_vary_with_the_seed() -> None:
    """`edgerec reliability` draws its cases from a seed: the same seed, the same bytes; another seed, others."""
    facts = hostile.ModelFacts("m", "1", vocab_size=1000, max_length=64, item_ids=["a", "b", "c"])
    for kind, case in hostile.cases(facts).items():
        first, again = case(hostile.SeededSource(f"7:{kind}")), case(hostile.SeededSource(f"7:{kind}"))
        assert first[0] == again[0] and _wire(first[1]) == _wire(again[1]), kind
        source = hostile.SeededSource(f"8:{kind}")
        assert len({_wire(case(source)[1]) for _ in range(20)}) > 1, kind


def test_the_reliability_command_does_not_import_hypothesis() -> None:
    """hypothesis is a dev dependency: `edgerec reliability` must run without it."""
    code = "import sys, edgerec.benchmarks.reliability; sys.exit('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def _wire(message: object) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


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
