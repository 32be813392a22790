"""One coordinated outbox for every channel: scheduled deliveries, leased to adapters at
least once, acknowledged sent or failed, cancelled when the goal comes first.

Every state change is a durable write through the group-committing writer, so a restart
loses nothing: a leased delivery whose adapter never acknowledged is streamed again when
its lease expires. ``outbox`` indexes each active delivery by the time it next needs
attention (its due time while scheduled, its lease expiry while leased).

Coordination across channels and campaigns, checked when a delivery is about to go out:
one user never gets two messages within ``cross_channel_gap`` seconds (the later one
waits), and the same message is never sent on two channels (the duplicate is cancelled).
A delivery whose campaign checked consent is checked again then, and cancelled if the
customer revoked consent for its channel since the decision; one due inside its campaign's
quiet hours in the user's zone (moved there by the gap or a redelivery) waits for their
end. A cancellation never races a
send into "both": a scheduled delivery is cancelled at once;
a leased one is marked, and is cancelled instead of redelivered if its lease expires
without a SENT acknowledgement (an acknowledged SENT stands: it was sent).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from datetime import datetime, timedelta
from datetime import time as dtime
from hashlib import blake2b
from typing import Any

import lmdb

from nudge.server.decisions.campaign import in_quiet_hours
from nudge.server.decisions.guardrails import channel_consented
from nudge.server.errors import FailedPrecondition, NotFound
from nudge.server.inputs.events import time_zone
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import contacts, deliveries, users
from nudge.server.storage.tables.deliveries import (
    ACTIVE,
    CANCELLED,
    FAILED,
    LEASED,
    SCHEDULED,
    SENT,
    Delivery,
)

# The same message of a campaign is not sent again on another channel within this window.
DUPLICATE_WINDOW = 7 * 86_400.0


# Cluster mode: how long an acknowledgement may wait for the log and the owner's apply.
LOGGED_ACK_TIMEOUT_SECONDS = 20.0


def quiet_until(now: float, tz: str, quiet_hours: list[int]) -> float | None:
    """The end of the quiet period ``now`` falls in, in the user's zone ``tz`` (quiet
    hours as [start, end] minutes of the local day, wrapping midnight when start > end);
    None when ``now`` is not quiet there. A delivery moved by the cross-channel gap (20:30
    plus an hour) or redelivered late could fall inside them, and went out then until
    2026-12-03: the decision's check of its send time does not cover where it lands."""
    end = quiet_hours[1]
    zone = time_zone(tz)
    local = datetime.fromtimestamp(now, zone)
    minute = local.hour * 60 + local.minute + local.second / 60
    if not in_quiet_hours(minute, quiet_hours):
        return None
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    until = datetime.combine(day, dtime(end // 60, end % 60), tzinfo=zone).timestamp()
    return max(until, now + 1.0)


def new_delivery_id() -> str:
    return uuid.uuid4().hex


def fallback_delivery_id(failed_id: str) -> str:
    """(Cluster) The fallback of a failed delivery gets an id derived from it: every
    store applying the logged FAILED acknowledgement schedules the same fallback, so a
    new owner never sends under another id what the old one may have sent."""
    return blake2b(f"fallback:{failed_id}".encode(), digest_size=16).hexdigest()


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
        # Cluster mode: leases go out only for users whose partition this node serves,
        # and an acknowledgement goes through the replicated log (``log_ack(user_id,
        # answer)`` resolves with what ``ack_logged`` applied on this node, the owner).
        self.serves: Callable[[str], bool] = lambda _user_id: True
        self.log_ack: Callable[[str, dict[str, Any]], Future[Delivery | None]] | None = None
        # Set whenever something may have become due: streams wake instead of polling.
        self.changed = threading.Condition()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    # -- inside a write transaction -------------------------------------------------------

    def _get(self, txn: lmdb.Transaction, delivery_id: str) -> Delivery | None:
        return deliveries.get(txn, self.store.dbs, delivery_id)

    def _put(self, txn: lmdb.Transaction, d: Delivery, old_key: bytes | None = None) -> None:
        deliveries.put(txn, self.store.dbs, d, old_key)

    def schedule(self, txn: lmdb.Transaction, scheduled: Iterable[Delivery]) -> None:
        for d in scheduled:
            self._put(txn, d)
            deliveries.add_to_user(txn, self.store.dbs, d)

    def user_deliveries(self, txn: lmdb.Transaction, user_id: str) -> list[Delivery]:
        out = []
        for delivery_id in deliveries.ids_of_user(txn, self.store.dbs, user_id):
            d = self._get(txn, delivery_id)
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
        due = deliveries.due(txn, self.store.dbs, now)
        leased: list[Delivery] = []
        for key in due:
            if len(leased) >= limit:
                break
            d = self._get(txn, deliveries.delivery_id(key))
            if d is None or d.status not in ACTIVE:
                deliveries.unindex(txn, self.store.dbs, key)
                continue
            if channels and d.channel not in channels:
                continue
            if not self.serves(d.user_id):  # another node's partition (cluster): its owner
                continue
            if d.status == LEASED and d.cancel_requested:
                d.status, d.detail = CANCELLED, "cancelled: the goal came first (lease expired)"
                self._put(txn, d, key)
                self._never_sent(txn, d)
                continue
            profile = (users.profile(txn, self.store.dbs, d.user_id)
                       if d.consent_checked or d.quiet_hours else None)
            if (d.consent_checked and profile is not None
                    and not channel_consented(profile.consents, d.channel)):
                # A journey's delivery goes out hours or days after its decision checked
                # consent: a customer who revoked it meanwhile must not get the message.
                d.status = CANCELLED
                d.detail = f"cancelled: no consent for {d.channel} any more"
                self._put(txn, d, key)
                self._never_sent(txn, d)
                continue
            if d.quiet_hours and profile is not None:
                quiet_end = quiet_until(now, profile.tz, d.quiet_hours)
                if quiet_end is not None:  # due inside the user's quiet hours: at their end
                    d.status, d.due_at = SCHEDULED, quiet_end
                    self._put(txn, d, key)
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
        if self.log_ack is not None:
            return self._ack_through_log(delivery_id, sent, detail, now)
        result: dict[str, Any] = {}
        self.writer.submit_job(self._ack_job(delivery_id, sent, detail, now, result)).result()
        if "error" in result:
            raise result["error"]
        if "fallback" in result:
            self.notify()
        return result.get("fallback")

    def _ack_through_log(
        self, delivery_id: str, sent: bool, detail: str, now: float
    ) -> Delivery | None:
        assert self.log_ack is not None
        d = self.get(delivery_id)
        if d is None:
            raise NotFound(f"delivery_id: {delivery_id!r} is unknown")
        # SCHEDULED here may have been leased by the partition's previous owner (leases
        # are not logged): the adapter's answer about it stands.
        if d.status not in (LEASED, SCHEDULED, SENT if sent else FAILED):
            raise FailedPrecondition(
                f"delivery_id: {delivery_id!r} is {d.status}, not leased; only a leased "
                "delivery can be acknowledged")
        answer = {"delivery_id": delivery_id, "sent": sent, "detail": detail, "now": now}
        fallback = self.log_ack(d.user_id, answer).result(LOGGED_ACK_TIMEOUT_SECONDS)
        if fallback is not None:
            self.notify()
        return fallback

    def ack_logged(
        self, answer: dict[str, Any], position: Callable[[lmdb.Transaction], None]
    ) -> Future[Delivery | None]:
        """(Cluster, the owner) Apply an acknowledgement from the log, with the log
        position in the same transaction. A delivery still SCHEDULED here was leased by
        the partition's previous owner (leases are not logged): its answer stands."""
        result: dict[str, Any] = {}
        job = self._ack_job(str(answer["delivery_id"]), bool(answer["sent"]),
                            str(answer["detail"]), float(answer["now"]), result, position)
        future: Future[Delivery | None] = Future()

        def done(committed: Future[None]) -> None:
            error = committed.exception() or result.get("error")
            if error is not None:
                future.set_exception(error)
                return
            if "fallback" in result:
                self.notify()
            future.set_result(result.get("fallback"))

        self.writer.submit_job(job).add_done_callback(done)
        return future

    def _ack_job(
        self, delivery_id: str, sent: bool, detail: str, now: float, result: dict[str, Any],
        position: Callable[[lmdb.Transaction], None] | None = None,
    ) -> Callable[[lmdb.Transaction], None]:
        logged = position is not None

        def job(txn: lmdb.Transaction) -> None:
            if position is not None:
                position(txn)
            result.clear()
            d = self._get(txn, delivery_id)
            if d is None:
                result["error"] = NotFound(f"delivery_id: {delivery_id!r} is unknown")
                return
            if d.status == (SENT if sent else FAILED):
                return  # a retried acknowledgement
            if d.status != LEASED and not (logged and d.status == SCHEDULED):
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
            fallback = self._fallback(txn, d, now, logged)
            if fallback is not None:
                self.schedule(txn, [fallback])
                result["fallback"] = fallback
                # The caps count the fallback's message instead of the failed one.
                contacts.replace(txn, self.store.dbs, d.user_id, d.decision_id,
                                 d.campaign, d.channel, d.due_at, fallback.channel,
                                 fallback.due_at)
            else:
                self._never_sent(txn, d)

        return job

    def schedule_logged(
        self, deliveries_: list[Delivery], done_key: bytes | None,
        position: Callable[[lmdb.Transaction], None],
        forget: Callable[[lmdb.Transaction, bytes], None],
    ) -> Future[None]:
        """(Cluster, the owner) Apply a journey's deliveries from the log: schedule the
        ones not stored yet and ``forget`` the trigger they answer, with the position."""

        def job(txn: lmdb.Transaction) -> None:
            position(txn)
            self.schedule(txn, [d for d in deliveries_ if self._get(txn, d.delivery_id) is None])
            if done_key is not None:
                forget(txn, done_key)

        future = self.writer.submit_job(job)
        future.add_done_callback(lambda _f: self.notify())
        return future

    def _never_sent(self, txn: lmdb.Transaction, d: Delivery) -> None:
        """A delivery that will not reach the user stops counting against the caps."""
        contacts.forget(txn, self.store.dbs, d.user_id, d.decision_id, d.channel,
                        d.due_at)

    def _fallback(
        self, txn: lmdb.Transaction, failed: Delivery, now: float, logged: bool = False
    ) -> Delivery | None:
        tried = {d.channel for d in self.user_deliveries(txn, failed.user_id)
                 if d.decision_id == failed.decision_id}
        for i, alt in enumerate(failed.alternatives):
            if alt["channel"] in tried:
                continue
            return Delivery(
                delivery_id=fallback_delivery_id(failed.delivery_id) if logged
                else new_delivery_id(), decision_id=failed.decision_id,
                user_id=failed.user_id, campaign=failed.campaign, channel=alt["channel"],
                message=alt["message"], text=alt["text"], offer=alt["offer"], due_at=now,
                alternatives=failed.alternatives[i + 1:], cancel_on=failed.cancel_on,
                detail=f"fallback after {failed.channel} failed",
                consent_checked=failed.consent_checked, quiet_hours=failed.quiet_hours,
            )
        return None

    def get(self, delivery_id: str) -> Delivery | None:
        with self.store.read() as txn:
            return self._get(txn, delivery_id)

    def depth(self) -> int:
        """Active deliveries (for a gauge)."""
        with self.store.read() as txn:
            return deliveries.active_count(txn, self.store.dbs)
