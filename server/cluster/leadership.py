"""Which process of a shared store leads: runs the learner, outcome expiry and journeys.

With ``nudge serve --workers N`` every process answers RPCs, but the single learner (one
posterior, one position in the rewards log), the expiry of decisions and the journey
worker must run once. The leader is whoever holds an exclusive ``flock`` on
``leader.lock`` in the data folder. The kernel releases the lock when its holder exits,
however it exits (``kill -9`` included), so a follower that keeps trying takes over
without any timeout to tune and without two leaders at once.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "leader.lock"


class Leadership:
    """This process's claim on the leader lock of one data folder."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.leading = False

    def try_acquire(self) -> bool:
        """Take the lead if nobody holds it; True when this process leads (now or before)."""
        if self.leading:
            return True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)
        self.leading = True
        return True

    def close(self) -> None:
        """Give up the lead (closing the descriptor releases the lock)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.leading = False
