"""The Triton model repository written beside a bundle parses as Triton's ModelConfig and fits the model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import onnx
import pytest
import tritonclient
from google.protobuf import text_format

from edgerec.core.bundle import open_bundle
from edgerec.core.signatures import CROSS_ENCODER
from edgerec.export.triton import TritonConfig, write_repository


def _load_model_config_pb2():
    """Triton's model-config messages, loaded without `tritonclient.grpc`'s package init.

    That init registers tritonclient's own `inference.*` service messages, which
    clash with edgerec's KServe stubs in protobuf's default pool; the model
    config file itself declares only `inference.ModelConfig` and friends.
    """
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model_config_pb2 = _load_model_config_pb2()

ONNX_TO_TRITON = {onnx.TensorProto.INT64: model_config_pb2.TYPE_INT64, onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


def test_config_parses_and_matches_the_onnx_model(tiny_bundle: Path, tmp_path: Path) -> None:
    variant = open_bundle(tiny_bundle).variant_path(CROSS_ENCODER.name, device="cpu")
    settings = TritonConfig(max_batch_size=32, preferred_batch_sizes=(4, 16), max_queue_delay_us=500, instances=2)
    folder = write_repository(tmp_path / "triton", "tiny", variant, settings)

    config = text_format.Parse((folder / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.name == "tiny" == folder.name
    assert config.backend == "onnxruntime"
    assert config.max_batch_size == 32
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in config.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    assert (folder / "1" / "model.onnx").read_bytes() == variant.read_bytes()

    graph = onnx.load(str(folder / "1" / "model.onnx")).graph
    for declared, actual in ((config.input, graph.input), (config.output, graph.output)):
        assert [d.name for d in declared] == [a.name for a in actual]
        for d, a in zip(declared, actual):
            assert d.data_type == ONNX_TO_TRITON[a.type.tensor_type.elem_type]
            model_rank = len(a.type.tensor_type.shape.dim)
            # Triton's batch axis is implicit; a [batch] output is declared [1] and reshaped to [].
            shape_without_batch = list(d.reshape.shape) if d.HasField("reshape") else list(d.dims)
            assert len(shape_without_batch) == model_rank - 1
    assert [list(i.dims) for i in config.input] == [[-1]] * 3
    assert [i.name for i in config.input] == list(CROSS_ENCODER.input_names)
    assert [o.name for o in config.output] == list(CROSS_ENCODER.output_names)


def test_preferred_batches_larger_than_the_maximum_are_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exceed max_batch_size"):
        write_repository(
            tmp_path, "tiny", open_bundle(tiny_bundle).variant_path(CROSS_ENCODER.name, "fp32"),
            TritonConfig(max_batch_size=8, preferred_batch_sizes=(16,)),
        )
