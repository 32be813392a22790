"""Cluster mode: one DecideBatch over users of every partition, each decided by its owner.

A node's store holds the state of the partitions it owns (and stale rows of partitions it
held before a move), so deciding there for everybody would decide most users on no state
or old state. The node that receives a DecideBatch coordinates it:

* **user ids.** Each chunk of up to ``BATCH_CHUNK`` ids is split by owner: this node
  decides its own users while each other owner is asked, at once, with a DecideBatch of
  its users (one request message, the batch's settings and its resolved ``time``, so every
  decision of the batch is taken at the same time), marked forwarded; the answers are put
  back in the order asked. Decisions are logged by the node that makes them, exactly as a
  forwarded Decide's.
* **a segment.** Every owner is asked for the segment's users *of the partitions it
  owns* (metadata ``nudge-partitions``), and the streams, each in user id order, are
  merged into one in user id order, as on one machine. This node's own share is decided
  here. Each partition is asked of exactly one node, so nobody is decided twice.

**Retries only when nothing was decided.** An owner that does not serve a user (or a
partition) it was asked about — the map moved since it was read — refuses the whole
request before deciding anyone, with UNAVAILABLE and the trailing metadata
``nudge-undecided``; only such a refusal (or no owner yet: a failover within its lease) is
retried, re-routed from the map as it is then, until ``ROUTE_WAIT_SECONDS`` or the
caller's deadline. Any other failure of an owner mid-answer (it died) ends the batch with
UNAVAILABLE saying how far the stream got: the decisions streamed so far were made; an
owner that died may have made (and logged) some of the rest, and a retry of those users
decides them again — the caller knows which users it received.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

import grpc

from nudge.server.errors import Unavailable
from nudge.server.rpc.forwarding import ForwardingInterceptor, RouteLike
from nudge.v1 import decision_service_pb2 as pb

METHOD = "/nudge.v1.DecisionService/DecideBatch"
# Metadata of a forwarded segment batch: the partitions it covers ("0,3,5").
PARTITIONS = "nudge-partitions"
# Trailing metadata of a refusal before anything was decided: safe to re-route and retry.
UNDECIDED = "nudge-undecided"
# How long users (or partitions) with no serving owner are waited for.
ROUTE_WAIT_SECONDS = 10.0
RETRY_SECONDS = 0.2
# Owners asked at once, per coordinating node.
ASKING_THREADS = 8


class PartitionRouter(Protocol):
    partitions: int

    def route(self, user_id: str) -> RouteLike: ...
    def route_partition(self, partition: int) -> RouteLike: ...


T = TypeVar("T")


def by_route(items: Iterable[T], route: Callable[[T], RouteLike]
             ) -> tuple[list[T], dict[str, list[T]], list[T]]:
    """``items`` split by where they are served: here, by owner address, and waiting (no
    serving owner yet), each in the order given."""
    here: list[T] = []
    remote: dict[str, list[T]] = {}
    waiting: list[T] = []
    for item in items:
        found = route(item)
        if found.local:
            here.append(item)
        elif found.address is not None:
            remote.setdefault(found.address, []).append(item)
        else:
            waiting.append(item)
    return here, remote, waiting


def route_deadline(context: grpc.ServicerContext) -> float:
    """Until when items with no serving owner are waited for (monotonic)."""
    remaining = context.time_remaining()
    wait = ROUTE_WAIT_SECONDS if remaining is None else min(ROUTE_WAIT_SECONDS, remaining)
    return time.monotonic() + wait


def wait_for_routes(deadline: float, what: str) -> None:
    """Sleep before routing again, or UNAVAILABLE (``what``) when past ``deadline``."""
    if time.monotonic() + RETRY_SECONDS > deadline:
        raise Unavailable(f"{what}; retry")
    time.sleep(RETRY_SECONDS)


class Refused(Exception):
    """An owner refused a request before deciding anyone (``nudge-undecided``)."""


def forwarded_partitions(context: grpc.ServicerContext) -> frozenset[int] | None:
    """The partitions a forwarded segment batch covers (None: not one)."""
    for key, value in context.invocation_metadata():
        if key == PARTITIONS:
            return frozenset(int(p) for p in value.split(",") if p)
    return None


def refuse(context: grpc.ServicerContext, message: str) -> None:
    """Refuse a forwarded batch before deciding anyone: the coordinator re-routes."""
    context.set_trailing_metadata(((UNDECIDED, "1"),))
    context.abort(grpc.StatusCode.UNAVAILABLE, message)


class BatchRouter:
    """Coordinates a DecideBatch across the cluster (see the module docstring)."""

    def __init__(self, router: PartitionRouter, forwarding: ForwardingInterceptor) -> None:
        self.router = router
        self.forwarding = forwarding
        # Idle threads cost nothing; the pool lives as long as the server.
        self._pool = ThreadPoolExecutor(ASKING_THREADS, thread_name_prefix="nudge-batch")

    # -- user ids --------------------------------------------------------------------------

    def decide_ids(
        self, settings: pb.DecideBatchRequest, asked: Sequence[str], stored: Sequence[str],
        context: grpc.ServicerContext,
        local: Callable[[list[str], list[str]], list[pb.BatchDecision]],
    ) -> list[pb.BatchDecision]:
        """Decisions for ``asked`` (raw ids; ``stored``: as stored, which partitions
        hash), in that order: this node's users by ``local(asked, stored)``, the others
        by their owners."""
        out: list[pb.BatchDecision | None] = [None] * len(asked)
        todo = list(range(len(asked)))
        deadline = route_deadline(context)
        while todo:
            here, remote, waiting = by_route(todo, lambda i: self.router.route(stored[i]))
            asks = {address: self._pool.submit(self._ask_ids, settings, [asked[i] for i in mine],
                                               context, address)
                    for address, mine in remote.items()}
            if here:
                for i, decision in zip(here, local([asked[i] for i in here],
                                                   [stored[i] for i in here]), strict=True):
                    out[i] = decision
            for address, future in asks.items():
                mine = remote[address]
                try:
                    decisions = future.result()
                except Refused:
                    waiting += mine
                    continue
                for i, decision in zip(mine, decisions, strict=True):
                    out[i] = decision
            todo = sorted(waiting)
            if todo:
                wait_for_routes(deadline, f"user_ids: no node serves {stored[todo[0]]!r}'s "
                                          f"partition yet ({len(todo)} users waiting)")
        return [d for d in out if d is not None]

    def _ask_ids(self, settings: pb.DecideBatchRequest, asked: list[str],
                 context: grpc.ServicerContext, address: str) -> list[pb.BatchDecision]:
        request = pb.DecideBatchRequest()
        request.CopyFrom(settings)
        request.user_ids.extend(asked)
        decisions: list[pb.BatchDecision] = []
        for reply in self._stream(request, context, address, ()):
            decisions.extend(reply.decisions)
        if len(decisions) != len(asked):  # an owner answers every user it decides
            raise Unavailable(f"{address} answered {len(decisions)} of {len(asked)} users")
        return decisions

    # -- a segment -------------------------------------------------------------------------

    def decide_segment(
        self, settings: pb.DecideBatchRequest, context: grpc.ServicerContext,
        local: Callable[[frozenset[int]], Iterator[list[pb.BatchDecision]]], chunk: int,
    ) -> Iterator[pb.DecideBatchResponse]:
        """The segment's decisions over every partition, in user id order, ``chunk`` a
        reply: this node's partitions by ``local(partitions)``, each other owner's by it."""
        sources: list[Iterator[pb.BatchDecision]] = []
        todo = list(range(self.router.partitions))
        deadline = route_deadline(context)
        while todo:
            here, remote, waiting = by_route(todo, self.router.route_partition)
            started = {address: self._pool.submit(self._start_segment, settings, context,
                                                  address, mine)
                       for address, mine in remote.items()}
            if here:
                sources.append(_flat(local(frozenset(here))))
            for address, future in started.items():
                try:
                    sources.append(future.result())
                except Refused:
                    waiting += remote[address]
            todo = sorted(waiting)
            if todo:
                wait_for_routes(deadline, f"segment: no node serves partitions {todo} yet")
        merged = heapq.merge(*sources, key=lambda d: d.user_id)
        reply = pb.DecideBatchResponse()
        for decision in merged:
            reply.decisions.append(decision)
            if len(reply.decisions) >= chunk:
                yield reply
                reply = pb.DecideBatchResponse()
        if reply.decisions:
            yield reply

    def _start_segment(self, settings: pb.DecideBatchRequest, context: grpc.ServicerContext,
                       address: str, partitions: list[int]) -> Iterator[pb.BatchDecision]:
        """An owner's stream of the segment's decisions in its partitions, started: its
        first reply is read here, so a refusal (nothing decided) is seen before merging."""
        replies = self._stream(settings, context, address,
                               ((PARTITIONS, ",".join(map(str, partitions))),))
        try:
            first = next(replies)
        except StopIteration:
            return iter(())
        return _flat(_chain([list(first.decisions)],
                            (list(r.decisions) for r in replies)))

    # -- both ------------------------------------------------------------------------------

    def _stream(self, request: pb.DecideBatchRequest, context: grpc.ServicerContext,
                address: str, extra: tuple[tuple[str, str], ...]
                ) -> Iterator[pb.DecideBatchResponse]:
        """A forwarded DecideBatch of one request message to ``address``; its replies.
        A refusal before deciding anyone raises :class:`Refused`; any other failure
        Unavailable, naming the owner."""
        call = self.forwarding.stream(METHOD, iter([request]), context, address, extra)
        try:
            yield from call
        except grpc.RpcError as exc:
            trailing = dict(exc.trailing_metadata() or ()) if hasattr(
                exc, "trailing_metadata") else {}
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
            if UNDECIDED in trailing:
                raise Refused(address) from None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise Unavailable(
                f"the owner at {address} failed mid-batch ({code.name}: {details}); the "
                "decisions streamed before this error were made, and the owner may have "
                "made some of the rest") from None


def _chain(first: list[list[Any]], rest: Iterable[list[Any]]) -> Iterator[list[Any]]:
    yield from first
    yield from rest


def _flat(chunks: Iterable[list[pb.BatchDecision]]) -> Iterator[pb.BatchDecision]:
    for chunk in chunks:
        yield from chunk
