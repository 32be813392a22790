"""A background thread that stores what a request left pending, shortly after the reply.

ScoreTransaction and Decide answer before their changes are durable (their callers cannot
wait for an fsync); what they changed is flushed into the next group commit by this
thread, ``delay`` seconds after it is woken. Not inside the request: waking the writer
there hands it the GIL when a kernel releases it, and the reply then waits for the
writer's Python work. The delay also lets a burst of calls share one flush.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How often an idle flusher checks for work whose wake-up never came.
POLL_SECONDS = 0.1


class DelayedFlusher:
    """Runs ``flush()`` ``delay`` seconds after ``wake()``, and once more on ``close()``.

    ``flush`` calls ``taken()`` (inside its own lock, once it has swapped out what is
    pending) so a wake-up arriving after that swap is not lost. ``pending()`` lets the
    periodic check find work whose wake-up was left to a callback that never ran.
    """

    def __init__(
        self,
        name: str,
        flush: Callable[[], None],
        delay: float,
        pending: Callable[[], bool] = lambda: False,
    ) -> None:
        self.delay = delay
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
                self._flush()
                return
            if self._wake.is_set() or self._pending():
                time.sleep(self.delay)
                self._flush()

    def close(self) -> None:
        """Flush what is left and stop the thread."""
        self._closing.set()
        self._wake.set()
        self._thread.join()
