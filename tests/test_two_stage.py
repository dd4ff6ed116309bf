"""The two-stage path through a real server on 127.0.0.1 (runtime-only: no torch).

`tiny_two_stage_bundle` holds the tiny cross-encoder and the tiny two-tower
ranker (`tests/data/make_tiny_model.py`). The reference scores are computed
here without the server's code path: the ranker's feeds built by hand from
the core builders (`history_arrays`, `behaviour_features`, `ranker_feeds`) and
run on the bundle's ranker variant; the cross-encoder's by
`server_helpers.OfflineModel`, one pair at a time.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from edgerec.core.behaviour import BehaviourTables, HistoryEntry, behaviour_features
from edgerec.core.bundle import open_bundle
from edgerec.core.ranker_inputs import history_arrays, ranker_feeds
from edgerec.core.sessions import create_session
from edgerec.core.signatures import RANKER
from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.runtime.recommender_service import build_recommend_request, build_score_request
from edgerec.runtime.server import start_server
from edgerec.runtime.two_stage import Purchased, Stage
from server_helpers import OfflineModel, catalog_ids, make_config

RANKER_STAGE, CROSS_STAGE = recommender_pb2.STAGE_RANKER, recommender_pb2.STAGE_CROSS_ENCODER


@pytest.fixture(scope="module")
def two_stage_server(tiny_two_stage_bundle):
    handle = start_server(
        make_config(tiny_two_stage_bundle, precision="fp32", max_batch_size=8, max_queue_delay_ms=5, max_rerank_top=8)
    )
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def stub(two_stage_server):
    with grpc.insecure_channel(two_stage_server.target) as channel:
        yield recommender_pb2_grpc.RecommenderStub(channel)


class OfflineRanker:
    """The bundle's ranker variant fed by hand from the core builders: the reference scores."""

    def __init__(self, bundle_path) -> None:
        bundle = open_bundle(bundle_path)
        self.ids = catalog_ids(bundle_path)
        self.embeddings = np.load(bundle.data_path("item_embeddings"))
        self.tables = BehaviourTables.load(bundle.data_path("behaviour_tables"))
        self.session = create_session(bundle.variant_path(RANKER.name)).session

    def score(self, history: list[tuple[str, int, float | None]], candidates: list[str]):
        index = {item: row for row, item in enumerate(self.ids)}
        entries = [HistoryEntry(*entry) for entry in history]
        features = behaviour_features(entries, candidates, self.tables)
        rows = np.array([index[c] for c in candidates], dtype=np.int64)
        feeds = ranker_feeds(self.embeddings, history_arrays(entries, index, 200), rows, features)
        return self.session.run(["purchase_probability", "expected_quantity"], feeds)


@pytest.fixture(scope="module")
def offline_ranker(tiny_two_stage_bundle):
    return OfflineRanker(tiny_two_stage_bundle)


def test_stage_values_are_the_protos():
    assert Stage.RANKER == recommender_pb2.STAGE_RANKER and Stage.CROSS_ENCODER == recommender_pb2.STAGE_CROSS_ENCODER
    assert [Purchased.ANY, Purchased.EXCLUDE, Purchased.ONLY] == [
        recommender_pb2.PURCHASED_ANY, recommender_pb2.PURCHASED_EXCLUDE, recommender_pb2.PURCHASED_ONLY
    ]


def test_score_answers_with_the_ranker_exactly_as_offline_and_the_old_request_shape_still_works(
    stub, offline_ranker, tiny_two_stage_bundle
):
    ids = catalog_ids(tiny_two_stage_bundle)
    candidates = ids[:30]
    # old clients: no days_ago, no rerank_top
    reply = stub.Score(build_score_request(candidates, [(ids[3], "", 4), (ids[40], "", 1)]))
    probability, quantity = offline_ranker.score([(ids[3], 4, None), (ids[40], 1, None)], candidates)
    np.testing.assert_array_equal(np.array(reply.purchase_probability, np.float32), probability)
    np.testing.assert_array_equal(np.array(reply.expected_quantity, np.float32), quantity)
    assert list(reply.stage) == [RANKER_STAGE] * 30
    assert reply.model_version == "two"

    # days_ago reaches the ranker's recency features
    recent = stub.Score(build_score_request(candidates, [(ids[3], "", 4, 2.0), (ids[40], "", 1, 30.5)]))
    probability, _ = offline_ranker.score([(ids[3], 4, 2.0), (ids[40], 1, 30.5)], candidates)
    np.testing.assert_array_equal(np.array(recent.purchase_probability, np.float32), probability)
    assert recent.purchase_probability[3] != reply.purchase_probability[3]


def test_rerank_top_gives_the_rankers_best_the_cross_encoders_scores_and_puts_them_first(
    stub, offline_ranker, tiny_two_stage_bundle
):
    ids = catalog_ids(tiny_two_stage_bundle)
    candidates = ids[10:40]
    context = [(ids[12], "", 2), (ids[5], "", 1)]
    first, _ = offline_ranker.score([(ids[12], 2, None), (ids[5], 1, None)], candidates)
    best = np.argsort(-first, kind="stable")[:5]
    request = build_score_request(candidates, context, rerank_top=5)
    reply = stub.Score(request)
    stages = np.array(reply.stage)
    assert sorted(np.flatnonzero(stages == CROSS_STAGE).tolist()) == sorted(best.tolist())
    cross = OfflineModel(tiny_two_stage_bundle, "fp32")
    reranked = build_score_request([candidates[i] for i in best], context)
    expected, _ = cross.score(reranked)
    np.testing.assert_allclose(np.array(reply.purchase_probability)[best], expected, rtol=0, atol=1e-6)
    rest = stages == RANKER_STAGE
    np.testing.assert_array_equal(np.array(reply.purchase_probability, np.float32)[rest], first[rest])

    rank = recommender_pb2.RankRequest(context=request.context, candidates=request.candidates, k=12, rerank_top=5)
    ranked = stub.Rank(rank).ranked
    assert [r.stage for r in ranked[:5]] == [CROSS_STAGE] * 5 and all(r.stage == RANKER_STAGE for r in ranked[5:])
    top = [r.purchase_probability for r in ranked[:5]]
    assert top == sorted(top, reverse=True) and {r.index for r in ranked[:5]} == set(best.tolist())
    tail = [r.purchase_probability for r in ranked[5:]]
    assert tail == sorted(tail, reverse=True)


def test_recommend_returns_the_catalogs_best_with_its_exclusions(stub, offline_ranker, tiny_two_stage_bundle):
    ids = catalog_ids(tiny_two_stage_bundle)
    context = [(ids[2], "", 3, 4.0), (ids[7], "", 1, 100.0), (ids[9], "", 2)]
    history = [(ids[2], 3, 4.0), (ids[7], 1, 100.0), (ids[9], 2, None)]
    everything, _ = offline_ranker.score(history, ids)
    order = np.argsort(-everything, kind="stable")

    reply = stub.Recommend(build_recommend_request(context, k=6))
    assert [item.item_id for item in reply.items] == [ids[i] for i in order[:6]]
    np.testing.assert_array_equal(np.array([i.purchase_probability for i in reply.items], np.float32), everything[order[:6]])
    assert reply.scored_items == len(ids) and all(item.stage == RANKER_STAGE and item.text for item in reply.items)

    excluded = [ids[i] for i in order[:3]] + ["NOT-IN-CATALOG"]
    reply = stub.Recommend(build_recommend_request(context, k=6, exclude_ids=excluded))
    assert [item.item_id for item in reply.items] == [ids[i] for i in order[3:9]]
    assert reply.scored_items == len(ids) - 3

    bought = {ids[2], ids[7], ids[9]}
    fresh = stub.Recommend(build_recommend_request(context, k=50, purchased=recommender_pb2.PURCHASED_EXCLUDE))
    assert len(fresh.items) == 50 and not bought & {item.item_id for item in fresh.items}
    again = stub.Recommend(build_recommend_request(context, k=50, purchased=recommender_pb2.PURCHASED_ONLY))
    assert {item.item_id for item in again.items} == bought and again.scored_items == 3

    reranked = stub.Recommend(build_recommend_request(context, k=4, rerank_top=3))
    assert [item.stage for item in reranked.items] == [CROSS_STAGE] * 3 + [RANKER_STAGE]
    assert {item.item_id for item in reranked.items[:3]} == {ids[i] for i in order[:3]}


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda s, ids: s.Score(build_score_request(ids[:3], rerank_top=9)), "rerank_top"),
        (lambda s, ids: s.Score(build_score_request(ids[:3], [(ids[0], "", 1, -1.0)])), "context[0].days_ago"),
        (lambda s, ids: s.Recommend(build_recommend_request(k=0)), "k"),
        (lambda s, ids: s.Recommend(build_recommend_request(k=3, purchased=7)), "purchased"),
        (lambda s, ids: s.Score(build_score_request(["NOPE"])), "candidates[0]"),
    ],
)
def test_bad_two_stage_requests_are_refused_naming_the_field(stub, tiny_two_stage_bundle, call, field):
    with pytest.raises(grpc.RpcError) as caught:
        call(stub, catalog_ids(tiny_two_stage_bundle))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


def test_each_stage_is_measured(stub, two_stage_server, tiny_two_stage_bundle):
    metrics = two_stage_server.server.metrics
    ids = catalog_ids(tiny_two_stage_bundle)
    before = {s: metrics.value("edgerec_stage_candidates_total", stage=s) for s in ("ranker", "cross_encoder")}
    ranker_rows = metrics.value("edgerec_ranker_pairs_scored_total")
    stub.Score(build_score_request(ids[:20], rerank_top=4))
    assert metrics.value("edgerec_stage_candidates_total", stage="ranker") == before["ranker"] + 20
    assert metrics.value("edgerec_stage_candidates_total", stage="cross_encoder") == before["cross_encoder"] + 4
    assert metrics.value("edgerec_ranker_pairs_scored_total") == ranker_rows + 20
    assert metrics.value("edgerec_stage_seconds_count", stage="ranker") >= 1


def test_a_bundle_without_the_ranker_scores_with_the_cross_encoder_and_refuses_recommend(channel, tiny_bundle):
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    ids = catalog_ids(tiny_bundle)
    reply = stub.Score(build_score_request(ids[:4], rerank_top=2))
    assert list(reply.stage) == [CROSS_STAGE] * 4
    with pytest.raises(grpc.RpcError) as caught:
        stub.Recommend(build_recommend_request(k=3))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "no ranker" in caught.value.details()


def test_hot_reload_under_recommend_and_score_load_drops_nothing_and_keeps_the_stage_metrics(
    tiny_two_stage_bundle, tmp_path
):
    """A reload builds a new ranker stage (its batchers report into the same `edgerec_ranker_*` series);
    requests in flight on the old version finish, none fails."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from server_helpers import copy_bundle

    ids = catalog_ids(tiny_two_stage_bundle)
    new_bundle = copy_bundle(tiny_two_stage_bundle, tmp_path / "tiny-v3", "v3")
    codes, versions, stop = [], set(), threading.Event()

    def client(kind: int) -> None:
        try:
            with grpc.insecure_channel(handle.target) as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    try:
                        if kind:
                            reply = stub.Recommend(build_recommend_request([(ids[1], "", 2, 3.0)], k=5), timeout=10)
                        else:
                            reply = stub.Score(build_score_request(ids[:8], [ids[2]], rerank_top=2), timeout=10)
                        versions.add(reply.model_version)
                        codes.append("OK")
                    except grpc.RpcError as error:
                        codes.append(error.code().name)
        finally:
            stop.set()

    def wait_for(count: int) -> None:
        for _ in range(2000):
            if len(codes) >= count or stop.is_set():
                return
            stop.wait(0.01)

    with start_server(make_config(tiny_two_stage_bundle, max_queue_delay_ms=1)) as handle:
        with ThreadPoolExecutor(3) as pool:
            clients = [pool.submit(client, k % 2) for k in range(3)]
            try:
                wait_for(20)
                assert handle.reload(new_bundle)
                wait_for(len(codes) + 20)
            finally:
                stop.set()
            for future in clients:
                future.result()
        assert set(codes) == {"OK"} and versions == {"two", "v3"}
        assert handle.metrics.value("edgerec_ranker_pairs_scored_total") > 0
