"""``events`` and ``seen``: the event log and the ids of the events it holds.

- ``events``: 8-byte big-endian sequence -> serialized Event (replay and insights).
- ``seen``: event id -> its sequence in the log (Track's idempotency).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lmdb

EVENTS = "events"
SEEN = "seen"

Dbs = Mapping[str, Any]


def sequence_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


def last_sequence(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """The newest sequence in the log, 0 when it is empty."""
    cursor = txn.cursor(db=dbs[EVENTS])
    if cursor.last():
        return int.from_bytes(bytes(cursor.key()), "big")
    return 0


def seen(txn: lmdb.Transaction, dbs: Dbs, event_id: str) -> bool:
    return txn.get(event_id.encode(), db=dbs[SEEN]) is not None


def append(
    txn: lmdb.Transaction, dbs: Dbs, sequence: int, events: Iterable[tuple[str, bytes]]
) -> int:
    """Append ``(event id, serialized event)`` pairs to the log from ``sequence`` on and
    mark their ids seen; returns the next free sequence."""
    log_cursor = txn.cursor(db=dbs[EVENTS])
    seen_db = dbs[SEEN]
    for event_id, payload in events:
        seq = sequence_key(sequence)
        log_cursor.put(seq, payload, append=True)
        txn.put(event_id.encode(), seq, db=seen_db)
        sequence += 1
    return sequence
