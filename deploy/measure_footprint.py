#!/usr/bin/env python3
"""Measures what serving a bundle costs an edge box: disk, start-up time and memory.

Why it exists: issue #7 asks for the runtime-only install's size, the time
from process start to SERVING, and the idle and loaded resident memory, and
those numbers must come from the environment a box really runs. Run it with
the Python of a runtime-only install (`pip install 'edgerec[runtime]'`, no
torch): it sizes that environment, starts `edgerec serve --bundle` from it on
free 127.0.0.1 ports, times the start until the standard gRPC health service
answers SERVING, reads the server's resident memory (/proc, so Linux only)
idle and under a bounded loopback load of Score requests, stops it with
SIGTERM, and prints one JSON object. The server inherits the environment, so
`EDGEREC_<SETTING>` variables (e.g. EDGEREC_PRECISION=fp32) change what is measured.

    /opt/edgerec/venv/bin/python deploy/measure_footprint.py --bundle bundle.tar.gz
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.proto import recommender_pb2, recommender_pb2_grpc
from edgerec.core.bundle import open_bundle
from edgerec.core.settings import add_arguments, from_arguments, setting, to_jsonable
from edgerec.core.signatures import CROSS_ENCODER

MIB = 1024 * 1024
LOOPBACK = "127.0.0.1"
TRAINING_STACK = ("torch", "transformers", "optimum")
# Reconnect quickly while the server is still starting (gRPC's default back-off grows to 120 s).
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 20), ("grpc.min_reconnect_backoff_ms", 20), ("grpc.max_reconnect_backoff_ms", 50)]


@dataclasses.dataclass(frozen=True)
class FootprintConfig:
    """What to serve and how hard to load it."""

    bundle: Path | None = setting(None, "bundle .tar.gz or folder to serve (required)")
    requests: int = setting(400, "Score requests sent under load (the load stops after this many)")
    clients: int = setting(4, "concurrent loopback clients, one channel each")
    candidates: int = setting(16, "candidates per Score request")
    context_items: int = setting(5, "context items per Score request")
    max_load_s: float = setting(60.0, "the load stops after this many seconds even if requests remain")
    idle_s: float = setting(3.0, "seconds the server idles after SERVING before its idle memory is read")
    start_timeout_s: float = setting(300.0, "give up if the server is not SERVING after this many seconds")
    sample_interval_s: float = setting(0.05, "how often resident memory is sampled under load")


# -- the installed environment --------------------------------------------------------
def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                continue
    return total


def _distribution_bytes(distribution: importlib.metadata.Distribution) -> int:
    total = 0
    for file in distribution.files or ():
        try:
            total += Path(distribution.locate_file(file)).lstat().st_size
        except OSError:
            continue
    return total


def measure_install() -> dict:
    """Size of this interpreter's site-packages and what is (not) installed there."""
    site_packages = sorted({Path(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")})
    distributions = list(importlib.metadata.distributions())
    names = sorted({d.metadata["Name"].lower() for d in distributions if d.metadata["Name"]})
    sizes = sorted(((_distribution_bytes(d), d.metadata["Name"]) for d in distributions), reverse=True)
    return {
        "prefix": sys.prefix,
        "site_packages": [str(p) for p in site_packages],
        "site_packages_mib": round(sum(_tree_bytes(p) for p in site_packages) / MIB, 1),
        "prefix_mib": round(_tree_bytes(Path(sys.prefix)) / MIB, 1),
        "distributions": len(names),
        "largest_mib": {name: round(size / MIB, 1) for size, name in sizes[:8]},
        "training_stack_importable": [m for m in TRAINING_STACK if importlib.util.find_spec(m) is not None],
        "nvidia_packages": [n for n in names if n.startswith("nvidia-")],
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
    }


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


# -- the server process ---------------------------------------------------------------------
def bound_port(process: subprocess.Popen, port_file: Path, timeout_s: float, log_path: Path) -> int:
    """The gRPC port the server bound (it writes `--port-file` once serving): no pick-then-bind race."""
    deadline = time.monotonic() + timeout_s
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"edgerec serve exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"edgerec serve wrote no port file in {timeout_s:.0f} s")
        time.sleep(0.02)
    return int(json.loads(port_file.read_text())["grpc_port"])


def serve_command() -> list[str]:
    """`edgerec serve` of this environment: its console script, else `python -m edgerec.cli`."""
    script = Path(sys.executable).with_name("edgerec")
    return [str(script), "serve"] if script.exists() else [sys.executable, "-m", "edgerec.cli", "serve"]


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (in bytes) and Threads of a process, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
        elif key == "Threads":
            values[key] = int(rest)
    return values


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_until_serving(process: subprocess.Popen, target: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"edgerec serve exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"edgerec serve was not SERVING after {timeout_s:.0f} s")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.01)


# -- the load ----------------------------------------------------------------------------------
def make_requests(catalog_ids: list[str], config: FootprintConfig) -> list[recommender_pb2.ScoreRequest]:
    """Deterministic Score requests over the bundle's catalog (at most 64 distinct ones, reused)."""
    chooser = random.Random(0)
    requests = []
    for _ in range(min(config.requests, 64)):
        request = recommender_pb2.ScoreRequest()
        for item_id in chooser.sample(catalog_ids, min(config.context_items, len(catalog_ids))):
            request.context.add(item_id=item_id, count=chooser.randint(1, 3))
        for _ in range(config.candidates):
            request.candidates.add(item_id=chooser.choice(catalog_ids))
        requests.append(request)
    return requests


def run_load(target: str, pid: int, requests: list, config: FootprintConfig) -> dict:
    """`config.requests` Score calls from `config.clients` threads, bounded by `config.max_load_s`; RSS sampled meanwhile."""
    tickets = iter(range(config.requests))
    lock = threading.Lock()
    latencies: list[float] = []
    codes: collections.Counter = collections.Counter()
    deadline = time.monotonic() + config.max_load_s
    rss_samples: list[int] = []
    sampling = threading.Event()

    def client() -> None:
        with grpc.insecure_channel(target) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            while time.monotonic() < deadline:
                with lock:
                    ticket = next(tickets, None)
                if ticket is None:
                    return
                started = time.perf_counter()
                try:
                    stub.Score(requests[ticket % len(requests)], timeout=30)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                elapsed = time.perf_counter() - started
                with lock:
                    codes[code] += 1
                    if code == "OK":
                        latencies.append(elapsed)

    def sampler() -> None:
        while not sampling.wait(config.sample_interval_s):
            rss_samples.append(proc_status(pid)["VmRSS"])

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    clients = [threading.Thread(target=client) for _ in range(config.clients)]
    started = time.perf_counter()
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join()
    seconds = time.perf_counter() - started
    sampling.set()
    sampler_thread.join()
    after = proc_status(pid)
    rss_samples.append(after["VmRSS"])
    answered = sum(codes.values())
    cuts = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "requests": answered,
        "codes": dict(codes),
        "clients": config.clients,
        "candidates_per_request": config.candidates,
        "seconds": round(seconds, 2),
        "requests_per_s": round(answered / seconds, 1),
        "pairs_per_s": round(codes["OK"] * config.candidates / seconds, 1),
        "latency_ms": {"p50": round(cuts[49] * 1e3, 1), "p95": round(cuts[94] * 1e3, 1), "p99": round(cuts[98] * 1e3, 1)},
        "loaded_rss_max_mib": round(max(rss_samples) / MIB, 1),
        "after_load_rss_mib": round(after["VmRSS"] / MIB, 1),
        "peak_rss_mib": round(after["VmHWM"] / MIB, 1),
        "threads": after["Threads"],
    }


# -- the measurement -------------------------------------------------------------------------
def measure(config: FootprintConfig) -> dict:
    bundle_path = Path(config.bundle).resolve()
    with tempfile.TemporaryDirectory(prefix="edgerec-footprint-") as scratch:
        scratch = Path(scratch)
        bundle = open_bundle(bundle_path, scratch / "bundle" if bundle_path.is_file() else None)
        catalog_ids = sorted(json.loads(bundle.catalog_path.read_text()))
        requests = make_requests(catalog_ids, config)
        report = {
            "environment": {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()},
            "install": measure_install(),
            "bundle": {
                "path": str(bundle_path),
                "size_mib": round((bundle_path.stat().st_size if bundle_path.is_file() else _tree_bytes(bundle_path)) / MIB, 2),
                "model": f"{bundle.name} {bundle.version}",
                "cpu_engine": os.environ.get("EDGEREC_PRECISION") or bundle.model(CROSS_ENCODER.name).default_variant["cpu"],
            },
            "settings": to_jsonable(config),
        }
        port_file = scratch / "ports.json"
        command = [*serve_command(), "--bundle", str(bundle_path), "--host", LOOPBACK, "--grpc-port", "0",
                   "--metrics-host", LOOPBACK, "--metrics-port", "0", "--port-file", str(port_file)]
        log_path = scratch / "server.log"
        with open(log_path, "wb") as log:
            started = time.monotonic()
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=scratch)
        try:
            target = f"{LOOPBACK}:{bound_port(process, port_file, config.start_timeout_s, log_path)}"
            wait_until_serving(process, target, config.start_timeout_s, log_path)
            report["start"] = {"seconds_to_serving": round(time.monotonic() - started, 2), "command": command}
            cpu_at_serving = cpu_seconds(process.pid)
            time.sleep(config.idle_s)
            idle = proc_status(process.pid)
            report["idle"] = {
                "rss_mib": round(idle["VmRSS"] / MIB, 1),
                "peak_rss_before_load_mib": round(idle["VmHWM"] / MIB, 1),
                "threads": idle["Threads"],
                "cpu_percent": round(100 * (cpu_seconds(process.pid) - cpu_at_serving) / config.idle_s, 1),
            }
            report["load"] = run_load(target, process.pid, requests, config)
            stopping = time.monotonic()
            process.send_signal(signal.SIGTERM)
            exit_code = process.wait(timeout=120)
            report["stop"] = {"exit_code": exit_code, "seconds": round(time.monotonic() - stopping, 2)}
        except BaseException:
            process.kill()
            process.wait()
            sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
            raise
        report["server_log"] = log_path.read_text(errors="replace").splitlines()[-6:]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser, FootprintConfig)
    config = from_arguments(FootprintConfig, parser.parse_args(argv))
    if config.bundle is None:
        parser.error("--bundle is required")
    report = measure(config)
    print(json.dumps(report, indent=2))
    clean = report["stop"]["exit_code"] == 0 and set(report["load"]["codes"]) == {"OK"}
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
