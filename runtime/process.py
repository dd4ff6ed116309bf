"""The server as a process: its signals, and a runner that starts it as a child process.

Signals. `edgerec serve` spends a second or more importing ONNX Runtime and
gRPC and loading its bundle before its event loop runs; Python's defaults
would end the process on a SIGHUP (systemd's `ExecReload`) or SIGTERM sent
then, and systemd counts death by SIGHUP as a clean exit, so the unit would
stay down. `catch_signals()` is therefore the first thing `edgerec serve`
does (`edgerec.cli`): from then until the process exits SIGTERM, SIGINT and
SIGHUP are only recorded, and handed to the server once it runs
(`runtime.server.serve_until_signalled`). The process's default action is
never restored, so a signal cannot kill it during start-up or teardown
either. (Only the interpreter's own start-up, before `edgerec.cli` runs,
tens of milliseconds, keeps the defaults.)

Runner. `ServerProcess` is for supervisors, tests and load generators that
need the server in its own process (its own GIL, real signals): the child
writes its bound ports to a port file once it is serving, so port 0 (a free
port) works.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ProcessSignals:
    """Records SIGTERM, SIGINT and SIGHUP, or passes each to the listener that took them over.

    The handlers run in the main thread between two bytecodes (Python's signal
    semantics), so a listener must only note the signal, e.g. hand it to an
    event loop with `loop.call_soon_threadsafe`.
    """

    def __init__(self) -> None:
        self._pending: list[int] = []
        self._listener: Callable[[int], None] | None = None

    def install(self) -> "ProcessSignals":
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        listener = self._listener
        if listener is None:
            self._pending.append(signum)
        else:
            listener(signum)

    def attach(self, listener: Callable[[int], None] | None) -> list[int]:
        """From now on pass each signal to `listener` (None: record them again); returns the signals
        recorded so far, oldest first, and forgets them."""
        self._listener = listener  # first, so that a signal arriving meanwhile is not lost
        pending, self._pending = self._pending, []
        return pending

    def ignore(self) -> None:
        """The process is ending: ignore these signals from now on. (Python gives signals with a Python
        handler back their default action while it exits, which would let a late one kill the process.)"""
        self._listener = None
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)


_signals: ProcessSignals | None = None


def catch_signals() -> ProcessSignals:
    """The process's `ProcessSignals`, installed on the first call (from the main thread)."""
    global _signals
    if _signals is None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        _signals = ProcessSignals().install()
    return _signals


class ServerProcess:
    """`edgerec serve <args>` in a child process; `.port`, `.terminate()`, `.reload()`, `.log()`."""

    def __init__(
        self, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 120.0, wait: bool = True
    ) -> None:
        """Start `edgerec serve <args>`; with `wait` (default) return once it serves (see `wait_until_serving`)."""
        self._scratch = Path(tempfile.mkdtemp(prefix="edgerec-serve-"))
        self.port_file = self._scratch / "ports.json"
        self.log_path = self._scratch / "server.log"
        self.ports: dict | None = None
        self._final_log: str | None = None  # the log, kept once the scratch folder is removed
        command = [sys.executable, "-m", "edgerec.cli", "serve", *args, "--port-file", str(self.port_file)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_until_serving(timeout)

    def wait_until_serving(self, timeout: float = 120.0) -> dict:
        """Wait for the port file (written once the server serves); its contents. Raises RuntimeError
        with the log if the process ends first, TimeoutError (after killing it) if `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"edgerec serve exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise TimeoutError(f"edgerec serve did not start in {timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)
        self.ports = json.loads(self.port_file.read_text())
        return self.ports

    @property
    def port(self) -> int:
        return self.ports["grpc_port"]

    @property
    def metrics_port(self) -> int | None:
        return self.ports["metrics_port"]

    def target(self, host: str = "127.0.0.1") -> str:
        return f"{host}:{self.port}"

    def log(self) -> str:
        """Everything the server printed (also after `close`, which removes the file)."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def reload(self) -> None:
        """Ask the server to reload its bundle (SIGHUP; a burst of them runs at most two reloads)."""
        self.process.send_signal(signal.SIGHUP)

    def send_signal(self, signum: int) -> None:
        self.process.send_signal(signum)

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

    def close(self) -> None:
        """Kill the process if it still runs, keep its log in memory and remove the scratch folder."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        if self._final_log is None:
            self._final_log = self.log() if self.log_path.exists() else ""
        shutil.rmtree(self._scratch, ignore_errors=True)

    def __exit__(self, *exc_info) -> None:
        self.close()
