"""Errors the service raises, and the one place that maps them to gRPC status codes.

Handlers and the objects behind them raise these; ``StatusInterceptor`` (server/status.py)
turns them into a status code and message. Anything else is a bug: it is logged with its
stack and the caller gets INTERNAL with a reference, never UNKNOWN or a stack trace.
"""

from __future__ import annotations

import grpc


class NudgeError(Exception):
    """Base class: an error with a gRPC status code and a message for the caller."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(NudgeError):
    """Bad input: names the field and the rule. Nothing was changed."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


class NotFound(NudgeError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(NudgeError):
    """Transient: warming up, shutting down, or the store cannot write right now."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(NudgeError):
    code = grpc.StatusCode.UNIMPLEMENTED


class StoreError(Exception):
    """The store cannot be opened as asked (wrong schema, unreadable folder)."""


class SchemaMismatch(StoreError):
    pass


class DeadlineExceeded(NudgeError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(NudgeError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class StoreFull(NudgeError):
    """The LMDB map cannot grow any more: writes are refused, reads go on."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
