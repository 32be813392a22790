"""Prometheus metrics: per-RPC counts and latency, and gauges the server keeps current.

Names and labels follow go-grpc-prometheus (``grpc_server_handled_total{grpc_service,
grpc_method, grpc_type, grpc_code}``, ``grpc_server_handling_seconds``), so the
dashboards and alerts a bank's platform team already has for gRPC services work as is.

Each ``Metrics`` has a ``CollectorRegistry`` of its own rather than the process-global
one, so tests (and a benchmark) can run several servers in one process. /metrics is
served on its own port, plain HTTP on 127.0.0.1 by default: it carries no user data,
and a scraper should not need a gRPC token.

``nudge_rpc_cpu_seconds`` is the CPU time of the handler's own thread over the same span
(``time.thread_time``): what the handler and the interceptors inside this one cost in
Python and the kernels, without the time spent waiting for the GIL, a lock or an fsync.
``nudge bench rpc`` reads both (README "Performance").

Cost on the reply path: two ``perf_counter`` and two ``thread_time`` calls, the started
counter and one append to a queue per RPC. The two histogram observations and the status
code's counter (``prometheus_client`` takes a lock and bisects the buckets in Python for
each: ~3 µs a call, every RPC, before grpc sends the reply) are folded in later, in
batches, by whoever reads the registry (a scrape, ``get_sample_value``: ``_Folder`` is its
first collector), or by the call that finds ``MAX_UNFOLDED`` of them waiting.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from nudge.server.rpc.handlers import WrappedByMethod

# 10 µs (an empty handler's own time) to 1 s (far past any budget): 1-2.5-5-7.5 per decade.
LATENCY_BUCKETS = (
    0.00001, 0.000025, 0.00005, 0.000075,
    0.0001, 0.00025, 0.0005, 0.00075,
    0.001, 0.0025, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

_RPC_LABELS = ("grpc_service", "grpc_method", "grpc_type")
# Finished RPCs kept for the next read before a call folds them in itself: without a
# scraper the queue must not grow forever (a tuple of four references each, ~10 MB at
# most); with one it is emptied at every scrape.
MAX_UNFOLDED = 100_000
# What a call that finds the queue full folds in beyond its own, so the queue shrinks.
FOLD_EXTRA = 4

# (handling_seconds child, cpu_seconds child, handled-total child, wall s, cpu s)
_Sample = tuple[Any, Any, Any, float, float]


class _Folder:
    """A collector that yields nothing: registered first, it folds the finished RPCs'
    samples into their metrics before the registry collects them."""

    def __init__(self, unfolded: deque[_Sample]) -> None:
        self._unfolded = unfolded

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        fold(self._unfolded, len(self._unfolded))
        return []


def fold(unfolded: deque[_Sample], n: int) -> None:
    """Observe up to ``n`` queued samples (oldest first). ``popleft`` is atomic: several
    folders at once each take different samples."""
    pop = unfolded.popleft
    for _ in range(n):
        try:
            seconds, cpu, handled, wall, used = pop()
        except IndexError:
            return
        seconds.observe(wall)
        cpu.observe(used)
        handled.inc()


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def _rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


class Metrics:
    """The server's metrics in a registry of their own.

    The gauges are set by whoever knows the value (``queue_depth.set(n)``) or bound to a
    function read at scrape time (``lmdb_size_bytes.set_function(store_size)``), which
    costs nothing between scrapes.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # Finished RPCs not yet observed (MetricsInterceptor appends, _Folder drains).
        self.unfolded: deque[_Sample] = deque()
        r.register(_Folder(self.unfolded))  # first: it runs before the metrics are read
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", _RPC_LABELS, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*_RPC_LABELS, "grpc_code"),
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the handler starting to its last response, in seconds.",
            _RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.cpu_seconds = Histogram(
            "nudge_rpc_cpu_seconds",
            "CPU time of the handler's thread from the handler starting to its last "
            "response, in seconds.",
            _RPC_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rpcs_in_flight = Gauge(
            "nudge_rpcs_in_flight", "RPCs holding a concurrency slot.", registry=r
        )
        self.rpcs_waiting = Gauge(
            "nudge_rpcs_waiting", "RPCs waiting for a concurrency slot.", registry=r
        )
        self.queue_depth = Gauge(
            "nudge_ingest_queue_depth", "Events queued for the next group commit.", registry=r
        )
        self.lmdb_size_bytes = Gauge(
            "nudge_lmdb_size_bytes",
            "Bytes of the LMDB map in use (last page × page size).",
            registry=r,
        )
        self.lmdb_map_size_bytes = Gauge(
            "nudge_lmdb_map_size_bytes", "Current LMDB map size (grows by itself).", registry=r
        )
        self.lmdb_map_used_ratio = Gauge(
            "nudge_lmdb_map_used_ratio", "Share of the LMDB map in use, 0..1.", registry=r
        )
        self.learner_lag_seconds = Gauge(
            "nudge_learner_lag_seconds",
            "Age of the oldest outcome the learner has not applied yet.",
            registry=r,
        )
        self.outbox_depth = Gauge(
            "nudge_outbox_depth", "Scheduled deliveries not yet acknowledged.", registry=r
        )
        # Gauges read from counters the server keeps (set_function), so named *_total.
        self.learner_quarantined = Gauge(
            "nudge_learner_quarantined_total",
            "Settled decisions the learner skipped because they could not be learned.",
            registry=r,
        )
        self.other_type_events = Gauge(
            "nudge_other_type_events_total",
            "Events counted in the shared (other) type slot: no slot was left for their type.",
            registry=r,
        )
        self.consent_channels_ignored = Gauge(
            "nudge_consent_channels_ignored_total",
            "Consent channels not recorded: the customer held the most a profile keeps.",
            registry=r,
        )
        self.group_commits = Gauge(
            "nudge_group_commits_total",
            "Durable (fsync'd) group commits of the store's writer since the server started.",
            registry=r,
        )
        self.journeys_failed = Gauge(
            "nudge_journeys_failed_total",
            "Journey triggers dropped because they could not be decided.",
            registry=r,
        )

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)


def _code_name(context: grpc.ServicerContext, failed: bool) -> str:
    code = context.code()
    if code is not None:
        return code.name
    if failed:
        # Raised without abort: grpc answers UNKNOWN (StatusInterceptor should prevent it).
        return "UNKNOWN"
    # Before grpc sends the status the call is still active, unless the client went away
    # (a cancelled stream often ends "normally" from the handler's point of view).
    return "OK" if context.is_active() else "CANCELLED"


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC that reaches a handler.

    Place it first (outermost) so refusals by the auth and overload interceptors are
    counted with their codes. Not seen: calls grpc refuses itself (unknown method,
    ``maximum_concurrent_rpcs``). Handlers in grpc's non-blocking mode (health Watch) are
    passed through untouched: wrapping would turn them into thread-holding generators.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # Label children resolved once per method: intercept_service runs for every call,
        # in grpc's polling thread.
        self._children_by_method: dict[str, tuple[Any, Any, Any, Callable[[str], Any]]] = {}
        self._wrapped = WrappedByMethod()

    def _children(
        self, method: str, handler: grpc.RpcMethodHandler
    ) -> tuple[Any, Any, Any, Callable[[str], Any]]:
        children = self._children_by_method.get(method)
        if children is None:
            labels = (*_split(method), _rpc_type(handler))
            m = self.metrics
            # A status code's counter child, found once: ``labels()`` validates and joins
            # the label values on every call (~10 µs under the profiler, on every RPC).
            by_code: dict[str, Any] = {}

            def handled(code: str) -> Any:
                child = by_code.get(code)
                if child is None:
                    child = by_code[code] = m.handled.labels(*labels, code)
                return child

            children = (
                m.started.labels(*labels),
                m.handling_seconds.labels(*labels),
                m.cpu_seconds.labels(*labels),
                handled,
            )
            self._children_by_method[method] = children
        return children

    def _wrap_unary(
        self, behaviour: Callable[..., Any], method: str, handler: grpc.RpcMethodHandler
    ) -> Callable[..., Any]:
        started, seconds, cpu, handled = self._children(method, handler)
        unfolded = self.metrics.unfolded
        append = unfolded.append
        thread_time, perf_counter = time.thread_time, time.perf_counter

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started.inc()
            c0 = thread_time()
            t0 = perf_counter()
            failed = True
            try:
                response = behaviour(request, context)
                failed = False
                return response
            finally:
                wall, used = perf_counter() - t0, thread_time() - c0
                append((seconds, cpu, handled(_code_name(context, failed)), wall, used))
                if len(unfolded) > MAX_UNFOLDED:
                    fold(unfolded, FOLD_EXTRA)

        return wrapped

    def _wrap_stream(
        self,
        behaviour: Callable[..., Iterator[Any]],
        method: str,
        handler: grpc.RpcMethodHandler,
    ) -> Callable[..., Iterator[Any]]:
        started, seconds, cpu, handled = self._children(method, handler)

        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started.inc()
            # grpc's sync server runs a streaming handler's generator on one pool thread,
            # so the thread's CPU clock covers it (and grpc's own work between the yields).
            c0 = time.thread_time()
            t0 = time.perf_counter()
            outcome = "failed"
            try:
                yield from behaviour(request, context)
                outcome = "ok"
            except GeneratorExit:
                outcome = "cancelled"  # grpc closed the stream: the client went away
                raise
            finally:
                wall, used = time.perf_counter() - t0, time.thread_time() - c0
                seconds.observe(wall)
                cpu.observe(used)
                code = (
                    "CANCELLED"
                    if outcome == "cancelled"
                    else _code_name(context, outcome == "failed")
                )
                handled(code).inc()

        return wrapped

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrapped.get(handler_call_details.method, handler, self._counted)

    def _counted(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        for kind in ("unary_unary", "stream_unary", "unary_stream", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is None:
                continue
            if getattr(behaviour, "experimental_non_blocking", False):
                return handler
            wrap = self._wrap_stream if kind.endswith("_stream") else self._wrap_unary
            return handler._replace(**{kind: wrap(behaviour, method, handler)})
        return handler


def start_metrics_server(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> tuple[WSGIServer, int]:
    """Serve ``registry`` at http://host:port/metrics on a daemon thread.

    Port 0 picks a free port; the bound port is returned. Stop with
    ``server.shutdown(); server.server_close()``. Raises OSError if the port is taken.
    """
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port


class ClusterView(Protocol):
    moves: int

    def replication_lag(self) -> int: ...
    def ready_partitions(self) -> list[int]: ...
    def model_state(self) -> tuple[int, int, bool]: ...
    def population_state(self) -> tuple[int, float]: ...
    def snapshot_counts(self) -> tuple[int, int]: ...


def add_cluster_gauges(metrics: Metrics, cluster: ClusterView) -> None:
    """Cluster mode: how far this node's store is behind the log for the partitions it
    owns, how many partitions it serves, and how often partitions moved to or from it."""
    r = metrics.registry
    Gauge("nudge_cluster_replication_lag_entries",
          "Log entries of the partitions this node owns not yet applied to its store.",
          registry=r).set_function(cluster.replication_lag)
    Gauge("nudge_cluster_partitions_served",
          "Partitions this node owns and has caught up on.",
          registry=r).set_function(lambda: len(cluster.ready_partitions()))
    Gauge("nudge_cluster_partition_moves",
          "Partitions this node took or gave up since it started.",
          registry=r).set_function(lambda: cluster.moves)
    Gauge("nudge_cluster_snapshots_stored",
          "Partition snapshots this node stored (the log purged behind each).",
          registry=r).set_function(lambda: cluster.snapshot_counts()[0])
    Gauge("nudge_cluster_snapshots_restored",
          "Partitions this node rebuilt from a snapshot when it took them.",
          registry=r).set_function(lambda: cluster.snapshot_counts()[1])
    Gauge("nudge_cluster_model_position",
          "Position in the cluster's rewards stream the models this node decides with "
          "learned up to (the same on every node once they adopted the last published).",
          registry=r).set_function(lambda: cluster.model_state()[0])
    Gauge("nudge_cluster_learned_outcomes",
          "Settled outcomes the models this node decides with learned (cluster-wide).",
          registry=r).set_function(lambda: cluster.model_state()[1])
    Gauge("nudge_cluster_learner_leader",
          "1 when this node runs the cluster's learner.",
          registry=r).set_function(lambda: int(cluster.model_state()[2]))
    Gauge("nudge_cluster_population_position",
          "Position in NUDGE_POPULATION the fraud population this node scores with "
          "includes every node's deltas up to.",
          registry=r).set_function(lambda: cluster.population_state()[0])
    Gauge("nudge_cluster_population_transactions",
          "Genuine transactions the fraud population this node scores with learned "
          "(cluster-wide once adopted, plus this node's own since).",
          registry=r).set_function(lambda: cluster.population_state()[1])
