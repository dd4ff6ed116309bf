"""Every call that reaches the server is counted once in `edgerec_requests_total`, with the code its client got.

What is counted where is written in `runtime/metrics.py`. Counts are read
after waiting until the server has counted (`wait_until` on the metric),
never right after a call returns.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime import recommender_service
from edgerec.runtime.metrics import UNKNOWN_METHOD, Metrics
from edgerec.runtime.server import SERVED_SERVICES, start_server
from edgerec.runtime.status import CallGate, add_servicer, rpc
from server_helpers import catalog_ids, make_config, score_request, wait_until

MAX_MESSAGE_BYTES = 64 * 1024
TIMEOUT = 20


def codes(metrics: Metrics, method: str) -> dict[str, int]:
    """`edgerec_requests_total` of `method`, by code."""
    counted: dict[str, int] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "edgerec_requests_total" and sample.labels["method"] == method and sample.value:
                counted[sample.labels["code"]] = int(sample.value)
    return counted


def grown(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {code: n - before.get(code, 0) for code, n in after.items() if n != before.get(code, 0)}


def received(metrics: Metrics, method: str) -> int:
    return int(metrics.value("edgerec_requests_received_total", method=method))


def code_of(call) -> str:
    try:
        call()
    except grpc.RpcError as error:
        return error.code().name
    return "OK"


# -- the real server ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_bundle):
    with start_server(make_config(tiny_bundle, max_message_bytes=MAX_MESSAGE_BYTES)) as handle:
        yield handle


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.target) as channel:
        yield channel


def oversized(size: int) -> recommender_pb2.ScoreRequest:
    return recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(text="x" * size)])


def test_a_request_over_max_message_bytes_reaches_the_server_and_is_counted_resource_exhausted(server, channel):
    """gRPC used to refuse it before any handler ran: the client saw RESOURCE_EXHAUSTED, the metrics nothing."""
    before, arrived = codes(server.metrics, "Score"), received(server.metrics, "Score")
    with pytest.raises(grpc.RpcError) as refused:
        recommender_pb2_grpc.RecommenderStub(channel).Score(oversized(MAX_MESSAGE_BYTES + 100), timeout=TIMEOUT)
    assert refused.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in refused.value.details()
    wait_until(lambda: codes(server.metrics, "Score") != before, message="the call counted")
    assert grown(codes(server.metrics, "Score"), before) == {"RESOURCE_EXHAUSTED": 1}
    assert received(server.metrics, "Score") == arrived + 1


def test_a_request_over_twice_the_limit_is_refused_by_grpc_and_counted_only_as_received(server, channel):
    """The documented exception: gRPC drops it unread (a memory guard) before any handler runs."""
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    before, arrived = codes(server.metrics, "Score"), received(server.metrics, "Score")
    assert code_of(lambda: stub.Score(oversized(2 * MAX_MESSAGE_BYTES + 100), timeout=TIMEOUT)) == "RESOURCE_EXHAUSTED"
    wait_until(lambda: received(server.metrics, "Score") == arrived + 1, message="the arrival counted")
    assert code_of(lambda: stub.Score(recommender_pb2.ScoreRequest(), timeout=TIMEOUT)) == "INVALID_ARGUMENT"
    wait_until(lambda: codes(server.metrics, "Score") != before, message="the next call counted")
    assert grown(codes(server.metrics, "Score"), before) == {"INVALID_ARGUMENT": 1}


def test_an_unknown_method_is_counted_unimplemented_under_one_label(server, channel):
    before = codes(server.metrics, UNKNOWN_METHOD)
    for name in ("/edgerec.v1.Recommender/Nope", "/no.Such/Service"):
        assert code_of(lambda: channel.unary_unary(name)(b"", timeout=TIMEOUT)) == "UNIMPLEMENTED"
    wait_until(lambda: grown(codes(server.metrics, UNKNOWN_METHOD), before) == {"UNIMPLEMENTED": 2}, message="2 counted")


def test_health_checks_and_reflection_are_counted_with_their_codes(server, channel):
    health = health_pb2_grpc.HealthStub(channel)
    checks_before, reflection_before = codes(server.metrics, "Check"), codes(server.metrics, "ServerReflectionInfo")
    assert code_of(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)) == "OK"
    assert code_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=TIMEOUT)) == "NOT_FOUND"
    listing = iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    replies = list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(listing, timeout=TIMEOUT))
    assert replies and replies[0].list_services_response.service
    wait_until(lambda: grown(codes(server.metrics, "Check"), checks_before) == {"OK": 1, "NOT_FOUND": 1}, message="checks")
    wait_until(lambda: grown(codes(server.metrics, "ServerReflectionInfo"), reflection_before) == {"OK": 1}, message="reflection")


def test_a_mix_of_calls_is_counted_once_each_and_received_equals_counted(server, channel, tiny_bundle):
    recommender = recommender_pb2_grpc.RecommenderStub(channel)
    inference = kserve_grpc.GRPCInferenceServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    good = score_request(catalog_ids(tiny_bundle)[:3])
    calls = [
        ("Score", lambda: recommender.Score(good, timeout=TIMEOUT)),
        ("Score", lambda: recommender.Score(recommender_pb2.ScoreRequest(), timeout=TIMEOUT)),
        ("Score", lambda: recommender.Score(oversized(MAX_MESSAGE_BYTES), timeout=TIMEOUT)),
        ("Rank", lambda: recommender.Rank(recommender_pb2.RankRequest(candidates=good.candidates, k=2), timeout=TIMEOUT)),
        ("ServerLive", lambda: inference.ServerLive(kserve.ServerLiveRequest(), timeout=TIMEOUT)),
        ("ModelMetadata", lambda: inference.ModelMetadata(kserve.ModelMetadataRequest(name="nope"), timeout=TIMEOUT)),
        ("Check", lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)),
        (UNKNOWN_METHOD, lambda: channel.unary_unary("/edgerec.v1.Recommender/Gone")(b"", timeout=TIMEOUT)),
    ]
    methods = sorted({method for method, _ in calls})
    before = {method: codes(server.metrics, method) for method in methods}
    arrived = {method: received(server.metrics, method) for method in methods}
    expected: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for method, call in calls:
        expected[method][code_of(call)] += 1

    def counted() -> dict[str, dict[str, int]]:
        return {method: grown(codes(server.metrics, method), before[method]) for method in methods}

    wait_until(lambda: sum(sum(c.values()) for c in counted().values()) >= len(calls), message="every call counted")
    assert counted() == {method: dict(seen) for method, seen in expected.items()}
    assert {m: received(server.metrics, m) - arrived[m] for m in methods} == {m: sum(expected[m].values()) for m in methods}


def test_a_call_whose_deadline_passes_while_the_model_runs_is_counted_deadline_exceeded(tiny_bundle):
    """Batching off, 1024 candidates: 1024 model runs take several times the deadline (a fifth of one full call).

    The channel is connected first, so each call reaches its handler long before its deadline.
    """
    ids = catalog_ids(tiny_bundle)
    slow = score_request([ids[i % len(ids)] for i in range(1024)], context=ids[:8])
    with start_server(make_config(tiny_bundle, max_batch_size=1)) as server:
        with grpc.insecure_channel(server.target) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            started = time.perf_counter()
            stub.Score(slow, timeout=120)
            deadline = max(0.05, (time.perf_counter() - started) / 5)
            seen = collections.Counter(code_of(lambda: stub.Score(slow, timeout=deadline)) for _ in range(5))
        wait_until(lambda: sum(codes(server.metrics, "Score").values()) == 6, message="6 calls counted")
        assert codes(server.metrics, "Score").pop("OK", 0) >= 1
        counted = codes(server.metrics, "Score")
        counted["OK"] -= 1  # the timing call
        assert {code: n for code, n in counted.items() if n} == dict(seen)  # each counted with the code its client got
    assert seen["DEADLINE_EXCEEDED"] >= 4, seen  # the case under test


# -- the status boundary on its own: a method that never finishes -----------------------------------------
class Stuck:
    """A Recommender whose Score waits forever: only gRPC can end its calls (deadline, client cancel)."""

    max_response_bytes = MAX_MESSAGE_BYTES

    def __init__(self) -> None:
        self.metrics = Metrics()
        self.entered = 0  # Score calls whose handler has begun

    @rpc("Score")
    async def Score(self, request, context):
        self.entered += 1
        await asyncio.Event().wait()

    @rpc("Rank")
    async def Rank(self, request, context):
        await asyncio.Event().wait()

    @rpc("Recommend")
    async def Recommend(self, request, context):
        await asyncio.Event().wait()


@pytest.fixture(scope="module")
def stuck():
    """A grpc.aio server on its own loop in a thread, serving `Stuck` through `add_servicer` and `CallGate`."""
    servicer, loop = Stuck(), asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(interceptors=[CallGate(servicer.metrics, SERVED_SERVICES)])
        add_servicer(server, servicer, recommender_service.SERVICE)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result(30)
    yield servicer, f"127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_a_call_grpc_ends_at_its_deadline_is_counted_deadline_exceeded_not_cancelled(stuck):
    servicer, target = stuck
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)  # connecting must not eat the deadline
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for _ in range(3):
            assert code_of(lambda: stub.Score(recommender_pb2.ScoreRequest(), timeout=0.2)) == "DEADLINE_EXCEEDED"
    wait_until(lambda: sum(codes(servicer.metrics, "Score").values()) == 3, message="3 calls counted")
    assert codes(servicer.metrics, "Score") == {"DEADLINE_EXCEEDED": 3}


def test_a_call_its_client_cancels_is_counted_cancelled(stuck):
    servicer, target = stuck
    before = codes(servicer.metrics, "Score")
    entered = servicer.entered
    with grpc.insecure_channel(target) as channel:
        future = recommender_pb2_grpc.RecommenderStub(channel).Score.future(recommender_pb2.ScoreRequest(), timeout=60)
        wait_until(lambda: servicer.entered == entered + 1, message="the handler running")
        future.cancel()
        wait_until(lambda: codes(servicer.metrics, "Score") != before, message="the call counted")
    assert grown(codes(servicer.metrics, "Score"), before) == {"CANCELLED": 1}
