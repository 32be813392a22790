"""ClusterService (node to node) and the insights gathered over every partition.

InsightsService answers for the bank's whole base, but a node's store holds only the
users of the partitions it owns (and stale rows of partitions it held before a move). In
cluster mode the node asked gathers the summaries of every partition from the node that
serves it — its own partitions from its own store, each other owner's with one
``ReadSummaries`` stream, all at once — and joins them (``offline.insights_merge``)
before the same analysis runs. Each partition is read from exactly one node, so each user
counts once. An owner that no longer serves a partition it was asked for answers
UNAVAILABLE and the partition is asked of its new owner (reading changes nothing, so a
retry is always safe), until ``ROUTE_WAIT_SECONDS`` or the caller's deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from nudge.server.cluster.partitions import partition_of
from nudge.server.cluster.peer_auth import PEER_HEADER
from nudge.server.errors import InvalidArgument, PermissionDenied, Unavailable
from nudge.server.offline.insights import Population
from nudge.server.offline.insights_merge import SummaryPart, merge_parts, part_from_bytes
from nudge.server.rpc.batch_routing import (
    PartitionRouter,
    by_route,
    route_deadline,
    wait_for_routes,
)
from nudge.server.rpc.forwarding import ForwardingInterceptor
from nudge.server.storage.store import Store
from nudge.server.storage.tables import insights as summary_table
from nudge.v1 import cluster_service_pb2 as pb
from nudge.v1 import cluster_service_pb2_grpc as pb_grpc

METHOD = "/nudge.v1.ClusterService/ReadSummaries"
# Entry bytes per ReadSummaries message (well under the 64 MiB message limit).
CHUNK_BYTES = 4 << 20


class _Moved(Exception):
    """An owner no longer serves a partition it was asked for."""


def _names(store: Store) -> list[str]:
    with store.read() as txn:
        return summary_table.names_by_id(summary_table.key_ids(txn, store.dbs))


def read_parts(store: Store, partitions: frozenset[int], total: int
               ) -> Iterator[tuple[list[str], bytes, bytes]]:
    """The summaries of the users of ``partitions`` stored here, a chunk at a time:
    (key names by id, entries per user as uint32 bytes, entries' bytes). The names are
    read after the entries, so every key an entry names is in them."""
    with store.read() as txn:
        chunks = [(counts.astype("<u4").tobytes(), raw) for counts, raw in
                  summary_table.scan_chunks(
                      txn, store.dbs, lambda u: partition_of(u, total) in partitions,
                      CHUNK_BYTES)]
    names = _names(store)
    for counts, raw in chunks:
        yield names, counts, raw


class ClusterServicer(pb_grpc.ClusterServiceServicer):
    def __init__(self, store: Store, router: PartitionRouter,
                 flush: Callable[[], None] = lambda: None,
                 from_peer: Callable[[str, str], bool] = lambda _method, _value: False,
                 ) -> None:
        self.store = store
        self.router = router
        self._flush = flush  # the summaries are written behind Track
        # (method, nudge-peer value) -> signed by a node of this cluster (peer_auth.py)
        self._from_peer = from_peer

    def ReadSummaries(
        self, request: pb.ReadSummariesRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ReadSummariesResponse]:
        signature = next((v for k, v in context.invocation_metadata() if k == PEER_HEADER), "")
        if not self._from_peer(METHOD, str(signature)):
            raise PermissionDenied("ReadSummaries is for the cluster's own nodes (every "
                                   "user's summary entries): ask InsightsService")
        total = self.router.partitions
        wanted = frozenset(request.partitions)
        bad = sorted(p for p in wanted if not 0 <= p < total)
        if bad:
            raise InvalidArgument("partitions", f"{bad} not in [0, {total})")
        lost = sorted(p for p in wanted if not self.router.route_partition(p).local)
        if lost:
            raise Unavailable(f"partitions {lost} are not served here")
        self._flush()
        for names, counts, raw in read_parts(self.store, wanted, total):
            yield pb.ReadSummariesResponse(key_names=names, entry_counts=counts, entries=raw)


class SummaryGatherer:
    """Every partition's summaries, from the nodes that serve them (module docstring)."""

    def __init__(self, store: Store, router: PartitionRouter, forwarding: ForwardingInterceptor,
                 flush: Callable[[], None] = lambda: None) -> None:
        self.store = store
        self.router = router
        self.forwarding = forwarding
        self._flush = flush
        self._pool = ThreadPoolExecutor(4, thread_name_prefix="nudge-gather")

    def population(self, context: grpc.ServicerContext) -> Population:
        total = self.router.partitions
        parts: list[SummaryPart] = []
        todo = list(range(total))
        deadline = route_deadline(context)
        while todo:
            here, remote, waiting = by_route(todo, self.router.route_partition)
            asked = {a: self._pool.submit(self._ask, context, a, mine)
                     for a, mine in remote.items()}
            if here:
                self._flush()
                parts += [part_from_bytes(*chunk) for chunk in
                          read_parts(self.store, frozenset(here), total)]
            for address, future in asked.items():
                try:
                    parts += future.result()
                except _Moved:
                    waiting += remote[address]
            todo = sorted(waiting)
            if todo:
                wait_for_routes(deadline, f"insights: no node serves partitions {todo} yet")
        return merge_parts(parts)

    def _ask(self, context: grpc.ServicerContext, address: str, partitions: list[int]
             ) -> list[SummaryPart]:
        request = pb.ReadSummariesRequest(partitions=partitions)
        try:
            return [part_from_bytes(list(reply.key_names), reply.entry_counts, reply.entries)
                    for reply in self.forwarding.unary_stream(METHOD, request, context, address)]
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
            if code == grpc.StatusCode.UNAVAILABLE:
                raise _Moved(address) from None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise Unavailable(f"insights: reading summaries from {address} failed "
                              f"({code.name}: {details})") from None
