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
        dbs = self.store.dbs
        ids = self._ids
        new: dict[str, int] = {}
        per_user: dict[str, list[bytes]] = {}
        pack = insights.pack_entry
        for ev in events:
            key = ids.get(ev.type)
            if key is None:
                key = new.get(ev.type)
                if key is None:
                    key = new[ev.type] = insights.register_key(txn, dbs, ev.type)
            hour = int(ev.time // SECONDS_PER_HOUR)
            packed = per_user.get(ev.user_id)
            if packed is None:
                packed = per_user[ev.user_id] = []
            packed.append(pack(hour, key, ev.amount))
            step = ev.strings.get(STEP_STRING) if ev.strings else None
            if step is not None:
                name = insights.flow_key_name(ev.type, ev.strings.get(FLOW_STRING, ""), step)
                flow_key = ids.get(name)
                if flow_key is None:
                    flow_key = new.get(name)
                    if flow_key is None:
                        flow_key = new[name] = insights.register_key(txn, dbs, name)
                packed.append(pack(hour, flow_key, float("nan")))
        append = insights.append
        for user_id, packed in per_user.items():
            append(txn, dbs, user_id, b"".join(packed))
        if not new:
            return None

        def committed() -> None:
            self._ids = {**ids, **{n: k for n, k in new.items() if k != insights.OTHER_KEY}}

        return committed
