"""The export path on a tiny random BERT: ONNX parity, signature, fusions, variants, gate, bundle, TensorRT step."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgerec.core.bundle import MANIFEST, ModelFiles, open_bundle, variant_file
from edgerec.core.errors import EdgeRecError, ErrorCode
from edgerec.core.sessions import create_session
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.bundle import build_bundle, pack_bundle
from edgerec.export.evaluate import torch_scorer
from edgerec.export.model import load_checkpoint
from edgerec.export.optimize import expected_fusions, fusion_findings
from edgerec.export.quantize import QuantizeConfig, dynamic_source_of, quantize_int8_dynamic
from edgerec.export.validate import GateConfig, GateFailed, OnnxScorer, enforce, run_gate
from edgerec.export.variants import build_variants, encode_batches
from edgerec.runtime.config import BatcherConfig

MODEL = CROSS_ENCODER.name
ONNX_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint: Path):
    return load_checkpoint(tiny_checkpoint)


@pytest.fixture(scope="module")
def valid_batches(checkpoint, tiny_data):
    return encode_batches(tiny_data.splits["valid"][:6], checkpoint.featurizer, batch_size=32)


def test_onnx_variants_match_the_torch_scoring_model(exported_bundle: Path, checkpoint, valid_batches) -> None:
    bundle = open_bundle(exported_bundle)
    reference = [torch_scorer(checkpoint.model)(batch) for batch in valid_batches]
    for precision in ("fp32", "fp32-optimized"):
        scorer = OnnxScorer(bundle.variant_path(MODEL, precision))
        for batch, (expected_probability, expected_quantity) in zip(valid_batches, reference):
            probability, quantity = scorer(batch)
            assert probability.shape == quantity.shape == (batch.input_ids.shape[0],)
            assert probability.dtype == quantity.dtype == np.float32
            np.testing.assert_allclose(probability, expected_probability, atol=1e-5, err_msg=precision)
            np.testing.assert_allclose(quantity, expected_quantity, rtol=1e-5, err_msg=precision)


def test_every_variant_has_the_cross_encoder_signature(exported_bundle: Path) -> None:
    model = open_bundle(exported_bundle).model(MODEL)
    assert model.signature == CROSS_ENCODER
    assert [v.file for v in model.variants] == [variant_file(MODEL, v.precision) for v in model.variants]
    for variant in model.variants:
        session = create_session(exported_bundle / variant.file, signature=CROSS_ENCODER).session
        inputs = [(i.name, i.type, i.shape) for i in session.get_inputs()]
        outputs = [(o.name, o.type, o.shape) for o in session.get_outputs()]
        assert inputs == [(t.name, ONNX_TYPES[t.dtype], list(t.shape)) for t in CROSS_ENCODER.inputs], variant.file
        assert outputs == [(t.name, ONNX_TYPES[t.dtype], list(t.shape)) for t in CROSS_ENCODER.outputs], variant.file


def test_every_fusion_happens_on_the_exported_graph(exported_bundle: Path) -> None:
    fusions = open_bundle(exported_bundle).model(MODEL).info["fusions"]
    assert fusions["fused"] == {"EmbedLayerNormalization": 1, "Attention": 2, "SkipLayerNormalization": 4, "BiasGelu": 2}
    assert fusions["findings"] == [] and fusions["nodes_after"] < fusions["nodes_before"] / 5


def test_a_fusion_that_did_not_happen_is_a_finding() -> None:
    findings = fusion_findings({"Attention": 6, "SkipLayerNormalization": 12, "BiasGelu": 6}, layers=6)
    assert findings == ["EmbedLayerNormalization: fused 0 of the 1 expected for 6 layer(s)"]
    assert set(expected_fusions(6)) == {"EmbedLayerNormalization", "Attention", "SkipLayerNormalization", "Gelu (any kind)"}


def test_the_gpu_variant_is_fp16_of_the_plain_graph_without_contrib_operators(exported_bundle: Path) -> None:
    model = open_bundle(exported_bundle).model(MODEL)
    assert model.variant(device="gpu").precision == "fp16" and model.info["derived_from"]["fp16"] == "fp32"
    fp16 = onnx.load(str(exported_bundle / variant_file(MODEL, "fp16")))
    fused = onnx.load(str(exported_bundle / variant_file(MODEL, "fp32-optimized")))
    assert {node.domain for node in fp16.graph.node} <= {"", "ai.onnx"}  # TensorRT runs standard operators only
    assert "com.microsoft" in {node.domain for node in fused.graph.node}  # the fused CPU graph does not qualify
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in fp16.graph.initializer)


def test_int8_dynamic_is_quantized_from_the_plain_graph_on_a_vnni_cpu_else_from_the_fused_one(exported_bundle: Path) -> None:
    auto = QuantizeConfig()
    assert dynamic_source_of(auto, flags={"avx2", "fma", "avx512f", "avx512_vnni"}) == "fp32"
    assert dynamic_source_of(auto, flags={"avx2", "fma", "avx_vnni"}) == "fp32"
    assert dynamic_source_of(auto, flags={"avx2", "fma"}) == "fp32-optimized"
    assert dynamic_source_of(QuantizeConfig(dynamic_source="fp32-optimized"), flags={"avx512_vnni"}) == "fp32-optimized"
    with pytest.raises(ValueError, match="dynamic_source"):
        dynamic_source_of(QuantizeConfig(dynamic_source="fp16"))
    # the manifest says which graph this machine's export quantized
    derived = open_bundle(exported_bundle).model(MODEL).info["derived_from"]
    assert derived["int8-dynamic"] == dynamic_source_of(auto) and derived["fp32-optimized"] == "fp32"


@pytest.mark.parametrize("source", ["fp32", "fp32-optimized"])
def test_int8_dynamic_from_either_graph_scores_like_fp32_at_a_quarter_of_its_size(
    exported_bundle: Path, valid_batches, source: str, tmp_path: Path
) -> None:
    bundle = open_bundle(exported_bundle)
    fp32 = bundle.variant_path(MODEL, "fp32")
    int8 = quantize_int8_dynamic(bundle.variant_path(MODEL, source), tmp_path / "model.int8-dynamic.onnx")
    assert int8.stat().st_size < 0.3 * fp32.stat().st_size  # the embedding tables are int8 from either graph
    reference, quantized = OnnxScorer(fp32), OnnxScorer(int8)
    for batch in valid_batches:
        np.testing.assert_allclose(quantized(batch)[0], reference(batch)[0], atol=GateConfig().int8_max_abs_diff)


def test_int8_variants_are_smaller_than_fp32(exported_bundle: Path, record_property) -> None:
    model = open_bundle(exported_bundle).model(MODEL)
    size = {v.precision: (exported_bundle / v.file).stat().st_size for v in model.variants}
    ratio = size["int8-dynamic"] / size["fp32"]
    record_property("tiny_int8_dynamic_to_fp32_size_ratio", round(ratio, 3))
    # The tiny model is almost all word embeddings, which int8 dynamic quantizes; static leaves them fp32.
    assert ratio < 0.3
    assert size["int8-static"] < size["fp32"]
    assert size["fp16"] < 0.55 * size["fp32"]


def test_export_optimize_quantize_validate_bundle_and_load(checkpoint, tiny_checkpoint, tiny_data, tiny_gate, tmp_path) -> None:
    featurizer = checkpoint.featurizer
    variants = build_variants(
        checkpoint.model,
        tmp_path / "variants",
        ("fp32", "fp32-optimized", "int8-dynamic", "fp16"),
        progress=False,
    )
    validation = tiny_data.splits["valid"][:8]
    reference, results = run_gate(variants.paths, checkpoint.model, featurizer, validation, tiny_gate, progress=False)
    enforce(results)
    assert {"auc", "ndcg@10"} <= set(reference)
    assert results["fp32"].checks[0].value < 1e-5
    model = ModelFiles(
        name=MODEL,
        signature=CROSS_ENCODER,
        variants=variants.paths,
        default_variant={"cpu": "int8-dynamic", "gpu": "fp16"},
        gates={p: r.as_manifest() for p, r in results.items()},
        info={"opset": variants.export.opset},
    )
    root = build_bundle(
        tmp_path / "bundles",
        name="tiny",
        version="1",
        models=[model],
        tokenizer_path=tiny_checkpoint / "tokenizer.json",
        items=checkpoint.items,
        featurizer=featurizer,
    )
    assert root.name == "tiny-1" and (tmp_path / "bundles" / "latest").resolve() == root.resolve()
    archive = pack_bundle(root)
    bundle = open_bundle(archive, tmp_path / "unpacked")
    assert (bundle.name, bundle.version, list(bundle.models)) == ("tiny", "1", [MODEL])
    assert bundle.model(MODEL).info["opset"] == variants.export.opset
    entry = bundle.model(MODEL).variant(device="cpu")
    assert entry.precision == "int8-dynamic" and entry.device == "cpu" and entry.gate["passed"] is True
    assert {c["metric"] for c in entry.gate["checks"]} >= {"relative_drop(auc)", "relative_drop(ndcg@10)"}
    catalog = json.loads(bundle.catalog_path.read_text())
    some_item = next(iter(checkpoint.items))
    assert catalog[some_item]["token_ids"] == list(featurizer.catalog[some_item])
    batch = encode_batches(validation[:1], featurizer, batch_size=16)[0]
    probability, _ = OnnxScorer(bundle.path(entry.file))(batch)
    expected, _ = OnnxScorer(variants.paths["int8-dynamic"])(batch)
    np.testing.assert_array_equal(probability, expected)


def test_a_bundle_refuses_a_default_variant_it_does_not_hold_and_repeated_models(checkpoint, tiny_checkpoint, tmp_path) -> None:
    fp32 = tmp_path / "model.fp32.onnx"
    fp32.write_bytes(b"not read before the check")
    model = ModelFiles(MODEL, CROSS_ENCODER, {"fp32": fp32}, {"cpu": "fp32", "gpu": "fp16"})
    common = dict(name="tiny", version="1", tokenizer_path=tiny_checkpoint / "tokenizer.json", items={}, featurizer=checkpoint.featurizer)
    with pytest.raises(ValueError, match="default variant"):
        build_bundle(tmp_path / "bundles", models=[model], **common)
    good = ModelFiles(MODEL, CROSS_ENCODER, {"fp32": fp32}, {"cpu": "fp32"})
    with pytest.raises(ValueError, match="distinct names"):
        build_bundle(tmp_path / "bundles", models=[good, good], **common)
    assert not (tmp_path / "bundles" / "latest").exists()


def test_the_gate_and_the_timing_use_sessions_configured_like_the_server(exported_bundle: Path) -> None:
    scorer = OnnxScorer(open_bundle(exported_bundle).variant_path(MODEL, "fp32"), threads=2)
    assert scorer.rows_alone and scorer.workers == 2  # as the server feeds the CPU: rows alone, two at once
    options = scorer.session.get_session_options()
    assert options.enable_cpu_mem_arena is True and options.enable_mem_pattern is False
    assert options.inter_op_num_threads == 1 and options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_failing_gate_names_artifact_metric_value_and_bound(checkpoint, exported_bundle, tiny_data) -> None:
    variants = {"int8-dynamic": open_bundle(exported_bundle).variant_path(MODEL, "int8-dynamic")}
    impossible = GateConfig(int8_max_abs_diff=0.0)
    _, results = run_gate(variants, checkpoint.model, checkpoint.featurizer, tiny_data.splits["valid"][:4], impossible, progress=False)
    with pytest.raises(GateFailed) as failure:
        enforce(results)
    message = str(failure.value)
    assert "model.int8-dynamic.onnx: max_abs_diff(purchase_probability) = " in message
    assert "exceeds its bound 0" in message
    value = results["int8-dynamic"].checks[0].value
    assert f"= {value:.6g} exceeds" in message


def _tampered_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    variant = copy / variant_file(MODEL, "int8-dynamic")
    data = bytearray(variant.read_bytes())
    data[len(data) // 2] ^= 0xFF
    variant.write_bytes(bytes(data))
    return copy


def test_a_tampered_bundle_folder_is_refused_naming_the_file(exported_bundle: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(exported_bundle, tmp_path)
    with pytest.raises(EdgeRecError) as refused:
        open_bundle(copy)
    assert refused.value.code is ErrorCode.DATA_LOSS
    assert "model.int8-dynamic.onnx fails its checksum" in str(refused.value)


def test_a_tampered_archive_is_refused_naming_the_file(exported_bundle: Path, tmp_path: Path) -> None:
    copy = _tampered_copy(exported_bundle, tmp_path / "work")
    archive = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # pack() would refuse to pack it, so pack it by hand
        tar.add(copy, arcname=copy.name)
    with pytest.raises(EdgeRecError, match="model.int8-dynamic.onnx fails its checksum"):
        open_bundle(archive, tmp_path / "unpacked")


def test_a_file_missing_from_a_bundle_is_refused(exported_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / exported_bundle.name
    shutil.copytree(exported_bundle, copy)
    (copy / "catalog.json").unlink()
    with pytest.raises(EdgeRecError, match="catalog.json is missing"):
        open_bundle(copy)


def test_bundle_command_packs_and_verifies(exported_bundle: Path, tmp_path: Path, capsys) -> None:
    from edgerec.cli import main

    archive = tmp_path / "out.tar.gz"
    assert main(["bundle", str(exported_bundle), "-o", str(archive)]) == 0
    assert f"{archive} (" in capsys.readouterr().out
    assert open_bundle(archive, tmp_path / "unpacked").manifest == json.loads((exported_bundle / MANIFEST).read_text())


def test_bundle_command_packs_the_folder_latest_points_at(exported_bundle: Path, tmp_path: Path) -> None:
    from edgerec.cli import main

    latest = exported_bundle.parent / "latest"
    assert latest.resolve() == exported_bundle.resolve()
    assert main(["bundle", str(latest), "-o", str(tmp_path / "latest.tar.gz")]) == 0
    with tarfile.open(tmp_path / "latest.tar.gz") as tar:
        assert {Path(name).parts[0] for name in tar.getnames()} == {exported_bundle.name}


def test_bundle_command_refuses_a_tampered_folder(exported_bundle: Path, tmp_path: Path, capsys) -> None:
    from edgerec.cli import main

    copy = _tampered_copy(exported_bundle, tmp_path)
    assert main(["bundle", str(copy), "-o", str(tmp_path / "out.tar.gz")]) == 1
    assert "model.int8-dynamic.onnx fails its checksum" in capsys.readouterr().err
    assert not (tmp_path / "out.tar.gz").exists()


# -- TensorRT ------------------------------------------------------------------------------------
@pytest.fixture()
def bundle_copy(exported_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / exported_bundle.name
    shutil.copytree(exported_bundle, copy)
    return copy


def test_tensorrt_is_skipped_in_one_line_and_recorded_unverified_without_tensorrt(bundle_copy: Path, caplog) -> None:
    from edgerec.export import tensorrt

    reason = tensorrt.unavailable_reason()
    if reason is None:
        pytest.skip("ONNX Runtime offers TensorRT here: the skip path does not apply")
    caplog.set_level(logging.INFO, logger="edgerec.export.tensorrt")
    cache = tensorrt.build_engine_cache(bundle_copy)
    records = [r for r in caplog.records if r.name == "edgerec.export.tensorrt"]
    assert len(records) == 1 and records[0].getMessage() == f"TensorRT skipped (unverified path): {reason}"
    assert not cache.verified and not (bundle_copy / ".trt-cache").exists()
    recorded = open_bundle(bundle_copy).model(MODEL).info["tensorrt"]  # the manifest still verifies
    assert recorded == cache.as_manifest()
    assert recorded["verified"] is False and reason in recorded["note"]
    assert (recorded["variant"], recorded["file"]) == ("fp16", variant_file(MODEL, "fp16"))


def test_tensorrt_profile_is_the_servers_and_the_cache_is_where_the_server_looks(bundle_copy: Path) -> None:
    from edgerec.export.tensorrt import build_engine_cache

    options = build_engine_cache(bundle_copy).provider_options
    max_batch = BatcherConfig().max_batch_size
    max_length = open_bundle(bundle_copy).featurizer_settings["max_length"]
    assert options["trt_engine_cache_enable"] and options["trt_fp16_enable"] and options["trt_engine_cache_path"] == ".trt-cache"
    assert options["trt_profile_min_shapes"].startswith("input_ids:1x8,")
    assert options["trt_profile_max_shapes"].split(",") == [f"{name}:{max_batch}x{max_length}" for name in CROSS_ENCODER.input_names]


def test_a_tensorrt_session_that_falls_back_is_not_counted_as_an_engine(bundle_copy: Path, monkeypatch, caplog) -> None:
    from edgerec.export import tensorrt

    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", *available])
    caplog.set_level(logging.INFO, logger="edgerec.export.tensorrt")
    with pytest.warns(UserWarning, match="TensorrtExecutionProvider"):  # this onnxruntime has no TensorRT
        cache = tensorrt.build_engine_cache(bundle_copy)
    assert not cache.verified and cache.provider == "CPUExecutionProvider"
    assert "fell back to CPUExecutionProvider" in caplog.text
    assert open_bundle(bundle_copy).model(MODEL).info["tensorrt"]["note"] == "fell back to CPUExecutionProvider"
    archive = pack_bundle(bundle_copy)  # the cache folder the session made is neither checksummed nor packed
    with tarfile.open(archive) as tar:
        assert not any(".trt-cache" in name for name in tar.getnames())


def test_int8_quantities_have_their_own_bound_and_the_other_precisions_share_the_probability_bound() -> None:
    gate = GateConfig()
    assert gate.quantity_bound("int8-dynamic") == gate.int8_max_quantity_rel_diff == 0.5
    assert gate.quantity_bound("int8-static") == 0.5 and gate.quantity_bound("fp16") == gate.fp16_max_abs_diff
    assert gate.quantity_bound("fp32-optimized") == gate.fp32_max_abs_diff
    outputs = (np.array([0.5, 0.5]), np.array([1.0, 1.3]))  # a 30% quantity move on one pair, as rows-alone int8 can
    reference = (np.array([0.5, 0.5]), np.array([1.0, 1.0]))
    report = {"auc": 0.7, "ndcg@10": 0.5}
    from edgerec.export.validate import judge

    assert judge("int8", "int8-dynamic", outputs, reference, report, report, gate).passed
    assert not judge("fp16", "fp16", outputs, reference, report, report, gate).passed
