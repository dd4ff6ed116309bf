"""The gRPC API files: committed stubs match the .proto sources, and the KServe v2 messages match the protocol."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

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


DESCRIBE = textwrap.dedent(
    """
    import importlib, json, sys
    module = importlib.import_module(sys.argv[1])
    messages = {}
    def walk(descriptors):
        for message in descriptors:
            messages[message.full_name] = {f.name: [f.number, f.type, f.is_repeated] for f in message.fields}
            walk(message.nested_types)
    walk(module.DESCRIPTOR.message_types_by_name.values())
    service = module.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods = {m.name: [m.input_type.full_name, m.output_type.full_name] for m in service.methods}
    print(json.dumps({"messages": messages, "methods": methods}))
    """
)


def _describe(module: str) -> dict:
    # each in its own process: both modules define `inference.*` in protobuf's default pool
    done = subprocess.run([sys.executable, "-c", DESCRIBE, module], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_kserve_messages_and_methods_match_tritonclients_wire_format():
    ours = _describe("edgerec.proto.grpc_service_pb2")
    theirs = _describe("tritonclient.grpc.service_pb2")
    for method, types in ours["methods"].items():
        assert theirs["methods"][method] == types, method
    assert len(ours["methods"]) == 6
    for message, fields in ours["messages"].items():
        assert message in theirs["messages"], message
        for field, wire in fields.items():
            assert theirs["messages"][message].get(field) == wire, f"{message}.{field}"
