"""In-place upgrades of an older store's layout, run in one write transaction when the
server opens it (never by the read-only open): all of it is migrated, or nothing.

- 1 -> 2: nothing to rewrite (dense user records are still read, and rewritten sparse
  on the user's next write).
- 2 -> 3: event ids (``seen``) and transaction ids (``transactions``) keyed per user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb

from nudge.server.storage.tables import events, meta, transactions

Dbs = Mapping[str, Any]


def migrate(txn: lmdb.Transaction, dbs: Dbs, found: int) -> dict[str, int]:
    """Upgrade a store of schema version ``found`` to ``meta.SCHEMA_VERSION`` in ``txn``;
    returns what was rewritten (for the log)."""
    done: dict[str, int] = {}
    if found == 1:
        found = 2
    if found == 2:
        done["seen"] = events.rekey_seen_by_user(txn, dbs)
        done["transactions"] = transactions.rekey_by_user(txn, dbs)
        found = 3
    if found != meta.SCHEMA_VERSION:  # pragma: no cover - a version without a migration
        raise ValueError(f"no migration from schema version {found}")
    meta.put_schema_version(txn, dbs)
    return done
