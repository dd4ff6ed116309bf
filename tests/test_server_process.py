"""The server as a process: graceful shutdown under load, no training stack, and a stock tritonclient beside it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import tritonclient.grpc as triton

from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime.process import ServerProcess
from edgerec.runtime.server import start_server
from server_helpers import OfflineModel, catalog_ids, copy_bundle, make_config, score_request, wait_until


def test_sigterm_during_load_finishes_every_admitted_request_and_exits_0(tiny_bundle):
    ids = catalog_ids(tiny_bundle)
    request = score_request([ids[i % len(ids)] for i in range(64)], context=ids[:5])
    # Batching off: each request costs 64 engine runs, so requests are queued when SIGTERM arrives.
    args = ["--bundle", str(tiny_bundle), "--grpc-port", "0", "--metrics-port", "-1", "--max-batch-size", "1"]
    with ServerProcess(args) as server:
        results: list[tuple[float, float, grpc.StatusCode, int]] = []  # (started, ended, code, scores in the answer)
        stop = threading.Event()

        def client() -> None:
            with grpc.insecure_channel(server.target()) as channel:
                stub = recommender_pb2_grpc.RecommenderStub(channel)
                while not stop.is_set():
                    started = time.monotonic()
                    try:
                        scores = len(stub.Score(request, timeout=30).purchase_probability)
                        code = grpc.StatusCode.OK
                    except grpc.RpcError as error:
                        code, scores = error.code(), 0
                        stop.wait(0.05)  # refused: no busy loop against a server that is gone
                    results.append((started, time.monotonic(), code, scores))

        with ThreadPoolExecutor(6) as pool:
            clients = [pool.submit(client) for _ in range(6)]
            try:
                wait_until(
                    lambda: sum(code is grpc.StatusCode.OK for _, _, code, _ in results) >= 6
                    or any(c.done() for c in clients),
                    timeout=120, message="6 answers under load",
                )
                sigterm_at = time.monotonic()
                exit_code = server.terminate(timeout=60)
            finally:
                stop.set()  # each client records the call it has in flight, then ends
            for future in clients:
                future.result(timeout=60)  # what a client thread raised is raised here
        log = server.log()

    assert exit_code == 0, log
    codes = {code for _, _, code, _ in results}
    # OK: answered. UNAVAILABLE: refused (no longer accepting). CANCELLED: gRPC had received the call but
    # not yet handed it to the server's code when it stopped accepting: never admitted either.
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, codes
    admitted = int(re.search(r"finishing (\d+) admitted request", log).group(1))
    assert all(scores == 64 for _, _, code, scores in results if code is grpc.StatusCode.OK), results
    answered_after_sigterm = sum(code is grpc.StatusCode.OK for _, ended, code, _ in results if ended > sigterm_at)
    assert admitted >= 1, log  # requests were queued when SIGTERM came
    assert answered_after_sigterm >= admitted, (admitted, results)  # every one of them was answered
    assert "stopped" in log and "did not finish" not in log


def test_sighup_reloads_the_bundle_the_latest_link_points_to(tiny_bundle, tmp_path):
    latest = tmp_path / "latest"
    latest.symlink_to(tiny_bundle, target_is_directory=True)
    request = score_request(catalog_ids(tiny_bundle)[:2])
    args = ["--bundle", str(latest), "--grpc-port", "0", "--metrics-port", "-1"]
    with ServerProcess(args) as server, grpc.insecure_channel(server.target()) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        assert stub.Score(request, timeout=20).model_version == "test"
        latest.unlink()
        latest.symlink_to(copy_bundle(tiny_bundle, tmp_path / "tiny-v2", "v2"), target_is_directory=True)
        server.reload()
        wait_until(lambda: stub.Score(request, timeout=20).model_version == "v2", timeout=60, message="version v2")
        assert server.terminate() == 0
    assert "reloaded: now serving tiny v2 (was tiny test)" in server.log()


def test_a_bundle_that_cannot_be_served_exits_1_with_the_reason(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "edgerec.cli", "serve", "--bundle", str(tmp_path / "missing"), "--metrics-port", "-1"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert "cannot serve" in done.stderr and "no bundle at" in done.stderr


NO_TRAINING_STACK = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import grpc
    from edgerec.proto import recommender_pb2, recommender_pb2_grpc
    from edgerec.runtime.config import Config, ServerConfig
    from edgerec.runtime.server import start_server

    bundle = Path(sys.argv[1])
    handle = start_server(Config(server=ServerConfig(bundle=bundle, grpc_port=0, metrics_port=0)))
    ids = sorted(json.loads((bundle / "catalog.json").read_text()))[:3]
    request = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(item_id=i) for i in ids])
    with grpc.insecure_channel(handle.target) as channel:
        reply = recommender_pb2_grpc.RecommenderStub(channel).Score(request, timeout=20)
    handle.stop()
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "optimum"))
    print(json.dumps({"scored": len(reply.purchase_probability), "heavy": heavy}))
    """
)


def test_serving_loads_no_torch_or_transformers(tiny_bundle):
    done = subprocess.run(
        [sys.executable, "-c", NO_TRAINING_STACK, str(tiny_bundle)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"scored": 3, "heavy": []}


def test_tritonclient_gets_health_metadata_and_the_offline_scores(tiny_bundle):
    # tritonclient runs in this process: edgerec's stubs keep out of protobuf's default pool (edgerec.proto.POOL)
    offline = OfflineModel(tiny_bundle, "fp32")
    featurizer, ids = offline.featurizer, catalog_ids(tiny_bundle)
    context = featurizer.context_tokens([])
    batch = featurizer.pack([(context, featurizer.catalog[i]) for i in ids[:5]] + [(featurizer.catalog[ids[9]], featurizer.catalog[ids[1]])])
    with start_server(make_config(tiny_bundle, precision="fp32")) as handle:
        client = triton.InferenceServerClient(handle.target)
        try:
            inputs = []
            for name, values in batch.as_feeds().items():
                tensor = triton.InferInput(name, list(values.shape), "INT64")
                tensor.set_data_from_numpy(values.astype(np.int64))
                inputs.append(tensor)
            wanted = [triton.InferRequestedOutput(n) for n in ("purchase_probability", "expected_quantity")]
            result = client.infer("tiny", inputs, outputs=wanted)
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny")
            server = client.get_server_metadata(as_json=True)
            model = client.get_model_metadata("tiny", as_json=True)
        finally:
            client.close()
    assert server["name"] == "edgerec"
    assert model["name"] == "tiny" and model["versions"] == ["test"]
    assert [t["name"] for t in model["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    expected_p, expected_q = offline.run_rows(batch.input_ids, batch.attention_mask, batch.token_type_ids)
    np.testing.assert_allclose(result.as_numpy("purchase_probability"), expected_p, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("expected_quantity"), expected_q, rtol=1e-5)
