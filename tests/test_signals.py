"""Signals to `edgerec serve`: caught from its first instruction, acted on once it runs, reloads coalesced.

Each test runs the server as a child process and waits for states (the
process catching SIGHUP, log lines, the port file, health, metrics), never
for a fixed time; signals are sent spaced in time where that is the point.
`slow_bundle` is the tiny bundle with a sparse padding file, so that checking
its checksums makes every load of it last about a second on this machine:
long enough for a signal to land while it loads.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest

from edgerec.benchmarks.harness.prometheus import scrape
from edgerec.benchmarks.harness.server import health_check
from edgerec.core.bundle import sha256_file, write_manifest
from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime.process import ServerProcess
from server_helpers import catalog_ids, score_request, wait_until

pytestmark = pytest.mark.slow

LOAD_S = 1.0  # how long verifying `slow_bundle` should take (cached): far longer than a 250 ms burst of signals
START_TIMEOUT_S = 120.0
FLAGS = ("--grpc-port", "0", "--metrics-port", "0")


def catches(pid: int, signum: int) -> bool:
    """True once process `pid` has a handler of its own for `signum` (Linux: SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught & (1 << (signum - 1)))


def spawn(bundle: Path) -> ServerProcess:
    """`edgerec serve` started, returned as soon as it catches SIGHUP (long before it serves)."""
    server = ServerProcess(["--bundle", str(bundle), *FLAGS], wait=False)
    wait_until(
        lambda: catches(server.process.pid, signal.SIGHUP) or server.process.poll() is not None,
        timeout=30, message="the server catching SIGHUP",
    )
    assert server.process.poll() is None, server.log()
    return server


def lines(server: ServerProcess, text: str) -> list[str]:
    return [line for line in server.log().splitlines() if text in line]


def sighups_handled(server: ServerProcess) -> int:
    """The server logs one line per SIGHUP it handles, saying what became of it. (Signals sent faster
    than the process handles them merge into one, in the kernel and in Python: fewer lines than sent.)"""
    return len(lines(server, ": SIGHUP"))


def reloads_planned(server: ServerProcess) -> int:
    return len(lines(server, ": SIGHUP: reloading")) + len(lines(server, "one more is queued behind it"))


def reloads(server: ServerProcess) -> float:
    return scrape(server.metrics_port).total("edgerec_bundle_reloads_total", result="ok")


@pytest.fixture(scope="module")
def slow_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slow") / "tiny-slow"
    shutil.copytree(tiny_bundle, root)
    # the rate of the checksum the bundle's verification runs (reading a sparse file), not of hashing memory:
    # the latter is several times faster, and the bundle then took ~6 s to verify instead of LOAD_S
    sample = root / "padding.bin"
    with open(sample, "wb") as padding:  # sparse: no disk space, all zeros when read
        padding.truncate(64 << 20)
    started = time.perf_counter()
    sha256_file(sample)
    rate = (64 << 20) / (time.perf_counter() - started)
    with open(sample, "wb") as padding:
        padding.truncate(int(rate * LOAD_S))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("files", None)
    write_manifest(root, manifest)
    return root


def test_sighups_all_through_start_up_never_kill_the_server_and_it_comes_up_serving(tiny_bundle):
    server = spawn(tiny_bundle)
    with server:
        sent = 0
        while not server.port_file.exists() and server.process.poll() is None:
            server.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.05)  # spacing the signals across start-up: imports, loading, serving
        server.wait_until_serving(START_TIMEOUT_S)
        wait_until(lambda: sighups_handled(server) >= 1, timeout=30, message="a SIGHUP handled")
        assert health_check(server.target())
        with grpc.insecure_channel(server.target()) as channel:
            reply = recommender_pb2_grpc.RecommenderStub(channel).Score(score_request(catalog_ids(tiny_bundle)[:2]), timeout=20)
        assert len(reply.purchase_probability) == 2
        assert server.terminate() == 0, server.log()
    assert sent >= 2 and lines(server, "SIGHUP before start-up read the bundle"), server.log()


def test_sigterm_during_start_up_exits_0_without_serving(tiny_bundle):
    server = spawn(tiny_bundle)
    with server:
        server.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(60)
        assert not server.port_file.exists()  # it never served
    assert exit_code == 0, server.log()
    assert lines(server, "stopped before serving"), server.log()


def test_sigterm_while_the_bundle_loads_exits_0_once_it_is_read_without_serving(slow_bundle):
    server = spawn(slow_bundle)
    with server:
        wait_until(lambda: lines(server, "loading bundle"), timeout=60, message="the load beginning")
        server.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(60)
        served = server.port_file.exists()
    log = server.log()
    assert exit_code == 0, log
    assert not served and "serving tiny" not in log, log
    assert lines(server, "SIGTERM: stopping before serving") and lines(server, "stopped before serving"), log


def test_a_sighup_while_the_bundle_loads_reloads_it_once_serving(slow_bundle):
    server = spawn(slow_bundle)
    with server:
        wait_until(lambda: lines(server, "loading bundle"), timeout=60, message="the load beginning")
        server.send_signal(signal.SIGHUP)
        server.wait_until_serving(START_TIMEOUT_S)
        wait_until(lambda: reloads(server) == 1, timeout=60, message="one reload")
        assert lines(server, "SIGHUP during start-up: the bundle is read again once serving"), server.log()
        assert len(lines(server, "loading bundle")) == 2 and health_check(server.target())
        assert server.terminate() == 0, server.log()


def test_a_burst_of_sighups_runs_one_reload_and_queues_at_most_one_more(slow_bundle, tiny_bundle):
    request = score_request(catalog_ids(tiny_bundle)[:2])
    with ServerProcess(["--bundle", str(slow_bundle), *FLAGS], timeout=START_TIMEOUT_S) as server:
        channel = grpc.insecure_channel(server.target())
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for _ in range(5):
            server.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        wait_until(
            lambda: reloads_planned(server) >= 1 and reloads(server) == reloads_planned(server),
            timeout=120, message="the reloads the server planned, done",
        )
        assert len(stub.Score(request, timeout=20).purchase_probability) == 2  # still serving
        channel.close()
        log, planned = server.log(), reloads_planned(server)
        # the burst came while the first reload ran (each load lasts about LOAD_S): the case under test
        assert log.rindex(": SIGHUP") < log.index("reloaded:"), log
        assert planned <= 2 and len(lines(server, "reloaded:")) == planned, log
        assert len(lines(server, "SIGHUP: coalesced with the reload already queued")) == sighups_handled(server) - planned, log
        assert health_check(server.target())
        assert server.terminate() == 0, server.log()
