"""The server under test: `edgerec serve` in its own process on 127.0.0.1, watched.

A child process (`edgerec.runtime.process.ServerProcess`), not a thread of
the load driver, so its CPU time and resident memory are its own, signals
are real, and the driver never holds the server's interpreter lock. Its
resident memory is sampled in a background thread; its health service and
its Prometheus endpoint are read on demand.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Sequence
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.benchmarks.harness.driver import LOOPBACK
from edgerec.benchmarks.harness.memory import MemoryWatch
from edgerec.benchmarks.harness.prometheus import Samples, scrape
from edgerec.runtime.process import ServerProcess

SERVING = health_pb2.HealthCheckResponse.SERVING
# Messages as large as a benchmark's biggest requests and answers.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", 16 << 20), ("grpc.max_receive_message_length", 16 << 20)]


class ServerUnderTest:
    """`edgerec serve --bundle <bundle> <flags>` on free ports, its memory watched.

    The server binds where its settings say (the default is 127.0.0.1);
    clients here only ever connect to 127.0.0.1. On exit the server is
    stopped with SIGTERM and given `stop_grace_s` to drain, then killed.
    Raises RuntimeError (it exited) or TimeoutError (it did not serve in
    `startup_timeout_s`) with the server's log.
    """

    def __init__(
        self, bundle: Path, flags: Sequence[str] = (), startup_timeout_s: float = 120.0, stop_grace_s: float = 0.0
    ) -> None:
        args = ["--bundle", str(bundle), "--grpc-port", "0", "--metrics-port", "0", "--log-level", "INFO", *flags]
        self.process = ServerProcess(args, timeout=startup_timeout_s)
        self.memory = MemoryWatch(self.process.process.pid)
        self.stop_grace_s = stop_grace_s

    @property
    def pid(self) -> int:
        return self.process.process.pid

    @property
    def port(self) -> int:
        return self.process.port

    @property
    def target(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def cpu_seconds(self) -> float:
        """User and system CPU time the server has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return times.user + times.system

    def channel(self) -> grpc.aio.Channel:
        """A new asyncio channel to the server (use it as `async with`)."""
        return grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)

    def alive(self) -> bool:
        return self.process.process.poll() is None

    def log(self) -> str:
        return self.process.log()

    def scrape(self) -> Samples:
        metrics_port = self.process.metrics_port
        if metrics_port is None:
            raise RuntimeError("the server under test was started with its metrics endpoint off")
        return scrape(metrics_port)

    def healthy(self, timeout_s: float = 5.0) -> bool:
        return health_check(self.target, timeout_s)

    def terminate(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait for the exit code (kills and raises TimeoutExpired after `timeout_s`)."""
        try:
            return self.process.terminate(timeout_s)
        finally:
            self.memory.stop()

    def close(self) -> None:
        """Stop the server: SIGTERM and `stop_grace_s` to drain (if any), then kill what is left."""
        if self.stop_grace_s > 0 and self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.terminate(self.stop_grace_s)
        self.memory.stop()
        self.process.__exit__(None, None, None)

    def __enter__(self) -> "ServerUnderTest":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def health_check(target: str, timeout_s: float = 5.0) -> bool:
    """True if the standard health service at `target` answers SERVING within `timeout_s` (a fresh channel)."""
    with grpc.insecure_channel(target) as channel:
        return serving(channel, timeout_s)


def serving(channel: grpc.Channel, timeout_s: float = 5.0) -> bool:
    """True if the standard health service answers SERVING on `channel` within `timeout_s`."""
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
    except grpc.RpcError:
        return False
    return reply.status == SERVING
