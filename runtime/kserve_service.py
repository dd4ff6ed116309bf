"""gRPC transport of the KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`).

Existing clients of the protocol (tritonclient, KServe clients) can call the
served model as a plain tensor model: inputs `input_ids`, `attention_mask`,
`token_type_ids` (INT64 [batch, sequence]), outputs `purchase_probability`
and `expected_quantity` (FP32 [batch]). Tensors arrive in typed contents or
as raw little-endian bytes; answers use the same form as the request. Rows go
through the same batcher as `Recommender.Score`, each row one pair. This
module only decodes and encodes tensors and checks they match the model's
signature; everything else is the engine's.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from edgerec import __version__
from edgerec.proto import grpc_service_pb2 as pb
from edgerec.proto import grpc_service_pb2_grpc
from edgerec.runtime.backend import OUTPUT_NAMES
from edgerec.runtime.errors import EdgeRecError, ErrorCode, invalid
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.scoring import Engine
from edgerec.runtime.status import rpc

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVER_NAME = "edgerec"
PLATFORM = "onnxruntime_onnx"
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
INPUT_DATATYPE = "INT64"
OUTPUT_DATATYPE = "FP32"


class KServeService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, current_engine: Callable[[], Engine], is_ready: Callable[[], bool], metrics: Metrics, max_response_bytes: int
    ) -> None:
        self._engine = current_engine
        self._is_ready = is_ready
        self.metrics = metrics
        self.max_response_bytes = max_response_bytes

    @rpc("ServerLive")
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @rpc("ServerReady")
    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    @rpc("ModelReady")
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        engine = self._engine()
        known = request.name == engine.model_name and request.version in ("", engine.version)
        return pb.ModelReadyResponse(ready=known and self._is_ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=[])

    @rpc("ModelMetadata")
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        engine = self._served(request.name, request.version, "name")
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=engine.model_name,
            versions=[engine.version],
            platform=PLATFORM,
            inputs=[tensor(name=name, datatype=INPUT_DATATYPE, shape=[-1, -1]) for name in INPUT_NAMES],
            outputs=[tensor(name=name, datatype=OUTPUT_DATATYPE, shape=[-1]) for name in OUTPUT_NAMES],
        )

    @rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        engine = self._served(request.model_name, request.model_version, "model_name")
        wanted = requested_outputs(request)
        tensors = decode_inputs(request, engine.config.server.max_candidates, engine.max_length)
        outputs = await engine.infer(
            tensors["input_ids"], tensors["attention_mask"], tensors["token_type_ids"], context.time_remaining()
        )
        return encode_outputs(request, engine, dict(zip(OUTPUT_NAMES, outputs)), wanted)

    def _served(self, name: str, version: str, field: str) -> Engine:
        engine = self._engine()
        if name != engine.model_name:
            raise EdgeRecError(ErrorCode.NOT_FOUND, f"no model {name!r} here; this server serves {engine.model_name!r}", field)
        if version not in ("", engine.version):
            raise EdgeRecError(
                ErrorCode.NOT_FOUND,
                f"{name} has no version {version!r}; version {engine.version!r} is served",
                "model_version" if field == "model_name" else "version",
            )
        return engine


def requested_outputs(request: pb.ModelInferRequest) -> list[str]:
    """Output names the client asked for, in its order; all outputs if it named none."""
    names = []
    for index, output in enumerate(request.outputs):
        if output.name not in OUTPUT_NAMES:
            raise invalid(f"outputs[{index}].name", f"unknown output {output.name!r}; the model has {list(OUTPUT_NAMES)}")
        names.append(output.name)
    return names or list(OUTPUT_NAMES)


def decode_inputs(request: pb.ModelInferRequest, max_rows: int, max_length: int) -> dict[str, np.ndarray]:
    """The three INT64 [batch, sequence] inputs, from typed or raw contents; INVALID_ARGUMENT names what is wrong."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid("raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs; give one per input")
    tensors: dict[str, np.ndarray] = {}
    shape: list[int] | None = None
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        if tensor.name not in INPUT_NAMES:
            raise invalid(f"{field}.name", f"unknown input {tensor.name!r}; the model takes {list(INPUT_NAMES)}")
        if tensor.name in tensors:
            raise invalid(f"{field}.name", f"input {tensor.name!r} is given twice")
        if tensor.datatype != INPUT_DATATYPE:
            raise invalid(f"{field}.datatype", f"{tensor.name} must be {INPUT_DATATYPE}, got {tensor.datatype!r}")
        dims = list(tensor.shape)
        if len(dims) != 2 or not 1 <= dims[0] <= max_rows or not 1 <= dims[1] <= max_length:
            raise invalid(
                f"{field}.shape",
                f"{tensor.name} must be [batch, sequence] with 1 <= batch <= {max_rows} and "
                f"1 <= sequence <= {max_length}, got {dims}",
            )
        if shape is not None and dims != shape:
            raise invalid(f"{field}.shape", f"{tensor.name} has shape {dims}, other inputs have {shape}")
        shape = dims
        count = dims[0] * dims[1]
        if raw:
            if tensor.HasField("contents"):
                raise invalid(f"{field}.contents", "data is given both typed and in raw_input_contents")
            data = raw[index]
            if len(data) != count * 8:
                raise invalid(f"raw_input_contents[{index}]", f"{len(data)} bytes; {tensor.name} {dims} INT64 needs {count * 8}")
            values = np.frombuffer(data, dtype="<i8").astype(np.int64, copy=False)
        else:
            contents = tensor.contents.int64_contents
            if len(contents) != count:
                raise invalid(f"{field}.contents.int64_contents", f"{len(contents)} values; shape {dims} needs {count}")
            values = np.array(contents, dtype=np.int64)
        tensors[tensor.name] = values.reshape(dims)
    missing = [name for name in INPUT_NAMES if name not in tensors]
    if missing:
        raise invalid("inputs", f"missing input(s) {missing}; the model takes {list(INPUT_NAMES)}")
    return tensors


def encode_outputs(
    request: pb.ModelInferRequest, engine: Engine, outputs: dict[str, np.ndarray], wanted: list[str]
) -> pb.ModelInferResponse:
    """The response, raw if the request was raw, typed otherwise."""
    response = pb.ModelInferResponse(model_name=engine.model_name, model_version=engine.version, id=request.id)
    for name in wanted:
        values = np.asarray(outputs[name], dtype="<f4")
        tensor = response.outputs.add(name=name, datatype=OUTPUT_DATATYPE, shape=[len(values)])
        if request.raw_input_contents:
            response.raw_output_contents.append(values.tobytes())
        else:
            tensor.contents.fp32_contents.extend(values.tolist())
    return response
