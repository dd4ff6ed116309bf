"""The export path on a tiny random BERT: ONNX parity, fusions, quantization, gate, bundle integrity."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgerec.export.bundle import EngineArtifact, build_bundle, pack_bundle
from edgerec.export.engines import build_engines, encode_batches
from edgerec.export.evaluate import torch_scorer
from edgerec.export.model import load_checkpoint
from edgerec.export.onnx_export import INPUTS, OUTPUTS
from edgerec.export.optimize import expected_fusions, fusion_findings
from edgerec.export.validate import GateConfig, GateFailed, OnnxScorer, enforce, run_gate
from edgerec.runtime.bundle import MANIFEST, open_bundle
from edgerec.runtime.errors import EdgeRecError, ErrorCode



@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def valid_batches(checkpoint, tiny_data):
    return encode_batches(tiny_data.splits["valid"][:6], checkpoint.featurizer, batch_size=32)


def test_onnx_engines_match_the_torch_scoring_model(tiny_bundle: Path, checkpoint, valid_batches) -> None:
    bundle = open_bundle(tiny_bundle)
    reference = [torch_scorer(checkpoint.model)(batch) for batch in valid_batches]
    for precision in ("fp32", "fp32-optimized"):
        scorer = OnnxScorer(bundle.path(bundle.engine(precision).file))
        for batch, (expected_probability, expected_quantity) in zip(valid_batches, reference):
            probability, quantity = scorer(batch)
            assert probability.shape == quantity.shape == (batch.input_ids.shape[0],)
            assert probability.dtype == quantity.dtype == np.float32
            np.testing.assert_allclose(probability, expected_probability, atol=1e-5, err_msg=precision)
            np.testing.assert_allclose(quantity, expected_quantity, rtol=1e-5, err_msg=precision)


def test_engine_inputs_and_outputs_match_the_manifest(tiny_bundle: Path) -> None:
    bundle = open_bundle(tiny_bundle)
    assert bundle.manifest["inputs"] == INPUTS and bundle.manifest["outputs"] == OUTPUTS
    for entry in bundle.engines:
        session = ort.InferenceSession(str(bundle.path(entry.file)), providers=["CPUExecutionProvider"])
        inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
        outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
        assert inputs == [(i["name"], "tensor(int64)", ["batch", "sequence"]) for i in INPUTS], entry.file
        assert outputs == [(o["name"], "tensor(float)", ["batch"]) for o in OUTPUTS], entry.file


def test_every_fusion_happens_on_the_exported_graph(tiny_bundle: Path) -> None:
    fusions = open_bundle(tiny_bundle).manifest["fusions"]
    assert fusions["fused"] == {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert fusions["findings"] == [] and fusions["nodes_after"] < fusions["nodes_before"] / 5


def test_a_fusion_that_did_not_happen_is_a_finding() -> None:
    findings = fusion_findings({"Attention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}, layers=6)
    assert findings == ["EmbedLayerNormalization: fused 0 of the 1 expected for 6 layer(s)"]
    assert set(expected_fusions(6)) == {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "Gelu (any kind)"}


def test_int8_engines_are_smaller_than_fp32(tiny_bundle: Path, record_property) -> None:
    bundle = open_bundle(tiny_bundle)
    size = {e.precision: bundle.path(e.file).stat().st_size for e in bundle.engines}
    ratio = size["int8-dynamic"] / size["fp32"]
    record_property("tiny_int8_dynamic_to_fp32_size_ratio", round(ratio, 3))
    # The tiny model is almost all word embeddings, which int8 dynamic quantizes; static leaves them fp32.
    assert ratio < 0.3
    assert size["int8-static"] < size["fp32"]
    assert size["fp16"] < 0.55 * size["fp32"]


def test_export_optimize_quantize_validate_bundle_and_load(checkpoint, tiny_checkpoint, tiny_data, tiny_gate, tmp_path) -> None:
    featurizer = checkpoint.featurizer
    engines = build_engines(
        checkpoint.model,
        tmp_path / "engines",
        ("fp32", "fp32-optimized", "int8-dynamic", "fp16"),
        progress=False,
    )
    validation = tiny_data.splits["valid"][:8]
    reference, results = run_gate(engines.paths, checkpoint.model, featurizer, validation, tiny_gate, progress=False)
    enforce(results)
    assert {"auc", "ndcg@10"} <= set(reference)
    assert results["fp32"].checks[0].value < 1e-5
    root = build_bundle(
        tmp_path / "bundles",
        model_name="tiny",
        version="1",
        engines=[EngineArtifact(p, path, results[p].as_manifest()) for p, path in engines.paths.items()],
        default_engine={"cpu": "int8-dynamic", "gpu": "fp16"},
        tokenizer_path=tiny_checkpoint / "tokenizer.json",
        items=checkpoint.items,
        featurizer=featurizer,
        description={"inputs": INPUTS, "outputs": OUTPUTS, "opset": engines.export.opset},
    )
    assert (tmp_path / "bundles" / "latest").resolve() == root.resolve()
    archive = pack_bundle(root)
    bundle = open_bundle(archive, tmp_path / "unpacked")
    entry = bundle.engine(device="cpu")
    assert entry.precision == "int8-dynamic" and entry.gate["passed"] is True
    assert {c["metric"] for c in entry.gate["checks"]} >= {"relative_drop(auc)", "relative_drop(ndcg@10)"}
    catalog = json.loads(bundle.catalog_path.read_text())
    some_item = next(iter(checkpoint.items))
    assert catalog[some_item]["token_ids"] == list(featurizer.catalog[some_item])
    batch = encode_batches(validation[:1], featurizer, batch_size=16)[0]
    probability, _ = OnnxScorer(bundle.path(entry.file))(batch)
    expected, _ = OnnxScorer(engines.paths["int8-dynamic"])(batch)
    np.testing.assert_array_equal(probability, expected)


def test_a_failing_gate_names_artifact_metric_value_and_bound(checkpoint, tiny_bundle, tiny_data) -> None:
    bundle = open_bundle(tiny_bundle)
    engines = {"int8-dynamic": bundle.path(bundle.engine("int8-dynamic").file)}
    impossible = GateConfig(int8_max_abs_diff=0.0)
    _, results = run_gate(engines, checkpoint.model, checkpoint.featurizer, tiny_data.splits["valid"][:4], impossible, progress=False)
    with pytest.raises(GateFailed) as failure:
        enforce(results)
    message = str(failure.value)
    assert "model.int8-dynamic.onnx: max_abs_diff(purchase_probability) = " in message
    assert "exceeds its bound 0" in message
    value = results["int8-dynamic"].checks[0].value
    assert f"= {value:.6g} exceeds" in message


def _tampered_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, copy)
    engine = copy / "model.int8-dynamic.onnx"
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    return copy


def test_a_tampered_bundle_folder_is_refused_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(tiny_bundle, tmp_path)
    with pytest.raises(EdgeRecError) as refused:
        open_bundle(copy)
    assert refused.value.code is ErrorCode.DATA_LOSS
    assert "model.int8-dynamic.onnx fails its checksum" in str(refused.value)


def test_a_tampered_archive_is_refused_naming_the_file(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(tiny_bundle, tmp_path / "work")
    archive = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # pack() would refuse to pack it, so pack it by hand
        tar.add(copy, arcname=copy.name)
    with pytest.raises(EdgeRecError, match="model.int8-dynamic.onnx fails its checksum"):
        open_bundle(archive, tmp_path / "unpacked")


def test_a_file_missing_from_a_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / tiny_bundle.name
    shutil.copytree(tiny_bundle, copy)
    (copy / "catalog.json").unlink()
    with pytest.raises(EdgeRecError, match="catalog.json is missing"):
        open_bundle(copy)


def test_bundle_command_packs_and_verifies(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from edgerec.cli import main

    archive = tmp_path / "out.tar.gz"
    assert main(["bundle", str(tiny_bundle), "-o", str(archive)]) == 0
    assert f"{archive} (" in capsys.readouterr().out
    assert open_bundle(archive, tmp_path / "unpacked").manifest == json.loads((tiny_bundle / MANIFEST).read_text())


def test_bundle_command_packs_the_folder_latest_points_at(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgerec.cli import main

    latest = tiny_bundle.parent / "latest"
    assert latest.resolve() == tiny_bundle.resolve()
    assert main(["bundle", str(latest), "-o", str(tmp_path / "latest.tar.gz")]) == 0
    with tarfile.open(tmp_path / "latest.tar.gz") as tar:
        assert {Path(name).parts[0] for name in tar.getnames()} == {tiny_bundle.name}


def test_bundle_command_refuses_a_tampered_folder(tiny_bundle: Path, tmp_path: Path, capsys) -> None:
    from edgerec.cli import main

    copy = _tampered_copy(tiny_bundle, tmp_path)
    assert main(["bundle", str(copy), "-o", str(tmp_path / "out.tar.gz")]) == 1
    assert "model.int8-dynamic.onnx fails its checksum" in capsys.readouterr().err
    assert not (tmp_path / "out.tar.gz").exists()


def test_tensorrt_is_skipped_in_one_line_without_a_gpu(tiny_bundle: Path, tmp_path: Path, caplog) -> None:
    from edgerec.export import tensorrt

    caplog.set_level(logging.INFO, logger="edgerec.export.tensorrt")
    sources = {"fp16": tiny_bundle / "model.fp32.onnx", "int8": tiny_bundle / "model.int8-static.onnx"}
    engines = tensorrt.build_engines(sources, tmp_path / "trt")
    reason = tensorrt.unavailable_reason()
    if reason is None:
        pytest.skip("ONNX Runtime offers TensorRT here: the skip path does not apply")
    assert engines == []
    records = [r for r in caplog.records if r.name == "edgerec.export.tensorrt"]
    assert len(records) == 1 and "TensorRT skipped" in records[0].getMessage()
    assert not (tmp_path / "trt").exists()
    pytest.skip(f"TensorRT engines cannot be built here: {reason}")


def test_tensorrt_profile_spans_the_server_ranges(tmp_path: Path) -> None:
    from edgerec.export.tensorrt import TensorRTConfig, provider_options

    options = provider_options("int8", tmp_path, TensorRTConfig(min_batch=1, max_batch=32, max_sequence=128))
    assert options["trt_int8_enable"] and options["trt_fp16_enable"] and options["trt_engine_cache_enable"]
    assert options["trt_profile_min_shapes"].startswith("input_ids:1x8,")
    assert "token_type_ids:32x128" in options["trt_profile_max_shapes"]
    assert options["trt_engine_cache_path"] == str(tmp_path)
