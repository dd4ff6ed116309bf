"""Metadata limits: a call's headers of a given size get one answer, every time.

gRPC refuses metadata between its soft limit (8 KiB by default) and its hard
limit (16 KiB) at random; the server sets both to `max_metadata_bytes`. The
largest bearer token accepted is documented as that setting minus 1 KiB (the
room left for the other headers a client sends).
"""

from __future__ import annotations

import collections
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime.config import ServerConfig
from edgerec.runtime.server import start_server
from server_helpers import catalog_ids, make_config, score_request

REPO = Path(__file__).resolve().parents[1]
TRIES = 20
# A refusal costs gRPC ~150 ms (it resets the stream); gRPC's random soft-limit refusals were ~50 % likely in
# the sizes probed, so 8 refusals in a row would miss them with probability < 0.5 %.
REFUSED_TRIES = 8
HEADROOM = 1024  # documented: the largest token is max_metadata_bytes minus this
DEFAULT_LIMIT = ServerConfig().max_metadata_bytes
LARGEST_TOKEN = DEFAULT_LIMIT - HEADROOM


def token(size: int) -> str:
    return "t" * size


def outcomes(call, metadata, tries: int = TRIES) -> collections.Counter:
    """`call(metadata)` `tries` times, all at once (a refusal costs gRPC ~150 ms of waiting, not of CPU):
    how often each code came back."""

    def once(_: int) -> str:
        try:
            call(metadata)
        except grpc.RpcError as error:
            return error.code().name
        return "OK"

    with ThreadPoolExecutor(tries) as pool:
        return collections.Counter(pool.map(once, range(tries)))


def accepted_sizes(limit: int) -> list[int]:
    """Token sizes that must be accepted: the issue's 9 and 12 KiB (gRPC refused them at random under its
    default limits) where they are within the documented largest token, and that largest token."""
    return [size for size in (9 * 1024, 12 * 1024) if size < limit - HEADROOM] + [limit - HEADROOM]


@pytest.fixture(scope="module", params=[DEFAULT_LIMIT, 8 * 1024], ids=["default", "8KiB"])
def server(request, tiny_bundle):
    """A server with `max_metadata_bytes` as the parameter, accepting a token of each `accepted_sizes`."""
    limit = request.param
    tokens = tuple(token(size) for size in accepted_sizes(limit))
    with start_server(make_config(tiny_bundle, max_metadata_bytes=limit, auth_tokens=tokens)) as handle:
        yield handle, limit


def calls(handle, bundle):
    channel = grpc.insecure_channel(handle.target)
    request = score_request(catalog_ids(bundle)[:2])
    score = recommender_pb2_grpc.RecommenderStub(channel).Score
    check = health_pb2_grpc.HealthStub(channel).Check
    return channel, {
        "Score": lambda metadata: score(request, metadata=metadata, timeout=20),
        "health": lambda metadata: check(health_pb2.HealthCheckRequest(), metadata=metadata, timeout=20),
    }


def test_tokens_up_to_the_documented_largest_size_are_accepted_every_time(server, tiny_bundle):
    handle, limit = server
    channel, by_name = calls(handle, tiny_bundle)
    with channel:
        for name, call in by_name.items():
            for size in accepted_sizes(limit):
                seen = outcomes(call, [("authorization", f"Bearer {token(size)}")])
                assert seen == {"OK": TRIES}, (name, size, seen)


def test_a_token_well_over_the_limit_is_refused_every_time_with_resource_exhausted(server, tiny_bundle):
    handle, limit = server
    channel, by_name = calls(handle, tiny_bundle)
    with channel:
        for name, call in by_name.items():
            seen = outcomes(call, [("authorization", f"Bearer {token(limit + HEADROOM)}")], REFUSED_TRIES)
            assert seen == {"RESOURCE_EXHAUSTED": REFUSED_TRIES}, (name, seen)


def test_the_largest_token_is_documented_in_the_setting_the_readme_and_the_example_config():
    field = next(f for f in ServerConfig.__dataclass_fields__.values() if f.name == "max_metadata_bytes")
    stated = f"{LARGEST_TOKEN // 1024} KiB"
    assert LARGEST_TOKEN % 1024 == 0 and stated in field.metadata["help"]
    readme_row = next(line for line in (REPO / "README.md").read_text().splitlines() if "`max_metadata_bytes`" in line)
    assert stated in readme_row and f"{DEFAULT_LIMIT // 1024} KiB" in readme_row
    example = (REPO / "deploy" / "edgerec.example.toml").read_text()
    assert re.search(rf"^max_metadata_bytes = {DEFAULT_LIMIT}$", example, re.MULTILINE)
    assert stated in example


def test_a_limit_too_small_for_a_clients_own_headers_is_refused_at_start():
    with pytest.raises(ValueError, match="max_metadata_bytes"):
        make_config(Path("unused"), max_metadata_bytes=1024).validate()
