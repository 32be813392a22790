"""``rewards``: 8-byte big-endian sequence -> decision id, settled decisions in order.

The learner consumes it from the sequence stored with its models (``models``), so nothing
is learned twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import lmdb

NAME = "rewards"

Dbs = Mapping[str, Any]


def last(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """The newest sequence, 0 when nothing was settled yet."""
    cursor = txn.cursor(db=dbs[NAME])
    return int.from_bytes(cursor.key(), "big") if cursor.last() else 0


def append(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> int:
    seq = last(txn, dbs) + 1
    txn.put(seq.to_bytes(8, "big"), decision_id.encode(), db=dbs[NAME])
    return seq


def since(txn: lmdb.Transaction, dbs: Dbs, first: int) -> Iterator[tuple[int, str]]:
    """``(sequence, decision id)`` from sequence ``first`` on, in order."""
    cursor = txn.cursor(db=dbs[NAME])
    if cursor.set_range(first.to_bytes(8, "big")):
        for raw_key, value in cursor:
            yield int.from_bytes(bytes(raw_key), "big"), bytes(value).decode()


def drop_learned(txn: lmdb.Transaction, dbs: Dbs, learned: int, limit: int) -> int:
    """Delete up to ``limit`` of the oldest entries at or below ``learned`` (the position
    stored with the models), keeping the newest entry whatever it is: ``append`` numbers
    from it, so sequences never restart. Returns how many went."""
    stop = min(learned, last(txn, dbs) - 1)
    doomed: list[bytes] = []
    cursor = txn.cursor(db=dbs[NAME])
    if cursor.first():
        for raw_key in cursor.iternext(keys=True, values=False):
            if len(doomed) >= limit or int.from_bytes(raw_key, "big") > stop:
                break
            doomed.append(bytes(raw_key))
    for key in doomed:
        txn.delete(key, db=dbs[NAME])
    return len(doomed)
