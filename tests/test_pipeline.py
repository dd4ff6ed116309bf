"""`edgerec export` end to end on the synthetic shop with a tiny random BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edgerec.cli import main
from edgerec.export.evaluate import EvalConfig
from edgerec.export.pipeline import ExportConfig, export
from edgerec.export.train import TrainConfig
from edgerec.export.variants import PRECISIONS
from edgerec.core.bundle import FORMAT, open_bundle
from edgerec.core.signatures import CROSS_ENCODER

MANIFEST_KEYS = {"format", "name", "version", "featurizer", "tokenizer", "catalog", "models", "files"}
MODEL_KEYS = {
    "signature", "variants", "default_variant", "opset", "exporter", "metrics", "data_fingerprint", "fusions",
    "int8_choice", "gate", "precision", "derived_from", "sizes_mb", "tensorrt", "output_semantics", "num_layers",
    "base_model",
}  # fmt: skip
QUICK = ExportConfig(validation_baskets=6, timing_batches=1, timing_rounds=1, batch_size=32)


def test_int8_static_is_built_only_on_request() -> None:
    assert "int8-static" in PRECISIONS and "int8-static" not in ExportConfig().precisions


def test_export_trains_evaluates_exports_gates_and_bundles(tiny_data, tiny_gate, tmp_path: Path, capsys) -> None:
    """Every step, the two-tower ranker's included (on by default), with the export report and latency table."""
    from edgerec.core.signatures import ITEM_TOWER, RANKER
    from edgerec.export.ranker_train import RankerConfig
    from edgerec.runtime.ranker import RankedItem, RankerScorer

    artifacts = tmp_path / "artifacts"
    tiny_training = TrainConfig(data=tiny_data.config, tiny=True, steps=3, batch_size=8, valid_baskets=0)
    tiny_ranker = RankerConfig(tiny=True, epochs=2, batch_baskets=8, proj_dim=16, hidden=32, threads=1)
    root = export(
        ExportConfig(**{**QUICK.__dict__, "artifacts": artifacts, "precisions": PRECISIONS}),
        tiny_training,
        EvalConfig(baskets=8, cold_baskets=8, baselines=False),
        gate=tiny_gate,
        ranker_config=tiny_ranker,
    )

    assert (artifacts / "checkpoint" / "model.safetensors").exists()
    assert (artifacts / "checkpoint" / "eval_report.json").exists()
    assert (artifacts / "bundles" / "latest").resolve() == root.resolve()
    bundle = open_bundle(artifacts / "bundles" / f"{root.name}.tar.gz", tmp_path / "unpacked")
    assert set(bundle.manifest) == MANIFEST_KEYS | {"data"} and bundle.manifest["format"] == FORMAT
    assert bundle.name == "edgerec" and root.name == f"edgerec-{bundle.version}"
    assert list(bundle.models) == [CROSS_ENCODER.name, ITEM_TOWER.name, RANKER.name]
    model = bundle.model(CROSS_ENCODER.name)
    info = model.info
    assert MODEL_KEYS <= set(bundle.manifest["models"][CROSS_ENCODER.name])
    assert model.signature == CROSS_ENCODER
    assert set(model.precisions) == {"fp32", "fp32-optimized", "int8-dynamic", "int8-static", "fp16"}
    assert all(v.gate["passed"] for v in model.variants)
    choice = info["int8_choice"]
    assert model.default_variant == {"cpu": choice["chosen"], "gpu": "fp16"}
    assert set(choice["candidates"]) == {"int8-dynamic", "int8-static"}
    assert info["data_fingerprint"] == tiny_data.fingerprint
    assert info["metrics"]["evaluation"]["results"] and info["metrics"]["validation"]["pytorch"]["auc"] >= 0
    assert info["tensorrt"]["verified"] is False and info["tensorrt"]["file"] == model.variant(device="gpu").file
    assert set(info["output_semantics"]) == set(CROSS_ENCODER.output_names)

    triton = artifacts / "triton" / "edgerec"
    assert (triton / "config.pbtxt").exists()
    assert (triton / "1" / "model.onnx").read_bytes() == bundle.variant_path(CROSS_ENCODER.name, device="cpu").read_bytes()

    table = capsys.readouterr().out
    assert "variant" in table and "NDCG@10" in table and "pytorch (reference)" in table
    for variant in model.variants:
        assert variant.precision in table and Path(variant.file).name in table

    # the ranker: gated variants, its data, its evaluation on the whole test split
    assert bundle.model(ITEM_TOWER.name).default_variant["cpu"] == "fp32-optimized"
    assert bundle.model(RANKER.name).precisions == ["fp32"]
    assert all(v.gate["passed"] for name in (ITEM_TOWER.name, RANKER.name) for v in bundle.model(name).variants)
    assert set(bundle.data) == {"item_embeddings", "behaviour_tables"}
    report = json.loads((artifacts / "export" / "ranker" / "ranker_report.json").read_text())
    evaluation = report["evaluation"]
    assert set(evaluation["stored"]) >= {"ranker", "repeat frequency"}
    assert evaluation["sizes"]["stored"]["baskets"] == len([b for b in tiny_data.splits["test"] if b.labels])
    low, high = evaluation["stored"]["ranker"]["all"]["ci95"]["ndcg@10"]
    assert low <= evaluation["stored"]["ranker"]["all"]["ndcg@10"] <= high
    blends = [name for name in evaluation["stored"] if name.startswith("repeat + co-occurrence")]
    assert [name.rsplit("[", 1)[1] for name in blends] == ["tuned on all]", "tuned on new]"]
    assert set(evaluation["baseline_tuning"]["blends"]) == {"all", "new"}
    median = evaluation["stored"]["item past median quantity"]["all"]
    assert set(median) == {"rmse_log_quantity"} and median["rmse_log_quantity"] > 0  # a quantity-only baseline
    assert "| stored | item past median quantity |" in table
    # the two-stage rows, on the baskets the cross-encoder's evaluation scored (its saved scores)
    from edgerec.export.evaluate import EVAL_SCORES
    from edgerec.export.ranker_export import RERANK_TOPS, TWO_STAGE

    assert (artifacts / "checkpoint" / EVAL_SCORES).exists()
    two_stage = evaluation[TWO_STAGE]
    rerank_rows = [f"ranker, cross-encoder re-ranks top {top}" for top in RERANK_TOPS]
    assert set(two_stage) == {"baskets", "candidates", "ranker", "cross-encoder", *rerank_rows}
    assert 0 < two_stage["baskets"] <= 8
    assert set(two_stage[rerank_rows[0]]["all"]["vs_ranker"]) == {"ndcg@10", "gauc"}
    assert f"{TWO_STAGE}: {two_stage['baskets']} test baskets" in table
    # the export report: every step's seconds, the bundle's size both ways, the latency table
    export_report = json.loads((artifacts / "export" / "export_report.json").read_text())
    assert {"checkpoint", "validation gate", "bundle folder", "archive"} <= set(export_report["step_seconds"])
    assert any(title.startswith("two-tower ranker") for title in export_report["step_seconds"])
    size = export_report["bundle"]
    assert size["version"] == bundle.version and size["folder_mb"] > 0 and size["archive_mb"] > 0
    catalog = len(bundle.featurizer().catalog)
    rows = export_report["latency"]["rows"]
    assert [(row["model"], row["candidates"]) for row in rows] == [
        (RANKER.name, 1), (RANKER.name, min(100, catalog)), (RANKER.name, catalog), (CROSS_ENCODER.name, min(100, catalog))
    ]
    assert rows[0]["variant"] == "fp32" and rows[-1]["variant"] == model.default_variant["cpu"]
    assert all(0 < row["onnx"]["p50_ms"] <= row["onnx"]["p99_ms"] for row in rows)
    assert export_report["latency"]["markdown"] in table
    assert "| popularity negatives | ranker |" in table and "item_tower:fp32-optimized+ranker:fp32" in table
    # the served ranker reads what the export wrote: one row per catalog item
    scorer = RankerScorer(bundle)
    probability, quantity = scorer.score([], [RankedItem(item_id=item) for item in scorer.item_ids[:5]])
    assert probability.shape == (5,) and ((probability >= 0) & (probability <= 1)).all() and (quantity > 0).all()


def test_export_command_fails_when_a_variant_fails_its_gate(tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_checkpoint, artifacts / "checkpoint")
    (artifacts / "checkpoint" / "eval_report.json").write_text(json.dumps({"results": {}}))
    status = main(
        ["export", "--artifacts", str(artifacts), "--validation-baskets", "4", "--precisions", "fp32", "int8-dynamic"]
        + ["--timing-batches", "1", "--timing-rounds", "1", "--gate-int8-max-abs-diff", "0", "--gate-int8-max-metric-drop", "1"]
    )
    assert status == 1
    error = capsys.readouterr().err
    assert "validation gate failed" in error
    assert "model.int8-dynamic.onnx: max_abs_diff(purchase_probability) = " in error
    assert "exceeds its bound 0" in error
    assert "fp32.onnx" not in error  # the variant within its bounds is not blamed
    assert not (artifacts / "bundles").exists()


@pytest.mark.parametrize("flag", ["--precisions", "--cpu-default", "--bundle-name"])
def test_export_help_documents_the_settings(flag: str, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert flag in capsys.readouterr().out



def test_a_cpu_only_bundle_leaves_gpu_variants_out_and_its_gpu_default_still_opens(
    tiny_checkpoint: Path, tiny_data, tiny_gate, tmp_path: Path
) -> None:
    from edgerec.export.model import load_checkpoint
    from edgerec.export.pipeline import bundle_export, gate_variants
    from edgerec.export.variants import build_variants

    assert "fp16" not in ExportConfig(cpu_only=True, precisions=PRECISIONS).bundled_precisions
    assert set(ExportConfig(precisions=PRECISIONS).bundled_precisions) == set(PRECISIONS)
    config = ExportConfig(artifacts=tmp_path, version="cpu", cpu_only=True, timing_batches=1, timing_rounds=1, batch_size=32)
    assert "fp16" in config.precisions and "fp16" not in config.bundled_precisions
    shutil.copytree(tiny_checkpoint, config.checkpoint_dir)
    checkpoint = load_checkpoint(config.checkpoint_dir)
    variants = build_variants(
        checkpoint.model, tmp_path / "variants", config.bundled_precisions, pad_id=checkpoint.featurizer.pad_id, progress=False
    )
    outcome = gate_variants(variants, checkpoint, tiny_data.splits["valid"][:4], config, tiny_gate)
    root = bundle_export(
        config, checkpoint, variants, outcome, evaluation={}, data_fingerprint=tiny_data.fingerprint, gate=tiny_gate
    )
    model = open_bundle(root).model(CROSS_ENCODER.name)
    assert "fp16" not in model.precisions and model.info["cpu_only"] is True
    assert model.default_variant == {"cpu": "int8-dynamic", "gpu": "fp32"}
    assert model.variant(device="gpu").precision == "fp32"  # a GPU server still finds its variant


def test_export_runs_the_ranker_by_default_and_no_ranker_turns_it_off() -> None:
    import argparse

    from edgerec.core.settings import from_arguments
    from edgerec.export.pipeline import configure

    parser = argparse.ArgumentParser()
    configure(parser)
    read = lambda *flags: from_arguments(ExportConfig, parser.parse_args(list(flags)), "")  # noqa: E731
    assert read().ranker is True and read("--ranker").ranker is True and read("--no-ranker").ranker is False
    assert read().cpu_only is False and read("--cpu-only").cpu_only is True
