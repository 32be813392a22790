"""``meta``: the schema version and the event type registry (``type/<name>`` -> slot).

Other tables keep a few single keys in ``meta`` too, each owned by its table module: the
learner's rewards position (``models``), the risk population baseline and held times
(``risk_baselines``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lmdb

from nudge.server.errors import SchemaMismatch
from nudge.server.storage.tables import keys

NAME = "meta"
# 2: sparse user records and risk baselines (``users``, ``risk``). A version-1 store's
# dense records still read, and are rewritten sparse on the user's next write.
# 3: event and transaction ids keyed per user (``seen``, ``transactions``). A version 1 or
# 2 store is migrated in place when the server opens it (``migrations.migrate``, one
# transaction) and marked 3, so an older nudge, which cannot read it, refuses it. (The
# offline tools' read-only open reads neither table and accepts it as it is.)
SCHEMA_VERSION = 3
UPGRADABLE = {1, 2}
SCHEMA_KEY = b"schema_version"
TYPE_PREFIX = b"type/"

Dbs = Mapping[str, Any]


def schema_version(txn: lmdb.Transaction, dbs: Dbs) -> int | None:
    raw = txn.get(SCHEMA_KEY, db=dbs[NAME])
    return None if raw is None else int(bytes(raw))


def put_schema_version(txn: lmdb.Transaction, dbs: Dbs) -> None:
    txn.put(SCHEMA_KEY, str(SCHEMA_VERSION).encode(), db=dbs[NAME])


def check_schema(txn: lmdb.Transaction, dbs: Dbs, path: Path, has_data: bool) -> bool:
    """Raise SchemaMismatch unless the store's layout is the one this nudge reads; True
    when the store should be marked with this version (a new, empty store, or one of a
    version this nudge upgrades: ``migrations.migrate``)."""
    found = schema_version(txn, dbs)
    if found is None:
        if has_data:
            raise SchemaMismatch(
                f"store at {path} has data but no schema version; refusing to guess its layout"
            )
        return True
    if found in UPGRADABLE:
        return True
    if found != SCHEMA_VERSION:
        raise SchemaMismatch(
            f"store at {path} has schema version {found}, this nudge reads version "
            f"{SCHEMA_VERSION}; migrate it or point --data-dir elsewhere"
        )
    return False


def type_slots(txn: lmdb.Transaction, dbs: Dbs) -> dict[str, int]:
    """The event type registry: type name -> slot in the user state record."""
    return {key[len(TYPE_PREFIX):].decode(): int(bytes(value))
            for key, value in keys.with_prefix(txn, dbs[NAME], TYPE_PREFIX)}


def put_type_slot(txn: lmdb.Transaction, dbs: Dbs, type_name: str, slot: int) -> None:
    txn.put(TYPE_PREFIX + type_name.encode(), str(slot).encode(), db=dbs[NAME])


def delete_type_slot(txn: lmdb.Transaction, dbs: Dbs, type_name: str) -> None:
    txn.delete(TYPE_PREFIX + type_name.encode(), db=dbs[NAME])


# Cluster mode: how far into the replicated log (a JetStream stream sequence) this store
# has applied each partition, written in the same transaction as what was applied.
APPLIED_PREFIX = b"cluster/applied/"


def applied_position(txn: lmdb.Transaction, dbs: Dbs, partition: int) -> int:
    raw = txn.get(APPLIED_PREFIX + str(partition).encode(), db=dbs[NAME])
    return 0 if raw is None else int(bytes(raw))


def put_applied_position(txn: lmdb.Transaction, dbs: Dbs, partition: int, seq: int) -> None:
    """Positions only grow: one commit may apply a partition's records through several
    submissions (events, decisions, outcomes), in any order within the commit."""
    if seq <= applied_position(txn, dbs, partition):
        return
    txn.put(APPLIED_PREFIX + str(partition).encode(), str(seq).encode(), db=dbs[NAME])
