"""The benchmark's pieces on known inputs: FLOP counts, peak estimates, goals, metric deltas, workloads, quality,
and the load-test harness it shares with the reliability scenarios (tally, load driver, Prometheus differences)."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import grpc
import numpy as np
import pytest

from edgerec.benchmarks import goals
from edgerec.benchmarks.harness.driver import closed_loop, open_loop, send
from edgerec.benchmarks.harness.prometheus import Samples
from edgerec.benchmarks.harness.requests import history_of
from edgerec.benchmarks.harness.results import Tally, latency_summary
from edgerec.benchmarks.limits import ModelShape, estimate_peak
from edgerec.benchmarks.quality import measure_quality
from edgerec.benchmarks.runners import RunnerUnavailable, load_runner, plan_runners
from edgerec.benchmarks.server_bench import server_side
from edgerec.benchmarks.workload import exact_length_feeds, mean_pair_tokens, request_pool
from edgerec.core.bundle import Bundle, open_bundle
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.samples import Basket, PreparedData
from edgerec.proto import recommender_pb2

# -- physical limit ---------------------------------------------------------------------------


def test_flops_follow_the_documented_formula() -> None:
    # one layer, hidden 2, intermediate 4, 3 tokens: 4*3*2*2 + 2*3*2*4 + 2*3*3*2 = 132 MACs
    assert ModelShape(layers=1, hidden=2, intermediate=4).flops_per_pair(3) == 264.0


def test_minilm_costs_about_three_gflop_per_pair_at_128_tokens() -> None:
    minilm = ModelShape(layers=6, hidden=384, intermediate=1536)
    assert 2.8e9 < minilm.flops_per_pair(128) < 2.95e9
    assert minilm.flops_per_pair(64) < minilm.flops_per_pair(128) / 1.9  # attention makes it superlinear


def test_peak_depends_on_the_vector_units() -> None:
    avx512 = estimate_peak(cores=2, ghz=3.0, flags={"avx512f", "avx512_vnni", "avx2", "fma"})
    assert avx512.fp32_gflops == pytest.approx(2 * 3.0 * 64)
    assert avx512.int8_gops == pytest.approx(4 * avx512.fp32_gflops)
    avx2 = estimate_peak(cores=2, ghz=3.0, flags={"avx2", "fma"})
    assert avx2.fp32_gflops == pytest.approx(2 * 3.0 * 32)
    assert avx2.peak_gops("int8-dynamic") == pytest.approx(2 * avx2.fp32_gflops)
    assert avx2.peak_gops("fp32-optimized") == avx2.fp32_gflops
    assert "AVX2" in avx2.as_json()["basis"]


# -- statistics -------------------------------------------------------------------------------


def test_latency_summary_is_in_milliseconds_and_ordered() -> None:
    summary = latency_summary([0.001] * 98 + [0.010, 0.020])
    assert summary["p50_ms"] == pytest.approx(1.0)
    assert summary["p50_ms"] <= summary["p95_ms"] <= summary["p99_ms"] <= 20.0
    assert latency_summary([]) == {"p50_ms": None, "p95_ms": None, "p99_ms": None, "mean_ms": None}


def test_a_tally_puts_every_request_in_one_place_answered_refused_or_lost() -> None:
    tally = Tally(refusal_codes=frozenset({"RESOURCE_EXHAUSTED"}))
    tally.sent = 6
    tally.record("OK", 0.010, pairs=4)
    tally.record("OK", 0.030, pairs=2)
    tally.record("RESOURCE_EXHAUSTED", 0.001, "server overloaded")
    tally.record("INTERNAL", 0.002, "boom")
    summary = tally.summary(seconds=2.0)
    assert (summary["answered"], summary["refused"], summary["lost"]) == (2, {"RESOURCE_EXHAUSTED": 1}, 3)
    assert summary["lost_by_code"] == {"INTERNAL": 1} and summary["unanswered"] == 2  # two sent, never ended
    assert summary["failures"] == {"INTERNAL": 1, "RESOURCE_EXHAUSTED": 1}
    assert summary["requests_per_s"] == 1.0 and summary["pairs_per_s"] == 3.0
    assert summary["details"] == {"INTERNAL": "boom", "RESOURCE_EXHAUSTED": "server overloaded"}


# -- the load driver (a fake call: no server) --------------------------------------------------


class _Refused(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(), "full")


def _call(seconds: float, refuse_every: int = 0):
    """A fake Score call taking `seconds`; every `refuse_every`-th one is refused."""
    made = 0

    async def call() -> recommender_pb2.ScoreResponse:
        nonlocal made
        made += 1
        number = made
        await asyncio.sleep(seconds)
        if refuse_every and number % refuse_every == 0:
            raise _Refused()
        return recommender_pb2.ScoreResponse(purchase_probability=[0.5] * 3, expected_quantity=[1.0] * 3)

    return call


def test_closed_loop_is_bounded_in_requests_and_counts_answers_and_codes() -> None:
    tally = Tally()
    run = asyncio.run(closed_loop(_call(0.001, refuse_every=4), tally, concurrency=4, seconds=30.0, max_requests=40))
    assert run.arrivals == tally.sent == 40 and run.seconds < 30.0
    assert tally.answered == 30 and tally.answered_pairs == 90 and tally.failures == {"RESOURCE_EXHAUSTED": 10}


def test_closed_loop_cancels_what_outlasts_the_drain_as_unfinished() -> None:
    tally = Tally()
    run = asyncio.run(closed_loop(_call(10.0), tally, concurrency=3, seconds=0.05, drain_s=0.05))
    assert run.seconds < 5.0  # the calls take 10 s: the run did not wait for them (a wide bound: loaded machines)
    assert (tally.sent, tally.answered, tally.unfinished, tally.lost) == (3, 0, 3, 3)


def test_closed_loop_stops_when_told() -> None:
    async def main() -> Tally:
        tally, stop = Tally(), asyncio.Event()
        load = asyncio.create_task(closed_loop(_call(0.001), tally, concurrency=2, seconds=3600.0, stop=stop))

        async def answering() -> None:  # the loop is running (it would run for an hour if `stop` did nothing)
            while tally.answered < 4:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(answering(), 30)
        stop.set()
        await asyncio.wait_for(load, 30)
        return tally

    tally = asyncio.run(main())
    assert tally.sent > 0 and tally.answered == tally.sent


def test_open_loop_charges_latency_from_the_arrival_and_drops_past_max_in_flight() -> None:
    tally = Tally()
    rng = np.random.default_rng(0)
    run = asyncio.run(open_loop(_call(0.2), tally, rate=200.0, seconds=0.3, rng=rng, drain_s=1.0, max_in_flight=5))
    assert run.arrivals == tally.sent + tally.dropped and tally.dropped > 0
    assert tally.sent >= 5 and tally.answered == tally.sent and min(tally.latencies_s) >= 0.2
    assert len(tally.lags_s) == tally.sent
    bounded = Tally()
    run = asyncio.run(open_loop(_call(0.0), bounded, rate=1000.0, seconds=10.0, rng=rng, max_requests=25))
    assert run.arrivals == bounded.sent == 25 and run.seconds < 5.0


def test_send_records_how_a_call_ended() -> None:
    tally = Tally(refusal_codes=frozenset({"RESOURCE_EXHAUSTED"}))
    assert asyncio.run(send(tally, _call(0.0, refuse_every=1))) == "RESOURCE_EXHAUSTED"
    assert asyncio.run(send(tally, _call(0.0))) == "OK"
    assert tally.summary()["refused"] == {"RESOURCE_EXHAUSTED": 1} and tally.answered_pairs == 3


# -- goals ------------------------------------------------------------------------------------


def _row(runner: str, batch: int, sequence: int, pairs_per_s: float, speedup: float | None = None) -> dict:
    row = {"runner": runner, "batch_size": batch, "sequence_length": sequence, "pairs_per_s": pairs_per_s}
    if speedup is not None:
        row["speedup_vs_reference"] = speedup
    return row


def _quality(change: float | None) -> dict:
    return {"ort-int8-dynamic": {"auc": 0.8, "reference_auc": 0.8, "auc_relative_change": change}}


def test_int8_goal_needs_both_speed_and_auc() -> None:
    rows = [_row("pytorch-fp32", 32, 128, 100.0, 1.0), _row("ort-int8-dynamic", 32, 128, 300.0, 2.9)]
    met = goals.int8_goal(rows, _quality(-0.004), "ort-int8-dynamic", 32, 128)
    assert met["met"] is True and met["measured"]["speedup"] == 2.9
    assert goals.int8_goal(rows, _quality(-0.006), "ort-int8-dynamic", 32, 128)["met"] is False
    slow = [_row("pytorch-fp32", 32, 128, 100.0, 1.0), _row("ort-int8-dynamic", 32, 128, 200.0, 2.0)]
    assert goals.int8_goal(slow, _quality(0.0), "ort-int8-dynamic", 32, 128)["met"] is False
    assert goals.int8_goal(rows, _quality(None), "ort-int8-dynamic", 32, 128)["met"] is None
    assert goals.int8_goal(slow, _quality(None), "ort-int8-dynamic", 32, 128)["met"] is False


def test_int8_goal_falls_back_to_the_nearest_cell_and_says_so() -> None:
    rows = [_row("pytorch-fp32", 8, 32, 100.0, 1.0), _row("ort-int8-dynamic", 8, 32, 400.0, 4.0)]
    goal = goals.int8_goal(rows, _quality(0.0), "ort-int8-dynamic", 32, 128)
    assert goal["measured"]["batch_size"] == 8 and goal["measured"]["sequence_length"] == 32
    assert "no batch 32 x seq 128" in goal["summary"]
    assert goals.int8_goal([], {}, "ort-int8-dynamic", 32, 128)["met"] is None


def test_offline_pairs_per_s_interpolates_time_per_pair_between_lengths() -> None:
    rows = [
        _row("ort-int8-dynamic", 8, 32, 1000.0),
        _row("ort-int8-dynamic", 8, 64, 500.0),
        _row("ort-int8-dynamic", 32, 64, 800.0),
        _row("ort-fp32", 8, 32, 1.0),
    ]
    value, basis = goals.offline_pairs_per_s(rows, "ort-int8-dynamic", 10.0, 48)
    assert basis["batch_size"] == 8
    assert value == pytest.approx(1.0 / 0.0015)  # halfway between 1 ms and 2 ms per pair
    clamped, basis = goals.offline_pairs_per_s(rows, "ort-int8-dynamic", 10.0, 200)
    assert clamped == pytest.approx(500.0) and basis["sequence_length"] == 64
    assert goals.offline_pairs_per_s(rows, "ort-int8-static", 8, 32) is None


def _level(concurrency: int, pairs_per_s: float, batch: float) -> dict:
    return {"level": concurrency, "pairs_per_s": pairs_per_s, "server": {"mean_batch_size": batch}}


def test_server_goals_compare_with_offline_and_with_batching_off() -> None:
    server = {
        "batching": {"closed_loop": [_level(1, 200.0, 10.0), _level(64, 900.0, 31.0)]},
        "no_batching": {"closed_loop": [_level(1, 150.0, 1.0), _level(64, 250.0, 1.0)]},
    }
    rows = [_row("ort-int8-dynamic", 1, 128, 300.0), _row("ort-int8-dynamic", 32, 128, 1000.0)]
    cost = goals.serving_cost(server, rows, "ort-int8-dynamic", 128.0)
    assert {(c["mode"], c["concurrency"]) for c in cost} == {(m, c) for m in ("batching", "no_batching") for c in (1, 64)}
    vs_offline, vs_off = goals.server_goals(server, cost, 64)
    assert vs_offline["measured"]["ratio"] == pytest.approx(0.9) and vs_offline["met"] is True
    assert vs_off["measured"]["gain"] == pytest.approx(3.6) and vs_off["met"] is True
    assert all(g["met"] is None for g in goals.server_goals({}, [], 64))


# -- server metrics ---------------------------------------------------------------------------


def test_samples_differences_count_new_series_from_zero() -> None:
    ok, internal = ("edgerec_requests_total", (("code", "OK"),)), ("edgerec_requests_total", (("code", "INTERNAL"),))
    before, after = Samples({ok: 5.0}), Samples({ok: 7.0, internal: 1.0})
    grown = after.minus(before)
    assert grown.by_label("edgerec_requests_total", "code") == {"OK": 2.0, "INTERNAL": 1.0}
    assert grown.total("edgerec_requests_total") == 3.0 and grown.total("edgerec_requests_total", code="OK") == 2.0


def test_server_side_figures_are_differences_over_the_level() -> None:
    def score_code(code: str) -> tuple:
        return (("code", code), ("method", "Score"))

    ok, exhausted, cancelled = score_code("OK"), score_code("RESOURCE_EXHAUSTED"), score_code("CANCELLED")
    before = Samples({
        ("edgerec_batch_size_pairs_count", ()): 10.0,
        ("edgerec_batch_size_pairs_sum", ()): 100.0,
        ("edgerec_batch_padding_ratio_sum", ()): 1.0,
        ("edgerec_pairs_scored_total", ()): 100.0,
        ("edgerec_requests_total", ok): 5.0,
    })
    after = Samples({
        ("edgerec_batch_size_pairs_count", ()): 30.0,
        ("edgerec_batch_size_pairs_sum", ()): 500.0,
        ("edgerec_batch_padding_ratio_sum", ()): 3.0,
        ("edgerec_pairs_scored_total", ()): 500.0,
        ("edgerec_requests_total", ok): 25.0,
        ("edgerec_requests_total", exhausted): 3.0,
        ("edgerec_requests_total", cancelled): 2.0,
        ("edgerec_dropped_requests_total", (("reason", "cancelled"),)): 2.0,
    })
    side = server_side(before, after, cpu_seconds=3.0, wall_s=2.0)
    assert side["mean_batch_size"] == pytest.approx(20.0)
    assert side["mean_padding_ratio"] == pytest.approx(0.1)
    assert side["pairs_scored"] == 400
    assert side["rejected_by_code"] == {"RESOURCE_EXHAUSTED": 3}  # CANCELLED: our own client gave up
    assert side["responses_by_code"]["OK"] == 20
    assert side["dropped_by_reason"] == {"cancelled": 2}
    assert side["cpu_cores_used"] == pytest.approx(1.5)


# -- workloads ----------------------------------------------------------------------------------


def test_grid_inputs_are_exactly_the_requested_length(tiny_bundle: Path) -> None:
    featurizer = open_bundle(tiny_bundle).featurizer()
    ids, mask, types = CROSS_ENCODER.input_names
    for batch, sequence in ((1, 32), (4, 128)):  # 128 is past the tiny featurizer's 64-token pairs
        feeds = exact_length_feeds(featurizer, batch, sequence, seed=1)
        assert feeds[ids].shape == (batch, sequence)
        assert feeds[mask].all()
        assert (feeds[ids][:, 0] == featurizer.cls_id).all()
        assert (feeds[ids][:, -1] == featurizer.sep_id).all()
        assert feeds[types][:, -1].all() and not feeds[types][:, 0].any()
    same = exact_length_feeds(featurizer, 4, 32, seed=1)[ids]
    assert np.array_equal(same, exact_length_feeds(featurizer, 4, 32, seed=1)[ids])


def test_request_pool_replays_test_baskets_within_candidate_bounds(tiny_bundle: Path) -> None:
    featurizer = open_bundle(tiny_bundle).featurizer()
    items = sorted(featurizer.catalog)
    basket = Basket("c1", "i1", "2011-11-02 10:00:00", ((items[0], 3), (items[1], 1)), tuple(items[2:9]), (1,) + (0,) * 6,
                    (2.0,) + (0.0,) * 6, (False,) * 7, (False,) * 7)  # fmt: skip
    pool, source = request_pool([basket], featurizer, size=20, min_candidates=3, max_candidates=12, max_history=1)
    assert len(pool) == 20 and "1 test baskets" in source
    for request in pool:
        candidates = tuple(c.item_id for c in request.candidates)
        assert 3 <= len(candidates) <= 12
        assert history_of(request) == list(basket.history[:1])  # the most recent item only
        assert candidates[: min(7, len(candidates))] == basket.candidates[: len(candidates)]
        assert mean_pair_tokens(featurizer, request) > 3
    fallback, source = request_pool([], featurizer, size=5, min_candidates=10, max_candidates=10, seed=0)
    assert "catalog" in source
    for request in fallback:
        assert len(request.candidates) == 10 and {c.item_id for c in request.candidates} <= set(items)
        assert len({item for item, _ in history_of(request)}) == len(request.context)  # distinct past items


# -- quality ------------------------------------------------------------------------------------


def test_quality_takes_gate_figures_where_the_export_recorded_them(
    exported_bundle: Path, tiny_checkpoint: Path, tiny_data: PreparedData
) -> None:
    bundle = open_bundle(exported_bundle)
    manifest = copy.deepcopy(bundle.manifest)
    model = manifest["models"][CROSS_ENCODER.name]
    model["metrics"] = {"validation": {"pytorch": {"auc": 0.70, "ndcg@10": 0.50}, "baskets": 200}}
    for entry in model["variants"]:
        if entry["precision"] == "int8-dynamic":
            entry["gate"] = {"passed": True, "auc": 0.69, "ndcg@10": 0.51}
        if entry["precision"] == "fp32":
            entry["gate"] = {"passed": True}  # no figures: the benchmark must score it itself
    gated = Bundle(root=bundle.root, manifest=manifest)
    names = ["pytorch-fp32", "ort-int8-dynamic", "ort-fp32"]
    specs = plan_runners(names, gated, tiny_checkpoint, exported_bundle / "none")
    runners = [load_runner(spec, threads=1) for spec in specs]
    featurizer = gated.featurizer()
    validation = tiny_data.splits["valid"]
    quality = measure_quality(runners, gated, validation, featurizer, sample_size=4, batch_size=16)
    assert quality["ort-int8-dynamic"]["source"] == "export validation gate"
    assert quality["ort-int8-dynamic"]["auc_relative_change"] == pytest.approx((0.69 - 0.70) / 0.70)
    assert quality["pytorch-fp32"]["auc"] == 0.70 and quality["pytorch-fp32"]["baskets"] == 200
    # ort-fp32 has no gate figures: it is scored here, next to the reference scored on the same 4 baskets.
    fp32 = quality["ort-fp32"]
    assert fp32["source"].startswith("scored here") and fp32["baskets"] == 4
    assert fp32["auc"] == pytest.approx(fp32["reference_auc"], abs=1e-3)
    for runner in runners:
        runner.close()


def test_onnx_runners_open_the_bundles_variants_and_skip_what_cannot_run(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    names = ["ort-fp32", "ort-int8-static", "pytorch-fp32", "ort-cuda-fp16"]
    fp32, static, torch, cuda = plan_runners(names, bundle, tmp_path / "no-checkpoint", tmp_path / "no-export")
    assert fp32.runnable and fp32.path == bundle.variant_path(CROSS_ENCODER.name, "fp32")
    assert "int8-static" in static.skip_reason and "checkpoint" in torch.skip_reason
    assert cuda.runnable or cuda.skip_reason
    runner = load_runner(fp32, threads=1, spin_wait=False)
    feeds = exact_length_feeds(bundle.featurizer(), 3, 16)
    probabilities, quantities = runner(feeds)
    assert runner.provider == "CPUExecutionProvider" and probabilities.shape == quantities.shape == (3,)
    runner.close()
    with pytest.raises(RunnerUnavailable):
        load_runner(static, threads=1)


# -- serving-path yardstick ---------------------------------------------------------------------


def test_the_yardstick_runs_the_servers_own_batches_in_three_ways(tiny_bundle: Path) -> None:
    from edgerec.benchmarks import yardstick
    from edgerec.core.sessions import cut_rows
    from edgerec.benchmarks.harness.requests import random_requests
    from edgerec.runtime.config import BatcherConfig

    bundle = open_bundle(tiny_bundle)
    featurizer = bundle.featurizer()
    requests = random_requests(sorted(featurizer.catalog), 6, 3, 20, 5, seed=1)
    config = BatcherConfig(max_batch_size=8)
    batches = yardstick.server_batches(featurizer, requests, config)
    ids, mask = CROSS_ENCODER.input_names[:2]
    assert sum(len(b[ids]) for b in batches) == sum(len(r.candidates) for r in requests)
    assert all(len(b[ids]) <= 8 for b in batches)
    alone = [row for b in batches for row in cut_rows(b, mask)]  # as the yardstick and the server cut them
    assert all(row[mask].all() and row[ids].shape[0] == 1 for row in alone)  # each row cut to its own length
    assert sum(row[mask].size for row in alone) == sum(int(b[mask].sum()) for b in batches)

    default = yardstick.default_session(bundle.variant_path(CROSS_ENCODER.name, "fp32"), 1).get_session_options()
    untouched = __import__("onnxruntime").SessionOptions()  # ONNX Runtime's defaults, but for the threads
    assert (default.enable_cpu_mem_arena, default.enable_mem_pattern, default.graph_optimization_level) == (
        untouched.enable_cpu_mem_arena, untouched.enable_mem_pattern, untouched.graph_optimization_level
    )
    assert default.intra_op_num_threads == 1
    with pytest.raises(RuntimeError, match="allow_spinning"):  # spinning left at ONNX Runtime's default: never set
        default.get_session_config_entry("session.intra_op.allow_spinning")

    figures = yardstick.measure(bundle.variant_path(CROSS_ENCODER.name, "fp32"), featurizer, requests, config, 1, 0.05)
    names = [way["name"] for way in figures["ways"]]
    assert names == [yardstick.DEFAULT_SESSION, yardstick.SERVING_SESSION, yardstick.ROWS_ALONE]
    total = sum(len(r.candidates) for r in requests)
    for way in figures["ways"]:
        assert way["pairs"] == total * way["passes"] and way["passes"] >= 1
        assert way["cpu_ms_per_pair"] > 0 and way["pairs_per_s"] > 0
    assert figures["session_config"]["cpu_memory_arena"] is True
    assert (figures["stride"], figures["requests"]) == (1, 6) and figures["mean_pair_tokens"] > 4
    sampled = yardstick.measure(bundle.variant_path(CROSS_ENCODER.name, "fp32"), featurizer, requests, config, 1, 0.0, max_pairs=total // 3)
    assert sampled["stride"] == 3 and sampled["requests"] == 2  # every 3rd request: pair lengths follow the pool's


def test_serving_path_goals_compare_server_cpu_per_pair_with_the_default_session() -> None:
    def level(c: int, pairs_per_s: float, cores: float) -> dict:
        return {"level": c, "pairs_per_s": pairs_per_s, "p99_ms": 10.0,
                "server": {"cpu_cores_used": cores, "scored_pairs_per_s": pairs_per_s}}  # fmt: skip

    server = {"batching": {"closed_loop": [level(4, 200.0, 1.8), level(16, 190.0, 1.9)]}}
    stick = {"ways": [{"name": "default session", "cpu_ms_per_pair": 9.5}]}
    cpu, speed = goals.serving_path_goals(server, stick, (4, 16), "int8-dynamic")
    assert cpu["measured"]["server_cpu_ms_per_pair"] == pytest.approx({4: 9.0, 16: 10.0})
    assert cpu["met"] is False and speed["met"] is True  # 10.0 ms at c=16 > 9.5; both levels >= 180 pairs/s
    stick["ways"][0]["cpu_ms_per_pair"] = 10.0
    assert goals.serving_path_goals(server, stick, (4, 16), "int8-dynamic")[0]["met"] is True
    slow = {"batching": {"closed_loop": [level(4, 150.0, 1.0), level(16, 190.0, 1.0)]}}
    assert goals.serving_path_goals(slow, stick, (4, 16), "int8-dynamic")[1]["met"] is False
    assert goals.serving_path_goals(server, stick, (4, 16), "fp32")[1]["met"] is None  # int8 target only
    assert goals.serving_path_goals(server, None, (4, 64), "int8-dynamic")[0]["met"] is None  # c=64 not run
