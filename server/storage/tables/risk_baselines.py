"""Risk model state (``nudge.kernels.risk_model`` layouts, float64):

- ``risk``: user id -> the customer's state (``USER_LEN`` values, layout version
  ``MODEL_VERSION`` in its first value), stored sparse (``codecs.encode_sparse``): the
  dense 2,584 bytes do not fit a node of a 4 KiB page, so LMDB would give each customer
  its own overflow page; a customer with a few transactions has most slots zero;
- in ``meta``: ``risk/model/population`` -> the population state (one writer at a time:
  the group commit's write transaction), ``risk/model/clock`` -> JSON event time of the
  latest scored transaction (the hold delay runs on it), ``risk/held/<user id>`` -> JSON
  time of the user's latest transaction held as anomalous (not labelled genuine since),
  and ``risk/holds/<event time, 8 bytes big-endian float><user id>NUL<transaction id>``
  -> JSON ``[user id, transaction id]`` for every held transaction still waiting for a label or
  its hold delay (ordered by time, so the due ones come first).

Stores written by layout version 2 (before the takeover-episode filter) read migrated:
customers and the population keep everything they learned, the new fields start empty, and
the next write stores the current layout.

Stores written before the likelihood-ratio model hold the surprisal baselines of the old
``nudge.kernels.risk`` (layout version 1, 326 values, dense or sparse) under the same user
keys and the population under ``risk/population``. Those are never read as model state: a
value that does not decode to ``USER_LEN`` values of this layout version reads as absent,
so the customer starts from the prior and the next write replaces it; the old population
key is ignored.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels.risk_model import (
    MODEL_VERSION,
    POP_LEN,
    POP_LEN_V2,
    PREV_MODEL_VERSION,
    USER_LEN,
    USER_LEN_V2,
    migrate_population_state,
    migrate_user_state,
)
from nudge.server.storage.tables import keys
from nudge.server.storage.tables.codecs import decode_sparse, encode_sparse

NAME = "risk"
META = "meta"
POPULATION_KEY = b"risk/model/population"
CLOCK_KEY = b"risk/model/clock"
LEGACY_POPULATION_KEY = b"risk/population"
HELD_PREFIX = b"risk/held/"
HOLDS_PREFIX = b"risk/holds/"

Dbs = Mapping[str, Any]


def _dense(raw: bytes | memoryview | None, length: int) -> np.ndarray | None:
    if raw is None or len(raw) != length * 8:
        return None
    state = np.frombuffer(raw, np.float64)
    return state if state[0] == MODEL_VERSION else None


def _decode(raw: bytes | memoryview, length: int, version: float) -> np.ndarray | None:
    try:
        state = decode_sparse(raw, length)
    except ValueError:  # another length
        return None
    return state if state[0] == version else None


def baseline(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> np.ndarray | None:
    """The customer's state (a copy); a version-2 row (before the takeover-episode filter)
    comes back migrated (``migrate_user_state``: all it learned kept); None if never scored
    or stored in the pre-model layout."""
    raw = txn.get(user_id.encode(), db=dbs[NAME])
    return None if raw is None else decode_baseline(raw)


def stored_bytes(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> bytes | memoryview | None:
    """The customer's row as stored (for :func:`decode_baseline`), None if none."""
    return txn.get(user_id.encode(), db=dbs[NAME])


def decode_baseline(raw: bytes | memoryview) -> np.ndarray | None:
    """A stored row as :func:`baseline` returns it (a new array; None for the pre-model
    layout)."""
    # a dense version-2 row first: its length could also parse as a sparse current one
    if len(raw) != USER_LEN_V2 * 8:
        state = _decode(raw, USER_LEN, MODEL_VERSION)
        if state is not None:
            return state
    old = _decode(raw, USER_LEN_V2, PREV_MODEL_VERSION)
    return None if old is None else migrate_user_state(old)


def stored(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> bool:
    """Something is stored for the user (in any layout)."""
    return txn.get(user_id.encode(), db=dbs[NAME]) is not None


def put_baseline(txn: lmdb.Transaction, dbs: Dbs, user_id: str, state: np.ndarray) -> bytes:
    """Store the customer's row; returns the bytes stored."""
    raw = encode_sparse(state)
    txn.put(user_id.encode(), raw, db=dbs[NAME])
    return raw


def population(txn: lmdb.Transaction, dbs: Dbs) -> np.ndarray | None:
    """The population state as a read-only view valid inside ``txn`` (a version-2 one as a
    migrated copy: ``migrate_population_state``, all it learned kept)."""
    raw = txn.get(POPULATION_KEY, db=dbs[META])
    state = _dense(raw, POP_LEN)
    if state is None and raw is not None and len(raw) == POP_LEN_V2 * 8:
        old = np.frombuffer(raw, np.float64)
        if old[0] == PREV_MODEL_VERSION:
            return migrate_population_state(old.copy())
    return state


def has_legacy_state(txn: lmdb.Transaction, dbs: Dbs) -> bool:
    """The store still holds the pre-model population (its baselines are ignored)."""
    return txn.get(LEGACY_POPULATION_KEY, db=dbs[META]) is not None


def put_population(txn: lmdb.Transaction, dbs: Dbs, state: np.ndarray) -> None:
    txn.put(POPULATION_KEY, state.tobytes(), db=dbs[META])


def clock(txn: lmdb.Transaction, dbs: Dbs) -> float:
    """Event time of the latest scored transaction (-inf before the first)."""
    raw = txn.get(CLOCK_KEY, db=dbs[META])
    return -float("inf") if raw is None else float(orjson.loads(raw))


def put_clock(txn: lmdb.Transaction, dbs: Dbs, at: float) -> None:
    txn.put(CLOCK_KEY, orjson.dumps(at), db=dbs[META])


def held_at(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> float | None:
    raw = txn.get(HELD_PREFIX + user_id.encode(), db=dbs[META])
    return None if raw is None else float(orjson.loads(raw))


def held_at_many(txn: lmdb.Transaction, dbs: Dbs, user_keys: list[bytes]) -> dict[str, float]:
    """:func:`held_at` of these users (encoded ids, in key order), those with one stored."""
    n = len(HELD_PREFIX)
    return {bytes(k[n:]).decode(): float(orjson.loads(v)) for k, v in
            txn.cursor(db=dbs[META]).getmulti([HELD_PREFIX + k for k in user_keys])}


def put_held_at(txn: lmdb.Transaction, dbs: Dbs, user_id: str, at: float) -> None:
    txn.put(HELD_PREFIX + user_id.encode(), orjson.dumps(at), db=dbs[META])


def clear_held(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    txn.delete(HELD_PREFIX + user_id.encode(), db=dbs[META])


def delete(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    """Forget the user's state and held time (erasure). Their entries in the hold index go
    when the expiry pass finds their transaction records gone."""
    txn.delete(user_id.encode(), db=dbs[NAME])
    clear_held(txn, dbs, user_id)


def _hold_key(at: float, user_id: str, transaction_id: str) -> bytes:
    # Event times are positive (validated: 1970 onwards), and the big-endian bytes of
    # positive doubles sort as the numbers do. Transaction ids are unique per user.
    return HOLDS_PREFIX + struct.pack(">d", max(at, 0.0)) + keys.pair(user_id, transaction_id)


def put_hold(
    txn: lmdb.Transaction, dbs: Dbs, at: float, user_id: str, transaction_id: str
) -> None:
    txn.put(_hold_key(at, user_id, transaction_id), orjson.dumps([user_id, transaction_id]),
            db=dbs[META])


def clear_hold(
    txn: lmdb.Transaction, dbs: Dbs, at: float, user_id: str, transaction_id: str
) -> None:
    txn.delete(_hold_key(at, user_id, transaction_id), db=dbs[META])


def holds_due(
    txn: lmdb.Transaction, dbs: Dbs, until: float
) -> Iterator[tuple[float, str, str]]:
    """(event time, user id, transaction id) of the waiting holds with event time <=
    ``until``, oldest first."""
    for key, value in keys.with_prefix(txn, dbs[META], HOLDS_PREFIX):
        at = struct.unpack(">d", key[len(HOLDS_PREFIX):len(HOLDS_PREFIX) + 8])[0]
        if at > until:
            return
        user_id, transaction_id = orjson.loads(value)
        yield at, str(user_id), str(transaction_id)
