"""The gRPC server, started for real on 127.0.0.1 with the tiny bundle: every RPC and every error path."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.core.featurize import ContextEntry
from edgerec.runtime.server import start_server
from server_helpers import (
    catalog_ids,
    copy_bundle,
    make_config,
    score_request,
    varied_requests,
    wait_for_value,
    wait_until,
)

TIMEOUT = 20  # seconds; every call is bounded


@pytest.fixture(scope="module")
def ids(tiny_bundle):
    return catalog_ids(tiny_bundle)


@pytest.fixture
def recommender(channel):
    return recommender_pb2_grpc.RecommenderStub(channel)


@pytest.fixture
def inference(channel):
    return kserve_grpc.GRPCInferenceServiceStub(channel)


def assert_same_scores(response, expected, atol=1e-6):
    probabilities, quantities = expected
    np.testing.assert_allclose(response.purchase_probability, probabilities, atol=atol, rtol=0)
    np.testing.assert_allclose(response.expected_quantity, quantities, rtol=1e-5)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code(), failure.value.details()


# -- Recommender.Score / Rank ---------------------------------------------------------------------
def test_score_equals_offline_model_scores_in_request_order(recommender, offline, ids):
    request = score_request(
        [ids[3], ("", "BRAND NEW ENAMEL TEA POT"), ids[0], ("UNKNOWN-ID", "VINTAGE PAPER CHAIN KIT"), ids[7]],
        context=[(ids[1], "", 3), ("", "HAND PAINTED CERAMIC BOWL", 1), (ids[2], "", 1)],
    )
    response = recommender.Score(request, timeout=TIMEOUT)
    expected = offline.score(request)
    assert_same_scores(response, expected)
    assert np.ptp(expected[0]) > 1e-4, "the reference scores barely differ; the comparison would prove nothing"
    assert (response.model_name, response.model_version) == ("tiny", "test")


def test_scores_do_not_depend_on_the_batch_they_were_merged_into(server, recommender, offline, ids):
    requests = varied_requests(ids, 40)
    batches_before = server.metrics.value("edgerec_batch_size_pairs_count")
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda r: recommender.Score(r, timeout=TIMEOUT), requests))
    for request, response in zip(requests, responses):
        assert_same_scores(response, offline.score(request))
    batches = server.metrics.value("edgerec_batch_size_pairs_count") - batches_before
    assert batches < len(requests), "requests were never merged into shared batches"


def test_a_request_larger_than_a_batch_is_split_and_reassembled_in_order(server, recommender, offline, ids):
    request = score_request([ids[(i * 7) % len(ids)] for i in range(100)], context=[ids[5], ids[6]])
    batches_before = server.metrics.value("edgerec_batch_size_pairs_count")
    response = recommender.Score(request, timeout=TIMEOUT)
    assert_same_scores(response, offline.score(request))
    assert server.metrics.value("edgerec_batch_size_pairs_count") - batches_before >= 100 / 8


def test_rank_returns_the_top_k_by_probability(recommender, offline, ids):
    candidates = ids[:12]
    request = recommender_pb2.RankRequest(
        context=[recommender_pb2.ContextItem(item_id=ids[20], count=2)],
        candidates=[recommender_pb2.Candidate(item_id=i) for i in candidates],
        k=4,
    )
    response = recommender.Rank(request, timeout=TIMEOUT)
    probabilities, _ = offline.score(score_request(candidates, [(ids[20], "", 2)]))
    expected = np.argsort(-probabilities, kind="stable")[:4]
    assert [r.index for r in response.ranked] == expected.tolist()
    assert [r.item_id for r in response.ranked] == [candidates[i] for i in expected]
    np.testing.assert_allclose([r.purchase_probability for r in response.ranked], probabilities[expected], atol=1e-6)
    assert response.model_version == "test"


@pytest.mark.parametrize(
    "build, field",
    [
        (lambda ids: recommender_pb2.ScoreRequest(), "candidates"),
        (lambda ids: score_request(["NO-SUCH-ITEM"]), "candidates[0]"),
        (lambda ids: score_request([ids[0], ("", "   ")]), "candidates[1]"),
        (lambda ids: score_request([ids[0], ("", "X" * 600)]), "candidates[1]"),  # 512 characters at most
        (lambda ids: score_request([ids[0], ("", "")]), "candidates[1]"),
        (lambda ids: score_request([ids[0]], context=[ids[1], ("GONE", "", 1)]), "context[1]"),
        (lambda ids: score_request([ids[0]] * 1025), "candidates"),
        (lambda ids: score_request([ids[0]], context=[ids[1]] * 257), "context"),
    ],
    ids=["no-candidates", "unknown-id", "blank-text", "oversized-text", "empty-candidate", "unknown-context-id",
         "too-many-candidates", "too-many-context-items"],
)
def test_bad_score_requests_get_invalid_argument_naming_the_field(recommender, ids, build, field):
    code, details = status_of(lambda: recommender.Score(build(ids), timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":"), details


@pytest.mark.parametrize("k", [0, 4])
def test_rank_with_k_out_of_range_is_invalid(recommender, ids, k):
    request = recommender_pb2.RankRequest(candidates=[recommender_pb2.Candidate(item_id=i) for i in ids[:3]], k=k)
    code, details = status_of(lambda: recommender.Rank(request, timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("k:")


def test_messages_over_the_size_bound_are_refused(tiny_bundle, ids):
    with start_server(make_config(tiny_bundle, max_message_bytes=2048)) as small:
        with grpc.insecure_channel(small.target) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            assert stub.Score(score_request(ids[:3]), timeout=TIMEOUT).purchase_probability
            code, _ = status_of(lambda: stub.Score(score_request(ids * 20), timeout=TIMEOUT))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_bytes_that_are_no_valid_request_get_invalid_argument(channel):
    for method in ("/edgerec.v1.Recommender/Score", "/edgerec.v1.Recommender/Rank", "/inference.GRPCInferenceService/ModelInfer"):
        raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        for garbage in (b"\xff\xff\xff\xff\x01 not a protobuf message", b"\x12\x03\n\x01\xfe"):  # corrupt; not UTF-8
            code, details = status_of(lambda: raw(garbage, timeout=TIMEOUT))
            assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("request: not a valid"), details


def test_an_enormous_unknown_item_id_gets_a_short_invalid_argument(recommender):
    code, details = status_of(lambda: recommender.Score(score_request(["x" * 20_000]), timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("candidates[0]:") and len(details) <= 1024


def test_an_answer_over_the_message_limit_is_resource_exhausted_and_counted(tiny_bundle):
    candidates = [(f"{i:03d}" + "X" * 200, "RED MUG") for i in range(30)]  # unknown ids, echoed by Rank
    request = recommender_pb2.RankRequest(
        candidates=[recommender_pb2.Candidate(item_id=i, text=t) for i, t in candidates], k=30
    )
    answer = recommender_pb2.RankResponse(
        ranked=[recommender_pb2.RankedCandidate(index=n, item_id=i, purchase_probability=0.5, expected_quantity=1.5)
                for n, (i, _) in enumerate(candidates)],
        model_name="tiny", model_version="test",
    )
    limit = (request.ByteSize() + answer.ByteSize()) // 2
    assert request.ByteSize() < limit < answer.ByteSize()
    with start_server(make_config(tiny_bundle, max_message_bytes=limit)) as handle:
        with grpc.insecure_channel(handle.target) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            code, details = status_of(lambda: stub.Rank(request, timeout=TIMEOUT))
            request.k = 2
            assert len(stub.Rank(request, timeout=TIMEOUT).ranked) == 2
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "max_message_bytes" in details
        wait_for_value(
            lambda: handle.metrics.value("edgerec_requests_total", method="Rank", code="RESOURCE_EXHAUSTED"), 1,
            message="Rank calls counted RESOURCE_EXHAUSTED",
        )


# -- KServe v2 ------------------------------------------------------------------------------------
def test_kserve_health_and_metadata(inference):
    assert inference.ServerLive(kserve.ServerLiveRequest(), timeout=TIMEOUT).live
    assert inference.ServerReady(kserve.ServerReadyRequest(), timeout=TIMEOUT).ready
    assert inference.ModelReady(kserve.ModelReadyRequest(name="tiny"), timeout=TIMEOUT).ready
    assert inference.ModelReady(kserve.ModelReadyRequest(name="tiny", version="test"), timeout=TIMEOUT).ready
    assert not inference.ModelReady(kserve.ModelReadyRequest(name="tiny", version="v9"), timeout=TIMEOUT).ready
    assert not inference.ModelReady(kserve.ModelReadyRequest(name="other"), timeout=TIMEOUT).ready
    server = inference.ServerMetadata(kserve.ServerMetadataRequest(), timeout=TIMEOUT)
    assert server.name == "edgerec" and server.version
    model = inference.ModelMetadata(kserve.ModelMetadataRequest(name="tiny"), timeout=TIMEOUT)
    assert (model.name, list(model.versions), model.platform) == ("tiny", ["test"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [
        ("input_ids", "INT64", [-1, -1]),
        ("attention_mask", "INT64", [-1, -1]),
        ("token_type_ids", "INT64", [-1, -1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [
        ("purchase_probability", "FP32", [-1]),
        ("expected_quantity", "FP32", [-1]),
    ]
    code, details = status_of(lambda: inference.ModelMetadata(kserve.ModelMetadataRequest(name="other"), timeout=TIMEOUT))
    assert code is grpc.StatusCode.NOT_FOUND and "tiny" in details


def packed_rows(offline, ids, count=6):
    featurizer = offline.featurizer
    pairs = []
    for k in range(count):
        history = [featurizer.catalog[ids[(k + j) % len(ids)]] for j in range(k % 4)]
        context = featurizer.context_tokens([ContextEntry(tokens, 1) for tokens in history])
        pairs.append((context, featurizer.catalog[ids[(k * 3) % len(ids)]]))
    return featurizer.pack(pairs)


def infer_request(batch, raw: bool, model_name: str = "tiny", **extra) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name=model_name, id="req-1", **extra)
    for name, values in batch.as_feeds().items():
        tensor = request.inputs.add(name=name, datatype="INT64", shape=list(values.shape))
        if raw:
            request.raw_input_contents.append(values.astype("<i8").tobytes())
        else:
            tensor.contents.int64_contents.extend(values.ravel().tolist())
    return request


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_model_infer_equals_offline_scores(inference, offline, ids, raw):
    batch = packed_rows(offline, ids)
    response = inference.ModelInfer(infer_request(batch, raw), timeout=TIMEOUT)
    assert (response.model_name, response.model_version, response.id) == ("tiny", "test", "req-1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("purchase_probability", "FP32", [6]),
        ("expected_quantity", "FP32", [6]),
    ]
    # typed or raw request, the data comes raw, as Triton answers (tests/test_kserve.py)
    probabilities = np.frombuffer(response.raw_output_contents[0], dtype="<f4")
    quantities = np.frombuffer(response.raw_output_contents[1], dtype="<f4")
    expected_p, expected_q = offline.run_rows(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    np.testing.assert_allclose(probabilities, expected_p, atol=1e-6)
    np.testing.assert_allclose(quantities, expected_q, rtol=1e-5)


def test_the_cross_encoder_also_answers_to_its_model_name(inference, offline, ids):
    assert inference.ModelReady(kserve.ModelReadyRequest(name="cross_encoder", version="test"), timeout=TIMEOUT).ready
    model = inference.ModelMetadata(kserve.ModelMetadataRequest(name="cross_encoder"), timeout=TIMEOUT)
    assert (model.name, list(model.versions)) == ("cross_encoder", ["test"])
    assert [t.name for t in model.inputs] == ["input_ids", "attention_mask", "token_type_ids"]
    batch = packed_rows(offline, ids, 3)
    by_alias = inference.ModelInfer(infer_request(batch, raw=True, model_name="cross_encoder"), timeout=TIMEOUT)
    by_bundle = inference.ModelInfer(infer_request(batch, raw=True), timeout=TIMEOUT)
    assert (by_alias.model_name, by_alias.model_version) == ("cross_encoder", "test")
    assert by_alias.raw_output_contents == by_bundle.raw_output_contents


def test_model_infer_returns_only_the_requested_output(inference, offline, ids):
    request = infer_request(packed_rows(offline, ids, 2), raw=False)
    request.outputs.add(name="expected_quantity")
    response = inference.ModelInfer(request, timeout=TIMEOUT)
    assert [o.name for o in response.outputs] == ["expected_quantity"]


def _rename(request):
    request.inputs[0].name = "input_idz"


def _dtype(request):
    request.inputs[1].datatype = "INT32"


def _rank1(request):
    del request.inputs[2].shape[:]
    request.inputs[2].shape.extend([12])


def _shapes_differ(request):
    request.inputs[2].shape[1] -= 1
    del request.inputs[2].contents.int64_contents[-2:]


def _missing(request):
    del request.inputs[2]


def _count(request):
    del request.inputs[0].contents.int64_contents[-1]


def _id_range(request):
    request.inputs[0].contents.int64_contents[3] = 10**9


def _mask_values(request):
    request.inputs[1].contents.int64_contents[0] = 2


def _unattended_row(request):
    width = request.inputs[1].shape[1]
    for i in range(width):
        request.inputs[1].contents.int64_contents[i] = 0


def _unknown_output(request):
    request.outputs.add(name="logits")


def _too_long(request):
    for tensor in request.inputs:
        tensor.shape[1] = 65
        tensor.contents.int64_contents.extend([0] * 65 * tensor.shape[0])
        del tensor.contents.int64_contents[65 * tensor.shape[0] :]


@pytest.mark.parametrize(
    "damage, field",
    [
        (_rename, "inputs[0].name"),
        (_dtype, "inputs[1].datatype"),
        (_rank1, "inputs[2].shape"),
        (_shapes_differ, "inputs[2].shape"),
        (_missing, "inputs"),
        (_count, "inputs[0].contents.int64_contents"),
        (_id_range, "inputs.input_ids"),
        (_mask_values, "inputs.attention_mask"),
        (_unattended_row, "inputs.attention_mask"),
        (_unknown_output, "outputs[0].name"),
        (_too_long, "inputs[0].shape"),
    ],
    ids=lambda v: getattr(v, "__name__", v).strip("_") if callable(v) else None,
)
def test_model_infer_with_bad_tensors_is_invalid_naming_the_field(inference, offline, ids, damage, field):
    request = infer_request(packed_rows(offline, ids, 2), raw=False)
    damage(request)
    code, details = status_of(lambda: inference.ModelInfer(request, timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(field + ":"), details


def test_model_infer_with_wrong_raw_byte_count_is_invalid(inference, offline, ids):
    request = infer_request(packed_rows(offline, ids, 2), raw=True)
    request.raw_input_contents[1] = request.raw_input_contents[1][:-8]
    code, details = status_of(lambda: inference.ModelInfer(request, timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("raw_input_contents[1]:"), details


def test_model_infer_for_an_unknown_model_or_version_is_not_found(inference, offline, ids):
    request = infer_request(packed_rows(offline, ids, 2), raw=True)
    request.model_name = "other"
    assert status_of(lambda: inference.ModelInfer(request, timeout=TIMEOUT))[0] is grpc.StatusCode.NOT_FOUND
    request.model_name, request.model_version = "tiny", "9"
    assert status_of(lambda: inference.ModelInfer(request, timeout=TIMEOUT))[0] is grpc.StatusCode.NOT_FOUND


# -- health, reflection, metrics ----------------------------------------------------------------
def test_standard_health_service_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "edgerec.v1.Recommender", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=TIMEOUT)
    names = {service.name for reply in replies for service in reply.list_services_response.service}
    assert {"edgerec.v1.Recommender", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_prometheus_metrics_are_served_on_http(server, recommender, ids):
    recommender.Score(score_request(ids[:2]), timeout=TIMEOUT)
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=TIMEOUT).read().decode()
    for name in (
        'edgerec_requests_total{code="OK",method="Score"}',
        "edgerec_queue_seconds_bucket",
        "edgerec_compute_seconds_bucket",
        "edgerec_batch_size_pairs_bucket",
        "edgerec_batch_padding_ratio_bucket",
        "edgerec_queue_depth_pairs",
        'edgerec_model_info{model="cross_encoder",model_name="tiny",precision="fp32"',
    ):
        assert name in text, name


# -- overload, deadlines, cancellation (a server whose batches wait, so requests sit in the queue) --
@pytest.fixture
def slow_server(tiny_bundle):
    """Partial batches wait 1.5 s for company (5x the shortest deadline below): a request stays queued long
    enough to be refused, expire or be cancelled."""
    handle = start_server(
        make_config(tiny_bundle, max_batch_size=64, max_queue_delay_ms=1500, max_queue_pairs=8, max_candidates=8)
    )
    yield handle
    handle.stop()


def test_overload_is_refused_at_once_with_resource_exhausted(slow_server, ids):
    with grpc.insecure_channel(slow_server.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        admitted = stub.Score.future(score_request(ids[:8]), timeout=TIMEOUT)
        wait_until(lambda: slow_server.metrics.value("edgerec_queue_depth_pairs") == 8, message="8 pairs queued")
        code, details = status_of(lambda: stub.Score(score_request(ids[:1]), timeout=TIMEOUT))
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED and "overloaded" in details
        assert len(admitted.result().purchase_probability) == 8  # the admitted request is still answered


def test_an_expired_deadline_gives_deadline_exceeded_and_costs_no_compute(slow_server, ids):
    with grpc.insecure_channel(slow_server.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        code, _ = status_of(lambda: stub.Score(score_request(ids[:3]), timeout=0.3))
        assert code is grpc.StatusCode.DEADLINE_EXCEEDED
        metrics = slow_server.metrics
        wait_until(lambda: metrics.value("edgerec_dropped_pairs_total", reason="deadline")
                   + metrics.value("edgerec_dropped_pairs_total", reason="cancelled") == 3, message="3 pairs dropped")
        assert stub.Score(score_request(ids[:1]), timeout=TIMEOUT).purchase_probability  # still serving
        assert metrics.value("edgerec_pairs_scored_total") == 1  # only the last request ran


def test_a_cancelled_request_is_dropped_before_compute(slow_server, ids):
    with grpc.insecure_channel(slow_server.target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        call = stub.Score.future(score_request(ids[:5]), timeout=TIMEOUT)
        wait_until(lambda: slow_server.metrics.value("edgerec_queue_depth_pairs") == 5, message="5 pairs queued")
        call.cancel()
        metrics = slow_server.metrics
        # the server counts the drop, then publishes the queue gauge: wait for both, not the first one alone
        wait_until(lambda: metrics.value("edgerec_dropped_pairs_total", reason="cancelled") == 5
                   and metrics.value("edgerec_queue_depth_pairs") == 0, message="5 pairs dropped and the queue empty")
        assert metrics.value("edgerec_pairs_scored_total") == 0


# -- bundles: archives and hot reload -------------------------------------------------------------
def test_serves_a_tar_gz_bundle(tiny_bundle_archive, ids):
    with start_server(make_config(tiny_bundle_archive)) as handle:
        with grpc.insecure_channel(handle.target) as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Score(score_request(ids[:3]), timeout=TIMEOUT)
    assert len(reply.purchase_probability) == 3 and reply.model_name == "tiny"


def _hammer(target, request, stop: threading.Event):
    """A client sending `request` until `stop` is set (or it fails); the status codes seen and the versions.

    Run it in a pool and call each future's `result()`: an error in a client thread is the test's error.
    """
    codes, versions = [], set()

    def client():
        try:
            with grpc.insecure_channel(target) as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    try:
                        versions.add(stub.Score(request, timeout=TIMEOUT).model_version)
                        codes.append(grpc.StatusCode.OK)
                    except grpc.RpcError as error:
                        codes.append(error.code())
        finally:
            stop.set()  # a client that dies stops the others, so the test fails at once instead of waiting

    return client, codes, versions


def test_hot_reload_swaps_versions_without_dropping_requests(tiny_bundle, tmp_path, ids):
    new_bundle = copy_bundle(tiny_bundle, tmp_path / "tiny-v2", "v2")
    with start_server(make_config(tiny_bundle, max_queue_delay_ms=1)) as handle:
        stop = threading.Event()
        client, codes, versions = _hammer(handle.target, score_request(ids[:6], ids[10:13]), stop)
        with ThreadPoolExecutor(4) as pool:
            clients = [pool.submit(client) for _ in range(4)]
            try:
                wait_until(lambda: len(codes) > 20 or stop.is_set(), message="load running")
                assert handle.reload(new_bundle)
                seen = len(codes)
                wait_until(lambda: len(codes) > seen + 20 or stop.is_set(), message="load after reload")
            finally:
                stop.set()
            for future in clients:
                future.result()  # raises what a client thread raised
        assert set(codes) == {grpc.StatusCode.OK}
        assert versions == {"test", "v2"}
        assert handle.metrics.value("edgerec_bundle_reloads_total", result="ok") == 1


def test_a_broken_bundle_fails_to_load_and_the_old_one_keeps_serving(tiny_bundle, tmp_path, ids):
    broken = copy_bundle(tiny_bundle, tmp_path / "tiny-broken", "broken")
    variants = json.loads((broken / "manifest.json").read_text())["models"]["cross_encoder"]["variants"]
    for variant in variants:
        (broken / variant["file"]).write_bytes(b"not an onnx model")
    with start_server(make_config(tiny_bundle)) as handle:
        assert not handle.reload(broken)
        assert not handle.reload(tmp_path / "no-such-bundle")
        with grpc.insecure_channel(handle.target) as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Score(score_request(ids[:2]), timeout=TIMEOUT)
        assert reply.model_version == "test"
        assert handle.metrics.value("edgerec_bundle_reloads_total", result="failed") == 2


# -- shutdown -------------------------------------------------------------------------------------
def test_shutdown_tells_health_watchers_not_serving_and_does_not_wait_on_their_streams(tiny_bundle):
    handle = start_server(make_config(tiny_bundle, drain_timeout_s=120))
    channel = grpc.insecure_channel(handle.target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    with ThreadPoolExecutor(1) as pool:
        stopping = pool.submit(handle.stop)
        try:
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # an open Watch stream must not hold shutdown for the 120 s drain timeout; stop's errors are raised here
            stopping.result(timeout=60)
        finally:
            channel.close()


def test_a_port_already_in_use_is_a_clear_error(server, tiny_bundle):
    with pytest.raises(OSError, match="cannot listen on 127.0.0.1"):
        start_server(make_config(tiny_bundle, grpc_port=server.port, metrics_port=-1))
