"""Cluster mode: any node answers any call about a user, by forwarding it to the owner.

A unary call whose request names one user (a top-level ``user_id``: Decide, GetUser,
LabelTransaction, EraseUser; or its ``transaction``'s: ScoreTransaction) runs here when
this node owns the user's partition and has caught up on it; otherwise it is sent once,
as is (same request, same token, the caller's remaining deadline), to the owner, and the
owner's reply or error comes back: one extra hop, no more. A forwarded call is marked
(``nudge-forwarded``), and a node that receives one for a partition it does not serve
(the map moved meanwhile) answers UNAVAILABLE instead of forwarding again: the client
retries with the same ids and reaches the new owner. When this node's view of the leases
names no owner (a hand-over in flight, or a view a NATS outage keeps stale), the call goes
once to the partition's preferred owner, where hand-overs go; if that node does not serve
it either, the answer is UNAVAILABLE, as no owner at all is.

Track is not forwarded: any node appends events to the replicated log (cluster.node).

Calls that name a decision or a delivery, not a user (ReportOutcome, AckDelivery), run
where that record lives: here if this node knows it, else on the first other node that
does (``FindByIdInterceptor``: all asked at once, each once, marked forwarded). Decision
and delivery ids do not name a partition, so this costs a call to every other node.

**NOT_FOUND only when the whole log was looked at.** Right after a move (a node's or a NATS
server's death) the new owner of a partition may still be applying the log, and a decision
the old owner made is in the log but in no store yet: "unknown" would be a wrong answer
the caller does not retry. So a node that does not know the record first waits (briefly)
until each partition it owns has applied the log up to the partition's last record as
JetStream has it *now* — after the caller was acknowledged the record, so the record, if
it exists, is below that — looks again, and says which partitions it can vouch for
(trailing metadata ``nudge-vouched``). The call is NOT_FOUND only when the vouches of the
nodes asked cover every partition; otherwise UNAVAILABLE, and the caller retries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import grpc

from nudge.server.cluster.peer_auth import PEER_HEADER
from nudge.server.errors import NotFound, NotServedHere, Unavailable
from nudge.server.rpc.handlers import Behaviour, wrap_behaviour

FORWARDED = "nudge-forwarded"
# Trailing metadata of a find-by-id NOT_FOUND: the partitions the answering node had
# applied up to the log's end when it looked ("3,5,17"), for which "unknown" is true.
VOUCHED = "nudge-vouched"
# How long a node not knowing a record waits for its partitions to apply the log's end
# (at most a quarter of the caller's remaining deadline).
CATCH_UP_WAIT_SECONDS = 1.5
# The share of the caller's remaining deadline another node is asked with.
ASK_SHARE = 0.8
# Methods never forwarded: Track's events go to the log from any node.
NOT_ROUTED = ("/nudge.v1.DecisionService/Track",)
# Calls about a record of the node that made it, found by asking the other nodes.
FOUND_BY_ID = ("/nudge.v1.DecisionService/ReportOutcome",
               "/nudge.v1.DeliveryService/AckDelivery")
_HOP_HEADERS = {"grpc-timeout", "te", "content-type", "user-agent", "grpc-accept-encoding",
                "grpc-encoding", "authority", ":authority"}
# The coordinator's own marks, never passed on by a forward (batch_routing.py sets its own).
_NOT_PASSED_ON = {FORWARDED, "nudge-partitions", PEER_HEADER}


class RouteLike(Protocol):
    @property
    def partition(self) -> int: ...
    @property
    def local(self) -> bool: ...
    @property
    def address(self) -> str | None: ...
    @property
    def reason(self) -> str: ...
    @property
    def likely_address(self) -> str | None: ...


class Router(Protocol):
    node_id: str
    partitions: int

    def route(self, user_id: str) -> RouteLike: ...
    def peers(self) -> list[str]: ...
    def caught_up(self, budget: float) -> frozenset[int]: ...


class ForwardingInterceptor(grpc.ServerInterceptor):
    """Runs calls about a user here when this node serves the user's partition, else
    forwards them to the owner (see the module docstring)."""

    def __init__(self, router: Router, stored_id: Callable[[str], str],
                 credentials: grpc.ChannelCredentials | None = None,
                 sign: Callable[[str], str] = lambda _method: "") -> None:
        self.router = router
        self.stored_id = stored_id  # raw user id -> the id partitions hash (the pseudonym)
        # TLS to the other nodes when this one serves TLS (tls.peer_credentials).
        self.credentials = credentials
        # A call's nudge-peer signature (cluster/peer_auth.py): it comes from a node.
        self.sign = sign
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self.forwarded = 0

    def _channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = (
                    grpc.insecure_channel(address) if self.credentials is None
                    else grpc.secure_channel(address, self.credentials))
            return channel

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if (handler is None or not handler.unary_unary or method in NOT_ROUTED
                or not method.startswith("/nudge.v1.")):
            return handler
        forwarded = is_forwarded(handler_call_details.invocation_metadata)

        def unary(behaviour: Behaviour) -> Behaviour:
            def routed(request: Any, context: grpc.ServicerContext) -> Any:
                user_id = _user_id(request)
                if not user_id:
                    return behaviour(request, context)  # not about one user (or no id)
                route = self.router.route(self.stored_id(user_id))
                if route.local:
                    return behaviour(request, context)
                # No owner known here: ask the likely one (one hop; it answers UNAVAILABLE
                # when it does not serve the partition either).
                address = route.address or route.likely_address
                if address is None or forwarded:
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  route.reason or f"partition {route.partition} moved; retry")
                    raise AssertionError("abort raises")
                return self._forward(method, request, context, address)

            return routed

        return wrap_behaviour(handler, unary, lambda behaviour: behaviour)

    def ask(
        self, method: str, request: Any, context: grpc.ServicerContext, address: str
    ) -> Callable[[], tuple[Any, frozenset[int]]]:
        """Ask the node at ``address`` (now, in the background, with ``ASK_SHARE`` of the
        caller's remaining deadline: an answer must be left time to say UNAVAILABLE);
        the function returned waits for its answer: its reply, or None when it does not
        know the record either (NOT_FOUND, with the partitions it vouched for) or is
        unreachable or late (vouching for none); other errors end the call with that
        node's status."""
        future = self._call(method, request, context, address, share=ASK_SHARE, wait=False)

        def answer() -> tuple[Any, frozenset[int]]:
            try:
                return future.result(), frozenset()
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
                if code == grpc.StatusCode.NOT_FOUND:
                    return None, _vouched(exc)
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    return None, frozenset()
                details = exc.details() if hasattr(exc, "details") else str(exc)
                context.abort(code, details or f"asked {address}: {code.name}")
                raise AssertionError("abort raises") from None

        return answer

    def _forward(
        self, method: str, request: Any, context: grpc.ServicerContext, address: str
    ) -> Any:
        try:
            return self._call(method, request, context, address)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
            details = exc.details() if hasattr(exc, "details") else str(exc)
            context.abort(code, details or f"forwarded to {address}: {code.name}")

    def stream(
        self, method: str, requests: Iterator[Any], context: grpc.ServicerContext,
        address: str, extra: tuple[tuple[str, str], ...] = (),
    ) -> Iterator[Any]:
        """A stream-stream call forwarded to ``address`` (DecideBatch: batch_routing.py),
        with the caller's metadata and remaining deadline, marked forwarded; its replies."""
        replies: Iterator[Any] = self._open("stream_stream", method, context, address)(
            requests, metadata=self._metadata(context, method) + list(extra),
            timeout=_timeout(context))
        return replies

    def unary_stream(self, method: str, request: Any, context: grpc.ServicerContext,
                     address: str) -> Iterator[Any]:
        """A unary-stream call to ``address`` (ClusterService.ReadSummaries), with the
        caller's metadata and remaining deadline, marked forwarded; its replies."""
        replies: Iterator[Any] = self._open("unary_stream", method, context, address)(
            request, metadata=self._metadata(context, method), timeout=_timeout(context))
        return replies

    def _open(self, kind: str, method: str, context: grpc.ServicerContext,
              address: str) -> Any:
        """``method`` on ``address`` as a grpc multi-callable of ``kind`` ("unary_unary",
        "unary_stream", "stream_stream"), counted as one forward."""
        self.forwarded += 1
        return getattr(self._channel(address), kind)(
            method, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=_reply_type(method).FromString)

    def _metadata(self, context: grpc.ServicerContext, method: str) -> list[tuple[str, str]]:
        metadata = [(k, v) for k, v in context.invocation_metadata()
                    if k not in _HOP_HEADERS and not k.startswith(":")
                    and k not in _NOT_PASSED_ON]
        metadata.append((FORWARDED, self.router.node_id))
        signature = self.sign(method)
        if signature:
            metadata.append((PEER_HEADER, signature))
        return metadata

    def _call(
        self, method: str, request: Any, context: grpc.ServicerContext, address: str,
        share: float = 1.0, wait: bool = True,
    ) -> Any:
        call = self._open("unary_unary", method, context, address)
        metadata = self._metadata(context, method)
        timeout = _timeout(context, share)
        if not wait:
            return call.future(request, metadata=metadata, timeout=timeout)
        return call(request, metadata=metadata, timeout=timeout)


def _timeout(context: grpc.ServicerContext, share: float = 1.0) -> float | None:
    """``share`` of the caller's remaining deadline (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 86_400 else remaining * share


def is_forwarded(metadata: Iterable[tuple[str, Any]]) -> bool:
    """A call's metadata says another node forwarded it (``nudge-forwarded``)."""
    return any(k == FORWARDED for k, _ in metadata)


def _user_id(request: Any) -> str | None:
    """The one user a request is about, if it names one (malformed bytes name none: the
    handler answers them)."""
    descriptor = getattr(request, "DESCRIPTOR", None)
    if descriptor is None:
        return None
    fields = descriptor.fields_by_name
    if "user_id" in fields:
        return str(request.user_id)
    if "transaction" in fields and fields["transaction"].message_type is not None:
        return str(request.transaction.user_id)
    return None


class FindByIdInterceptor(grpc.ServerInterceptor):
    """ReportOutcome and AckDelivery: run here, and when this node does not know the
    decision or delivery (NOT_FOUND, which changes nothing), ask the other nodes at once;
    NOT_FOUND only once every partition was vouched for (see the module docstring).
    Sits inside the status interceptor, so it sees the handler's NotFound as raised."""

    def __init__(self, router: Router, forwarding: ForwardingInterceptor) -> None:
        self.router = router
        self.forwarding = forwarding

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in FOUND_BY_ID or not handler.unary_unary:
            return handler
        forwarded = is_forwarded(handler_call_details.invocation_metadata)

        def unary(behaviour: Behaviour) -> Behaviour:
            def found(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    return behaviour(request, context)
                except NotFound as exc:
                    first = exc
                if forwarded:  # asked by another node: answer from here only
                    if isinstance(first, NotServedHere):
                        raise first
                    return self._caught_up_and_again(behaviour, request, context)
                known = isinstance(first, NotServedHere)  # here, but not served here
                vouched: set[int] = set()
                # The other nodes are asked at once, and look while this one looks again.
                answers = [self.forwarding.ask(method, request, context, address)
                           for address in self.router.peers()]
                if not known:
                    try:
                        return self._caught_up_and_again(behaviour, request, context)
                    except NotServedHere:
                        known = True
                    except _Unknown as unknown:
                        vouched |= unknown.vouched
                for answer in answers:
                    reply, theirs = answer()
                    if reply is not None:
                        return reply
                    vouched |= theirs
                if known:  # its owner is still catching up
                    raise Unavailable(f"{first}; retry with the same ids") from None
                missing = set(range(self.router.partitions)) - vouched
                if missing:
                    raise Unavailable(
                        f"{first} on the nodes that have applied the log, and partitions "
                        f"{_ranges(missing)} are still being applied after a move; retry "
                        "with the same ids") from None
                raise first

            return found

        return wrap_behaviour(handler, unary, lambda behaviour: behaviour)

    def _caught_up_and_again(
        self, behaviour: Behaviour, request: Any, context: grpc.ServicerContext
    ) -> Any:
        """Wait until this node's partitions have applied the log's end, look again, and
        when still unknown raise NotFound saying which partitions vouch for it."""
        remaining = context.time_remaining()
        budget = CATCH_UP_WAIT_SECONDS if remaining is None else max(
            0.0, min(CATCH_UP_WAIT_SECONDS, remaining / 4))
        vouched = self.router.caught_up(budget)
        try:
            return behaviour(request, context)
        except NotServedHere:
            raise
        except NotFound as exc:
            context.set_trailing_metadata(((VOUCHED, ",".join(map(str, sorted(vouched)))),))
            raise _Unknown(exc.message, vouched) from None


class _Unknown(NotFound):
    """NOT_FOUND on the partitions in ``vouched`` (the node applied the log's end)."""

    def __init__(self, message: str, vouched: frozenset[int]) -> None:
        super().__init__(message)
        self.vouched = vouched


def _vouched(exc: grpc.RpcError) -> frozenset[int]:
    metadata = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in metadata or ():
        if key == VOUCHED and value:
            return frozenset(int(p) for p in str(value).split(","))
    return frozenset()


def _ranges(partitions: set[int]) -> str:
    shown = sorted(partitions)
    return ", ".join(map(str, shown[:8])) + (f" (+{len(shown) - 8})" if len(shown) > 8 else "")


_REPLY_TYPES: dict[str, Any] = {}


def _reply_type(method: str) -> Any:
    """The reply message class of ``/package.Service/Method`` (from the descriptor pool)."""
    found = _REPLY_TYPES.get(method)
    if found is None:
        from google.protobuf import descriptor_pool, message_factory

        service, _, name = method.lstrip("/").rpartition("/")
        descriptor = descriptor_pool.Default().FindServiceByName(service).FindMethodByName(name)
        found = _REPLY_TYPES[method] = message_factory.GetMessageClass(descriptor.output_type)
    return found
