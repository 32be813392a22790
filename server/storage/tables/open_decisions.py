"""``open``: user id + NUL + decision id -> empty, the decisions awaiting their goal."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from nudge.server.storage.tables import keys

NAME = "open"

Dbs = Mapping[str, Any]


def key(user_id: str, decision_id: str) -> bytes:
    return keys.pair(user_id, decision_id)


def add(txn: lmdb.Transaction, dbs: Dbs, user_id: str, decision_id: str) -> None:
    txn.put(key(user_id, decision_id), b"", db=dbs[NAME])


def add_many(txn: lmdb.Transaction, dbs: Dbs, pairs: list[tuple[str, str]]) -> None:
    """:func:`add` for many (user id, decision id) pairs, in key order in one call."""
    txn.cursor(db=dbs[NAME]).putmulti(sorted((key(u, d), b"") for u, d in pairs))


def remove(txn: lmdb.Transaction, dbs: Dbs, user_id: str, decision_id: str) -> None:
    txn.delete(key(user_id, decision_id), db=dbs[NAME])


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[str]:
    """The ids of the user's open decisions."""
    return keys.items_of(txn, dbs[NAME], user_id)
