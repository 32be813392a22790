"""``triggered``: user id + NUL + event id + NUL + the trigger's position among those the
event fired (records from schema 1 lack the user; they are read and deleted alike) ->
JSON ``{campaign, index, user, time, event}`` of a trigger that fired, until its decision
is made and scheduled (so a crash between the two loses no journey)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb
import orjson

from nudge.server.storage.tables import keys

NAME = "triggered"

Dbs = Mapping[str, Any]


def put(txn: lmdb.Transaction, dbs: Dbs, user_id: str, event_id: str, position: int,
        record: dict[str, Any]) -> None:
    txn.put(keys.pair(user_id, f"{event_id}\x00{position}"), orjson.dumps(record),
            db=dbs[NAME])


def pending(txn: lmdb.Transaction, dbs: Dbs) -> list[tuple[bytes, dict[str, Any]]]:
    """Every recorded trigger as (its key, its record)."""
    return [(bytes(k), orjson.loads(v)) for k, v in txn.cursor(db=dbs[NAME])]


def delete(txn: lmdb.Transaction, dbs: Dbs, key: bytes) -> None:
    txn.delete(key, db=dbs[NAME])


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[bytes]:
    """Keys of the recorded triggers of ``user_id``."""
    return [key for key, record in pending(txn, dbs) if record.get("user") == user_id]
