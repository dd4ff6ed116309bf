"""gRPC transport of the KServe v2 / Open Inference Protocol (`inference.GRPCInferenceService`).

Existing clients of the protocol (tritonclient, KServe clients) can call
every served model of the bundle as a plain tensor model whose inputs,
outputs, datatypes and shapes are its signature (`edgerec.core.signatures`):
the cross-encoder by the bundle's name (`edgerec` in real bundles), as it
always was, or by its own name (`cross_encoder`); on a two-stage bundle also
`item_tower` and `ranker` (one customer per call). Each named axis has one
size across a call's inputs, within the pipeline's `axis_limits`. A model's
version is the bundle's, and "" or "1" (the version folder of the Triton
repository `edgerec export` writes) mean the version being served. Tensors arrive in typed contents or as raw
little-endian bytes; answers are always raw (`raw_output_contents`), as
Triton answers, so Triton's clients read them. `RepositoryIndex` (Triton's
model repository extension, read-only) lists the bundle's models. Rows go
through the same batchers as `Recommender`'s calls (a cross-encoder row is
one pair, a ranker candidate one row of the ranker's batcher). This
module only decodes and encodes tensors and checks they match the signature;
everything else is the pipeline's.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import numpy as np

from edgerec import __version__
from edgerec.core.errors import EdgeRecError, ErrorCode, invalid
from edgerec.core.signatures import CROSS_ENCODER, ModelSignature, TensorSpec
from edgerec.proto import grpc_service_pb2 as pb
from edgerec.proto import grpc_service_pb2_grpc
from edgerec.runtime.metrics import Metrics
from edgerec.runtime.model_version import ModelVersion
from edgerec.runtime.status import rpc

SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SERVER_NAME = "edgerec"
PLATFORM = "onnxruntime_onnx"
# The typed-contents field of each KServe datatype a signature may use (FP16 travels raw only).
CONTENTS_FIELD = {"INT64": "int64_contents", "INT32": "int_contents", "FP32": "fp32_contents"}
# The version folder of the Triton repository `edgerec export` writes (export/triton.py): Triton's
# clients ask for it, and it means the version being served, as "" does.
TRITON_REPOSITORY_VERSION = "1"
SERVED_VERSION_ALIASES = ("", TRITON_REPOSITORY_VERSION)
# ServerMetadata.extensions: the name Triton reports for its model repository extension (RepositoryIndex).
EXTENSIONS = ("model_repository",)


class KServeService(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        current: Callable[[], ModelVersion],
        is_ready: Callable[[], bool],
        metrics: Metrics,
        max_response_bytes: int,
    ) -> None:
        self._current = current
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
        served = self._current()
        known = request.name in model_names(served) and request.version in (*SERVED_VERSION_ALIASES, served.version)
        return pb.ModelReadyResponse(ready=known and self._is_ready())

    @rpc("ServerMetadata")
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__, extensions=EXTENSIONS)

    @rpc("ModelMetadata")
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        served = self._served(request.name, request.version, "name")
        signature = signature_of(served, request.name)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[served.version],
            platform=PLATFORM,
            inputs=[tensor(name=t.name, datatype=t.kserve_datatype, shape=t.kserve_shape) for t in signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.kserve_datatype, shape=t.kserve_shape) for t in signature.outputs],
        )

    @rpc("ModelInfer")
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        served = self._served(request.model_name, request.model_version, "model_name")
        signature = signature_of(served, request.model_name)
        wanted = requested_outputs(request, signature)
        pipeline = served.pipeline
        tensors = decode_inputs(request, signature, pipeline.axis_limits(signature.name))
        outputs = await pipeline.infer(tensors, context.time_remaining(), model=signature.name)
        return encode_outputs(request, served.version, outputs, wanted, signature)

    @rpc("RepositoryIndex")
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise invalid(
                "repository_name",
                f"edgerec serves one bundle, not named repositories; leave it empty (got {request.repository_name!r})",
            )
        return repository_index(self._current(), self._is_ready(), request.ready)

    def _served(self, name: str, version: str, field: str) -> ModelVersion:
        served = self._current()
        names = model_names(served)
        if name not in names:
            raise EdgeRecError(
                ErrorCode.NOT_FOUND, f"no model {name!r} here; this server serves {' or '.join(map(repr, names))}", field
            )
        if version not in (*SERVED_VERSION_ALIASES, served.version):
            raise EdgeRecError(
                ErrorCode.NOT_FOUND,
                f"{name} has no version {version!r}; version {served.version!r} is served "
                f"(also addressed as {' or '.join(map(repr, SERVED_VERSION_ALIASES))})",
                "model_version" if field == "model_name" else "version",
            )
        return served


def model_names(served: ModelVersion) -> tuple[str, ...]:
    """The names served models answer to: the bundle's name (the cross-encoder), and each model's own."""
    return (served.name, *served.pipeline.signatures())


def signature_of(served: ModelVersion, name: str) -> ModelSignature:
    """The signature of the model `name` addresses (the bundle's name: the cross-encoder)."""
    return served.pipeline.signatures().get(name, CROSS_ENCODER)


def repository_index(served: ModelVersion, ready: bool, only_ready: bool) -> pb.RepositoryIndexResponse:
    """Every model of the served bundle by name, READY (or UNAVAILABLE while not `ready`), sorted by name.

    Models of the bundle this server does not serve are listed UNAVAILABLE with the reason;
    `only_ready` leaves out every model that is not READY (Triton's `ready` flag).
    """
    entries = []
    for name in model_names(served):
        state, reason = ("READY", "") if ready else ("UNAVAILABLE", "the server is draining")
        entries.append((name, state, reason))
    for name in served.bundle.models:
        if name not in served.pipeline.signatures():
            entries.append((name, "UNAVAILABLE", "this edgerec version does not serve this model"))
    index = pb.RepositoryIndexResponse()
    for name, state, reason in sorted(entries):
        if state == "READY" or not only_ready:
            index.models.add(name=name, version=served.version, state=state, reason=reason)
    return index


def requested_outputs(request: pb.ModelInferRequest, signature: ModelSignature = CROSS_ENCODER) -> list[str]:
    """Output names the client asked for, in its order; all outputs if it named none."""
    names = []
    for index, output in enumerate(request.outputs):
        if output.name not in signature.output_names:
            raise invalid(
                f"outputs[{index}].name", f"unknown output {output.name!r}; the model has {list(signature.output_names)}"
            )
        names.append(output.name)
    return names or list(signature.output_names)


def decode_inputs(
    request: pb.ModelInferRequest, signature: ModelSignature, limits: dict[str, tuple[int, int]]
) -> dict[str, np.ndarray]:
    """Every input of `signature`, from typed or raw contents; INVALID_ARGUMENT names what is wrong.

    Each named axis (`batch`, `sequence`, `candidates`, ...) has one size across the inputs, within
    `limits[axis]` (smallest, largest); fixed axes must have their size.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid("raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs; give one per input")
    specs = {spec.name: spec for spec in signature.inputs}
    tensors: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, str]] = {}  # named axis -> (size, the input that set it)
    for index, tensor in enumerate(request.inputs):
        field = f"inputs[{index}]"
        spec = specs.get(tensor.name)
        if spec is None:
            raise invalid(f"{field}.name", f"unknown input {tensor.name!r}; the model takes {list(specs)}")
        if tensor.name in tensors:
            raise invalid(f"{field}.name", f"input {tensor.name!r} is given twice")
        if tensor.datatype != spec.kserve_datatype:
            raise invalid(f"{field}.datatype", f"{tensor.name} must be {spec.kserve_datatype}, got {tensor.datatype!r}")
        dims = list(tensor.shape)
        if not _fits(spec, dims, limits):
            bounds = " and ".join(
                f"{limits[axis][0]} <= {axis} <= {limits[axis][1]}" for axis in spec.shape if axis in limits
            )
            raise invalid(
                f"{field}.shape",
                f"{tensor.name} must be [{', '.join(map(str, spec.shape))}]{' with ' + bounds if bounds else ''}, got {dims}",
            )
        for axis, size in zip(spec.shape, dims):
            if isinstance(axis, str):
                seen = sizes.setdefault(axis, (size, tensor.name))
                if seen[0] != size:
                    raise invalid(
                        f"{field}.shape", f"{tensor.name} has {axis} {size}, but {seen[1]} has {axis} {seen[0]}"
                    )
        count = int(np.prod(dims))
        dtype = spec.numpy_dtype.newbyteorder("<")
        if raw:
            if tensor.HasField("contents"):
                raise invalid(f"{field}.contents", "data is given both typed and in raw_input_contents")
            data = raw[index]
            if len(data) != count * dtype.itemsize:
                raise invalid(
                    f"raw_input_contents[{index}]",
                    f"{len(data)} bytes; {tensor.name} {dims} {spec.kserve_datatype} needs {count * dtype.itemsize}",
                )
            values = np.frombuffer(data, dtype=dtype).astype(spec.numpy_dtype, copy=False)
        else:
            contents_field = CONTENTS_FIELD[spec.kserve_datatype]
            contents = getattr(tensor.contents, contents_field)
            if len(contents) != count:
                raise invalid(f"{field}.contents.{contents_field}", f"{len(contents)} values; shape {dims} needs {count}")
            values = np.array(contents, dtype=spec.numpy_dtype)
        tensors[tensor.name] = values.reshape(dims)
    missing = [name for name in specs if name not in tensors]
    if missing:
        raise invalid("inputs", f"missing input(s) {missing}; the model takes {list(specs)}")
    return tensors


def _fits(spec: TensorSpec, dims: list[int], limits: dict[str, tuple[int, int]]) -> bool:
    """Whether `dims` has the spec's rank, its fixed sizes, and dynamic sizes within their limits."""
    if len(dims) != len(spec.shape):
        return False
    for axis, size in zip(spec.shape, dims):
        if isinstance(axis, int):
            if size != axis:
                return False
        else:
            low, high = limits.get(axis, (1, size))
            if not low <= size <= high:
                return False
    return True


def encode_outputs(
    request: pb.ModelInferRequest,
    version: str,
    outputs: dict[str, np.ndarray],
    wanted: list[str],
    signature: ModelSignature = CROSS_ENCODER,
) -> pb.ModelInferResponse:
    """The response for the name the request used: each wanted output's name, datatype and shape in
    `outputs`, its data as little-endian bytes in `raw_output_contents` (same index), whatever form
    the request's inputs had. Triton answers so, and its clients read only the raw form."""
    response = pb.ModelInferResponse(model_name=request.model_name, model_version=version, id=request.id)
    for name in wanted:
        spec = signature.output(name)
        values = np.ascontiguousarray(outputs[name], dtype=spec.numpy_dtype.newbyteorder("<"))
        response.outputs.add(name=name, datatype=spec.kserve_datatype, shape=list(values.shape))
        response.raw_output_contents.append(values.tobytes())
    return response
