"""Who may call: optional bearer tokens, and TLS with optional client certificates (mTLS).

Bearer tokens: a client sends `authorization: Bearer <token>` metadata; a
missing or unknown token ends the call with UNAUTHENTICATED before any
servicer code runs (`BearerTokens` decides; the server's interceptor,
`runtime.status.CallGate`, refuses and counts). The standard health service
(`grpc.health.v1.Health`) is exempt, so load balancers and orchestrators can
probe without a secret; everything else, reflection included, needs a token.
Tokens are compared in constant time. Use tokens only over TLS: they travel
in the clear otherwise. A token travels in the call's metadata, which the
server bounds (`max_metadata_bytes`, where the largest token accepted is
documented).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)
SCHEME = "bearer "
UNAUTHENTICATED_DETAILS = "missing or invalid bearer token (metadata `authorization: Bearer <token>`)"


class BearerTokens:
    """The accepted bearer tokens; `admit` decides a call (the interceptor, `runtime.status.CallGate`, refuses)."""

    def __init__(self, tokens: Iterable[str], exempt_prefixes: tuple[str, ...] = EXEMPT_PREFIXES) -> None:
        self._tokens = [token.encode() for token in tokens]
        if not self._tokens:
            raise ValueError("BearerTokens needs at least one token")
        self._exempt = exempt_prefixes

    def admit(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """True if `method` (`/package.Service/Method`) needs no token or `metadata` carries an accepted one."""
        return method.startswith(self._exempt) or self._authorized(metadata)

    def _authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        for key, value in metadata or ():
            if key != "authorization" or not isinstance(value, str) or not value.lower().startswith(SCHEME):
                continue
            presented = value[len(SCHEME) :].strip().encode()
            # compare against every token so timing does not reveal which one matched
            return any([hmac.compare_digest(presented, token) for token in self._tokens])
        return False


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same streaming kind as `handler` that only ends the call with `code`."""

    async def refuse(request_or_iterator: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    serializers = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **serializers)
    return grpc.stream_stream_rpc_method_handler(refuse, **serializers)


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    root = Path(client_ca).read_bytes() if client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=root,
        require_client_auth=root is not None,
    )
