"""Wrapping a grpc method handler's behaviour, whatever kind of RPC it serves.

Every server interceptor here (status mapping, auth, overload, metrics) replaces the
behaviour of the handler grpc found, with a wrapper that must match the RPC's kind: a
plain function for unary responses, a generator for streamed ones. This is that dispatch,
once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

Behaviour = Callable[..., Any]


def wrap_behaviour(
    handler: grpc.RpcMethodHandler,
    unary: Callable[[Behaviour], Behaviour],
    streaming: Callable[[Behaviour], Behaviour],
) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour passed through ``unary`` (unary response: unary-unary
    and stream-unary) or ``streaming`` (streamed response: a generator must come back)."""
    if handler.unary_unary:
        return handler._replace(unary_unary=unary(handler.unary_unary))
    if handler.stream_unary:
        return handler._replace(stream_unary=unary(handler.stream_unary))
    if handler.unary_stream:
        return handler._replace(unary_stream=streaming(handler.unary_stream))
    if handler.stream_stream:
        return handler._replace(stream_stream=streaming(handler.stream_stream))
    return handler


def wrap_holding(
    handler: grpc.RpcMethodHandler,
    enter: Callable[[grpc.ServicerContext], None],
    leave: Callable[[], None],
) -> grpc.RpcMethodHandler:
    """``handler`` whose behaviour runs between ``enter(context)`` (which may abort the
    call) and ``leave()``. For a streamed response both happen inside the generator: the
    hold starts when grpc starts iterating and ends when the stream ends, fails or is
    closed (client cancelled)."""

    def unary(behaviour: Behaviour) -> Behaviour:
        def held(request: Any, context: grpc.ServicerContext) -> Any:
            enter(context)
            try:
                return behaviour(request, context)
            finally:
                leave()

        return held

    def streaming(behaviour: Behaviour) -> Behaviour:
        def held(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            enter(context)
            try:
                yield from behaviour(request, context)
            finally:
                leave()

        return held

    return wrap_behaviour(handler, unary, streaming)


class WrappedByMethod:
    """An interceptor's wrapped handlers, one per method, reused while grpc hands over the
    same handler object (its generic handlers keep one per method).

    ``intercept_service`` runs for every call on grpc's polling thread, before the handler
    starts and while the client waits: wrapping anew builds closures and a new handler
    tuple per call per interceptor. A wrapper that depends only on the method and the
    handler is built once instead; a different handler object (another interceptor that
    builds its own per call) is wrapped anew, as before."""

    def __init__(self) -> None:
        self._by_method: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(
        self,
        method: str,
        handler: grpc.RpcMethodHandler,
        wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler],
    ) -> grpc.RpcMethodHandler:
        """``wrap(handler, method)``, or the one built for this method and handler."""
        cached = self._by_method.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = wrap(handler, method)
        # The handler stays referenced, so its identity cannot be reused by another object.
        self._by_method[method] = (handler, wrapped)
        return wrapped
