"""`edgerec bench --quick` end to end on the tiny bundle: offline grid, quality, both servers, report.

One real run (real ONNX runners over the bundle the export built from the
tiny checkpoint, the PyTorch reference from that checkpoint, the synthetic shop's validation and test baskets, two `edgerec
serve` subprocesses on 127.0.0.1 loaded over gRPC) is shared by the tests below, which check the results' structure and that
the figures are positive and consistent. No test asserts a timing.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pytest

from edgerec import cli
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


@pytest.fixture(scope="module")
def quick_run(
    exported_bundle: Path, tiny_checkpoint: Path, tiny_data: PreparedData, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The output folder of one quick benchmark run."""
    work = tmp_path_factory.mktemp("bench")
    samples = write_samples(work / "samples", tiny_data)
    output = work / "out"
    status = cli.main(
        [
            "bench", "--quick",
            "--bundle", str(exported_bundle),
            "--checkpoint", str(tiny_checkpoint),
            "--samples-dir", str(samples),
            "--export-dir", str(work / "no-export"),
            "--output-dir", str(output),
            "--offline-threads", "1",
        ]
    )  # fmt: skip
    assert status == 0
    return output


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
    assert set(goals) == {
        "int8 CPU speed-up with equal quality",
        "batching server vs offline runner",
        "batching on vs off",
        "server CPU per pair vs default ONNX Runtime session",
        "served int8 pairs/s",
    }
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
                    "### Serving-path cost: server CPU per pair vs in-process ONNX Runtime sessions"):
        assert heading in report
    assert "GPU rows not run" in report or results["machine"]["gpu"]["present"]
    assert len(results["plots"]) == 3
    for name in results["plots"]:
        data = (quick_run / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"({name})" in report
