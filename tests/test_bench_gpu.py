"""`edgerec bench-gpu`: the whole path on the CPU with tiny models, the recorded skip without CUDA, the time guard.

No test asserts a timing; the GPU figures come from a run on a GPU machine (README "GPU benchmark").
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from edgerec.benchmarks import gpu

from edgerec import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BATCHES, LENGTHS, CUSTOMERS, CANDIDATES = (1, 3), (8, 12), (1, 2), (5, 9)
TINY_GRID = [
    "--tiny", "--warmup-runs", "1", "--min-rounds", "2", "--max-rounds", "3", "--seconds-per-cell", "0",
    "--batch-sizes", *map(str, BATCHES), "--sequence-lengths", *map(str, LENGTHS),
    "--ranker-customers", *map(str, CUSTOMERS), "--ranker-candidates", *map(str, CANDIDATES), "--ranker-history", "4",
]  # fmt: skip


def read(folder: Path) -> dict:
    return json.loads((folder / gpu.RESULTS).read_text())


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("bench-gpu")
    assert cli.main(["bench-gpu", "--device", "cpu", "--output-dir", str(output), *TINY_GRID]) == 0
    return output


def test_cpu_run_writes_every_cell_of_both_grids(cpu_run: Path) -> None:
    results = read(cpu_run)
    assert results["status"] == "completed"
    cells = results["cells"]
    encoder = {(c["batch"], c["sequence_length"], c["dtype"], c["mode"]) for c in cells if c["model"] == "cross_encoder"}
    ranker = {(c["customers"], c["candidates"], c["dtype"], c["mode"]) for c in cells if c["model"] == "ranker"}
    variants = {(d, m) for d in gpu.DTYPES for m in gpu.MODES}
    assert encoder == {(b, s, *v) for b in BATCHES for s in LENGTHS for v in variants}
    assert ranker == {(u, n, *v) for u in CUSTOMERS for n in CANDIDATES for v in variants}
    assert len(cells) == len(encoder) + len(ranker)
    assert results["counts"] == {"measured": len(cells) // 2, "skipped": len(cells) // 2, "failed": 0}


def test_eager_cells_are_measured_and_cuda_graph_cells_say_why_not_on_the_cpu(cpu_run: Path) -> None:
    for cell in read(cpu_run)["cells"]:
        if cell["mode"] == "cuda-graph":
            assert cell["status"] == "skipped" and "CUDA" in cell["reason"]
            continue
        assert cell["status"] == "measured", cell
        assert cell["rounds"] >= 2
        assert 0 < cell["p50_ms"] <= cell["p99_ms"]
        rows = cell["batch"] if cell["model"] == "cross_encoder" else cell["customers"] * cell["candidates"]
        assert cell["rows_per_call"] == rows
        assert cell["rows_per_s"] == pytest.approx(rows * cell["rounds"] / (cell["mean_ms"] * cell["rounds"] / 1e3))


def test_agreement_is_zero_for_the_reference_and_small_but_real_for_half_precisions(cpu_run: Path) -> None:
    measured = [c for c in read(cpu_run)["cells"] if c["status"] == "measured"]
    for cell in measured:
        difference = cell["max_abs_diff_probability"]
        assert math.isfinite(difference) and math.isfinite(cell["max_rel_diff_quantity"])
        if cell["dtype"] == "fp32":
            assert difference == 0.0 and cell["max_rel_diff_quantity"] == 0.0
        else:
            assert 0.0 <= difference < 0.05, cell  # probabilities in [0, 1]; bf16 keeps 8 bits of mantissa
    assert any(c["max_abs_diff_probability"] > 0 for c in measured if c["dtype"] == "bf16")


def test_weights_and_plots_are_recorded(cpu_run: Path) -> None:
    results = read(cpu_run)
    assert results["weights"]["cross_encoder"]["weights"] == "random"
    assert results["weights"]["ranker"]["weights"] == "random"
    assert results["settings"]["device"] == "cpu"
    assert set(results["plots"]) == {"cross_encoder_latency_throughput.png", "ranker_latency_throughput.png", "agreement.png"}
    for name in results["plots"]:
        assert (cpu_run / name).read_bytes()[:8] == PNG_MAGIC


def test_without_cuda_the_default_device_records_the_skip_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    assert cli.main(["bench-gpu", "--output-dir", str(tmp_path)]) == 0
    results = read(tmp_path)
    assert results["status"] == "skipped"
    assert "no CUDA device is present" in results["reason"]
    assert "cells" not in results  # nothing measured, nothing faked
    assert "no CUDA device is present" in capsys.readouterr().out


def test_the_time_guard_starts_no_cell_past_the_budget_and_records_each_one(tmp_path: Path) -> None:
    status = cli.main(["bench-gpu", "--device", "cpu", "--output-dir", str(tmp_path), *TINY_GRID, "--budget-s", "0"])
    assert status == 0
    cells = read(tmp_path)["cells"]
    assert len(cells) == 2 * len(gpu.DTYPES) * len(gpu.MODES) * (len(BATCHES) * len(LENGTHS))
    assert all(c["status"] == "skipped" for c in cells)
    assert all("time budget" in c["reason"] for c in cells if c["mode"] == "eager")


def test_the_random_weights_path_has_the_trained_architecture() -> None:
    """Without a checkpoint the benchmark builds the models `make export` trains, from constants alone."""
    from edgerec.export.model import pretrained_path
    from edgerec.export.ranker import TwoTowerRanker
    from edgerec.export.ranker_train import RankerConfig
    from edgerec.export.train import TrainConfig

    assert (gpu.CROSS_ENCODER_LAYERS, gpu.CROSS_ENCODER_POOLING) == (TrainConfig().num_layers, TrainConfig().pooling)
    packaged = json.loads((pretrained_path() / "config.json").read_text())
    assert {k: packaged[k] for k in gpu.MINILM} == gpu.MINILM
    hparams = TwoTowerRanker(item_dim=gpu.MINILM["hidden_size"]).hparams
    ranker = RankerConfig()
    assert {k: hparams[k] for k in ("proj_dim", "hidden", "pooling", "similarity_features", "wide")} == {
        k: getattr(ranker, k) for k in ("proj_dim", "hidden", "pooling", "similarity_features", "wide")
    }


def test_trained_weights_are_used_when_present(tmp_path: Path) -> None:
    """A checkpoint's config.json + model.safetensors and the ranker's folder are what gets timed, not random weights."""
    from edgerec.export.model import CrossEncoderRecommender, tiny_config
    from edgerec.export.ranker import TwoTowerRanker, save_ranker
    from safetensors.torch import save_file

    torch.manual_seed(1)
    bert = tiny_config()
    bert.edgerec_pooling = "candidate_mean"
    trained = CrossEncoderRecommender(bert).eval()
    (tmp_path / "checkpoint").mkdir()
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(tmp_path / "checkpoint" / "model.safetensors"))
    trained.config.to_json_file(str(tmp_path / "checkpoint" / "config.json"))
    ranker = TwoTowerRanker(item_dim=32, proj_dim=8, hidden=16).eval()
    save_ranker(tmp_path / "ranker", ranker)
    config = gpu.GpuBenchConfig(checkpoint=tmp_path / "checkpoint", ranker_dir=tmp_path / "ranker", attention="eager")

    encoder, encoder_info = gpu.cross_encoder(config)
    scorer, ranker_info = gpu.two_tower_ranker(config)
    assert encoder_info["weights"] == ranker_info["weights"] == "trained"
    assert encoder_info["pooling"] == "candidate_mean" and ranker_info["hparams"]["proj_dim"] == 8
    generator = torch.Generator().manual_seed(0)
    pairs = gpu.pair_inputs(3, 10, bert.vocab_size, generator)
    rows = gpu.ranker_inputs(torch.randn(20, 32, generator=generator), 2, 6, 4, ranker.hparams["num_features"], generator)
    with torch.no_grad():
        assert torch.equal(encoder(*pairs)[0], torch.sigmoid(trained(*pairs)[0]))
        assert torch.equal(scorer(*rows)[0], ranker.score(*rows)[0])
