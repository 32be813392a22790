"""``users`` and ``profiles``: each user's state and the string side of it.

- ``users``: user id -> fixed-layout record (kernels/user_state.py), raw float64 bytes.
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


def record(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> memoryview | bytes | None:
    """The user's state record as a buffer valid inside ``txn``; None if never stored."""
    return txn.get(user_id.encode(), db=dbs[USERS])


def put_record(txn: lmdb.Transaction, dbs: Dbs, user_id: str, state: np.ndarray) -> None:
    txn.put(user_id.encode(), state.tobytes(), db=dbs[USERS])


def profile(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> UserProfile:
    """The user's profile (an empty one if never stored)."""
    return UserProfile.from_bytes(txn.get(user_id.encode(), db=dbs[PROFILES]))


def put_profile(txn: lmdb.Transaction, dbs: Dbs, user_id: str, value: UserProfile) -> None:
    txn.put(user_id.encode(), value.to_bytes(), db=dbs[PROFILES])


def records(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[tuple[str, memoryview | bytes]]:
    """Every user's id and state record (buffers valid inside ``txn``)."""
    for key, value in txn.cursor(db=dbs[USERS]):
        yield bytes(key).decode(), value
