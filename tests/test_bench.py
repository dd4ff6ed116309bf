"""`edgerec bench --quick` end to end on the tiny bundles: offline grid, quality, both servers, the two-stage server, report.

One real run (real ONNX runners over the bundle the export built from the
tiny checkpoint, the PyTorch reference from that checkpoint, the synthetic shop's validation and test baskets, two `edgerec
serve` subprocesses on 127.0.0.1 loaded over gRPC) is shared by the first tests below; that bundle has no ranker, so its
two-stage section is skipped with the reason. A second run, servers only, on the tiny two-stage bundle (ranker and
cross-encoder) covers the two-stage section. The tests check the results' structure and that the figures are positive and
consistent. No test asserts a timing.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from edgerec import cli
from edgerec.core.bundle import open_bundle
from edgerec.core.featurize import load_catalog
from edgerec.export.samples import PreparedData

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_samples(folder: Path, data: PreparedData) -> Path:
    """The prepared validation and test baskets in the export's sample-cache format."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("valid", "test"):
        with gzip.open(folder / f"{split}.jsonl.gz", "wt") as handle:
            for basket in data.splits[split]:
                handle.write(json.dumps(basket.to_json()) + "\n")
    return folder


def quick_bench(work: Path, bundle: Path, tiny_data: PreparedData, *flags: str) -> Path:
    """`edgerec bench --quick` on `bundle` with the tiny shop's samples and no export folder; its output folder."""
    samples = write_samples(work / "samples", tiny_data)
    output = work / "out"
    status = cli.main(
        [
            "bench", "--quick", *flags,
            "--bundle", str(bundle),
            "--samples-dir", str(samples),
            "--export-dir", str(work / "no-export"),
            "--output-dir", str(output),
            "--offline-threads", "1",
        ]
    )  # fmt: skip
    assert status == 0
    return output


@pytest.fixture(scope="module")
def quick_run(
    exported_bundle: Path, tiny_checkpoint: Path, tiny_data: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of one quick benchmark run."""
    return quick_bench(
        tmp_path_factory.mktemp("bench"), exported_bundle, tiny_data, "--checkpoint", str(tiny_checkpoint)
    )


@pytest.fixture(scope="module")
def results(quick_run: Path) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"results.json holds {constant}: not strict JSON")

    return json.loads((quick_run / "results.json").read_text(), parse_constant=refuse)


def _latencies_ordered(row: dict) -> bool:
    return 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]


def test_results_describe_the_machine_and_bundle(results: dict) -> None:
    machine = results["machine"]
    assert machine["physical_cores"] >= 1 and machine["logical_cores"] >= machine["physical_cores"]
    assert machine["cpu_model"]
    assert "CPUExecutionProvider" in machine["onnxruntime_providers"]
    assert {"onnxruntime", "numpy", "grpcio"} <= set(machine["libraries"])
    assert machine["gpu"]["present"] in (True, False)
    assert results["bundle"]["name"] == "tiny" and results["bundle"]["models"] == ["cross_encoder"]
    assert results["quick"] is True
    assert results["peak"]["fp32_gflops"] > 0 and results["peak"]["int8_gops"] >= results["peak"]["fp32_gflops"]


def test_every_cpu_runner_ran_and_gpu_runners_say_why_not(results: dict) -> None:
    runners = {r["runner"]: r for r in results["runners"]}
    for name in ("pytorch-fp32", "ort-fp32", "ort-fp32-optimized", "ort-int8-dynamic", "ort-int8-static"):
        assert runners[name]["status"] == "ran", runners[name]
        assert runners[name]["size_bytes"] > 0
        assert runners[name]["peak_rss_growth_bytes"] >= 0
    for name in ("pytorch-cuda-fp16", "ort-cuda-fp16", "ort-tensorrt-fp16"):
        entry = runners[name]
        assert entry["status"] == "ran" or entry["reason"], entry
    int8, fp32 = runners["ort-int8-dynamic"], runners["ort-fp32"]
    assert int8["size_bytes"] < fp32["size_bytes"]


def test_offline_grid_is_complete_positive_and_ordered(results: dict) -> None:
    settings = results["settings"]["offline"]
    ran = [r["runner"] for r in results["runners"] if r["status"] == "ran"]
    rows = results["offline"]
    cells = {(r["runner"], r["batch_size"], r["sequence_length"]) for r in rows}
    assert cells == {(n, b, s) for n in ran for b in settings["batch_sizes"] for s in settings["sequence_lengths"]}
    for row in rows:
        assert _latencies_ordered(row), row
        assert row["runs"] >= settings["min_rounds"]
        assert row["pairs_per_s"] > 0
        assert math.isclose(row["pairs_per_s"], row["batch_size"] * 1000.0 / row["p50_ms"], rel_tol=1e-9)
        assert row["speedup_vs_reference"] > 0
        if row["device"] == "cpu":  # the physical-limit line is the CPU's
            assert 0 < row["peak_fraction"] and row["limit_pairs_per_s"] > 0
    assert all(r["speedup_vs_reference"] == 1.0 for r in rows if r["runner"] == "pytorch-fp32")


def test_quality_is_measured_next_to_the_reference(results: dict) -> None:
    quality = results["quality"]
    assert set(quality) == {r["runner"] for r in results["runners"] if r["status"] == "ran"}
    for entry in quality.values():
        assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["ndcg@10"] <= 1.0
        assert entry["baskets"] > 0 and entry["source"]
    reference = quality["pytorch-fp32"]
    assert reference["auc_relative_change"] == 0.0
    # fp32 ONNX computes what PyTorch computes: the same ranking on the same baskets.
    assert abs(quality["ort-fp32"]["auc"] - reference["auc"]) < 1e-3


def test_server_levels_are_consistent(results: dict) -> None:
    load = results["settings"]["load"]
    server = results["server"]
    assert set(server) == {"batching", "no_batching"}
    assert server["no_batching"]["max_batch_size"] == 1 and server["batching"]["max_batch_size"] > 1
    for mode, result in server.items():
        assert [lv["level"] for lv in result["closed_loop"]] == list(load["concurrencies"])
        assert len(result["open_loop"]) == len(load["open_loop_loads"])
        assert result["capacity_requests_per_s"] > 0
        for level in result["closed_loop"] + result["open_loop"]:
            assert level["answered"] > 0 and level["requests_per_s"] > 0 and level["pairs_per_s"] > 0, (mode, level)
            assert level["sent"] == level["answered"] + sum(level["failures"].values()) + level["unfinished"], level
            assert _latencies_ordered(level), (mode, level)
            assert "INVALID_ARGUMENT" not in level["failures"], level  # every request is one the server accepts
            side = level["server"]
            assert side["mean_batch_size"] >= 1
            assert 0.0 <= side["mean_padding_ratio"] <= 1.0
            assert side["cpu_cores_used"] > 0
            assert side["pairs_scored"] >= level["answered"]
            assert all(n > 0 for n in side["rejected_by_code"].values())
            if mode == "no_batching":
                assert side["mean_batch_size"] == 1.0


def test_goals_are_reported_with_their_figures(results: dict) -> None:
    goals = {goal["name"]: goal for goal in results["goals"]}
    two_stage = {
        "Rank p99, ranker alone",
        "Rank p99, re-rank top 4",
        "Recommend p99, whole catalog, ranker alone",
        "ranker vs cross-encoder candidates/s",
    }
    assert set(goals) == {
        "int8 CPU speed-up with equal quality",
        "batching server vs offline runner",
        "batching on vs off",
        "server CPU per pair vs default ONNX Runtime session",
        "served int8 pairs/s",
    } | two_stage
    for name in two_stage:  # this bundle has no ranker: not measured, and the summary says why
        assert goals.pop(name)["met"] is None and "no two-tower ranker" in results["two_stage"]["skipped"]
    cost = goals["server CPU per pair vs default ONNX Runtime session"]["measured"]
    assert {int(c) for c in cost["server_cpu_ms_per_pair"]} == set(results["settings"]["load"]["serving_cost_concurrencies"])
    assert all(v > 0 for v in cost["server_cpu_ms_per_pair"].values()) and cost["default_session_cpu_ms_per_pair"] > 0
    stick = results["yardstick"]
    assert [w["name"] for w in stick["ways"]][0] == "default session" and stick["model_file"].startswith("model.")
    int8 = goals["int8 CPU speed-up with equal quality"]["measured"]
    assert int8["speedup"] > 0 and int8["int8_pairs_per_s"] > 0 and int8["reference_pairs_per_s"] > 0
    assert int8["auc_relative_change"] is not None
    server = goals["batching server vs offline runner"]["measured"]
    assert server["ratio"] == pytest.approx(server["server_pairs_per_s"] / server["offline_pairs_per_s"])
    gain = goals["batching on vs off"]["measured"]
    assert gain["gain"] == pytest.approx(gain["batching_pairs_per_s"] / gain["no_batching_pairs_per_s"])
    for goal in goals.values():
        assert goal["met"] in (True, False)
        assert goal["summary"]


def test_report_and_plots_are_written(quick_run: Path, results: dict) -> None:
    report = (quick_run / "REPORT.md").read_text()
    for heading in ("## Goals", "## Runners", "## Physical limit", "## Offline grid", "## Server under load", "## Plots",
                    "### Serving-path cost: server CPU per pair vs in-process ONNX Runtime sessions",
                    "## Two-stage server"):
        assert heading in report
    assert f"Skipped: {results['two_stage']['skipped']}" in report
    assert "GPU rows not run" in report or results["machine"]["gpu"]["present"]
    assert len(results["plots"]) == 3
    for name in results["plots"]:
        data = (quick_run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"({name})" in report


# -- the two-stage server (servers only, on the tiny bundle with the ranker) -----------------------------


@pytest.fixture(scope="module")
def two_stage_run(tiny_two_stage_bundle: Path, tiny_data: PreparedData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output folder of one quick run of both server phases on the two-stage bundle."""
    return quick_bench(tmp_path_factory.mktemp("bench-two-stage"), tiny_two_stage_bundle, tiny_data, "--no-offline")


@pytest.fixture(scope="module")
def two_stage_results(two_stage_run: Path) -> dict:
    return json.loads((two_stage_run / "results.json").read_text())


def test_two_stage_scenarios_run_every_level_for_real_customers(two_stage_results: dict, tiny_two_stage_bundle: Path) -> None:
    settings = two_stage_results["settings"]["two_stage"]
    run = two_stage_results["two_stage"]
    assert "test baskets" in run["requests"]["source"] and run["requests"]["count"] == settings["request_pool"]
    assert 0.0 < run["requests"]["dated_context_share"] <= 1.0  # days_ago recovered from earlier baskets
    plan = [(s["rpc"], s["rerank_top"]) for s in run["scenarios"]]
    assert plan == [("Rank", r) for r in settings["rank_rerank_tops"]] + [
        ("Recommend", r) for r in settings["recommend_rerank_tops"]
    ]
    assert "--max-rerank-top" in run["server_flags"] and "127.0.0.1" in run["server_flags"]
    catalog = len(load_catalog(open_bundle(tiny_two_stage_bundle).catalog_path))
    for scenario in run["scenarios"]:
        assert [lv["level"] for lv in scenario["closed_loop"]] == settings["concurrencies"]
        assert len(scenario["open_loop"]) == len(settings["open_loop_loads"])
        assert scenario["capacity_requests_per_s"] > 0
        candidates = settings["candidates"] if scenario["rpc"] == "Rank" else catalog
        assert scenario["candidates"] == candidates  # Recommend: what the server said it scored
        for level in scenario["closed_loop"] + scenario["open_loop"]:
            assert level["answered"] > 0 and level["failures"] == {} and level["unfinished"] == 0, level
            assert level["sent"] == level["answered"]
            assert _latencies_ordered(level), level
            assert level["candidates_per_s"] == pytest.approx(level["requests_per_s"] * candidates)
            assert level["cpu_ms_per_request"] > 0
            # what each stage scored, from the server's own counters: every candidate by the ranker, R re-ranked
            per_request = level["stage_candidates_per_request"]
            assert per_request["ranker"] == pytest.approx(candidates)
            assert per_request.get("cross_encoder", 0.0) == pytest.approx(min(scenario["rerank_top"], candidates))


def test_two_stage_goals_and_quality_are_reported(two_stage_run: Path, two_stage_results: dict) -> None:
    goals = {goal["name"]: goal for goal in two_stage_results["goals"]}
    for name in ("Rank p99, ranker alone", "Rank p99, re-rank top 4", "Recommend p99, whole catalog, ranker alone"):
        assert goals[name]["met"] in (True, False) and goals[name]["measured"]["p99_ms"] > 0
    ratio = goals["ranker vs cross-encoder candidates/s"]
    assert ratio["met"] in (True, False)
    measured = ratio["measured"]
    assert measured["ratio"] == pytest.approx(measured["ranker_candidates_per_s"] / measured["cross_encoder_candidates_per_s"])
    for scenario in two_stage_results["two_stage"]["scenarios"]:  # the tiny bundle's export recorded no evaluation
        assert scenario["quality"]["reason"].startswith("not in this bundle")
    report = (two_stage_run / "REPORT.md").read_text()
    assert "## Two-stage server" in report and "### Two-stage server: closed loop" in report
    assert "Rank of 12, cross-encoder alone (every candidate)" in report
    assert "two_stage_latency.png" in two_stage_results["plots"]
    assert (two_stage_run / "two_stage_latency.png").read_bytes().startswith(PNG_MAGIC)


def test_the_cross_encoder_servers_score_every_candidate_of_a_two_stage_bundle(two_stage_results: dict) -> None:
    load = two_stage_results["settings"]["load"]
    assert two_stage_results["server_extra_flags"] == ["--rerank-top", str(load["max_candidates"]),
                                                       "--max-rerank-top", str(load["max_candidates"])]  # fmt: skip
    for result in two_stage_results["server"].values():
        for level in result["closed_loop"]:
            stages = level["server"]["stage_candidates"]
            assert level["answered"] > 0 and stages["ranker"] > 0, level
            if level["unfinished"] == 0:  # a request the driver cancelled may have left after its ranker pass
                assert stages["cross_encoder"] == stages["ranker"], level
