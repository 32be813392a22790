"""A background thread that stores what a request left pending, shortly after the reply.

ScoreTransaction and Decide answer before their changes are durable (their callers cannot
wait for an fsync); what they changed is flushed into the next group commit by this
thread, ``delay`` seconds after it is woken. Not inside the request: waking the writer
there hands it the GIL when a kernel releases it, and the reply then waits for the
writer's Python work. The delay also lets a burst of calls share one flush.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

# How often an idle flusher checks for work whose wake-up never came.
POLL_SECONDS = 0.1
# After failed flushes (a full disk, say) the wait before the next try doubles up to this:
# what is pending stays pending, without a retry and an error line every millisecond.
MAX_BACKOFF_SECONDS = 1.0


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
                time.sleep(self.wait_before_flush())
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
