"""The two-stage benchmark's pieces on known inputs: dating a customer's context, the customers sent, the
request pool per RPC, the scenarios, their goals and the quality each states from the export's evaluation.
No server here (`test_bench.py` runs the whole benchmark on the tiny two-stage bundle)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgerec.benchmarks import goals
from edgerec.benchmarks.config import TwoStageConfig
from edgerec.benchmarks.harness.requests import RequestPool
from edgerec.benchmarks.two_stage import (
    RANKER_REPORT,
    Scenario,
    export_quality,
    level_figures,
    requests_for,
    scenario_quality,
    scenarios,
)
from edgerec.benchmarks.workload import customer_pool, last_purchase_days
from edgerec.core.bundle import open_bundle
from edgerec.export.samples import Basket
from edgerec.proto import recommender_pb2


def basket(customer: str, time: str, history: tuple, candidates: tuple = ("c1", "c2")) -> Basket:
    n = len(candidates)
    return Basket(customer, f"{customer}-{time}", time, history, candidates, (1,) + (0,) * (n - 1), (1.0,) * n,
                  (False,) * n, (False,) * n)  # fmt: skip


# -- dating the context -----------------------------------------------------------------------------


def test_context_items_are_dated_by_the_last_basket_whose_history_count_they_grew_after() -> None:
    first = basket("u", "2011-01-01 12:00:00", (("p", 1),))  # p: bought before any sample basket
    second = basket("u", "2011-01-11 12:00:00", (("q", 1), ("p", 1)))  # q bought at the first basket's invoice
    target = basket("u", "2011-01-31 00:00:00", (("r", 1), ("q", 2), ("p", 1)))  # r, q again at the second's
    days = last_purchase_days(target, [first, second])  # any order
    assert days == pytest.approx({"r": 19.5, "q": 19.5})  # the latest purchase wins; p cannot be dated
    assert last_purchase_days(target, []) == {}
    assert list(last_purchase_days(target, [second, first])) == ["r", "q"]  # history order, newest first


def test_customers_carry_their_dated_history_and_exactly_the_candidates_asked_for() -> None:
    catalog = [f"i{n}" for n in range(20)]
    earlier = basket("u", "2011-10-01 00:00:00", (("i1", 1),))
    test = basket("u", "2011-11-01 00:00:00", (("i2", 1), ("i1", 1), ("unknown", 3)), candidates=("i5", "i6", "i7"))
    customers, source = customer_pool([test], [earlier, test], catalog, size=5, candidates=10, max_history=64, seed=1)
    assert len(customers) == 5 and "1 test baskets" in source["source"]
    for customer in customers:
        assert len(customer.candidates) == 10 and customer.candidates[:3] == ("i5", "i6", "i7")
        assert set(customer.candidates) <= set(catalog)
        # items the catalog does not know are left out; i2 was bought at the October invoice, i1 before it
        assert customer.context == (("i2", "", 1, pytest.approx(31.0)), ("i1", "", 1, None))
    assert source["dated_context_share"] == pytest.approx(0.5)
    fewer, _ = customer_pool([test], [test], catalog, size=2, candidates=2, max_history=1)
    assert all(len(c.candidates) == 2 and len(c.context) == 1 for c in fewer)
    fallback, source = customer_pool([], [], catalog, size=3, candidates=7)
    assert "catalog" in source["source"] and all(len(c.candidates) == 7 for c in fallback)
    assert all(days is None for c in fallback for *_, days in c.context)


# -- requests and scenarios -------------------------------------------------------------------------


def test_scenarios_follow_the_settings_and_name_their_path() -> None:
    config = TwoStageConfig(candidates=100, rank_rerank_tops=(0, 20, 100), recommend_rerank_tops=(0, 10))
    plan = scenarios(config, catalog_size=3659)
    assert [(s.rpc, s.rerank_top, s.candidates) for s in plan] == [
        ("Rank", 0, 100), ("Rank", 20, 100), ("Rank", 100, 100), ("Recommend", 0, 3659), ("Recommend", 10, 3659)
    ]  # fmt: skip
    assert [s.path for s in plan] == ["ranker", "ranker + cross-encoder", "cross-encoder", "ranker", "ranker + cross-encoder"]
    assert len({s.name for s in plan}) == len(plan)
    assert plan[2].label == "Rank of 100, cross-encoder alone (every candidate)"
    assert plan[4].label == "Recommend over 3,659 items, ranker, cross-encoder re-ranks top 10"


def test_requests_carry_the_context_candidates_k_and_rerank_top() -> None:
    catalog = [f"i{n}" for n in range(20)]
    test = basket("u", "2011-11-01 00:00:00", (("i2", 4),), candidates=("i5",))
    customers, _ = customer_pool([test], [test], catalog, size=2, candidates=6)
    rank = requests_for(Scenario("Rank", 0, 6, 3), customers)
    assert all(isinstance(r, recommender_pb2.RankRequest) and r.k == 3 and len(r.candidates) == 6 for r in rank)
    assert rank[0].HasField("rerank_top") and rank[0].rerank_top == 0  # set, so the server's default cannot apply
    assert (rank[0].context[0].item_id, rank[0].context[0].count, rank[0].context[0].HasField("days_ago")) == ("i2", 4, False)
    recommend = requests_for(Scenario("Recommend", 10, 20, 5), customers)
    assert all(isinstance(r, recommender_pb2.RecommendRequest) and r.k == 5 and r.rerank_top == 10 for r in recommend)


def test_a_request_pool_sends_each_kind_to_its_rpc() -> None:
    class Stub:
        def __init__(self) -> None:
            self.sent: list[tuple[str, object]] = []

        def __getattr__(self, method: str):
            return lambda request, timeout: self.sent.append((method, request))

    stub = Stub()
    rank = [recommender_pb2.RankRequest(k=1, candidates=[recommender_pb2.Candidate(item_id="a")] * 3)]
    pool = RequestPool(rank)
    pool.calls(stub, 1.0)()
    assert stub.sent == [("Rank", rank[0])] and pool.pairs == [3]
    recommend = RequestPool([recommender_pb2.RecommendRequest(k=2)])
    recommend.calls(stub, 1.0)()
    assert stub.sent[-1][0] == "Recommend" and recommend.pairs == [0]
    with pytest.raises(ValueError, match="one kind"):
        RequestPool([rank[0], recommender_pb2.ScoreRequest()])


def test_level_figures_count_candidates_and_cpu_per_answered_request() -> None:
    level = {"answered": 50, "requests_per_s": 25.0,
             "server": {"cpu_seconds": 2.0, "stage_candidates": {"ranker": 5000, "cross_encoder": 1000}}}  # fmt: skip
    figures = level_figures(level, Scenario("Rank", 20, 100, 10))
    assert figures["candidates_per_s"] == 2500.0 and figures["cpu_ms_per_request"] == 40.0
    assert figures["stage_candidates_per_request"] == {"ranker": 100.0, "cross_encoder": 20.0}
    idle = level_figures({**level, "answered": 0, "requests_per_s": 0.0}, Scenario("Rank", 0, 100, 10))
    assert idle["cpu_ms_per_request"] is None and idle["candidates_per_s"] == 0.0


# -- goals --------------------------------------------------------------------------------------------


def _scenario(rpc: str, path: str, rerank_top: int, levels: list[tuple[int, float, float]], candidates: int = 100) -> dict:
    """A scenario's results: closed-loop levels as (concurrency, p99 ms, candidates/s)."""
    closed = [
        {"level": c, "p50_ms": p99 / 2, "p99_ms": p99, "answered": 40, "failures": {}, "unfinished": 0,
         "requests_per_s": rate / candidates, "candidates_per_s": rate}
        for c, p99, rate in levels
    ]  # fmt: skip
    return {"rpc": rpc, "path": path, "rerank_top": rerank_top, "candidates": candidates, "closed_loop": closed}


def test_two_stage_goals_read_p99_at_the_goal_concurrency_and_compare_best_candidates_per_s() -> None:
    run = {
        "scenarios": [
            _scenario("Rank", "ranker", 0, [(1, 5.0, 20000.0), (4, 12.0, 60000.0)]),
            _scenario("Rank", "ranker + cross-encoder", 20, [(1, 100.0, 900.0), (4, 160.0, 1000.0)]),
            _scenario("Rank", "cross-encoder", 100, [(1, 500.0, 200.0), (4, 1900.0, 250.0)]),
            _scenario("Recommend", "ranker", 0, [(1, 30.0, 1e5), (4, 49.0, 2e5)], candidates=3659),
        ]
    }
    ranker, rerank, recommend, ratio = goals.two_stage_goals(run, 100, goal_concurrency=4, goal_rerank_top=20)
    assert (ranker["met"], rerank["met"], recommend["met"], ratio["met"]) == (True, False, True, True)
    assert rerank["measured"]["p99_ms"] == 160.0 and "Rank of 100" in ranker["target"]
    assert ratio["measured"]["ratio"] == pytest.approx(60000.0 / 250.0)
    assert (ratio["measured"]["ranker_concurrency"], ratio["measured"]["cross_encoder_concurrency"]) == (4, 4)
    run["scenarios"][0]["closed_loop"][1]["failures"] = {"DEADLINE_EXCEEDED": 1}
    assert goals.two_stage_goals(run, 100, 4, 20)[0]["met"] is False  # fast, but not every request answered
    assert goals.two_stage_goals(run, 100, 4, 10)[1]["met"] is None  # no scenario re-ranks the top 10
    assert goals.two_stage_goals(run, 100, 16, 20)[0]["met"] is None  # concurrency 16 was not run
    skipped = goals.two_stage_goals({"skipped": "bundle x has no two-tower ranker"}, 100, 4, 20)
    assert [g["met"] for g in skipped] == [None] * 4 and all("no two-tower ranker" in g["summary"] for g in skipped)


# -- quality from the export's evaluation --------------------------------------------------------------


def _ranker_report(ndcg: float) -> dict:
    entry = {"all": {"ndcg@10": ndcg, "gauc": 0.69, "auc": 0.70, "ci95": {"ndcg@10": [ndcg - 0.01, ndcg + 0.01]}}}
    return {"evaluation": {"sizes": {"stored": {"baskets": 3053}}, "stored": {"ranker": entry}}}


def test_quality_comes_from_the_ranker_report_of_this_bundles_export_only(tiny_two_stage_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(tiny_two_stage_bundle)
    absent = export_quality(bundle, tmp_path / "no-export")
    assert absent["ranker"]["reason"].startswith("not in this bundle")
    assert absent["cross-encoder"]["reason"].startswith("not in this bundle")
    report = tmp_path / "export" / RANKER_REPORT
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps(_ranker_report(0.506)))
    (report.parent / "item_embeddings.npy").write_bytes(b"another export's embeddings")
    assert "another export" in export_quality(bundle, tmp_path / "export")["ranker"]["reason"]
    shutil.copy(bundle.data_path("item_embeddings"), report.parent / "item_embeddings.npy")
    ranker = export_quality(bundle, tmp_path / "export")["ranker"]
    assert (ranker["ndcg@10"], ranker["baskets"], ranker["ndcg@10_ci95"]) == (0.506, 3053, [0.496, 0.516])
    assert str(report) in ranker["source"]
    # the export's two-stage rows give the re-ranked paths their quality
    from edgerec.export.ranker_export import TWO_STAGE

    written = _ranker_report(0.506)
    written["evaluation"][TWO_STAGE] = {
        "baskets": 160, "candidates": 8000, "ranker": {"all": {"ndcg@10": 0.53}},
        "ranker, cross-encoder re-ranks top 20": {"all": {"ndcg@10": 0.51, "gauc": 0.68, "ci95": {"ndcg@10": [0.49, 0.53]}}},
    }  # fmt: skip
    report.write_text(json.dumps(written))
    quality = export_quality(bundle, tmp_path / "export")
    assert (quality["rerank 20"]["ndcg@10"], quality["rerank 20"]["baskets"]) == (0.51, 160)
    reranked = scenario_quality({"rpc": "Rank", "path": "ranker + cross-encoder", "rerank_top": 20}, quality)
    assert reranked["ndcg@10"] == 0.51 and "subsample" in reranked["source"]


def test_each_scenario_states_its_paths_quality_or_that_the_evaluation_has_none() -> None:
    quality = {"ranker": {"ndcg@10": 0.5, "source": "report"}, "cross-encoder": {"reason": "not in this bundle (x)"}}
    alone = scenario_quality({"rpc": "Rank", "path": "ranker", "rerank_top": 0}, quality)
    assert alone == {"ndcg@10": 0.5, "source": "report"}
    reranked = scenario_quality({"rpc": "Rank", "path": "ranker + cross-encoder", "rerank_top": 20}, quality)
    assert reranked["reason"].startswith("not in this bundle") and "top 20" in reranked["reason"]
    assert scenario_quality({"rpc": "Rank", "path": "cross-encoder", "rerank_top": 100}, quality) == quality["cross-encoder"]
    recommend = scenario_quality({"rpc": "Recommend", "path": "ranker", "rerank_top": 0}, quality)
    assert recommend["ndcg@10"] == 0.5 and "whole catalog" in recommend["note"]
