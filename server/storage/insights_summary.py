"""The insights summary kept up to date at ingest: an event hook of the ``EventWriter``.

Inside the group commit that stores Track's events, each event appends a 12-byte entry
to its user's summary (``tables.insights``): its hour, its key (event type), count 1 and
its ``amount``. An event that carries a ``step`` string also appends an entry under its
flow step key (``[type, flow, step]``), which counts as a flow abandonment and not as
activity. Appending raw bytes (no decode, no kernel per user) is what keeps this within
the ingest budget: the query decodes a million summaries at once instead.

Key ids come from the registry in ``meta``: a name this process has seen committed is
looked up in memory, a new one is registered inside the transaction (so an aborted batch
frees it) and cached only after the commit is durable.
"""

from __future__ import annotations

from collections.abc import Callable

import lmdb

from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.store import Store
from nudge.server.storage.tables import insights

FLOW_STRING = "flow"
STEP_STRING = "step"
SECONDS_PER_HOUR = 3600


class InsightsSummary:
    """Folds stored events into the per-user insights summaries (``EventWriter`` hook)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.read() as txn:
            self._ids: dict[str, int] = insights.key_ids(txn, store.dbs)

    def __call__(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        # The hot path of every commit: locals bound once, one struct pack per event, every
        # user's summary read and written in one batch call each (getmulti, putmulti).
        dbs = self.store.dbs
        ids = self._ids
        new: dict[str, int] = {}
        per_user: dict[str, list[bytes]] = {}
        pack = insights.ENTRY_STRUCT.pack
        for ev in events:
            key = ids.get(ev.type)
            if key is None:
                key = self._key(txn, ev.type, new)
            amount = ev.amount
            hour = int(ev.time // SECONDS_PER_HOUR)
            entry = pack(hour, key, 1, amount if amount == amount else 0.0)
            packed = per_user.get(ev.user_id)
            if packed is None:
                per_user[ev.user_id] = packed = [entry]
            else:
                packed.append(entry)
            strings = ev.strings
            if strings and STEP_STRING in strings:
                name = insights.flow_key_name(ev.type, strings.get(FLOW_STRING, ""),
                                              strings[STEP_STRING])
                flow_key = ids.get(name)
                if flow_key is None:
                    flow_key = self._key(txn, name, new)
                if flow_key != insights.OTHER_KEY:  # a full registry: the step goes unseen
                    packed.append(pack(hour, flow_key, 1, 0.0))
        insights.append_many(txn, dbs, {
            user_id.encode(): packed[0] if len(packed) == 1 else b"".join(packed)
            for user_id, packed in per_user.items()})
        if not new:
            return None

        def committed() -> None:
            self._ids = {**ids, **{n: k for n, k in new.items() if k != insights.OTHER_KEY}}

        return committed

    def _key(self, txn: lmdb.Transaction, name: str, new: dict[str, int]) -> int:
        """The id of a name not yet committed: registered in this transaction."""
        key = new.get(name)
        if key is None:
            key = new[name] = insights.register_key(txn, self.store.dbs, name)
        return key
