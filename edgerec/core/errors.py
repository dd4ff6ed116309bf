"""The one error type of edgerec's runtime.

Every failure a client can see is an `EdgeRecError` with an `ErrorCode`. The
codes mirror gRPC's status codes by name, but this module knows nothing of
gRPC: the transport maps codes to statuses in one place (`runtime.status`).
"""

from __future__ import annotations

import enum


class ErrorCode(enum.Enum):
    """Why a request failed; the names match gRPC status codes."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    CANCELLED = "CANCELLED"
    UNAVAILABLE = "UNAVAILABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    DATA_LOSS = "DATA_LOSS"
    INTERNAL = "INTERNAL"


class EdgeRecError(Exception):
    """A failure with a code a client can act on, and the request field at fault if any."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        self.code = code
        self.field = field
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"EdgeRecError({self.code.name}, {self.message!r})"


def invalid(field: str, message: str) -> EdgeRecError:
    """Shorthand for the most common error: a bad request field."""
    return EdgeRecError(ErrorCode.INVALID_ARGUMENT, message, field=field)
