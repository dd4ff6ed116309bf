"""KServe v2 as Triton's own clients use it, on a real server with the tiny bundle.

- Outputs come in `raw_output_contents` (little-endian, one entry per output,
  in the order of `outputs`), whether the request was typed or raw, as Triton
  answers; each output's name, datatype and shape stay in `outputs`.
- Version "1" (the version folder of the exported Triton repository) and ""
  both mean the version being served.
- `RepositoryIndex` (Triton's model-repository extension, read-only) lists
  every model the bundle holds.
- edgerec's stubs and server share one process with tritonclient, in either
  import order, and server reflection describes every service.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from tritonclient.grpc import service_pb2 as triton_pb

from edgerec.core.featurize import ContextEntry
from edgerec.export.triton import TritonConfig, write_repository
from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.runtime import kserve_service
from server_helpers import catalog_ids, make_config

TIMEOUT = 20  # seconds; every call is bounded


@pytest.fixture
def inference(channel):
    return kserve_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def batch(tiny_bundle, offline):
    """Five real (context, candidate) rows of the bundle's catalog."""
    featurizer, ids = offline.featurizer, catalog_ids(tiny_bundle)
    pairs = []
    for k in range(5):
        context = featurizer.context_tokens([ContextEntry(featurizer.catalog[ids[(k + j) % len(ids)]], 1) for j in range(k % 3)])
        pairs.append((context, featurizer.catalog[ids[(3 * k + 1) % len(ids)]]))
    return featurizer.pack(pairs)


def infer_request(batch, raw: bool, **fields) -> kserve.ModelInferRequest:
    request = kserve.ModelInferRequest(model_name="tiny", id="r1", **fields)
    for name, values in batch.as_feeds().items():
        tensor = request.inputs.add(name=name, datatype="INT64", shape=list(values.shape))
        if raw:
            request.raw_input_contents.append(values.astype("<i8").tobytes())
        else:
            tensor.contents.int64_contents.extend(values.ravel().tolist())
    return request


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code(), failure.value.details()


# -- outputs as Triton answers them ---------------------------------------------------------------
@pytest.mark.parametrize("raw", [False, True], ids=["typed request", "raw request"])
def test_outputs_are_raw_little_endian_bytes_for_typed_and_raw_requests(inference, offline, batch, raw):
    response = inference.ModelInfer(infer_request(batch, raw), timeout=TIMEOUT)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("purchase_probability", "FP32", [5]),
        ("expected_quantity", "FP32", [5]),
    ]
    assert not any(output.HasField("contents") for output in response.outputs)
    assert [len(data) for data in response.raw_output_contents] == [5 * 4, 5 * 4]
    expected_p, expected_q = offline.run_rows(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[0], "<f4"), expected_p, atol=1e-6)
    np.testing.assert_allclose(np.frombuffer(response.raw_output_contents[1], "<f4"), expected_q, rtol=1e-5)
    # tritonclient's own reader of a ModelInferResponse
    result = triton.InferResult(triton_pb.ModelInferResponse.FromString(response.SerializeToString()))
    np.testing.assert_array_equal(result.as_numpy("purchase_probability"), np.frombuffer(response.raw_output_contents[0], "<f4"))
    assert result.as_numpy("expected_quantity").shape == (5,)


def test_raw_output_contents_follow_the_requested_outputs_order(inference, batch):
    request = infer_request(batch, raw=False)
    request.outputs.add(name="expected_quantity")
    request.outputs.add(name="purchase_probability")
    response = inference.ModelInfer(request, timeout=TIMEOUT)
    everything = inference.ModelInfer(infer_request(batch, raw=False), timeout=TIMEOUT)
    assert [o.name for o in response.outputs] == ["expected_quantity", "purchase_probability"]
    assert len(response.raw_output_contents) == 2
    assert list(response.raw_output_contents) == list(reversed(everything.raw_output_contents))


# -- model versions -------------------------------------------------------------------------------
def test_the_exported_triton_repository_names_its_version_as_the_server_accepts(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"onnx")
    folder = write_repository(tmp_path / "triton", "tiny", model, TritonConfig())
    versions = [path.name for path in folder.iterdir() if path.is_dir()]
    assert versions == [kserve_service.TRITON_REPOSITORY_VERSION]


def test_version_1_and_empty_mean_the_served_version(inference, batch):
    for version in ("", "1", "test"):
        assert inference.ModelReady(kserve.ModelReadyRequest(name="tiny", version=version), timeout=TIMEOUT).ready
        model = inference.ModelMetadata(kserve.ModelMetadataRequest(name="tiny", version=version), timeout=TIMEOUT)
        assert list(model.versions) == ["test"]
        response = inference.ModelInfer(infer_request(batch, raw=True, model_version=version), timeout=TIMEOUT)
        assert response.model_version == "test"  # the version that answered
    assert not inference.ModelReady(kserve.ModelReadyRequest(name="tiny", version="2"), timeout=TIMEOUT).ready
    code, details = status_of(lambda: inference.ModelInfer(infer_request(batch, raw=True, model_version="2"), timeout=TIMEOUT))
    assert code is grpc.StatusCode.NOT_FOUND and details.startswith("model_version:") and "'1'" in details, details


# -- the model repository extension ---------------------------------------------------------------
def test_server_metadata_lists_the_model_repository_extension(inference):
    metadata = inference.ServerMetadata(kserve.ServerMetadataRequest(), timeout=TIMEOUT)
    assert list(metadata.extensions) == ["model_repository"]


def test_repository_index_lists_every_model_the_bundle_holds_as_ready(inference):
    for only_ready in (False, True):
        index = inference.RepositoryIndex(kserve.RepositoryIndexRequest(ready=only_ready), timeout=TIMEOUT)
        assert [(m.name, m.version, m.state, m.reason) for m in index.models] == [
            ("cross_encoder", "test", "READY", ""),
            ("tiny", "test", "READY", ""),
        ]


def test_repository_index_of_a_named_repository_is_refused(inference):
    request = kserve.RepositoryIndexRequest(repository_name="models")
    code, details = status_of(lambda: inference.RepositoryIndex(request, timeout=TIMEOUT))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("repository_name:"), details


def test_repository_index_marks_a_draining_servers_models_unavailable(server):
    served = server.server.model_version()
    draining = kserve_service.repository_index(served, ready=False, only_ready=False)
    assert {(m.name, m.state) for m in draining.models} == {("cross_encoder", "UNAVAILABLE"), ("tiny", "UNAVAILABLE")}
    assert all(m.reason for m in draining.models)
    assert not kserve_service.repository_index(served, ready=False, only_ready=True).models


def test_tritonclient_reads_the_index_metadata_and_a_typed_answer(server, batch, offline):
    client = triton.InferenceServerClient(server.target)
    try:
        index = client.get_model_repository_index(as_json=True)
        assert {(m["name"], m["version"], m["state"]) for m in index["models"]} == {
            ("cross_encoder", "test", "READY"),
            ("tiny", "test", "READY"),
        }
        assert client.get_server_metadata(as_json=True)["extensions"] == ["model_repository"]
        assert client.is_model_ready("tiny", "1")
        with pytest.raises(triton.InferenceServerException) as refused:
            client.load_model("tiny")  # read-only: loading is not served (a reload is SIGHUP)
        assert refused.value.status() == "StatusCode.UNIMPLEMENTED"
        inputs = []
        for name, values in batch.as_feeds().items():
            tensor = triton.InferInput(name, list(values.shape), "INT64")
            tensor.set_data_from_numpy(values.astype(np.int64))
            inputs.append(tensor)
        result = client.infer("tiny", inputs, model_version="1")
    finally:
        client.close()
    expected_p, _ = offline.run_rows(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    np.testing.assert_allclose(result.as_numpy("purchase_probability"), expected_p, atol=1e-6)


# -- one process with tritonclient; reflection ----------------------------------------------------
def test_edgerec_stubs_stay_out_of_protobufs_default_pool():
    for name in ("edgerec/proto/grpc_service.proto", "edgerec/proto/recommender.proto"):
        with pytest.raises(KeyError):
            descriptor_pool.Default().FindFileByName(name)
    # tritonclient's `inference.*` and ours coexist, each in its own pool
    assert triton_pb.DESCRIPTOR.pool is descriptor_pool.Default()
    assert kserve.ModelInferRequest.DESCRIPTOR.full_name == triton_pb.ModelInferRequest.DESCRIPTOR.full_name


BOTH_IN_ONE_PROCESS = textwrap.dedent(
    """
    import importlib, json, sys
    from pathlib import Path
    for module in sys.argv[2:]:
        importlib.import_module(module)
    import numpy as np
    import tritonclient.grpc as triton
    from edgerec.runtime.config import Config, ServerConfig
    from edgerec.runtime.server import start_server

    handle = start_server(Config(server=ServerConfig(bundle=Path(sys.argv[1]), grpc_port=0, metrics_port=-1)))
    client = triton.InferenceServerClient(handle.target)
    inputs = []
    for name, values in json.loads(sys.stdin.read()).items():
        tensor = triton.InferInput(name, [len(values), len(values[0])], "INT64")
        tensor.set_data_from_numpy(np.array(values, dtype=np.int64))
        inputs.append(tensor)
    result = client.infer("tiny", inputs)
    print(json.dumps({
        "live": client.is_server_live(),
        "models": sorted(m["name"] for m in client.get_model_repository_index(as_json=True)["models"]),
        "scores": result.as_numpy("purchase_probability").shape[0],
    }))
    client.close()
    handle.stop()
    """
)


@pytest.mark.parametrize(
    "order",
    [("edgerec.runtime.server", "tritonclient.grpc"), ("tritonclient.grpc", "edgerec.proto.grpc_service_pb2")],
    ids=["edgerec first", "tritonclient first"],
)
def test_edgerec_server_and_tritonclient_share_one_process(tiny_bundle, batch, order):
    arrays = json.dumps({name: values.tolist() for name, values in batch.as_feeds().items()})
    done = subprocess.run(
        [sys.executable, "-c", BOTH_IN_ONE_PROCESS, str(tiny_bundle), *order],
        input=arrays, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"live": True, "models": ["cross_encoder", "tiny"], "scores": 5}


def test_reflection_describes_every_served_service(channel):
    pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert services == {
        "edgerec.v1.Recommender",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    methods = {name: {m.name for m in pool.FindServiceByName(name).methods} for name in services}
    assert methods["edgerec.v1.Recommender"] == {"Score", "Rank", "Recommend"}
    assert methods["inference.GRPCInferenceService"] == {m.name for m in kserve_service.SERVICE.methods}
    assert "RepositoryIndex" in methods["inference.GRPCInferenceService"]
    assert methods["grpc.health.v1.Health"] >= {"Check", "Watch"}
    index = pool.FindMessageTypeByName("inference.RepositoryIndexResponse.ModelIndex")
    assert [(f.name, f.number) for f in index.fields] == [("name", 1), ("version", 2), ("state", 3), ("reason", 4)]


# -- a two-stage bundle: every model by name ------------------------------------------------------
def test_tritonclient_lists_and_calls_each_model_of_a_two_stage_bundle(tiny_two_stage_bundle):
    """item_tower and ranker beside the cross-encoder: listed READY, each with its own metadata, each
    callable with raw tensors; their answers equal the bundle's ONNX files run directly."""
    from edgerec.core.bundle import open_bundle
    from edgerec.core.ranker_inputs import encode_item_texts
    from edgerec.core.sessions import create_session
    from edgerec.core.signatures import ITEM_TOWER, RANKER
    from edgerec.runtime.server import start_server

    bundle = open_bundle(tiny_two_stage_bundle)
    handle = start_server(make_config(tiny_two_stage_bundle, precision="fp32"))
    client = triton.InferenceServerClient(handle.target)
    try:
        index = client.get_model_repository_index(as_json=True)
        assert {m["name"] for m in index["models"] if m["state"] == "READY"} == {
            "tiny", "cross_encoder", "item_tower", "ranker"
        }
        for signature in (ITEM_TOWER, RANKER):
            metadata = client.get_model_metadata(signature.name, as_json=True)
            assert [t["name"] for t in metadata["inputs"]] == list(signature.input_names)
            assert [t["name"] for t in metadata["outputs"]] == list(signature.output_names)

        def call(model, feeds):
            inputs = []
            for spec in model.inputs:
                values = feeds[spec.name]
                tensor = triton.InferInput(spec.name, list(values.shape), spec.kserve_datatype)
                tensor.set_data_from_numpy(values)
                inputs.append(tensor)
            result = client.infer(model.name, inputs)
            direct = create_session(bundle.variant_path(model.name)).session.run(list(model.output_names), feeds)
            for name, expected in zip(model.output_names, direct):
                np.testing.assert_array_equal(result.as_numpy(name), expected)

        ids, mask = encode_item_texts(bundle.featurizer(), ["RED METAL LANTERN", "SET OF 3 CAKE TINS"])
        call(ITEM_TOWER, {"input_ids": ids, "attention_mask": mask})
        rng = np.random.default_rng(0)
        embeddings = np.load(bundle.data_path("item_embeddings"))
        feeds = {
            "history_embeddings": embeddings[:3], "history_counts": np.array([2, 1, 1], np.float32),
            "history_days": np.array([3, 40, 365], np.float32), "history_mask": np.array([1, 1, 0], np.int64),
            "candidate_embeddings": embeddings[5:12],
            "candidate_features": rng.random((7, RANKER.inputs[5].shape[1])).astype(np.float32),
        }
        call(RANKER, feeds)

        # one size per named axis: 7 candidates' embeddings with 6 candidates' features is refused
        bad = dict(feeds, candidate_features=feeds["candidate_features"][:6])
        with pytest.raises(triton.InferenceServerException) as refused:
            call(RANKER, bad)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT" and "candidates" in refused.value.message()
    finally:
        client.close()
        handle.stop()
