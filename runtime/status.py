"""The one place where a call's outcome becomes a gRPC status, and is counted.

Every method of our services passes the same boundary:
- `add_servicer` registers a servicer like the generated `add_*_to_server`,
  except that bytes which do not parse as the request message (corrupt wire
  format, strings that are not UTF-8) reach the method as `Undecodable`,
  answered INVALID_ARGUMENT, instead of gRPC's bare UNKNOWN, and a request
  over the servicer's message bound reaches it as `TooLarge`, answered
  RESOURCE_EXHAUSTED naming `max_message_bytes` (gRPC's own limit would end
  the call before any of our code ran, uncounted);
- `rpc(method)` wraps each servicer method: an `EdgeRecError` ends the call
  with the mapped status and its message (which names the field at fault),
  cut to a size every client accepts; an answer larger than the server may
  send is RESOURCE_EXHAUSTED; any other exception is a bug of the server,
  logged with its traceback and reported as INTERNAL without internals; a
  call gRPC cancels is DEADLINE_EXCEEDED if its deadline has passed (within
  `DEADLINE_SLACK_S`), else CANCELLED (the client went away). Every call is counted by method and
  final code before its answer is sent, so a client that has its answer
  finds it counted.

`CallGate`, the server's one interceptor, sees every call before any handler
runs: it counts the arrival, refuses unknown methods (UNIMPLEMENTED) and, with
bearer tokens on, callers without one (UNAUTHENTICATED), counting both, and
counts the final code of the calls of services that `rpc` does not wrap
(health, reflection). What is counted where: `runtime.metrics`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from edgerec.core.errors import EdgeRecError, ErrorCode, invalid
from edgerec.runtime.auth import UNAUTHENTICATED_DETAILS, BearerTokens, refusing
from edgerec.runtime.metrics import UNKNOWN_METHOD, Metrics

log = logging.getLogger(__name__)

STATUS_FOR: dict[ErrorCode, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.name) for code in ErrorCode}
# Status details travel in a header; clients refuse more than 8 KiB of them by default. Non-ASCII
# bytes are percent-encoded (x3), so 1 KiB of UTF-8 stays far below that.
MAX_DETAILS_BYTES = 1024
# The server's copy of a call's deadline starts when gRPC reads the call's headers, later than the client's
# by the transit and by whatever kept the server busy (up to ~9 ms measured on a loaded 2-core box), so a
# client whose deadline passed cancels a call the server still gives a few ms. A call cancelled this close
# to its deadline was cancelled by it (a client cancelling on purpose that close is counted so too).
DEADLINE_SLACK_S = 0.05

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def grpc_status(code: ErrorCode) -> grpc.StatusCode:
    return STATUS_FOR[code]


class Undecodable:
    """Stands in for a request whose bytes do not parse; `rpc` answers it INVALID_ARGUMENT."""

    __slots__ = ("type_name", "reason")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason


class TooLarge:
    """Stands in for a request over the server's message bound; `rpc` answers it RESOURCE_EXHAUSTED."""

    __slots__ = ("size", "limit")

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit


def _decoder(message_class: type, max_bytes: int | None = None) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        if max_bytes is not None and len(data) > max_bytes:
            return TooLarge(len(data), max_bytes)  # refused before parsing: no work for an oversized request
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_class.DESCRIPTOR.full_name, str(exc))

    return decode


def add_servicer(
    server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor, max_request_bytes: int | None = None
) -> None:
    """Register the unary methods of `service`, implemented by `servicer`, with parse failures and
    oversized requests kept for `rpc` to answer. `max_request_bytes` defaults to the servicer's
    `max_response_bytes`: one setting (`max_message_bytes`) bounds messages both ways."""
    limit = servicer.max_response_bytes if max_request_bytes is None else max_request_bytes
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_decoder(message_factory.GetMessageClass(method.input_type), limit),
            response_serializer=message_factory.GetMessageClass(method.output_type).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def short_details(message: str) -> str:
    """`message` cut to `MAX_DETAILS_BYTES` of UTF-8 (a status clients accept)."""
    encoded = message.encode()
    if len(encoded) <= MAX_DETAILS_BYTES:
        return message
    return encoded[: MAX_DETAILS_BYTES - 3].decode(errors="ignore") + "..."


def cancelled_code(context: grpc.aio.ServicerContext) -> str:
    """The code of a call gRPC cancelled: DEADLINE_EXCEEDED if its deadline has passed, else CANCELLED."""
    remaining = context.time_remaining()
    return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= DEADLINE_SLACK_S else "CANCELLED"


def rpc(method: str) -> Callable[[Handler], Handler]:
    """Decorate an async servicer method: statuses, the answer-size bound and metrics.

    The servicer instance must have `metrics: Metrics` and `max_response_bytes: int` attributes.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()

            def count(code: str) -> None:  # before the answer goes out: a client that has it finds it counted
                self.metrics.observe_request(method, code, time.perf_counter() - started)

            try:
                if isinstance(request, Undecodable):
                    raise invalid("request", f"not a valid {request.type_name}: {request.reason}")
                if isinstance(request, TooLarge):
                    raise EdgeRecError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"the request is {request.size} bytes, over this server's limit of {request.limit} "
                        "(max_message_bytes); send fewer candidates or rows per call",
                    )
                response = await handler(self, request, context)
                size = response.ByteSize()
                if size > self.max_response_bytes:
                    raise EdgeRecError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"the answer is {size} bytes, over this server's limit of {self.max_response_bytes} "
                        "(max_message_bytes); ask for fewer candidates",
                    )
            except EdgeRecError as exc:
                count(exc.code.name)
                await context.abort(STATUS_FOR[exc.code], short_details(exc.message))
            except asyncio.CancelledError:  # gRPC ended the call: its deadline passed, or the client went away
                count(cancelled_code(context))
                raise
            except Exception:
                count("INTERNAL")
                log.exception("%s failed unexpectedly", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has details")
            else:
                count("OK")
                return response

        return wrapper  # type: ignore[return-value]

    return decorate


class CallGate(grpc.aio.ServerInterceptor):
    """The server's one interceptor: every call gRPC hands to the server's code passes it first.

    It counts the call's arrival (`edgerec_requests_received_total`), then:
    an unknown method is counted UNIMPLEMENTED under the method label
    `unknown` (gRPC answers it); with `tokens`, a call they do not admit is
    refused and counted UNAUTHENTICATED; a call to a service in
    `counted_services` (whose methods `rpc` wraps) goes on uncounted here;
    any other (health, reflection) is counted when it ends, with its code.
    """

    def __init__(self, metrics: Metrics, counted_services: Iterable[str], tokens: BearerTokens | None = None) -> None:
        self._metrics = metrics
        self._counted = frozenset(counted_services)
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        service, _, method = details.method.lstrip("/").rpartition("/")
        if handler is None:
            self._metrics.observe_arrival(UNKNOWN_METHOD)
            self._metrics.observe_request(UNKNOWN_METHOD, "UNIMPLEMENTED", 0.0)
            return None
        self._metrics.observe_arrival(method)
        if self._tokens is not None and not self._tokens.admit(details.method, details.invocation_metadata):
            self._metrics.observe_request(method, "UNAUTHENTICATED", 0.0)
            return refusing(handler, grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_DETAILS)
        if service in self._counted:
            return handler
        return _counting(handler, method, self._metrics)


class _CountedCall:
    """A call's context, passed to a behavior `CallGate` counts: the call is counted once, when the
    behavior aborts it (before the status is sent) or else when the behavior ends."""

    def __init__(self, context: grpc.aio.ServicerContext, method: str, metrics: Metrics) -> None:
        self._context = context
        self._method = method
        self._metrics = metrics
        self._started = time.perf_counter()
        self._counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, *args: Any, **kwargs: Any) -> None:
        self.count(code.name)
        await self._context.abort(code, *args, **kwargs)

    def count(self, code: str) -> None:
        if not self._counted:
            self._counted = True
            self._metrics.observe_request(self._method, code, time.perf_counter() - self._started)

    def ended(self, error: BaseException | None) -> None:
        if isinstance(error, (asyncio.CancelledError, GeneratorExit)):  # gRPC ended the call or closed the stream
            self.count(cancelled_code(self._context))
            return
        code = self._context.code()  # set by the behavior (`set_code`), else OK, or UNKNOWN for an exception
        if code is None:
            self.count("UNKNOWN" if error is not None else "OK")
        else:
            self.count(code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode(code).name)


def _counting(handler: grpc.RpcMethodHandler, method: str, metrics: Metrics) -> grpc.RpcMethodHandler:
    """`handler` with its calls counted in `edgerec_requests_total` (`_CountedCall`)."""
    kind, behavior = next(
        (kind, getattr(handler, kind))
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, kind) is not None
    )

    if inspect.isasyncgenfunction(behavior):

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            call, error = _CountedCall(context, method, metrics), None
            try:
                async for response in behavior(request, call):
                    yield response
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.ended(error)

    else:

        async def counted(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[misc]
            call, error = _CountedCall(context, method, metrics), None
            try:
                return await behavior(request, call)
            except BaseException as exc:
                error = exc
                raise
            finally:
                call.ended(error)

    factory = getattr(grpc, f"{kind}_rpc_method_handler")
    return factory(
        counted, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
