"""One key of the lease bucket held by this node: a partition's (``part.<p>``) or the
learner's (``learner``).

The bucket's TTL is the lease: the holder ``create``s the key (refused while anyone holds
it) and renews it every lease round with a compare-and-set ``update`` on the revision it
last wrote; a holder that dies stops renewing and the key expires. A renewal refused on
the revision means the key expired and someone may hold it now: the lease is lost, and
the caller must stop acting on it. Any other failure (NATS unreachable, a leader being
elected) leaves the question open, which is why the callers keep a fence: they act on a
lease only until a fraction of the TTL after the start of the last round whose renewals
all succeeded.

Both the partitions (cluster/node.py) and the learner (cluster/model_sync.py) hold their
leases through this class, so the two cannot drift apart on what "lost" means.
"""

from __future__ import annotations

import logging
from typing import Any

import nats.js.errors

log = logging.getLogger("nudge.server.cluster")


class KvLease:
    """A lease key and the revision this node last wrote to it (0: not held)."""

    def __init__(self, kv: Any, key: str, holder: str) -> None:
        self.kv = kv
        self.key = key
        self.value = holder.encode()
        self.revision = 0
        # Released (a hand-over, a clean stop): ``keep`` neither renews nor takes it back,
        # even when it was in flight as the release ran, until ``take`` holds it again.
        self.released = False

    @property
    def held(self) -> bool:
        return self.revision != 0

    async def take(self) -> bool:
        """Create the key; False when another holder has it (or got it first)."""
        try:
            self.revision = await self.kv.create(self.key, self.value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self.released = False
        return True

    async def renew(self) -> bool:
        """Compare-and-set on the last revision: False when the lease was lost (it expired;
        someone may hold it). Raises when NATS did not answer: nothing is known then.

        A renewal whose answer timed out may still have been stored: the key then holds
        this holder's value at a newer revision than the one kept here, and the next
        compare-and-set fails on it. That is this holder's own write, not a loss (on a
        loaded host every lease of a node was "lost" this way at once, and moved): the
        key is read, and a value that is still ours is renewed from its revision."""
        try:
            self.revision = await self.kv.update(self.key, self.value, last=self.revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            pass
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            entry = None
        if entry is None or entry.value != self.value or not entry.revision:
            self.revision = 0
            return False
        try:
            self.revision = await self.kv.update(self.key, self.value, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:  # changed again meanwhile
            self.revision = 0
            return False
        return True

    async def keep(self) -> bool:
        """Renew; when the lease lapsed, take it again if no one else has: False only when
        another holder has it now.

        A lease lapses without its holder dying when the bucket's stream leader dies: no
        renewal is possible until JetStream elects another (seconds), and by then every
        key is past its TTL. The holder was fenced meanwhile (it stopped acting on the
        lease when its renewals stopped), so taking the key back at once is as safe as
        any other take, and spares the partition a move to nowhere and back."""
        if not self.held or self.released:
            return False
        return await self.renew() or (not self.released and await self.take())

    async def release(self) -> None:
        """Delete the key (only if still ours) so another node can take it at once instead
        of after the TTL; a failure only delays that, so it is logged, not raised."""
        self.released = True
        revision, self.revision = self.revision, 0
        if not revision:
            return
        try:
            await self.kv.delete(self.key, last=revision)
        except Exception as exc:
            log.warning("cluster: could not release lease %s: %s", self.key, exc)
