"""Risk baselines (kernels/risk.py layout, float64):

- ``risk``: user id -> the user's baseline, stored sparse (``codecs.encode_sparse``): the
  dense 2,608 bytes do not fit a node of a 4 KiB page, so LMDB gave each baseline its own
  overflow page (4,096 bytes a user); a user with a few transactions has most slots zero
  (hours, categories, countries never seen). Dense baselines (schema version 1) still read;
- in ``meta``: ``risk/population`` -> the population baseline, and ``risk/held/<user id>``
  -> JSON time of the user's latest transaction held as anomalous (not labelled genuine
  since).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import risk
from nudge.server.storage.tables.codecs import decode_sparse, encode_sparse

NAME = "risk"
META = "meta"
POPULATION_KEY = b"risk/population"
HELD_PREFIX = b"risk/held/"

Dbs = Mapping[str, Any]


def baseline(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> np.ndarray | None:
    """The user's baseline (a copy); None if never scored."""
    raw = txn.get(user_id.encode(), db=dbs[NAME])
    return None if raw is None else decode_sparse(raw, risk.RISK_STATE_LEN)


def put_baseline(txn: lmdb.Transaction, dbs: Dbs, user_id: str, state: np.ndarray) -> None:
    txn.put(user_id.encode(), encode_sparse(state), db=dbs[NAME])


def population(txn: lmdb.Transaction, dbs: Dbs) -> np.ndarray | None:
    """The population baseline as a read-only view valid inside ``txn``."""
    raw = txn.get(POPULATION_KEY, db=dbs[META])
    return None if raw is None else np.frombuffer(raw, np.float64)


def put_population(txn: lmdb.Transaction, dbs: Dbs, state: np.ndarray) -> None:
    txn.put(POPULATION_KEY, state.tobytes(), db=dbs[META])


def held_at(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> float | None:
    raw = txn.get(HELD_PREFIX + user_id.encode(), db=dbs[META])
    return None if raw is None else float(orjson.loads(raw))


def put_held_at(txn: lmdb.Transaction, dbs: Dbs, user_id: str, at: float) -> None:
    txn.put(HELD_PREFIX + user_id.encode(), orjson.dumps(at), db=dbs[META])


def clear_held(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    txn.delete(HELD_PREFIX + user_id.encode(), db=dbs[META])


def delete(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> None:
    """Forget the user's baseline and held time (erasure)."""
    txn.delete(user_id.encode(), db=dbs[NAME])
    clear_held(txn, dbs, user_id)
