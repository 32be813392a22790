"""Long-lived streams whose client stopped taking part are cancelled, freeing their slot.

TrackStream, DecideBatch and StreamDeliveries each have a few slots on a server
(``StreamLimiter``): a stream holds one, and a thread, until it ends. A client can hold one
without doing anything: it opens a TrackStream and never sends (or never half-closes), it
stops reading DecideBatch's or StreamDeliveries' replies, or its machine vanishes without
closing the connection. While it does, every other client of that method is answered
RESOURCE_EXHAUSTED, for as long as the connection lives (the default HTTP/2 keepalive of
gRPC servers notices a vanished peer only after two hours).

So a stream is *stalled on its client* while the handler waits for the client's next
message, or waits for grpc to send a reply the client does not take (flow control stops it
once the client's window is full). Time the handler spends on its own work (committing,
deciding, waiting for deliveries to schedule) is never counted. A stream stalled for
``idle_seconds`` is cancelled: the client sees CANCELLED; what it sent before stands (a
TrackStream's events are stored, idempotent on their ids, so resending them is safe;
DecideBatch's decisions made are logged), the slot and the thread are free again, and the
server logs the method and peer. Keepalive pings (``app.keepalive_options``) take care of
a vanished peer whose stream is not waiting on it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from nudge.server.rpc.handlers import Behaviour, wrap_behaviour

log = logging.getLogger(__name__)

# What a stalled stream is waiting for, in the log line.
REQUEST = "the client's next message"
REPLY = "the client to take a reply"


class StalledStreams:
    """Watches streams while they wait on their client; cancels those stalled too long."""

    def __init__(self, idle_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_seconds = idle_seconds
        self.cancelled = 0
        self._clock = clock
        self._lock = threading.Lock()
        # id of a waiting stream -> (since, context, method, what it waits for)
        self._waiting: dict[int, tuple[float, grpc.ServicerContext, str, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- wrapping a handler ---------------------------------------------------------------

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """``handler`` with its request stream and its reply stream (whichever it has)
        watched; a handler with neither comes back unchanged."""
        if self.idle_seconds <= 0:
            return handler

        def requests(behaviour: Behaviour) -> Behaviour:
            if not handler.request_streaming:
                return behaviour
            return self._requests_watched(behaviour, method)

        return wrap_behaviour(handler, requests,
                              lambda behaviour: self._replies_watched(requests(behaviour),
                                                                      method))

    def _requests_watched(self, behaviour: Behaviour, method: str) -> Behaviour:
        def watched(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behaviour(self._requests(requests, context, method), context)

        return watched

    def _replies_watched(self, behaviour: Behaviour, method: str) -> Behaviour:
        def watched(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            key = id(context)
            replies = behaviour(request, context)
            try:
                for reply in replies:
                    self._wait(key, context, method, REPLY)
                    try:
                        yield reply  # grpc sends it before asking for the next one
                    finally:
                        self._done(key)
            finally:
                close = getattr(replies, "close", None)
                if close is not None:
                    close()  # a cancelled stream ends the handler's generator now

        return watched

    def _requests(self, requests: Iterator[Any], context: grpc.ServicerContext,
                  method: str) -> Iterator[Any]:
        key = id(requests)
        iterator = iter(requests)
        while True:
            self._wait(key, context, method, REQUEST)
            try:
                request = next(iterator)
            except StopIteration:
                return
            finally:
                self._done(key)
            yield request

    # -- the watch ------------------------------------------------------------------------

    def _wait(self, key: int, context: grpc.ServicerContext, method: str, what: str) -> None:
        with self._lock:
            self._waiting[key] = (self._clock(), context, method, what)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="nudge-stalled-streams",
                                                daemon=True)
                self._thread.start()

    def _done(self, key: int) -> None:
        with self._lock:
            self._waiting.pop(key, None)

    def check(self) -> int:
        """Cancel every stream stalled past the limit now; returns how many."""
        now = self._clock()
        with self._lock:
            stalled = [(key, entry) for key, entry in self._waiting.items()
                       if now - entry[0] >= self.idle_seconds]
            for key, _ in stalled:
                del self._waiting[key]
            self.cancelled += len(stalled)
        for _, (since, context, method, what) in stalled:
            log.warning("%s from %s: waited %.0f s for %s (stream_idle_seconds %g); "
                        "cancelled, freeing its slot", method.rsplit("/", 1)[-1],
                        context.peer(), now - since, what, self.idle_seconds)
            context.cancel()
        return len(stalled)

    def _run(self) -> None:
        period = min(max(self.idle_seconds / 4, 0.05), 1.0)
        while not self._stop.wait(period):
            self.check()

    def close(self) -> None:
        self._stop.set()
