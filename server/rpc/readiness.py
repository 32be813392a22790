"""Whether the server may take work: SERVING only after the store is open and every
kernel has been compiled and called once, so no request pays for compilation."""

from __future__ import annotations

import threading

from nudge.server.errors import Unavailable


class Readiness:
    def __init__(self) -> None:
        self._ready = threading.Event()
        self._stopping = threading.Event()
        # ready, as one attribute: a handler on the hot path reads it (two Event.is_set
        # calls and this method's own are several microseconds on a cold cache) and calls
        # check() only when it is False.
        self.serving = False

    def set_ready(self) -> None:
        self._ready.set()
        self.serving = not self._stopping.is_set()

    def set_stopping(self) -> None:
        self._stopping.set()
        self.serving = False

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._stopping.is_set()

    def check(self) -> None:
        """Raise UNAVAILABLE unless the server is ready for work."""
        if not self._ready.is_set():
            raise Unavailable("server is warming up; retry shortly")
        if self._stopping.is_set():
            raise Unavailable("server is shutting down; retry on another instance")
