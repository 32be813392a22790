"""``users`` and ``profiles``: each user's state and the string side of it.

- ``users``: user id -> fixed-layout record (kernels/user_state.py), stored sparse
  (``codecs.encode_sparse``: a bitmap of the non-zero slots, then their values). A new
  user's record is mostly zeros (63 of 64 event types unused): 1,856 dense bytes become
  ~150, and LMDB fits ~20 records in a page instead of one (two 1,856-byte records do not
  share a page once it splits). Dense records (schema version 1) still read.
- ``profiles``: user id -> JSON with time zone, consents and the latest properties of each
  recent event type (last write wins by event time).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import user_state
from nudge.server.storage.tables.codecs import decode_sparse, encode_sparse

USERS = "users"
PROFILES = "profiles"

Dbs = Mapping[str, Any]


@dataclass
class UserProfile:
    """The string side of a user's state, each part with the event time that set it:
    time zone, consents, and the properties of the latest event of each recent type
    (message templates are filled from these)."""

    tz: str = "UTC"
    tz_time: float = float("-inf")
    consents: dict[str, tuple[bool, float]] = field(default_factory=dict)
    # event type -> (time, numbers, strings) of the latest event of that type.
    last_properties: dict[str, tuple[float, dict[str, float], dict[str, str]]] = field(
        default_factory=dict
    )

    def to_bytes(self) -> bytes:
        # orjson: profiles are rewritten for every user in every commit, so JSON speed
        # shows in ingestion throughput. It writes -inf as null, hence the mapping.
        return orjson.dumps(
            {
                "tz": self.tz,
                "tz_time": None if self.tz_time == float("-inf") else self.tz_time,
                "consents": self.consents,
                "props": self.last_properties,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview | None) -> UserProfile:
        if raw is None:
            return cls()
        data: dict[str, Any] = orjson.loads(raw)
        consents = {k: (bool(v[0]), float(v[1])) for k, v in data["consents"].items()}
        props = {k: (float(v[0]), v[1], v[2]) for k, v in data["props"].items()}
        tz_time = float("-inf") if data["tz_time"] is None else float(data["tz_time"])
        return cls(data["tz"], tz_time, consents, props)

    def properties(self, types: tuple[str, ...] | None = None) -> dict[str, float | str]:
        """Latest value of every property across the given event types (all when None);
        a newer event's value wins."""
        chosen = [
            v for k, v in self.last_properties.items() if types is None or k in types
        ]
        merged: dict[str, float | str] = {}
        for _, numbers, strings in sorted(chosen, key=lambda v: v[0]):
            merged.update(numbers)
            merged.update(strings)
        return merged


def encode_record(state: np.ndarray) -> bytes:
    """A state record's stored bytes (``codecs.encode_sparse``)."""
    return encode_sparse(state)


def decode_record(raw: bytes | memoryview) -> np.ndarray:
    """A stored record as a new writable float64 array of ``RECORD_LEN`` values."""
    return decode_sparse(raw, user_state.RECORD_LEN)


def record(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> np.ndarray | None:
    """The user's state record (a copy, writable); None if never stored."""
    raw = txn.get(user_id.encode(), db=dbs[USERS])
    return None if raw is None else decode_record(raw)


def stored_bytes(
    txn: lmdb.Transaction, dbs: Dbs, user_id: str
) -> tuple[bytes | memoryview, bytes | memoryview | None] | None:
    """The user's record and profile as stored (views valid inside ``txn`` when it was
    begun with buffers), None if no record: GetUser writes its reply from these bytes."""
    key = user_id.encode()
    raw = txn.get(key, db=dbs[USERS])
    if raw is None:
        return None
    return raw, txn.get(key, db=dbs[PROFILES])


def tz_and_consents(raw: bytes | memoryview | None) -> tuple[str, list[tuple[str, bool]]]:
    """A stored profile's time zone and consents (channel, granted), as
    :meth:`UserProfile.from_bytes` reads them, without building the rest of it."""
    if raw is None:
        return UserProfile.tz, []
    data: dict[str, Any] = orjson.loads(raw)
    return data["tz"], [(k, bool(v[0])) for k, v in data["consents"].items()]


def record_bytes(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> bytes | None:
    """The user's state record as stored (a copy; :func:`decode_record` reads it), None
    if never stored: Decide hands these bytes to its feature kernel as they are."""
    raw = txn.get(user_id.encode(), db=dbs[USERS])
    return None if raw is None else bytes(raw)


def records_bytes(txn: lmdb.Transaction, dbs: Dbs, user_ids: list[str]
                  ) -> list[bytes | None]:
    """:func:`record_bytes` of each user, read in key order in one cursor call."""
    found = {bytes(k): bytes(v) for k, v in
             txn.cursor(db=dbs[USERS]).getmulti(sorted({u.encode() for u in user_ids}))}
    return [found.get(u.encode()) for u in user_ids]


def put_record(txn: lmdb.Transaction, dbs: Dbs, user_id: str, state: np.ndarray) -> None:
    txn.put(user_id.encode(), encode_record(state), db=dbs[USERS])


def stored_records(
    txn: lmdb.Transaction, dbs: Dbs, user_keys: list[bytes]
) -> list[tuple[bytes, np.ndarray]]:
    """``(user key, record)`` of every one of these users (encoded ids) with a record,
    read in one pass in key order."""
    cursor = txn.cursor(db=dbs[USERS])
    return [(bytes(k), decode_record(v)) for k, v in cursor.getmulti(sorted(user_keys))]


def put_encoded_records(
    txn: lmdb.Transaction, dbs: Dbs, rows: list[tuple[bytes, bytes]]
) -> None:
    """Store already encoded records (``(user key, encode_record bytes)``) in one batch
    put, in key order."""
    rows.sort()
    txn.cursor(db=dbs[USERS]).putmulti(rows)


def stored_profiles(
    txn: lmdb.Transaction, dbs: Dbs, user_keys: list[bytes]
) -> list[tuple[bytes, UserProfile]]:
    """``(user key, profile)`` of every one of these users with a stored profile."""
    cursor = txn.cursor(db=dbs[PROFILES])
    return [(bytes(k), UserProfile.from_bytes(v))
            for k, v in cursor.getmulti(sorted(user_keys))]


def put_profiles(
    txn: lmdb.Transaction, dbs: Dbs, rows: list[tuple[bytes, UserProfile]]
) -> None:
    """Store profiles (``(user key, profile)``) in one batch put, in key order."""
    encoded = sorted((key, profile.to_bytes()) for key, profile in rows)
    txn.cursor(db=dbs[PROFILES]).putmulti(encoded)


def delete(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    """Forget the user's record and profile (erasure)."""
    txn.delete(user_id.encode(), db=dbs[USERS])
    txn.delete(user_id.encode(), db=dbs[PROFILES])


def profile(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> UserProfile:
    """The user's profile (an empty one if never stored)."""
    return UserProfile.from_bytes(txn.get(user_id.encode(), db=dbs[PROFILES]))


def records(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[tuple[str, np.ndarray]]:
    """Every user's id and state record."""
    for key, value in txn.cursor(db=dbs[USERS]):
        yield bytes(key).decode(), decode_record(value)


def clear_type_slots(txn: lmdb.Transaction, dbs: Dbs, slots: list[int]) -> int:
    """Zero these event type slots (decayed count, total, last time) in every user's
    record, so a type given a freed slot starts from nothing; returns the users changed."""
    from nudge.kernels import user_state as u

    columns = [base + s for s in slots for base in (u.COUNTS, u.TOTALS, u.TYPE_LAST)]
    changed = []
    for user_id, state in records(txn, dbs):
        if state[columns].any():
            fresh = state.copy()
            fresh[columns] = 0.0
            changed.append((user_id, fresh))
    for user_id, fresh in changed:
        put_record(txn, dbs, user_id, fresh)
    return len(changed)
