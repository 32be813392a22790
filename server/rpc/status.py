"""The one place where exceptions become gRPC status codes.

Handlers raise NudgeError subclasses; this interceptor aborts the call with their code
and message. Any other exception is a bug: logged with its stack, answered INTERNAL with a
short reference to find it in the log — never UNKNOWN, never a stack trace on the wire.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nudge.server.errors import NudgeError
from nudge.server.rpc.handlers import WrappedByMethod, wrap_behaviour

log = logging.getLogger(__name__)


# Malformed requests are logged at most once per this many seconds (per method): a client
# sending garbage must not fill the log.
MALFORMED_LOG_INTERVAL = 60.0
_malformed_logged: dict[str, float] = {}
# A status message travels in a trailer (percent-encoded, so up to 3 bytes a byte) and
# grpc refuses trailers over 8 KB by default: a message quoting a client's 1 MB string
# reached the caller as RESOURCE_EXHAUSTED "metadata size exceeds hard limit", the field
# it named lost. Messages longer than this many UTF-8 bytes are cut (and say so).
MAX_STATUS_MESSAGE_BYTES = 1000


class _Malformed(Exception):
    """The request's bytes are not a message of the method's type."""


def _parse_lazily(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """A request deserializer that never fails: grpc answers a failing one with INTERNAL
    and logs a traceback per call. Bad bytes come back as ``_Malformed`` for the
    handler, which answers INVALID_ARGUMENT."""

    def parse(raw: bytes) -> Any:
        if deserializer is None:
            return raw
        try:
            return deserializer(raw)
        except Exception:
            return _Malformed()

    return parse


def _malformed(context: grpc.ServicerContext, method: str) -> None:
    now = time.monotonic()
    if now - _malformed_logged.get(method, -math.inf) >= MALFORMED_LOG_INTERVAL:
        _malformed_logged[method] = now
        log.warning("malformed request bytes for %s (logged at most every %.0fs)", method,
                    MALFORMED_LOG_INTERVAL)
    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                  "request: not a valid protobuf message for this method")


def _checked(requests: Iterator[Any], context: grpc.ServicerContext,
             method: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, _Malformed):
            _malformed(context, method)
        yield request


def bounded_message(message: str) -> str:
    """``message`` cut to at most ``MAX_STATUS_MESSAGE_BYTES`` UTF-8 bytes (at a character
    boundary), with how much was cut; messages quote the caller's values, which can be
    long, but start with the field they name."""
    encoded = message.encode("utf-8", "surrogatepass")
    if len(encoded) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    head = encoded[:MAX_STATUS_MESSAGE_BYTES - 60].decode("utf-8", "ignore")
    return f"{head}... ({len(message) - len(head):,} more characters cut)"


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, NudgeError):
        context.abort(grpc.StatusCode[exc.code], bounded_message(exc.message))
    if isinstance(exc, NotImplementedError):  # a generated base method nobody overrode
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (ref %s)", method, ref, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error; server log reference {ref}")


def _request(request: Any, context: grpc.ServicerContext, method: str,
             streamed: bool) -> Any:
    if streamed:
        return _checked(request, context, method)
    if isinstance(request, _Malformed):
        _malformed(context, method)
    return request


def _wrap_unary(behaviour: Callable[..., Any], method: str,
                streamed: bool = False) -> Callable[..., Any]:
    if not streamed:
        # One request message (the hot unary RPCs): checked inline, no _request call.
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if request.__class__ is _Malformed:
                    _malformed(context, method)
                return behaviour(request, context)
            except Exception as exc:
                if _already_aborted(context) or _gone(exc, context, method):
                    raise
                _abort(context, exc, method)

        return handler

    def streamed_handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(_request(request, context, method, streamed), context)
        except Exception as exc:
            if _already_aborted(context) or _gone(exc, context, method):
                raise
            _abort(context, exc, method)

    return streamed_handler


def _wrap_stream(behaviour: Callable[..., Iterator[Any]], method: str,
                 streamed: bool = False) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(_request(request, context, method, streamed), context)
        except Exception as exc:
            if _already_aborted(context) or _gone(exc, context, method):
                raise
            _abort(context, exc, method)

    return handler


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # grpc's sync server raises a bare Exception from context.abort(); let it through.
    state = getattr(context, "_state", None)
    return bool(getattr(state, "aborted", False))


def _gone(exc: Exception, context: grpc.ServicerContext, method: str) -> bool:
    """The client cancelled (or the deadline passed): grpc raises a bare RpcError from the
    request stream. Nobody is left to answer, and it is not a bug."""
    if isinstance(exc, grpc.RpcError) or not context.is_active():
        log.debug("%s ended: the client cancelled or its deadline passed", method)
        return True
    return False


class StatusInterceptor(grpc.ServerInterceptor):
    def __init__(self) -> None:
        self._wrapped = WrappedByMethod()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped.get(handler_call_details.method, handler, _status_mapped)


def _status_mapped(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    streamed = handler.request_streaming
    wrapped = wrap_behaviour(
        handler, lambda b: _wrap_unary(b, method, streamed),
        lambda b: _wrap_stream(b, method, streamed),
    )
    return wrapped._replace(request_deserializer=_parse_lazily(handler.request_deserializer))
