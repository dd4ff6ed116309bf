"""Who may call the server: bearer tokens, TLS, and TLS with client certificates (mTLS)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.proto import grpc_service_pb2 as kserve
from edgerec.proto import grpc_service_pb2_grpc as kserve_grpc
from edgerec.proto import recommender_pb2_grpc
from edgerec.runtime.server import start_server
from server_helpers import catalog_ids, make_config, score_request, wait_for_value

TIMEOUT = 20


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code()


# -- bearer tokens ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def token_server(tiny_bundle, tmp_path_factory):
    token_file = tmp_path_factory.mktemp("auth") / "tokens"
    token_file.write_text("# one token per line\nfrom-the-file\n")
    handle = start_server(make_config(tiny_bundle, auth_tokens=("s3cret",), auth_token_file=token_file))
    yield handle
    handle.stop()


def test_calls_without_a_valid_token_are_unauthenticated(token_server, tiny_bundle):
    request = score_request(catalog_ids(tiny_bundle)[:2])
    with grpc.insecure_channel(token_server.target) as channel:
        recommender = recommender_pb2_grpc.RecommenderStub(channel)
        inference = kserve_grpc.GRPCInferenceServiceStub(channel)
        assert status_of(lambda: recommender.Score(request, timeout=TIMEOUT)) is grpc.StatusCode.UNAUTHENTICATED
        wrong = [("authorization", "Bearer guess")]
        assert status_of(lambda: recommender.Score(request, metadata=wrong, timeout=TIMEOUT)) is grpc.StatusCode.UNAUTHENTICATED
        not_bearer = [("authorization", "Basic s3cret")]
        assert status_of(lambda: recommender.Score(request, metadata=not_bearer, timeout=TIMEOUT)) is grpc.StatusCode.UNAUTHENTICATED
        live = kserve.ServerLiveRequest()
        assert status_of(lambda: inference.ServerLive(live, timeout=TIMEOUT)) is grpc.StatusCode.UNAUTHENTICATED
    wait_for_value(
        lambda: token_server.metrics.value("edgerec_requests_total", method="Score", code="UNAUTHENTICATED"), 3,
        message="Score calls counted UNAUTHENTICATED",
    )


def test_calls_with_an_accepted_token_are_served(token_server, tiny_bundle):
    request = score_request(catalog_ids(tiny_bundle)[:2])
    with grpc.insecure_channel(token_server.target) as channel:
        recommender = recommender_pb2_grpc.RecommenderStub(channel)
        for token in ("s3cret", "from-the-file"):
            reply = recommender.Score(request, metadata=[("authorization", f"Bearer {token}")], timeout=TIMEOUT)
            assert len(reply.purchase_probability) == 2


def test_health_checks_need_no_token(token_server):
    with grpc.insecure_channel(token_server.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- TLS and mTLS -------------------------------------------------------------------------------
def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _key_and_csr(name: str, subject: str, cwd: Path) -> None:
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)


def _sign(name: str, extensions: str, cwd: Path) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext", cwd=cwd)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    folder = tmp_path_factory.mktemp("certs")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=edgerec test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=folder)
    _key_and_csr("server", "/CN=localhost", folder)
    _sign("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", folder)
    _key_and_csr("client", "/CN=edgerec test client", folder)
    _sign("client", "extendedKeyUsage=clientAuth\n", folder)
    return folder


def _secure_channel(target: str, certs: Path, with_client_cert: bool) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / "client.key").read_bytes() if with_client_cert else None,
        certificate_chain=(certs / "client.pem").read_bytes() if with_client_cert else None,
    )
    return grpc.secure_channel(target, credentials)


def _score(channel: grpc.Channel, tiny_bundle: Path):
    stub = recommender_pb2_grpc.RecommenderStub(channel)
    return stub.Score(score_request(catalog_ids(tiny_bundle)[:2]), timeout=TIMEOUT)  # a TLS handshake on a loaded box


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(tiny_bundle, certs):
    config = make_config(tiny_bundle, tls_cert=certs / "server.pem", tls_key=certs / "server.key")
    with start_server(config) as handle:
        with _secure_channel(handle.target, certs, with_client_cert=False) as channel:
            assert len(_score(channel, tiny_bundle).purchase_probability) == 2
        with grpc.insecure_channel(handle.target) as plaintext:
            assert status_of(lambda: _score(plaintext, tiny_bundle)) is grpc.StatusCode.UNAVAILABLE


def test_mtls_requires_a_client_certificate_signed_by_the_ca(tiny_bundle, certs):
    config = make_config(
        tiny_bundle, tls_cert=certs / "server.pem", tls_key=certs / "server.key", tls_client_ca=certs / "ca.pem"
    )
    with start_server(config) as handle:
        with _secure_channel(handle.target, certs, with_client_cert=True) as channel:
            assert len(_score(channel, tiny_bundle).purchase_probability) == 2
        with _secure_channel(handle.target, certs, with_client_cert=False) as anonymous:
            assert status_of(lambda: _score(anonymous, tiny_bundle)) is grpc.StatusCode.UNAVAILABLE
