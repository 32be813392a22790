"""Write-behind: what a request left pending is stored shortly after the reply.

ScoreTransaction and Decide answer before their changes are durable (their callers cannot
wait for an fsync); what they changed is flushed into the next group commit by a
background thread (``DelayedFlusher``), ``delay`` seconds after it is woken. Not inside the
request: waking the writer there hands it the GIL when a kernel releases it, and the reply
then waits for the writer's Python work. The delay also lets a burst of calls share one
flush. ``WriteBehind`` is the buffer both engines use: a flush's future, the flusher, and
what happens after the commit or its failure.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Generic, TypeVar

import lmdb

if TYPE_CHECKING:
    from nudge.server.storage.group_commit import GroupCommitWriter

log = logging.getLogger(__name__)

# How often an idle flusher checks for work whose wake-up never came.
POLL_SECONDS = 0.1
# After failed flushes (a full disk, say) the wait before the next try doubles up to this:
# what is pending stays pending, without a retry and an error line every millisecond.
MAX_BACKOFF_SECONDS = 1.0
W = TypeVar("W")


class DelayedFlusher:
    """Runs ``flush()`` ``delay`` seconds after ``wake()``, and once more on ``close()``.

    ``flush`` calls ``taken()`` (inside its own lock, once it has swapped out what is
    pending) so a wake-up arriving after that swap is not lost, and returns False when the
    store refused the flush (what it held is pending again): the next try then waits
    twice as long as the last, up to MAX_BACKOFF_SECONDS. ``pending()`` lets the periodic
    check find work whose wake-up was left to a callback that never ran.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[], bool | None],
        delay: float,
        pending: Callable[[], bool] = lambda: False,
    ) -> None:
        self.delay = delay
        self.failures = 0
        self._flush = flush
        self._pending = pending
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def taken(self) -> None:
        self._wake.clear()

    def _run(self) -> None:
        while True:
            self._wake.wait(timeout=POLL_SECONDS)
            if self._closing.is_set():
                try:
                    self._flush()
                except Exception:
                    log.exception("%s: the last flush failed", self._thread.name)
                return
            if self._wake.is_set() or self._pending():
                # Waits out the delay, or less when closing (the last flush then runs).
                self._closing.wait(self.wait_before_flush())
                try:
                    stored = self._flush() is not False
                except Exception:  # keep flushing: a dead flusher would store nothing again
                    log.exception("%s: flush failed; will retry", self._thread.name)
                    stored = False
                self.failures = 0 if stored else self.failures + 1

    def wait_before_flush(self) -> float:
        """``delay``, doubled for each failed flush in a row (up to the maximum)."""
        if not self.failures:
            return self.delay
        return min(MAX_BACKOFF_SECONDS, self.delay * 2.0 ** self.failures)

    def close(self) -> None:
        """Flush what is left and stop the thread."""
        self._closing.set()
        self._wake.set()
        self._thread.join()


class WriteBehind(Generic[W]):
    """Changes a request answered from memory, stored by the group commit just after.

    The owner keeps what is pending (under its own ``lock``, shared with this buffer);
    ``write(txn)`` stores all of it inside a group commit and returns what it wrote, and
    ``stored(written)``, run in the writer thread right after the commit (before its next
    batch), drops what was stored and not changed since. What the store refused stays
    pending, and the flush is tried again (with the flusher's backoff). Other jobs may
    call ``write`` in their own commits too (then ``stored`` after theirs).
    """

    def __init__(
        self,
        name: str,
        writer: GroupCommitWriter,
        lock: threading.Lock,
        write: Callable[[lmdb.Transaction], W],
        stored: Callable[[W], None],
        delay: float,
    ) -> None:
        self._name = name
        self._writer = writer
        self._lock = lock
        self._write = write
        self._stored = stored
        self._next: Future[None] | None = None
        self._flusher = DelayedFlusher(name, self._flush_now, delay,
                                       pending=lambda: self._next is not None)

    @property
    def requested(self) -> bool:
        """(Inside the lock.) Whether a flush is already asked for."""
        return self._next is not None

    def request(self, wake: bool = True) -> Future[None]:
        """(Inside the lock.) The future of the flush that will store what is pending now;
        ``wake=False`` leaves waking the flusher to the caller (``wake()``, say once a
        reply has been sent)."""
        if self._next is None:
            self._next = Future()
            if wake:
                self._flusher.wake()
        return self._next

    def wake(self) -> None:
        self._flusher.wake()

    def _flush_now(self) -> bool:
        """Store what is pending; False when the store refused it."""
        with self._lock:
            self._flusher.taken()
            future, self._next = self._next, None
        if future is None:
            return True

        def done(committed: Future[W]) -> None:
            error = committed.exception()
            if error is not None:
                log.error("%s: storing failed: %s", self._name, error)
                future.set_exception(error)
                with self._lock:
                    self.request()  # still pending: the next flush tries again
                return
            self._stored(committed.result())
            future.set_result(None)

        self._writer.submit_job(self._write).add_done_callback(done)
        return future.exception() is None  # wait: one flush in the writer at a time

    def flush_soon(self) -> Future[None]:
        """The future of the flush that will store what is pending now (not waiting)."""
        with self._lock:
            return self.request()

    def flush(self) -> None:
        """Store everything pending now (tests, shutdown)."""
        self.flush_soon().result()

    def close(self) -> None:
        """Store what is left and stop the flusher (before the writer closes)."""
        self._flusher.close()
