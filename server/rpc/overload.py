"""Load shedding: a bounded number of RPCs at work, a short bounded wait, the rest refused.

Under overload a bank's callers are better served by a fast RESOURCE_EXHAUSTED they can
retry elsewhere (or skip: a card authorisation cannot wait) than by a queue that grows
until every answer is late. And a request whose deadline has already passed is answered
DEADLINE_EXCEEDED before any work: its caller has given up, so the work is wasted.

How this sits on grpc's sync server
-----------------------------------
grpc runs each RPC's handler on a ``ThreadPoolExecutor`` worker. The limiter runs inside
that handler, so it only sees RPCs that already have a worker thread; RPCs beyond
``max_workers`` wait in the executor's own queue, unbounded and invisible to it. Hence:

* ``max_concurrent + max_queue < max_workers``. Every running or waiting RPC holds a
  thread; the threads left over (``max_workers - max_concurrent - max_queue``, at least 2)
  are what turns a burst away in microseconds instead of letting it pile up. Waiting
  holds a thread but cannot deadlock: the running RPCs never wait on waiting ones, and
  every wait ends after ``queue_timeout`` (or the caller's deadline, if sooner).
* ``grpc.server(maximum_concurrent_rpcs=...)`` is the backstop for the executor queue.
  grpc counts an RPC from acceptance to completion and refuses the excess in its polling
  thread, before any thread is used — but it exempts nothing (a health probe is refused
  too), cannot drop expired deadlines, and its message ("Concurrent RPC limit exceeded!")
  gives no hint. So use both: this limiter for the policy, and grpc's cap set above it
  (``recommended_grpc_cap``) so a flood larger than the thread pool still cannot queue
  without bound.

On 2 cores, ``max_concurrent`` near 2–4× the core count is enough: handlers are short
CPU-bound work (Numba kernels release the GIL; LMDB reads are microseconds), and more
at once only lengthens everyone's latency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import grpc

from nudge.server.rpc.handlers import WrappedByMethod, wrap_holding
from nudge.server.rpc.stalled_streams import StalledStreams

# Health and reflection must answer even (especially) under overload, so orchestrators
# do not kill a server that is merely busy; Echo is the latency floor benchmarks compare
# against. StreamDeliveries is a long-lived stream held by each delivery adapter: counting
# it would pin slots for hours.
DEFAULT_EXEMPT: tuple[str, ...] = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/nudge.v1.DiagnosticsService/Echo",
    "/nudge.v1.DeliveryService/StreamDeliveries",
)


def recommended_grpc_cap(
    max_concurrent: int, max_queue: int, max_workers: int, max_streams: int = 0
) -> int:
    """A value for ``grpc.server(maximum_concurrent_rpcs=...)`` above this limiter's own.

    Room for every slot and waiter, every long-lived stream (``StreamLimiter``), plus one
    thread pool's worth of calls being turned away or exempt; beyond that grpc refuses in
    its polling thread.
    """
    return max_concurrent + max_queue + max_workers + max_streams


class StreamLimiter(grpc.ServerInterceptor):
    """At most ``limits[method]`` calls of each long-lived streaming method open at once;
    one more is answered RESOURCE_EXHAUSTED at once.

    Streams are held for minutes or hours (a delivery adapter, a bulk loader), so they are
    not counted by ``ConcurrencyLimiter``, whose slots are for short unary work: the
    thread pool gets a thread per stream slot on top of ``max_workers``, so streams in
    every slot still leave the unary RPCs (a card authorisation, a health check) all of
    theirs. A stream whose client stops taking part is cancelled by ``stalled``
    (``StalledStreams``): an idle or vanished client cannot keep a slot.
    """

    def __init__(self, limits: dict[str, int], stalled: StalledStreams | None = None) -> None:
        self.limits = dict(limits)
        self.stalled = stalled
        self._open = dict.fromkeys(self.limits, 0)
        self._lock = threading.Lock()
        self.rejected = 0
        self._wrapped = WrappedByMethod()

    @property
    def total(self) -> int:
        """Threads the streams may hold at most (add it to the thread pool)."""
        return sum(self.limits.values())

    def open_streams(self, method: str) -> int:
        return self._open.get(method, 0)

    def _enter(self, method: str, context: grpc.ServicerContext) -> None:
        with self._lock:
            if self._open[method] < self.limits[method]:
                self._open[method] += 1
                return
            self.rejected += 1
        name = method.rsplit("/", 1)[-1]
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{name}: {self.limits[method]} streams already open on this server; retry "
            "with backoff or close an idle one",
        )

    def _leave(self, method: str) -> None:
        with self._lock:
            self._open[method] -= 1

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in self.limits:
            return handler
        return self._wrapped.get(method, handler, self._held)

    def _held(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        held = wrap_holding(
            handler, lambda context: self._enter(method, context), lambda: self._leave(method)
        )
        # A stream stalled on its client is cancelled, which frees the slot held here.
        return held if self.stalled is None else self.stalled.wrap(held, method)


class ConcurrencyLimiter(grpc.ServerInterceptor):
    """At most ``max_concurrent`` RPCs at work and ``max_queue`` waiting for a slot.

    A waiter gives up after ``queue_timeout`` seconds (or at its deadline) with
    RESOURCE_EXHAUSTED (DEADLINE_EXCEEDED if its deadline passed). Methods whose full name
    starts with one of ``exempt`` are neither counted nor refused. A streaming RPC holds
    its slot until its stream ends.
    """

    def __init__(
        self,
        max_concurrent: int,
        max_queue: int = 0,
        queue_timeout: float = 0.05,
        exempt: Iterable[str] = DEFAULT_EXEMPT,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent: must be at least 1")
        if max_queue < 0:
            raise ValueError("max_queue: must not be negative")
        if queue_timeout < 0:
            raise ValueError("queue_timeout: must not be negative")
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.exempt = tuple(exempt)
        # A plain lock under the condition: the fast path (a free slot, nobody waiting)
        # takes it directly, without the Condition's Python-level __enter__.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._running = 0
        self._waiting = 0
        self.rejected = 0
        self.expired = 0
        self._wrapped = WrappedByMethod()

    @property
    def in_flight(self) -> int:
        """RPCs holding a slot now (for a gauge)."""
        return self._running

    @property
    def waiting(self) -> int:
        """RPCs waiting for a slot now (for a gauge: the queue depth)."""
        return self._waiting

    # -- slots -----------------------------------------------------------------------------

    def _expired(self, context: grpc.ServicerContext, method: str) -> None:
        with self._cond:
            self.expired += 1
        context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"deadline passed before {method} started; nothing was done",
        )

    def _overloaded(self, context: grpc.ServicerContext, busy: int) -> None:
        context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"server overloaded: {busy} in flight; retry with backoff",
        )

    def _acquire(self, context: grpc.ServicerContext, method: str) -> None:
        """Take a slot or abort the call (RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED)."""
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            self._expired(context, method)
        with self._lock:
            # Newcomers do not jump the queue: a free slot goes to a waiter first.
            if self._running < self.max_concurrent and self._waiting == 0:
                self._running += 1
                return
        self._wait_for_slot(context, method, remaining)

    def _wait_for_slot(self, context: grpc.ServicerContext, method: str,
                       remaining: float | None) -> None:
        """:meth:`_acquire` when no slot was free at once: queue (bounded, for a bounded
        time) or abort."""
        with self._cond:
            if self._running < self.max_concurrent and self._waiting == 0:
                self._running += 1
                return
            if self._waiting >= self.max_queue:
                self.rejected += 1
                busy = self._running + self._waiting
                acquired = False
            else:
                wait = (
                    self.queue_timeout if remaining is None else min(self.queue_timeout, remaining)
                )
                end = time.monotonic() + wait
                self._waiting += 1
                try:
                    while self._running >= self.max_concurrent:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        self._cond.wait(left)
                    acquired = self._running < self.max_concurrent
                    if acquired:
                        self._running += 1
                    else:
                        self.rejected += 1
                finally:
                    self._waiting -= 1
                busy = self._running + self._waiting
        if not acquired:
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                self._expired(context, method)
            self._overloaded(context, busy)
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            # The deadline passed while this call waited: give the slot back, do no work.
            self._release()
            self._expired(context, method)

    def _release(self) -> None:
        with self._lock:
            self._running -= 1
            if self._waiting:  # counted under this lock before a waiter waits
                self._cond.notify()

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.exempt):
            return handler
        return self._wrapped.get(method, handler, self._held)

    def _held(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        return wrap_holding(handler, lambda context: self._acquire(context, method),
                            self._release)
