"""The server's one configuration: documented defaults, and file < environment < flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgerec.runtime import server
from edgerec.runtime.config import SECTIONS, Config, load_config


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    server.configure(parser)
    return parser.parse_args(list(flags))


def test_defaults_listen_on_loopback_and_prefer_gpu_providers():
    config = load_config(parse(), environ={})
    assert (config.server.host, config.server.grpc_port) == ("127.0.0.1", 8001)
    assert (config.server.metrics_host, config.server.metrics_port) == ("127.0.0.1", 8002)
    assert config.backend.providers == ("tensorrt", "cuda", "cpu")
    assert config.server.auth_tokens == () and config.server.tls_cert is None
    assert config == Config()


def test_file_then_environment_then_flags(tmp_path):
    toml = tmp_path / "serve.toml"
    toml.write_text('[server]\ngrpc_port = 9000\nmax_candidates = 100\n[batcher]\nmax_batch_size = 16\nmax_queue_delay_ms = 7.5\n')
    environ = {"EDGEREC_GRPC_PORT": "9100", "EDGEREC_PROVIDERS": "cuda,cpu", "EDGEREC_SPIN_WAIT": "false"}
    config = load_config(parse("--config", str(toml), "--max-batch-size", "4", "--bundle", "b.tar.gz"), environ=environ)
    assert config.server.grpc_port == 9100  # environment beats the file
    assert config.server.max_candidates == 100  # from the file
    assert config.batcher.max_batch_size == 4  # flags beat the file
    assert config.batcher.max_queue_delay_ms == 7.5
    assert config.backend.providers == ("cuda", "cpu") and config.backend.spin_wait is False
    assert config.server.bundle == Path("b.tar.gz")
    assert load_config(parse("--grpc-port", "9200"), environ=environ).server.grpc_port == 9200  # flags beat env


def test_json_config_files_work_too(tmp_path):
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"backend": {"precision": "fp32", "intra_op_threads": 2}}))
    config = load_config(None, environ={"EDGEREC_CONFIG": str(path)})
    assert (config.backend.precision, config.backend.intra_op_threads) == ("fp32", 2)


@pytest.mark.parametrize(
    "flags, environ, message",
    [
        (["--max-queue-pairs", "10"], {}, "max_queue_pairs"),
        (["--tls-cert", "c.pem"], {}, "tls_cert and tls_key"),
        (["--providers", "tpu"], {}, "unknown provider"),
        ([], {"EDGEREC_WARM_UP": "maybe"}, "not a boolean"),
        ([], {"EDGEREC_GRPC_PORT": "eighty"}, "not a valid int"),
    ],
)
def test_settings_that_cannot_work_are_refused_by_name(flags, environ, message):
    with pytest.raises(ValueError, match=message):
        load_config(parse(*flags), environ=environ)


def test_unknown_settings_in_a_file_are_refused(tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text("[batcher]\nmax_batch = 3\n")
    with pytest.raises(ValueError, match="max_batch"):
        load_config(parse("--config", str(path)), environ={})


def test_serve_help_documents_every_setting_with_its_default():
    done = subprocess.run(
        [sys.executable, "-m", "edgerec.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for cls in SECTIONS.values():
        for field in dataclasses.fields(cls):
            flag = "--" + field.name.replace("_", "-")
            assert flag in text, flag
    assert "(default: '127.0.0.1')" in text and "(default: 8001)" in text and "(default: 8002)" in text


def test_serve_without_a_bundle_says_what_is_missing(capsys):
    assert server.run(parse()) == 2
    assert "--bundle" in capsys.readouterr().out
