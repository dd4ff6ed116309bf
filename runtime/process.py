"""Runs `edgerec serve` as a child process and waits until it serves.

For supervisors, tests and load generators that need the server in its own
process (its own GIL, real signals): the child writes its bound ports to a
port file once it is serving, so port 0 (a free port) works.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path


class ServerProcess:
    """`edgerec serve <args>` in a child process; `.port`, `.terminate()`, `.reload()`, `.log()`."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0) -> None:
        self._scratch = Path(tempfile.mkdtemp(prefix="edgerec-serve-"))
        self.port_file = self._scratch / "ports.json"
        self.log_path = self._scratch / "server.log"
        command = [sys.executable, "-m", "edgerec.cli", "serve", *args, "--port-file", str(self.port_file)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"edgerec serve exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"edgerec serve did not start in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)
        self.ports = json.loads(self.port_file.read_text())

    @property
    def port(self) -> int:
        return self.ports["grpc_port"]

    @property
    def metrics_port(self) -> int | None:
        return self.ports["metrics_port"]

    def target(self, host: str = "127.0.0.1") -> str:
        return f"{host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reload(self) -> None:
        """Ask the server to reload its bundle (SIGHUP)."""
        self.process.send_signal(signal.SIGHUP)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful drain), then wait; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
