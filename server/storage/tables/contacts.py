"""``contacts``: user id -> the user's recent contacts as JSON rows
``[time, channel, campaign, decision_id]``, for the frequency caps and contact pressure.

Decide records every message a decision will send as a contact (``contacts`` db: user id ->
``[time, channel, campaign, decision_id]`` rows), so the caps hold before anything is sent.
A journey's delivery can still end otherwise: cancelled because the goal came first (or
the same message already went out on another channel), or failed and replaced by a
fallback on another channel. Caps must count what reaches the user, so the outbox corrects
the stored rows in the same transaction as the delivery's new state.

A contact still pending in the decision engine (its flush follows Decide by a millisecond)
is not here yet: a correction that races it leaves the planned contact counted, which only
makes the caps stricter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import lmdb
import orjson

NAME = "contacts"

Dbs = Mapping[str, Any]
# One contact: time, channel, campaign, the decision that made it.
Row = tuple[float, str, str, str]


def rows(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[list]:
    """The user's stored contacts (rows as in the module docstring)."""
    raw = txn.get(user_id.encode(), db=dbs[NAME])
    return orjson.loads(raw) if raw is not None else []


def _put(txn: lmdb.Transaction, dbs: Dbs, user_id: str, value: list[list]) -> None:
    txn.put(user_id.encode(), orjson.dumps(value), db=dbs[NAME])


def add(txn: lmdb.Transaction, dbs: Dbs, user_id: str, new: Iterable[Row],
        memory: float) -> None:
    """Store new contacts of a user, dropping those older than ``memory`` seconds before
    the newest one; a contact already stored (same time and decision) is kept once."""
    _put(txn, dbs, user_id, _merged(rows(txn, dbs, user_id), new, memory))


def _merged(stored: list[list], new: Iterable[Row], memory: float) -> list[list]:
    """The stored rows within ``memory`` seconds of the newest new one, then the new rows
    not stored yet (same time and decision: written earlier in this commit)."""
    new = list(new)
    horizon = max(c[0] for c in new) - memory
    merged = [c for c in stored if c[0] >= horizon]
    known = {(c[0], c[3]) for c in merged}
    return merged + [list(c) for c in new if (c[0], c[3]) not in known]


def add_many(txn: lmdb.Transaction, dbs: Dbs, new: Mapping[str, Iterable[Row]],
             memory: float) -> None:
    """:func:`add` for many users at once (the decision flush): their stored rows read and
    the merged rows written in key order, one cursor call each."""
    users = sorted(u.encode() for u in new)
    cursor = txn.cursor(db=dbs[NAME])
    stored = dict(cursor.getmulti(users))
    # A user with no stored row (a DecideBatch's new users) gets the new rows as they
    # are: what _merged returns for nothing stored, without its horizon and dedup passes.
    cursor.putmulti([(key, orjson.dumps(
        _merged(orjson.loads(stored[key]), new[key.decode()], memory) if key in stored
        else [list(c) for c in new[key.decode()]]))
        for key in users])


def _planned(stored: list[list], decision_id: str, channel: str, due_at: float) -> int | None:
    """Index of the decision's contact on ``channel`` planned nearest ``due_at`` (a
    delivery may go out later than planned: a backlog, the cross-channel gap)."""
    best, best_gap = None, float("inf")
    for i, (time, row_channel, _, row_decision) in enumerate(stored):
        if row_decision == decision_id and row_channel == channel:
            gap = abs(time - due_at)
            if gap < best_gap:
                best, best_gap = i, gap
    return best


def forget(txn: lmdb.Transaction, dbs: Dbs, user_id: str, decision_id: str,
           channel: str, due_at: float) -> bool:
    """A planned message that will not go out stops counting; False when none was stored."""
    stored = rows(txn, dbs, user_id)
    i = _planned(stored, decision_id, channel, due_at)
    if i is None:
        return False
    del stored[i]
    _put(txn, dbs, user_id, stored)
    return True


def replace(txn: lmdb.Transaction, dbs: Dbs, user_id: str, decision_id: str,
            campaign: str, failed_channel: str, failed_due_at: float, channel: str,
            due_at: float) -> None:
    """A failed message's fallback on another channel counts instead of it."""
    stored = rows(txn, dbs, user_id)
    i = _planned(stored, decision_id, failed_channel, failed_due_at)
    if i is not None:
        del stored[i]
    stored.append([due_at, channel, campaign, decision_id])
    _put(txn, dbs, user_id, stored)


def delete(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    txn.delete(user_id.encode(), db=dbs[NAME])
