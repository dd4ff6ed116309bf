"""The gRPC API files: committed stubs match the .proto sources, and the KServe v2 messages match the protocol."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edgerec.proto import generate


def test_committed_stubs_are_what_make_proto_generates(tmp_path):
    written = generate.generate(output_dir=tmp_path)
    assert {p.name for p in written} == {
        f"{stem}{suffix}" for stem in ("recommender", "grpc_service") for suffix in generate.GENERATED_SUFFIXES
    }
    for fresh in written:
        committed = generate.PROTO_DIR / fresh.name
        assert committed.read_bytes() == fresh.read_bytes(), f"{committed.name} is stale: run `make proto`"


def test_generated_code_imports_through_the_edgerec_package():
    text = (generate.PROTO_DIR / "recommender_pb2_grpc.py").read_text()
    assert "from edgerec.proto import recommender_pb2" in text


def _describe(module) -> dict:
    """Every message's fields as [number, type, repeated], and the service's methods, of a generated module."""
    messages = {}

    def walk(descriptors):
        for message in descriptors:
            messages[message.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in message.fields}
            walk(message.nested_types)

    walk(module.DESCRIPTOR.message_types_by_name.values())
    service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    return {"messages": messages, "methods": methods}


def test_kserve_messages_and_methods_match_tritonclients_wire_format():
    # both in this process: edgerec's stubs live in edgerec.proto.POOL, tritonclient's in the default pool
    from tritonclient.grpc import service_pb2

    from edgerec.proto import grpc_service_pb2

    ours, theirs = _describe(grpc_service_pb2), _describe(service_pb2)
    assert set(ours["methods"]) == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "RepositoryIndex",
    }
    for method, types in ours["methods"].items():
        assert theirs["methods"][method] == types, method
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], message
        assert fields.items() <= theirs["messages"][message].items(), message
    for message in ("inference.RepositoryIndexRequest", "inference.RepositoryIndexResponse.ModelIndex"):
        assert ours["messages"][message] == theirs["messages"][message], message  # every field, same numbers


def test_stubs_register_in_edgerecs_pool_not_protobufs_default():
    from google.protobuf import descriptor_pool

    from edgerec.proto import POOL, grpc_service_pb2, recommender_pb2

    for module in (grpc_service_pb2, recommender_pb2):
        assert module.DESCRIPTOR.pool is POOL
        with pytest.raises(KeyError):
            descriptor_pool.Default().FindFileByName(module.DESCRIPTOR.name)


def test_a_changed_protoc_output_fails_the_rewrite_loudly():
    with pytest.raises(SystemExit, match="POOL_REWRITES"):
        generate.into_private_pool("DESCRIPTOR = something_else()\n", "x_pb2.py")


IMPORT_ORDER = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"


@pytest.mark.parametrize(
    "modules",
    [("edgerec.proto.grpc_service_pb2", "tritonclient.grpc"), ("tritonclient.grpc", "edgerec.proto.grpc_service_pb2")],
)
def test_edgerecs_stubs_and_tritonclient_import_into_one_process_in_either_order(modules):
    done = subprocess.run([sys.executable, "-c", IMPORT_ORDER, *modules], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
