"""``events`` and ``seen``: the event log and the ids of the events it holds.

- ``events``: 8-byte big-endian sequence -> serialized Event (replay and insights).
- ``seen``: user id + NUL + event id -> its sequence in the log (Track's idempotency; an
  event id is unique per user, so two users' ids never collide). Schema versions 1 and 2
  keyed it by the event id alone; ``rekey_seen_by_user`` migrates that layout.
- in ``meta``: ``events/mark/<8-byte ms>`` -> the next sequence at that time (every event
  below it arrived before), so retention finds events by age with no index on the hot
  path (time order is sequence order); ``events/seen_upto`` -> the sequence up to which
  the seen ids of logged events were forgotten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from nudge.server.storage.tables import keys
from nudge.v1 import event_pb2

EVENTS = "events"
SEEN = "seen"
META = "meta"
MARK_PREFIX = b"events/mark/"
SEEN_UPTO_KEY = b"events/seen_upto"

Dbs = Mapping[str, Any]


def sequence_key(sequence: int) -> bytes:
    return sequence.to_bytes(8, "big")


def last_sequence(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """The newest sequence in the log, 0 when it is empty."""
    cursor = txn.cursor(db=dbs[EVENTS])
    if cursor.last():
        return int.from_bytes(bytes(cursor.key()), "big")
    return 0


def seen(txn: lmdb.Transaction, dbs: Dbs, user_id: str, event_id: str) -> bool:
    return txn.get(keys.pair(user_id, event_id), db=dbs[SEEN]) is not None


def held(txn: lmdb.Transaction, dbs: Dbs, seen_keys: list[bytes]) -> set[bytes]:
    """Which of these ``seen`` keys (``keys.pair(user id, event id)``) the store holds:
    one lookup pass in key order (neighbouring keys share B-tree pages)."""
    return {bytes(k) for k, _ in txn.cursor(db=dbs[SEEN]).getmulti(sorted(seen_keys))}


def append_all(
    txn: lmdb.Transaction, dbs: Dbs, sequence: int, seen_keys: list[bytes],
    payloads: list[bytes],
) -> int:
    """Append serialized events to the log from ``sequence`` on and mark their ``seen``
    keys (``keys.pair(user id, event id)``, one per payload); returns the next free
    sequence. The puts go through LMDB's batch put: the log by appending, the seen ids
    in key order."""
    seqs = [sequence_key(s) for s in range(sequence, sequence + len(payloads))]
    txn.cursor(db=dbs[EVENTS]).putmulti(zip(seqs, payloads, strict=True), append=True)
    txn.cursor(db=dbs[SEEN]).putmulti(sorted(zip(seen_keys, seqs, strict=True)))
    return sequence + len(payloads)


def rekey_seen_by_user(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """Schema 2 -> 3: ``seen`` keyed by event id alone becomes user id + NUL + event id
    (the user read from the logged event). Returns the ids rekeyed."""
    old = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[SEEN])]
    for key, seq in old:
        payload = txn.get(seq, db=dbs[EVENTS])
        if payload is None:
            continue  # a seen id without its event cannot be placed; it stays as it was
        _, user_id = event_ids(bytes(payload))
        txn.delete(key, db=dbs[SEEN])
        txn.put(keys.pair(user_id, key.decode()), seq, db=dbs[SEEN])
    return len(old)


def first_sequence(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """The oldest sequence in the log, 0 when it is empty."""
    cursor = txn.cursor(db=dbs[EVENTS])
    if cursor.first():
        return int.from_bytes(bytes(cursor.key()), "big")
    return 0


def put_mark(txn: lmdb.Transaction, dbs: Dbs, at: float, next_sequence: int) -> None:
    """Every event below ``next_sequence`` arrived before ``at``."""
    txn.put(MARK_PREFIX + keys.millis(at), sequence_key(next_sequence), db=dbs[META])


def marks(txn: lmdb.Transaction, dbs: Dbs) -> list[tuple[float, int]]:
    """Every ``(time, next sequence)`` mark, oldest first."""
    return [(int.from_bytes(key[len(MARK_PREFIX):], "big") / 1000,
             int.from_bytes(value, "big"))
            for key, value in keys.with_prefix(txn, dbs[META], MARK_PREFIX)]


def delete_mark(txn: lmdb.Transaction, dbs: Dbs, at: float) -> None:
    txn.delete(MARK_PREFIX + keys.millis(at), db=dbs[META])


def arrived_before(txn: lmdb.Transaction, dbs: Dbs, t: float) -> int:
    """A sequence below which every event arrived before ``t`` (0: none known to)."""
    best = 0
    for at, sequence in marks(txn, dbs):
        if at > t:
            break
        best = sequence
    return best


def seen_upto(txn: lmdb.Transaction, dbs: Dbs) -> int:
    raw = txn.get(SEEN_UPTO_KEY, db=dbs[META])
    return 0 if raw is None else int.from_bytes(bytes(raw), "big")


def logged(
    txn: lmdb.Transaction, dbs: Dbs, start: int, stop: int, limit: int
) -> list[tuple[int, bytes]]:
    """Up to ``limit`` ``(sequence, serialized event)`` with start <= sequence < stop."""
    out: list[tuple[int, bytes]] = []
    cursor = txn.cursor(db=dbs[EVENTS])
    if cursor.set_range(sequence_key(start)):
        for key, value in cursor:
            sequence = int.from_bytes(bytes(key), "big")
            if sequence >= stop or len(out) >= limit:
                break
            out.append((sequence, bytes(value)))
    return out


def event_ids(payload: bytes) -> tuple[str, str]:
    """``(event id, user id)`` of a logged event."""
    event = event_pb2.Event.FromString(payload)
    return event.event_id, event.user_id


def forget_seen(txn: lmdb.Transaction, dbs: Dbs, sequence: int, payload: bytes) -> bool:
    """Forget the id of the logged event at ``sequence`` (a replay of it would then be
    stored again); True if it was still held."""
    event_id, user_id = event_ids(payload)
    key = keys.pair(user_id, event_id)
    held = txn.get(key, db=dbs[SEEN])
    if held is None or bytes(held) != sequence_key(sequence):
        return False
    return bool(txn.delete(key, db=dbs[SEEN]))


def put_seen_upto(txn: lmdb.Transaction, dbs: Dbs, sequence: int) -> None:
    txn.put(SEEN_UPTO_KEY, sequence_key(sequence), db=dbs[META])


def delete(txn: lmdb.Transaction, dbs: Dbs, sequence: int) -> None:
    """Drop one event from the log (its seen id is forgotten separately)."""
    txn.delete(sequence_key(sequence), db=dbs[EVENTS])


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str, start: int = 0) -> list[int]:
    """Sequences of the logged events of ``user_id`` from ``start`` on (a scan of the log:
    erasure only; bytes are matched before any event is parsed)."""
    needle = user_id.encode()
    out = []
    cursor = txn.cursor(db=dbs[EVENTS])
    if cursor.set_range(sequence_key(start)):
        for key, value in cursor:
            raw = bytes(value)
            if needle in raw and event_ids(raw)[1] == user_id:
                out.append(int.from_bytes(bytes(key), "big"))
    return out


def get(txn: lmdb.Transaction, dbs: Dbs, sequence: int) -> bytes | None:
    raw = txn.get(sequence_key(sequence), db=dbs[EVENTS])
    return None if raw is None else bytes(raw)
