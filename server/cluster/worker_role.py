"""One worker's part in a shared store: lead (learn, expire, run journeys) or follow.

Every WORKER_POLL_SECONDS a worker re-reads what the other processes may have changed
and this process caches (the event type registry, the leader's stored models), and a
follower tries to take the lead, which the kernel frees when the leader exits. A new
leader first adopts the stored models, so learning resumes from the stored position of
the rewards log: nothing is learned twice or skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from nudge.server.cluster.leadership import Leadership
from nudge.server.decisions.learner import Learner
from nudge.server.storage.store import Store

log = logging.getLogger("nudge.server")

WORKER_POLL_SECONDS = 0.25


class WorkerRole:
    """Runs the leader's work in exactly one process of a shared store."""

    def __init__(
        self,
        store: Store,
        learner: Learner,
        leadership: Leadership,
        start_leading: Callable[[], None],
        poll_seconds: float = WORKER_POLL_SECONDS,
    ) -> None:
        self.store = store
        self.learner = learner
        self.leadership = leadership
        self._start_leading = start_leading
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nudge-worker-role", daemon=True)

    @property
    def leading(self) -> bool:
        return self.leadership.leading

    def start(self) -> None:
        self.poll()
        self._thread.start()

    def poll(self) -> None:
        """Catch up with the other processes, and lead if the lead is free."""
        self.store.refresh_types()
        if self.leadership.leading:
            return
        self.learner.follow()
        if self.leadership.try_acquire():
            self.learner.follow()  # the last models the previous leader stored
            log.info("this worker now leads: learner, expiry and journeys run here")
            self._start_leading()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # keep following; the failure is in the log
                log.exception("worker role poll failed")

    def close(self) -> None:
        """Stop polling (the lead is released when the store closes, after the learner
        has stored its models)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
