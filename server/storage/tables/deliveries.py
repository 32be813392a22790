"""The outbox's three databases:

- ``deliveries``: delivery id -> JSON of the delivery (scheduled, leased, sent, failed,
  cancelled);
- ``outbox``: 8-byte due time (ms, big-endian) + delivery id -> empty: what is due or
  whose lease expires, in time order (active deliveries only);
- ``user_deliveries``: user id + NUL + delivery id -> empty, for cancellation and
  cross-channel coordination.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb
import orjson

from nudge.server.storage.tables import keys

DELIVERIES = "deliveries"
OUTBOX = "outbox"
USER_DELIVERIES = "user_deliveries"

SCHEDULED, LEASED, SENT, FAILED, CANCELLED = "scheduled", "leased", "sent", "failed", "cancelled"
ACTIVE = (SCHEDULED, LEASED)
FINAL = (SENT, FAILED, CANCELLED)

Dbs = Mapping[str, Any]


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
    # The campaign's consent guardrail was on when this was decided: the channel's consent
    # is checked again when it is about to go out (a revocation in between cancels it).
    # False in deliveries stored before the field existed: they go out as they always did.
    consent_checked: bool = False
    # The campaign's quiet hours ([start, end] minutes of the local day) when decided: a
    # delivery that falls due inside them (moved by the cross-channel gap, a fallback, a
    # redelivery) waits for their end in the user's time zone. None: none, or stored
    # before the field existed.
    quiet_hours: list[int] | None = None
    detail: str = ""
    sent_at: float | None = None

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> Delivery:
        return cls(**orjson.loads(raw))

    def index_key(self) -> bytes:
        at = self.due_at if self.status == SCHEDULED else self.lease_expires
        return keys.millis(at) + self.delivery_id.encode()


def get(txn: lmdb.Transaction, dbs: Dbs, delivery_id: str) -> Delivery | None:
    raw = txn.get(delivery_id.encode(), db=dbs[DELIVERIES])
    return None if raw is None else Delivery.from_bytes(raw)


def put(txn: lmdb.Transaction, dbs: Dbs, d: Delivery, old_key: bytes | None = None) -> None:
    """Store a delivery and index it by the time it next needs attention (while active);
    ``old_key`` is the index key it had before this change."""
    if old_key is not None:
        txn.delete(old_key, db=dbs[OUTBOX])
    txn.put(d.delivery_id.encode(), d.to_bytes(), db=dbs[DELIVERIES])
    if d.status in ACTIVE:
        txn.put(d.index_key(), b"", db=dbs[OUTBOX])


def add_to_user(txn: lmdb.Transaction, dbs: Dbs, d: Delivery) -> None:
    txn.put(keys.pair(d.user_id, d.delivery_id), b"", db=dbs[USER_DELIVERIES])


def ids_of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[str]:
    return keys.items_of(txn, dbs[USER_DELIVERIES], user_id)


def due(txn: lmdb.Transaction, dbs: Dbs, now: float) -> list[bytes]:
    """Index keys of what is due (or whose lease expired) by ``now``, in time order."""
    limit_key = keys.millis(now) + b"\xff"
    out = []
    cursor = txn.cursor(db=dbs[OUTBOX])
    if cursor.first():
        for raw in cursor.iternext(values=False):
            raw = bytes(raw)
            if raw > limit_key:
                break
            out.append(raw)
    return out


def delivery_id(index_key: bytes) -> str:
    """The delivery an index key points to."""
    return index_key[8:].decode()


def unindex(txn: lmdb.Transaction, dbs: Dbs, index_key: bytes) -> None:
    txn.delete(index_key, db=dbs[OUTBOX])


def active_count(txn: lmdb.Transaction, dbs: Dbs) -> int:
    return int(txn.stat(dbs[OUTBOX])["entries"])


def every(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[Delivery]:
    """Every delivery, whatever its status."""
    for _, raw in txn.cursor(db=dbs[DELIVERIES]):
        yield Delivery.from_bytes(raw)


def delete(txn: lmdb.Transaction, dbs: Dbs, d: Delivery) -> None:
    """Drop a delivery with its indexes (erasure, retention)."""
    if d.status in ACTIVE:
        txn.delete(d.index_key(), db=dbs[OUTBOX])
    txn.delete(d.delivery_id.encode(), db=dbs[DELIVERIES])
    txn.delete(keys.pair(d.user_id, d.delivery_id), db=dbs[USER_DELIVERIES])


def final_before(
    txn: lmdb.Transaction, dbs: Dbs, after: bytes, limit: int, cutoff: float
) -> tuple[list[Delivery], bytes]:
    """Scan up to ``limit`` deliveries past key ``after`` (b"": from the start): those
    final (sent, failed, cancelled) whose last time is before ``cutoff``, and the key to
    resume from (b"" once the scan reached the end)."""
    out: list[Delivery] = []
    cursor = txn.cursor(db=dbs[DELIVERIES])
    found = cursor.set_range(after + b"\x00") if after else cursor.first()
    scanned, last = 0, b""
    while found and scanned < limit:
        last = bytes(cursor.key())
        d = Delivery.from_bytes(cursor.value())
        if d.status in FINAL and max(d.due_at, d.sent_at or 0.0, d.lease_expires) < cutoff:
            out.append(d)
        scanned += 1
        found = cursor.next()
    return out, last if found else b""
