"""The one place where exceptions become gRPC status codes.

Handlers raise NudgeError subclasses; this interceptor aborts the call with their code
and message. Any other exception is a bug: logged with its stack, answered INTERNAL with a
short reference to find it in the log — never UNKNOWN, never a stack trace on the wire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nudge.server.errors import NudgeError
from nudge.server.rpc.handlers import wrap_behaviour

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, NudgeError):
        context.abort(grpc.StatusCode[exc.code], exc.message)
    if isinstance(exc, NotImplementedError):  # a generated base method nobody overrode
        context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    ref = uuid.uuid4().hex[:12]
    log.error("unhandled error in %s (ref %s)", method, ref, exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error; server log reference {ref}")


def _wrap_unary(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behaviour(request, context)
        except Exception as exc:
            if _already_aborted(context):
                raise
            _abort(context, exc, method)

    return handler


def _wrap_stream(behaviour: Callable[..., Iterator[Any]], method: str) -> Callable[..., Any]:
    def handler(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from behaviour(request, context)
        except Exception as exc:
            if _already_aborted(context):
                raise
            _abort(context, exc, method)

    return handler


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # grpc's sync server raises a bare Exception from context.abort(); let it through.
    state = getattr(context, "_state", None)
    return bool(getattr(state, "aborted", False))


class StatusInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_behaviour(
            handler, lambda b: _wrap_unary(b, method), lambda b: _wrap_stream(b, method)
        )
