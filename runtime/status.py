"""The one place where a call's outcome becomes a gRPC status.

Every method of our services passes the same boundary:
- `add_servicer` registers a servicer like the generated `add_*_to_server`,
  except that bytes which do not parse as the request message (corrupt wire
  format, strings that are not UTF-8) reach the method as `Undecodable`,
  answered INVALID_ARGUMENT, instead of gRPC's bare UNKNOWN;
- `rpc(method)` wraps each servicer method: an `EdgeRecError` ends the call
  with the mapped status and its message (which names the field at fault),
  cut to a size every client accepts; an answer larger than the server may
  send is RESOURCE_EXHAUSTED; any other exception is a bug of the server,
  logged with its traceback and reported as INTERNAL without internals.
  Every call is counted by method and final code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError

from edgerec.core.errors import EdgeRecError, ErrorCode, invalid
from edgerec.runtime.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_FOR: dict[ErrorCode, grpc.StatusCode] = {code: getattr(grpc.StatusCode, code.name) for code in ErrorCode}
# Status details travel in a header; clients refuse more than 8 KiB of them by default. Non-ASCII
# bytes are percent-encoded (x3), so 1 KiB of UTF-8 stays far below that.
MAX_DETAILS_BYTES = 1024

Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])


def grpc_status(code: ErrorCode) -> grpc.StatusCode:
    return STATUS_FOR[code]


class Undecodable:
    """Stands in for a request whose bytes do not parse; `rpc` answers it INVALID_ARGUMENT."""

    __slots__ = ("type_name", "reason")

    def __init__(self, type_name: str, reason: str) -> None:
        self.type_name = type_name
        self.reason = reason


def _decoder(message_class: type) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message_class.FromString(data)
        except DecodeError as exc:
            return Undecodable(message_class.DESCRIPTOR.full_name, str(exc))

    return decode


def add_servicer(server: grpc.aio.Server, servicer: Any, service: ServiceDescriptor) -> None:
    """Register the unary methods of `service`, implemented by `servicer`, with parse failures kept."""
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_decoder(message_factory.GetMessageClass(method.input_type)),
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


def rpc(method: str) -> Callable[[Handler], Handler]:
    """Decorate an async servicer method: statuses, the answer-size bound and metrics.

    The servicer instance must have `metrics: Metrics` and `max_response_bytes: int` attributes.
    """

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            metrics: Metrics = self.metrics
            started = time.perf_counter()
            code = "OK"
            try:
                if isinstance(request, Undecodable):
                    raise invalid("request", f"not a valid {request.type_name}: {request.reason}")
                response = await handler(self, request, context)
                size = response.ByteSize()
                if size > self.max_response_bytes:
                    raise EdgeRecError(
                        ErrorCode.RESOURCE_EXHAUSTED,
                        f"the answer is {size} bytes, over this server's limit of {self.max_response_bytes} "
                        "(max_message_bytes); ask for fewer candidates",
                    )
                return response
            except EdgeRecError as exc:
                code = exc.code.name
                await context.abort(STATUS_FOR[exc.code], short_details(exc.message))
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            except Exception:
                code = "INTERNAL"
                log.exception("%s failed unexpectedly", method)
                await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; the server log has details")
            finally:
                metrics.observe_request(method, code, time.perf_counter() - started)

        return wrapper  # type: ignore[return-value]

    return decorate
