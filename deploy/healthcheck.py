#!/usr/bin/env python3
"""Exit 0 if an edgerec server answers SERVING on the standard gRPC health service, 1 if not.

Why it exists: a container HEALTHCHECK (and any shell probe) needs a
one-shot client for `grpc.health.v1.Health/Check`; this one needs only the
runtime install (grpcio, grpcio-health-checking), no grpcurl or
grpc_health_probe binary. The health service needs no bearer token. By
default it asks 127.0.0.1 on `$EDGEREC_GRPC_PORT` (8001), or `$EDGEREC_HOST`
when that names one address rather than all of them.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ALL_ADDRESSES = ("", "0.0.0.0", "::", "[::]")


def default_address() -> str:
    host = os.environ.get("EDGEREC_HOST", "")
    host = "127.0.0.1" if host in ALL_ADDRESSES else host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{host}:{os.environ.get('EDGEREC_GRPC_PORT', '8001')}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default=default_address(), help="server host:port (default: %(default)s)")
    parser.add_argument("--service", default="", help="service to ask about; '' is the whole server (default: '')")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default: %(default)s)")
    parser.add_argument("--tls-ca", type=Path, help="PEM CA that signed the server's certificate: use TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate, for a server that requires mTLS")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--server-name", help="name to check the server certificate against (default: the host)")
    return parser.parse_args(argv)


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca is None:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.tls_ca.read_bytes(),
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with open_channel(args) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as error:
            print(f"unhealthy: {args.address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"unhealthy: {args.address} is {status}", file=sys.stderr)
        return 1
    print(f"{args.address} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
