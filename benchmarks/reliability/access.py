"""Access scenario: who gets in, who does not, and what an oversized message does.

Two servers on 127.0.0.1, both started with their default bind address:
- TLS with bearer tokens and a small message limit: a legitimate client
  (trusts the CA, sends the token) is answered; a plaintext client, a
  client that does not trust the server's certificate, a missing, wrong or
  mis-schemed token, and an oversized message (request or response) are
  refused, each with the expected code, and none of them costs compute;
  the health service answers without a token; every socket the server
  listens on is a loopback one;
- mTLS: a client without a certificate, or with one from another CA, is
  refused during the handshake; a client with a trusted certificate is in.

Certificates (EC P-256, valid two days) are made with the `openssl` command
line in a scratch folder.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import secrets
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgerec.benchmarks.harness.results import Tally
from edgerec.benchmarks.harness.server import ServerUnderTest
from edgerec.benchmarks.reliability.config import ReliabilityConfig
from edgerec.benchmarks.reliability.report import Check, Scenario
from edgerec.proto import grpc_service_pb2, grpc_service_pb2_grpc, recommender_pb2, recommender_pb2_grpc

ATTEMPTS = 3  # requests per kind of attempt
ECHOED = 50  # candidates of the request whose answer is too large (each echoed with a 200-character item id)


@dataclasses.dataclass(frozen=True)
class Certificates:
    """PEM files: a CA, a server and a client certificate it signed, and a rogue CA with its own client."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _authority(folder: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=edgerec test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip


def _leaf(folder: Path, name: str, authority: str, usage: str) -> None:
    (folder / f"{name}.ext").write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{authority}.pem", "-CAkey", f"{authority}.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    _authority(folder, "ca")
    _authority(folder, "rogue-ca")
    _leaf(folder, "server", "ca", "serverAuth")
    _leaf(folder, "client", "ca", "clientAuth")
    _leaf(folder, "rogue-client", "rogue-ca", "clientAuth")
    return Certificates(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        rogue_ca=folder / "rogue-ca.pem",
        rogue_client_cert=folder / "rogue-client.pem",
        rogue_client_key=folder / "rogue-client.key",
    )


def tls(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def listening_addresses(pid: int) -> set[str]:
    """IP addresses of every TCP socket the process listens on."""
    return {c.laddr.ip for c in psutil.Process(pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback on a dual-stack socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@dataclasses.dataclass
class Attempt:
    """One kind of client: how it connects, what it sends, and the code it must get."""

    name: str
    expected: str  # "OK" or the refusal code
    credentials: grpc.ChannelCredentials | None
    call: Callable[[grpc.Channel], object]


def _try(target: str, attempt: Attempt, tally: Tally) -> None:
    channel = grpc.secure_channel(target, attempt.credentials) if attempt.credentials else grpc.insecure_channel(target)
    with channel:
        for _ in range(ATTEMPTS):
            tally.sent += 1
            try:
                attempt.call(channel)
            except grpc.RpcError as exc:
                tally.record(exc.code().name, 0.0, exc.details() or "")
            else:
                tally.record("OK", 0.0)


def _score(request: recommender_pb2.ScoreRequest, token: str | None, scheme: str = "Bearer"):
    metadata = [("authorization", f"{scheme} {token}")] if token is not None else None
    return lambda channel: recommender_pb2_grpc.RecommenderStub(channel).Score(request, metadata=metadata, timeout=10)


def access(bundle: Path, workdir: Path, config: ReliabilityConfig, item_ids: list[str]) -> Scenario:
    certs = make_certificates(workdir / "certificates")
    token = "tok" + secrets.token_urlsafe(24)  # never starts with "-", which the serve command line would read as a flag
    good = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(item_id=i) for i in item_ids[:4]])
    big_answer, limit = _echo_request()
    oversized = recommender_pb2.ScoreRequest(candidates=[recommender_pb2.Candidate(item_id=item_ids[0], text="x" * limit)])
    trusted = tls(certs.ca)
    auth = [("authorization", f"Bearer {token}")]
    attempts = [
        Attempt("TLS client with the token", "OK", trusted, _score(good, token)),
        Attempt(
            "health check without a token",
            "OK",
            trusted,
            lambda ch: health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10),
        ),
        Attempt("plaintext client", "UNAVAILABLE", None, _score(good, token)),
        Attempt("client not trusting the server's CA", "UNAVAILABLE", tls(certs.rogue_ca), _score(good, token)),
        Attempt("no token", "UNAUTHENTICATED", trusted, _score(good, None)),
        Attempt("wrong token", "UNAUTHENTICATED", trusted, _score(good, token + "x")),
        Attempt("token under another scheme", "UNAUTHENTICATED", trusted, _score(good, token, "Basic")),
        Attempt(
            "ModelInfer without a token",
            "UNAUTHENTICATED",
            trusted,
            lambda ch: grpc_service_pb2_grpc.GRPCInferenceServiceStub(ch).ModelInfer(
                grpc_service_pb2.ModelInferRequest(model_name="x"), timeout=10
            ),
        ),
        Attempt("oversized request", "RESOURCE_EXHAUSTED", trusted, _score(oversized, token)),
        Attempt(
            "request with an oversized answer",
            "RESOURCE_EXHAUSTED",
            trusted,
            lambda ch: recommender_pb2_grpc.RecommenderStub(ch).Rank(big_answer, metadata=auth, timeout=60),
        ),
    ]
    mutual_attempts = [
        Attempt("mTLS client with a trusted certificate", "OK", tls(certs.ca, certs.client_cert, certs.client_key), _score(good, None)),
        Attempt("mTLS client without a certificate", "UNAVAILABLE", trusted, _score(good, None)),
        Attempt(
            "mTLS client with another CA's certificate",
            "UNAVAILABLE",
            tls(certs.ca, certs.rogue_client_cert, certs.rogue_client_key),
            _score(good, None),
        ),
    ]
    server_tls = ["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    results: dict[str, Tally] = {}
    figures: dict = {}
    flags = config.serve_flags()
    with ServerUnderTest(
        bundle, [*flags, *server_tls, "--auth-tokens", token, "--max-message-bytes", str(limit)],
        startup_timeout_s=config.startup_timeout_s,
    ) as server:
        before = server.scrape().total("edgerec_pairs_scored_total")
        for attempt in attempts:
            results[attempt.name] = tally = Tally(refusal_codes=frozenset({attempt.expected} - {"OK"}))
            _try(server.target, attempt, tally)
        after = server.scrape()
        figures["pairs_scored"] = int(after.total("edgerec_pairs_scored_total") - before)
        # what the server's own metrics say about the answers that were too large to send
        rank_calls = after.by_label("edgerec_requests_total", "code", method="Rank")
        figures["rank_calls_in_metrics"] = {code: int(n) for code, n in rank_calls.items()}
        figures["listening_on"] = sorted(listening_addresses(server.pid))
        figures["peak_rss_mb"] = server.memory.peak_mb()
    with ServerUnderTest(
        bundle, [*flags, *server_tls, "--tls-client-ca", str(certs.ca)], startup_timeout_s=config.startup_timeout_s
    ) as server:
        for attempt in mutual_attempts:
            results[attempt.name] = tally = Tally(refusal_codes=frozenset({attempt.expected} - {"OK"}))
            _try(server.target, attempt, tally)
        figures["peak_rss_mb"] = max(figures["peak_rss_mb"], server.memory.peak_mb())

    everything = [*attempts, *mutual_attempts]
    let_in = {a.name: results[a.name].answered for a in everything if a.expected != "OK" and results[a.name].answered}
    # an answer found too large is refused after it is computed; every other refusal must come first
    legit_pairs = results[attempts[0].name].answered * len(good.candidates) + ATTEMPTS * ECHOED
    figures.update(
        sent=sum(t.sent for t in results.values()),
        answered=sum(t.answered for t in results.values()),
        refused=dict(sum((t.refused for t in results.values()), collections.Counter())),
        lost=sum(t.lost for t in results.values()),
        let_in=sum(let_in.values()),
        attempts={a.name: {"expected": a.expected, **_short(results[a.name])} for a in everything},
        message_limit_bytes=limit,
        legitimate_pairs=legit_pairs,
    )
    checks = [
        Check(
            attempt.name,
            results[attempt.name].lost == 0 and (attempt.expected != "OK" or results[attempt.name].answered == ATTEMPTS),
            f"expected {attempt.expected}; got {_short(results[attempt.name])['codes']}",
        )
        for attempt in everything
    ] + [
        Check("nobody let in", not let_in, f"answered when they should not have been: {let_in}"),
        Check(
            "refused calls cost no compute",
            figures["pairs_scored"] == legit_pairs,
            f"pairs scored {figures['pairs_scored']}, by answered calls and the too-large answers {legit_pairs}",
        ),
        Check(
            "default bind is loopback",
            bool(figures["listening_on"]) and all(_is_loopback(a) for a in figures["listening_on"]),
            f"listening on {figures['listening_on']}",
        ),
    ]
    return Scenario("access", "TLS, mTLS, bearer tokens, loopback bind and message limits hold", figures, checks)


def _echo_request() -> tuple[recommender_pb2.RankRequest, int]:
    """A Rank request under a message limit whose answer is over it (Rank echoes each item id), and that limit."""
    candidates = [recommender_pb2.Candidate(item_id=f"new-item-{i:05d}-".ljust(200, "x"), text="lamp") for i in range(ECHOED)]
    request = recommender_pb2.RankRequest(candidates=candidates, k=ECHOED)
    answer = recommender_pb2.RankResponse(
        ranked=[
            recommender_pb2.RankedCandidate(index=i, item_id=c.item_id, purchase_probability=0.5, expected_quantity=1.5)
            for i, c in enumerate(candidates)
        ]
    )
    limit = (request.ByteSize() + answer.ByteSize()) // 2
    assert request.ByteSize() < limit < answer.ByteSize()
    return request, limit


def _short(tally: Tally) -> dict:
    """What one kind of client got: every code, OK included, and the first details per code."""
    codes = {**tally.failures, **({"OK": tally.answered} if tally.answered else {})}
    return {"sent": tally.sent, "codes": codes, "details": dict(tally.examples)}
