"""Deployment: the runtime-only install serves a bundle, and deploy/'s files work as written.

The slow test takes the runtime-only install `make test` builds (`.venv-runtime`, named by
`TESTS_RUNTIME_VENV`, where make has already run the server's tests), or else builds a
fresh one with `pip install '<project>[runtime]'` from a copy of this project's files and
runs the server's tests there itself. It checks that no training or CUDA stack came with
the install and serves a tiny bundle archive from it end to end. The others run deploy/'s
scripts, config and unit file as a box would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime import server as serve_command
from edgerec.runtime.config import SECTIONS, load_config
from edgerec.runtime.server import start_server
from edgerec.core.settings import to_jsonable
from server_helpers import OfflineModel, catalog_ids, make_config, score_request

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
EXAMPLE_CONFIG = DEPLOY / "edgerec.example.toml"
# The runtime's own tests: they need no torch, onnx or training data (tests/data/tiny_model/ is
# committed), so they must pass in the runtime-only install, plus pytest. `make test` runs the
# Makefile's RUNTIME_TESTS there; this list must stay the same (a test below checks).
RUNTIME_TESTS = (
    "test_batcher.py", "test_scheduler.py", "test_backend.py", "test_config.py", "test_featurize.py",
    "test_server.py", "test_server_security.py", "test_status.py", "test_two_stage.py",
)
RUNTIME_VENV_ENV = "TESTS_RUNTIME_VENV"  # set by `make test`: the runtime-only venv it built and tested
TRAINING_OR_CUDA = re.compile(r"^(torch|torchvision|transformers|optimum|tensorrt|onnxruntime-gpu|nvidia-.*)$")
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 50), ("grpc.max_reconnect_backoff_ms", 100)]


def bound_port(process: subprocess.Popen, port_file: Path, log: Path, timeout: float = 120.0) -> int:
    """The gRPC port a server started with `--grpc-port 0 --port-file <port_file>` bound, once it serves.

    Port 0 lets the server pick a free port as it binds: a port chosen here and bound later could be
    taken by another process in between.
    """
    deadline = time.monotonic() + timeout
    while not port_file.exists():  # written atomically once the server serves
        assert process.poll() is None, f"server exited with {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no port file after {timeout} s:\n{log.read_text()}"
        time.sleep(0.05)
    return json.loads(port_file.read_text())["grpc_port"]


def wait_for_serving(process: subprocess.Popen, target: str, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target, options=FAST_RECONNECT) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            assert process.poll() is None, f"server exited with {process.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not SERVING after {timeout} s:\n{log.read_text()}"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.05)


def stop(process: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM (the graceful drain) and the exit code; kills the process if it hangs."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any EDGEREC_* or Python-path settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEREC_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **extra}


# -- the runtime-only install, end to end ----------------------------------------------------
def copy_project(target: Path) -> Path:
    """pyproject.toml, the readme and every package folder it maps, without build leftovers."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    target.mkdir(parents=True)
    shutil.copy2(REPO / "pyproject.toml", target)
    readme = REPO / pyproject["project"].get("readme", "README.md")
    if readme.is_file():
        shutil.copy2(readme, target)
    leftovers = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for folder in sorted(set(pyproject["tool"]["setuptools"]["package-dir"].values())):
        shutil.copytree(REPO / folder, target / folder, ignore=leftovers)
    return target


def run(command: list, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_runtime_only_install_serves_a_bundle_archive_without_torch(tiny_bundle, tiny_bundle_archive, tmp_path):
    built_by_make = os.environ.get(RUNTIME_VENV_ENV)
    venv = (REPO / built_by_make) if built_by_make else tmp_path / "venv"
    python, edgerec = venv / "bin" / "python", venv / "bin" / "edgerec"
    env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        if built_by_make:
            assert python.is_file(), f"{RUNTIME_VENV_ENV}={built_by_make} names no virtual environment"
        else:
            source = copy_project(tmp_path / "project")
            assert run([sys.executable, "-m", "venv", venv], 120).returncode == 0
            # Wheels only: an edge box compiles nothing (the project itself is still built from source).
            install = run([python, "-m", "pip", "install", "--quiet", "--no-input", "--only-binary=:all:", f"{source}[runtime]"], 480, env=env)
            assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

        listed = run([python, "-m", "pip", "list", "--format=json"], 60, env=env)
        installed = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
        assert {"edgerec", "onnxruntime", "tokenizers", "grpcio", "grpcio-health-checking"} <= installed
        assert not {name for name in installed if TRAINING_OR_CUDA.match(name)}, sorted(installed)
        no_torch = run([python, "-c", "import torch"], 60, env=env, cwd=tmp_path)
        assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
        where = run([python, "-c", "import edgerec.runtime.server as s; print(s.__file__)"], 60, env=env, cwd=tmp_path)
        assert where.stdout.strip().startswith(str(venv)), where  # a real install, not the working tree

        log, port_file = tmp_path / "serve.log", tmp_path / "serve-ports.json"
        command = [edgerec, "serve", "--bundle", tiny_bundle_archive, "--host", "127.0.0.1",
                   "--grpc-port", 0, "--metrics-port", "-1", "--port-file", port_file, "--precision", "fp32"]
        with open(log, "w") as out:
            process = subprocess.Popen([str(c) for c in command], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
        try:
            port = bound_port(process, port_file, log)
            wait_for_serving(process, f"127.0.0.1:{port}", log)
            ids = catalog_ids(tiny_bundle)
            request = score_request([ids[0], ids[7], ("", "RED ENAMEL TEAPOT WITH LID")], context=[ids[3], (ids[5], "", 2)])
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = recommender_pb2_grpc.RecommenderStub(channel).Score(request, timeout=30)
        finally:
            exit_code = stop(process)
        assert exit_code == 0, log.read_text()

        assert (reply.model_name, reply.model_version) == ("tiny", "test")
        # fp32: scores do not depend on batch-mates, so the served batch equals the pairs scored one by one.
        # (The default int8-dynamic variant runs row by row, so it is batch-invariant too: test_fuzz_hostile.)
        expected_probability, expected_quantity = OfflineModel(tiny_bundle, "fp32").score(request)
        np.testing.assert_allclose(reply.purchase_probability, expected_probability, atol=1e-6)
        np.testing.assert_allclose(reply.expected_quantity, expected_quantity, rtol=1e-5)
        text = log.read_text()
        assert "runs on CPUExecutionProvider" in text and "stopped" in text

        if not built_by_make:  # `make test` ran these there already
            # The runtime's tests, run against the installed copy (not the working tree) with no torch.
            tools = run([python, "-m", "pip", "install", "--quiet", "--no-input", "pytest>=8", "pytest-timeout>=2.3"], 300, env=env)
            assert tools.returncode == 0, tools.stdout[-2000:] + tools.stderr[-2000:]
            tests = run(
                [venv / "bin" / "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", REPO, "-c", REPO / "pyproject.toml",
                 *(REPO / "tests" / name for name in RUNTIME_TESTS)],
                420, env=env, cwd=tmp_path,
            )
            assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
            assert " passed" in tests.stdout and " failed" not in tests.stdout, tests.stdout[-2000:]
        imported = run([python, "-c", "import edgerec.runtime.server, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'onnx')))"], 60, env=env, cwd=tmp_path)
        assert imported.stdout.strip() == "[]", imported

        footprint = run([python, DEPLOY / "measure_footprint.py", "--bundle", tiny_bundle_archive,
                         "--requests", 16, "--clients", 2, "--idle-s", 0.5], 180, env=env, cwd=tmp_path)
        assert footprint.returncode == 0, footprint.stdout[-2000:] + footprint.stderr[-3000:]
        report = json.loads(footprint.stdout)
        assert report["install"]["training_stack_importable"] == [] and report["install"]["nvidia_packages"] == []
        assert report["install"]["prefix"] == str(venv)
    finally:
        if not built_by_make:
            shutil.rmtree(venv, ignore_errors=True)  # a few hundred MB; pytest keeps old tmp folders


def test_make_runs_the_same_runtime_tests_in_the_runtime_only_install():
    makefile = (REPO / "Makefile").read_text()
    listed = re.search(r"^RUNTIME_TESTS\s*:=((?:.*\\\n)*.*)$", makefile, re.MULTILINE)
    assert listed, "the Makefile lists the runtime tests in RUNTIME_TESTS"
    in_make = re.findall(r"tests/(test_\w+\.py)", listed.group(1))
    assert sorted(in_make) == sorted(RUNTIME_TESTS)
    assert all((REPO / "tests" / name).is_file() for name in RUNTIME_TESTS)


def test_measure_footprint_reports_install_start_and_memory(tiny_bundle_archive, tmp_path):
    result = run([sys.executable, DEPLOY / "measure_footprint.py", "--bundle", tiny_bundle_archive,
                  "--requests", 24, "--clients", 2, "--candidates", 4, "--idle-s", 0.5],
                 180, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["install"]["site_packages_mib"] > 1 and report["install"]["onnxruntime"]
    assert report["bundle"]["model"] == "tiny test" and report["bundle"]["cpu_engine"] == "int8-dynamic"
    assert report["start"]["seconds_to_serving"] > 0
    assert 10 < report["idle"]["rss_mib"] <= report["load"]["peak_rss_mib"]
    assert report["load"]["codes"] == {"OK": 24} and report["load"]["requests"] == 24
    assert report["load"]["loaded_rss_max_mib"] >= report["idle"]["rss_mib"] * 0.9
    assert report["stop"]["exit_code"] == 0


# -- the example configuration ------------------------------------------------------------------
def test_example_config_loads_through_the_server_loader_with_the_values_it_shows():
    parser = argparse.ArgumentParser()
    serve_command.configure(parser)
    config = load_config(parser.parse_args(["--config", str(EXAMPLE_CONFIG)]), environ={})
    written = tomllib.loads(EXAMPLE_CONFIG.read_text())
    assert set(written) == set(SECTIONS)
    for section, values in written.items():
        loaded = to_jsonable(getattr(config, section))
        for name, value in values.items():
            assert loaded[name] == value, f"[{section}] {name}"
    assert config.server.host == "127.0.0.1"  # the example does not expose the server


def test_example_config_mentions_every_setting_in_its_section():
    """A new setting in runtime/config.py must be added to the example (set, or commented out)."""
    mentioned: dict[str, set[str]] = {}
    section = None
    for line in EXAMPLE_CONFIG.read_text().splitlines():
        if match := re.fullmatch(r"\[(\w+)\]", line.strip()):
            section = match.group(1)
        elif section and (match := re.match(r"#?\s*(\w+) = ", line)):
            mentioned.setdefault(section, set()).add(match.group(1))
    for name, cls in SECTIONS.items():
        fields = {field.name for field in dataclasses.fields(cls)}
        assert mentioned.get(name) == fields, f"[{name}]: missing {fields - mentioned.get(name, set())}"


# -- the systemd unit ------------------------------------------------------------------------------
def unit_settings() -> dict[str, str]:
    lines = (DEPLOY / "edgerec.service").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_unit_file_has_restart_policy_limits_and_a_graceful_stop_longer_than_the_drain():
    unit = unit_settings()
    assert unit["Restart"] == "on-failure"
    assert unit["MemoryMax"] and unit["CPUQuota"].endswith("%") and unit["TasksMax"]
    assert unit["DynamicUser"] == "yes" and unit["NoNewPrivileges"] == "yes" and unit["ProtectSystem"] == "strict"
    assert unit["KillSignal"] == "SIGTERM"
    assert unit["ExecStart"].endswith(" serve --config /etc/edgerec/edgerec.toml")
    drain = tomllib.loads(EXAMPLE_CONFIG.read_text())["server"]["drain_timeout_s"]
    assert float(unit["TimeoutStopSec"].removesuffix("s")) > drain


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_file_passes_systemd_analyze_verify_and_security(tmp_path):
    # verify also checks that ExecStart exists: point it at this environment's edgerec.
    unit = tmp_path / "edgerec.service"
    edgerec = Path(sys.executable).with_name("edgerec")
    unit.write_text((DEPLOY / "edgerec.service").read_text().replace("/opt/edgerec/venv/bin/edgerec", str(edgerec)))
    verified = run(["systemd-analyze", "verify", unit], 60)
    assert verified.returncode == 0 and unit.name not in verified.stdout + verified.stderr, verified
    # Exposure score (0 safest .. 10): below 2.5 is "OK" in systemd's words.
    security = run(["systemd-analyze", "security", "--offline=true", "--threshold=25", unit], 60)
    assert security.returncode == 0, security.stdout[-3000:] + security.stderr


# -- the container entrypoint -------------------------------------------------------------------------
def entrypoint(env: dict[str, str], *args: str, **kwargs) -> subprocess.Popen:
    path = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])  # `edgerec` of this environment
    return subprocess.Popen(["sh", str(DEPLOY / "entrypoint.sh"), *args], env={**env, "PATH": path}, **kwargs)


@pytest.mark.parametrize("make_bundle", ["missing", "folder without manifest", "empty file"])
def test_entrypoint_refuses_a_bundle_that_is_not_there_with_one_clear_message(make_bundle, tmp_path):
    bundle = tmp_path / "bundle.tar.gz"
    if make_bundle == "folder without manifest":
        bundle.mkdir()
    elif make_bundle == "empty file":
        bundle.touch()
    process = entrypoint(clean_env(EDGEREC_BUNDLE=str(bundle)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 66
    assert str(bundle) in err and "EDGEREC_BUNDLE" in err and "Traceback" not in err


def test_entrypoint_runs_another_command_when_asked(tmp_path):
    process = entrypoint(clean_env(EDGEREC_BUNDLE=str(tmp_path / "none")), "echo", "hello", stdout=subprocess.PIPE, text=True)
    assert process.communicate(timeout=30)[0] == "hello\n" and process.returncode == 0


def test_entrypoint_becomes_the_server_on_loopback_and_stops_gracefully(tiny_bundle_archive, tmp_path):
    log, port_file = tmp_path / "entrypoint.log", tmp_path / "entrypoint-ports.json"
    env = clean_env(EDGEREC_BUNDLE=str(tiny_bundle_archive), EDGEREC_GRPC_PORT="0")
    with open(log, "w") as out:
        process = entrypoint(env, "--metrics-port", "-1", "--max-batch-size", "4", "--port-file", str(port_file),
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        port = bound_port(process, port_file, log)
        wait_for_serving(process, f"127.0.0.1:{port}", log)
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        # exec: the shell's pid is now the server's (so it gets docker's SIGTERM), with the bundle and extra flags.
        assert b"serve" in command and str(tiny_bundle_archive).encode() in command and b"--max-batch-size" in command
    finally:
        exit_code = stop(process)
    text = log.read_text()
    assert exit_code == 0, text
    assert "reachable only from inside the container" in text and f"127.0.0.1:{port}" in text


# -- the health check -------------------------------------------------------------------------------
def healthcheck(*args: str, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, DEPLOY / "healthcheck.py", *args], 60, env=clean_env(**env))


def test_healthcheck_passes_on_a_serving_server_and_fails_without_one(tiny_bundle):
    with start_server(make_config(tiny_bundle, metrics_port=-1)) as handle:
        by_env = healthcheck(EDGEREC_GRPC_PORT=str(handle.port), EDGEREC_HOST="0.0.0.0")
        by_flag = healthcheck("--address", handle.target, "--service", "edgerec.v1.Recommender")
    assert by_env.returncode == 0 and "SERVING" in by_env.stdout, by_env
    assert by_flag.returncode == 0, by_flag
    # No server: a port held bound and never listening (the stopped server's port could be reused by now).
    with socket.socket() as nobody:
        nobody.bind(("127.0.0.1", 0))
        gone = healthcheck("--address", f"127.0.0.1:{nobody.getsockname()[1]}", "--timeout", "1")
    assert gone.returncode == 1 and "unhealthy" in gone.stderr


def test_healthcheck_speaks_tls_when_given_the_ca(tiny_bundle, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    key, cert = tmp_path / "server.key", tmp_path / "server.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
         "-subj", "/CN=edgerec-test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=30,
    )
    with start_server(make_config(tiny_bundle, metrics_port=-1, tls_cert=cert, tls_key=key)) as handle:
        with_ca = healthcheck("--address", handle.target, "--tls-ca", str(cert))
        plaintext = healthcheck("--address", handle.target, "--timeout", "2")
    assert with_ca.returncode == 0, with_ca
    assert plaintext.returncode == 1


def test_every_package_folder_is_in_the_distribution():
    """A subpackage missing from pyproject's `packages` works in the editable install but not on a box."""
    setuptools_table = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools_table["packages"])
    found = set()
    for package, folder in setuptools_table["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            if any(part.startswith((".", "_")) and part != "__init__.py" for part in init.relative_to(REPO).parts):
                continue
            found.add(".".join([package, *init.parent.relative_to(REPO / folder).parts]))
    assert found - listed == set(), "add these to pyproject.toml's packages"
