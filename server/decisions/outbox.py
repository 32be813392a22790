"""One coordinated outbox for every channel: scheduled deliveries, leased to adapters at
least once, acknowledged sent or failed, cancelled when the goal comes first.

Every state change is a durable write through the group-committing writer, so a restart
loses nothing: a leased delivery whose adapter never acknowledged is streamed again when
its lease expires. ``outbox`` indexes each active delivery by the time it next needs
attention (its due time while scheduled, its lease expiry while leased).

Coordination across channels and campaigns, checked when a delivery is about to go out:
one user never gets two messages within ``cross_channel_gap`` seconds (the later one
waits), and the same message is never sent on two channels (the duplicate is cancelled).
A cancellation never races a send into "both": a scheduled delivery is cancelled at once;
a leased one is marked, and is cancelled instead of redelivered if its lease expires
without a SENT acknowledgement (an acknowledged SENT stands: it was sent).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import lmdb
import orjson

from nudge.server.errors import FailedPrecondition, NotFound
from nudge.server.storage import contacts
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store

SCHEDULED, LEASED, SENT, FAILED, CANCELLED = "scheduled", "leased", "sent", "failed", "cancelled"
ACTIVE = (SCHEDULED, LEASED)
# The same message of a campaign is not sent again on another channel within this window.
DUPLICATE_WINDOW = 7 * 86_400.0


@dataclass
class Delivery:
    delivery_id: str
    decision_id: str
    user_id: str
    campaign: str
    channel: str
    message: str
    text: str
    offer: str
    due_at: float
    status: str = SCHEDULED
    attempt: int = 0
    lease_expires: float = 0.0
    adapter: str = ""
    # The decision's other actions, best first, for a fallback after a failure.
    alternatives: list[dict[str, Any]] = field(default_factory=list)
    cancel_on: list[str] = field(default_factory=list)
    cancel_requested: bool = False
    detail: str = ""
    sent_at: float | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> Delivery:
        return cls(**orjson.loads(raw))

    def index_key(self) -> bytes:
        at = self.due_at if self.status == SCHEDULED else self.lease_expires
        return int(at * 1000).to_bytes(8, "big") + self.delivery_id.encode()


def new_delivery_id() -> str:
    return uuid.uuid4().hex


class Outbox:
    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        default_lease_seconds: float = 30.0,
        cross_channel_gap: float = 3_600.0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.default_lease_seconds = default_lease_seconds
        self.cross_channel_gap = cross_channel_gap
        # Set whenever something may have become due: streams wake instead of polling.
        self.changed = threading.Condition()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- inside a write transaction -------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, delivery_id: str) -> Delivery | None:
        raw = txn.get(delivery_id.encode(), db=self.store.dbs["deliveries"])
        return None if raw is None else Delivery.from_bytes(raw)

    def _put(self, txn: lmdb.Transaction, d: Delivery, old_key: bytes | None = None) -> None:
        dbs = self.store.dbs
        if old_key is not None:
            txn.delete(old_key, db=dbs["outbox"])
        txn.put(d.delivery_id.encode(), d.to_bytes(), db=dbs["deliveries"])
        if d.status in ACTIVE:
            txn.put(d.index_key(), b"", db=dbs["outbox"])

    def schedule(self, txn: lmdb.Transaction, deliveries: Iterable[Delivery]) -> None:
        for d in deliveries:
            self._put(txn, d)
            txn.put(f"{d.user_id}\x00{d.delivery_id}".encode(), b"",
                    db=self.store.dbs["user_deliveries"])

    def user_deliveries(self, txn: lmdb.Transaction, user_id: str) -> list[Delivery]:
        prefix = f"{user_id}\x00".encode()
        cursor = txn.cursor(db=self.store.dbs["user_deliveries"])
        out = []
        if cursor.set_range(prefix):
            for key in cursor.iternext(values=False):
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                d = self._get(txn, key[len(prefix):].decode())
                if d is not None:
                    out.append(d)
        return out

    def cancel_for_event(self, txn: lmdb.Transaction, user_id: str, event_type: str) -> int:
        """The user did what a journey waited for: cancel its deliveries not yet sent."""
        cancelled = 0
        for d in self.user_deliveries(txn, user_id):
            if d.status not in ACTIVE or event_type not in d.cancel_on:
                continue
            key = d.index_key()
            if d.status == SCHEDULED:
                d.status, d.detail = CANCELLED, f"cancelled: {event_type} came first"
                self._never_sent(txn, d)
            else:
                d.cancel_requested = True
            self._put(txn, d, key)
            cancelled += 1
        return cancelled

    # -- adapters -------------------------------------------------------------------------

    def lease(
        self, now: float, channels: set[str], adapter: str, lease_seconds: float, limit: int = 64
    ) -> list[Delivery]:
        """Lease what is due on these channels (all when empty), durably."""
        return self.writer.submit_job(
            lambda txn: self._lease(txn, now, channels, adapter, lease_seconds, limit)
        ).result()

    def _lease(
        self, txn: lmdb.Transaction, now: float, channels: set[str], adapter: str,
        lease_seconds: float, limit: int,
    ) -> list[Delivery]:
        limit_key = int(now * 1000).to_bytes(8, "big") + b"\xff"
        due = []
        cursor = txn.cursor(db=self.store.dbs["outbox"])
        if cursor.first():
            for key in cursor.iternext(values=False):
                key = bytes(key)
                if key > limit_key:
                    break
                due.append(key)
        leased: list[Delivery] = []
        for key in due:
            if len(leased) >= limit:
                break
            d = self._get(txn, key[8:].decode())
            if d is None or d.status not in ACTIVE:
                txn.delete(key, db=self.store.dbs["outbox"])
                continue
            if channels and d.channel not in channels:
                continue
            if d.status == LEASED and d.cancel_requested:
                d.status, d.detail = CANCELLED, "cancelled: the goal came first (lease expired)"
                self._put(txn, d, key)
                self._never_sent(txn, d)
                continue
            wait_until = self._coordination(txn, d, now)
            if wait_until is None:  # the same message already went out on another channel
                d.status, d.detail = CANCELLED, "cancelled: already sent on another channel"
                self._put(txn, d, key)
                self._never_sent(txn, d)
                continue
            if wait_until > now:  # inside the cross-channel gap: later
                d.status, d.due_at = SCHEDULED, wait_until
                self._put(txn, d, key)
                continue
            d.status, d.adapter = LEASED, adapter
            d.attempt += 1
            d.lease_expires = now + lease_seconds
            self._put(txn, d, key)
            leased.append(d)
        return leased

    def _coordination(self, txn: lmdb.Transaction, d: Delivery, now: float) -> float | None:
        """When ``d`` may go out: now, later (cross-channel gap), or never (None)."""
        earliest = now
        for other in self.user_deliveries(txn, d.user_id):
            if other.delivery_id == d.delivery_id:
                continue
            if (
                other.status == SENT
                and other.campaign == d.campaign
                and other.message == d.message
                and other.channel != d.channel
                and other.sent_at is not None
                and now - other.sent_at < DUPLICATE_WINDOW
            ):
                return None
            last = other.sent_at if other.status == SENT else (
                now if other.status == LEASED and other.lease_expires > now else None
            )
            if last is not None and now - last < self.cross_channel_gap:
                earliest = max(earliest, last + self.cross_channel_gap)
        return earliest

    def ack(self, delivery_id: str, sent: bool, detail: str, now: float) -> Delivery | None:
        """Record an adapter's answer; on failure, return the fallback delivery scheduled."""
        result: dict[str, Any] = {}

        def job(txn: lmdb.Transaction) -> None:
            d = self._get(txn, delivery_id)
            if d is None:
                result["error"] = NotFound(f"delivery_id: {delivery_id!r} is unknown")
                return
            if d.status == (SENT if sent else FAILED):
                return  # a retried acknowledgement
            if d.status != LEASED:
                result["error"] = FailedPrecondition(
                    f"delivery_id: {delivery_id!r} is {d.status}, not leased; only a leased "
                    "delivery can be acknowledged"
                )
                return
            key = d.index_key()
            d.detail = detail
            if sent:
                d.status, d.sent_at = SENT, now
                self._put(txn, d, key)
                return
            d.status = FAILED
            self._put(txn, d, key)
            fallback = self._fallback(txn, d, now)
            if fallback is not None:
                self.schedule(txn, [fallback])
                result["fallback"] = fallback
                # The caps count the fallback's message instead of the failed one.
                contacts.replace(txn, self.store.dbs["contacts"], d.user_id, d.decision_id,
                                 d.campaign, d.channel, d.due_at, fallback.channel,
                                 fallback.due_at)
            else:
                self._never_sent(txn, d)

        self.writer.submit_job(job).result()
        if "error" in result:
            raise result["error"]
        if "fallback" in result:
            self.notify()
        return result.get("fallback")

    def _never_sent(self, txn: lmdb.Transaction, d: Delivery) -> None:
        """A delivery that will not reach the user stops counting against the caps."""
        contacts.forget(txn, self.store.dbs["contacts"], d.user_id, d.decision_id, d.channel,
                        d.due_at)

    def _fallback(self, txn: lmdb.Transaction, failed: Delivery, now: float) -> Delivery | None:
        tried = {d.channel for d in self.user_deliveries(txn, failed.user_id)
                 if d.decision_id == failed.decision_id}
        for i, alt in enumerate(failed.alternatives):
            if alt["channel"] in tried:
                continue
            return Delivery(
                delivery_id=new_delivery_id(), decision_id=failed.decision_id,
                user_id=failed.user_id, campaign=failed.campaign, channel=alt["channel"],
                message=alt["message"], text=alt["text"], offer=alt["offer"], due_at=now,
                alternatives=failed.alternatives[i + 1:], cancel_on=failed.cancel_on,
                detail=f"fallback after {failed.channel} failed",
            )
        return None

    def get(self, delivery_id: str) -> Delivery | None:
        with self.store.read() as txn:
            return self._get(txn, delivery_id)

    def depth(self) -> int:
        """Active deliveries (for a gauge)."""
        with self.store.read() as txn:
            return int(txn.stat(self.store.dbs["outbox"])["entries"])
