"""Decide-time reads of the insights summary: how often a user did an event type in their
first days, for a campaign's "reached" flag the state record cannot settle alone
(``features.reached_flag``: a long-time user who kept doing it).

One LMDB read of the user's summary (the key's id is cached: ids are never reused). The
summary is written behind Track by at most ``insights_flush_seconds``; events that recent
are past a long-time user's early window anyway (unless back-dated by that much).
"""

from __future__ import annotations

import numpy as np

from nudge.server.decisions.features import EarlyCount
from nudge.server.storage.store import Store
from nudge.server.storage.tables import insights


class EarlyCounts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._ids: dict[str, int] = {}

    def of(self, user_id: str) -> EarlyCount:
        """``early_count`` for one Decide of ``user_id``."""
        return lambda event_type, hour: self.count(user_id, event_type, hour)

    def count(self, user_id: str, event_type: str, hour: int) -> float:
        """The user's ``event_type`` events stamped before ``hour`` (hours since the epoch)."""
        dbs = self.store.dbs
        with self.store.read() as txn:
            key = self._ids.get(event_type)
            if key is None:
                key = insights.key_id(txn, dbs, event_type)
                if key is None:
                    return 0.0
                self._ids[event_type] = key
            raw = txn.get(user_id.encode(), db=dbs[insights.NAME])
            if raw is None:
                return 0.0
            e = np.frombuffer(raw, insights.ENTRY)
            return float(e["count"][(e["key"] == key) & (e["hour"] < hour)].sum())
