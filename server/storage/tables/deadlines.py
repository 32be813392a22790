"""``deadlines``: 8-byte goal window end (ms, big-endian) + decision id -> empty, so the
learner finds the decisions to expire with reward 0 in time order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from nudge.server.storage.tables import keys

NAME = "deadlines"

Dbs = Mapping[str, Any]


def key(window_end: float, decision_id: str) -> bytes:
    return keys.millis(window_end) + decision_id.encode()


def decision_id(deadline: bytes) -> str:
    """The decision a deadline key belongs to."""
    return deadline[8:].decode()


def add(txn: lmdb.Transaction, dbs: Dbs, window_end: float, decision: str) -> None:
    txn.put(key(window_end, decision), b"", db=dbs[NAME])


def add_many(txn: lmdb.Transaction, dbs: Dbs, deadlines: list[tuple[float, str]]) -> None:
    """:func:`add` for many (window end, decision id) pairs, in key order in one call."""
    txn.cursor(db=dbs[NAME]).putmulti(sorted((key(w, d), b"") for w, d in deadlines))


def remove(txn: lmdb.Transaction, dbs: Dbs, window_end: float, decision: str) -> None:
    txn.delete(key(window_end, decision), db=dbs[NAME])


def delete(txn: lmdb.Transaction, dbs: Dbs, deadline: bytes) -> None:
    txn.delete(deadline, db=dbs[NAME])


def due(txn: lmdb.Transaction, dbs: Dbs, now: float, limit: int) -> list[bytes]:
    """Up to ``limit`` deadline keys whose window ended by ``now``, oldest first."""
    last = keys.millis(now)
    out: list[bytes] = []
    cursor = txn.cursor(db=dbs[NAME])
    if cursor.first():
        for raw in cursor.iternext(values=False):
            raw = bytes(raw)
            if raw[:8] > last or len(out) >= limit:
                break
            out.append(raw)
    return out
