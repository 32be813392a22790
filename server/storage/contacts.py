"""A user's stored contacts, corrected when a journey's message does not go out as planned.

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

import lmdb
import orjson


def _load(txn: lmdb.Transaction, db: lmdb._Database, user_id: str) -> list[list]:
    raw = txn.get(user_id.encode(), db=db)
    return orjson.loads(raw) if raw is not None else []


def _planned(rows: list[list], decision_id: str, channel: str, due_at: float) -> int | None:
    """Index of the decision's contact on ``channel`` planned nearest ``due_at`` (a
    delivery may go out later than planned: a backlog, the cross-channel gap)."""
    best, best_gap = None, float("inf")
    for i, (time, row_channel, _, row_decision) in enumerate(rows):
        if row_decision == decision_id and row_channel == channel:
            gap = abs(time - due_at)
            if gap < best_gap:
                best, best_gap = i, gap
    return best


def forget(txn: lmdb.Transaction, db: lmdb._Database, user_id: str, decision_id: str,
           channel: str, due_at: float) -> bool:
    """A planned message that will not go out stops counting; False when none was stored."""
    rows = _load(txn, db, user_id)
    i = _planned(rows, decision_id, channel, due_at)
    if i is None:
        return False
    del rows[i]
    txn.put(user_id.encode(), orjson.dumps(rows), db=db)
    return True


def replace(txn: lmdb.Transaction, db: lmdb._Database, user_id: str, decision_id: str,
            campaign: str, failed_channel: str, failed_due_at: float, channel: str,
            due_at: float) -> None:
    """A failed message's fallback on another channel counts instead of it."""
    rows = _load(txn, db, user_id)
    i = _planned(rows, decision_id, failed_channel, failed_due_at)
    if i is not None:
        del rows[i]
    rows.append([due_at, channel, campaign, decision_id])
    txn.put(user_id.encode(), orjson.dumps(rows), db=db)
