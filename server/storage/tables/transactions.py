"""``transactions``: transaction id -> JSON of what ScoreTransaction answered (score,
reasons, hold) and its label: ScoreTransaction's idempotency, and the features a GENUINE
label folds in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb
import orjson

NAME = "transactions"

Dbs = Mapping[str, Any]


@dataclass
class TransactionRecord:
    """What was answered for a transaction (returned again on a retry) and its label."""

    user_id: str
    score: float
    reasons: list[tuple[str, str, float]]
    baseline_count: int
    held: bool
    in_baseline: bool
    features: list[float] = field(default_factory=list)
    label: str = ""

    def to_bytes(self) -> bytes:
        # A plain list, not dataclasses.asdict: this runs per transaction on the hot path.
        fields = [
            self.user_id, self.score, self.reasons, self.baseline_count, self.held,
            self.in_baseline, self.features, self.label,
        ]
        return orjson.dumps(fields)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> TransactionRecord:
        user_id, score, reasons, count, held, in_baseline, features, label = orjson.loads(raw)
        reasons = [(str(c), str(d), float(w)) for c, d, w in reasons]
        return cls(user_id, score, reasons, count, held, in_baseline, features, label)

    def copy(self) -> TransactionRecord:
        return replace(self, reasons=list(self.reasons), features=list(self.features))


def get(txn: lmdb.Transaction, dbs: Dbs, transaction_id: str) -> TransactionRecord | None:
    raw = txn.get(transaction_id.encode(), db=dbs[NAME])
    return None if raw is None else TransactionRecord.from_bytes(raw)


def put(txn: lmdb.Transaction, dbs: Dbs, transaction_id: str, record: TransactionRecord) -> None:
    txn.put(transaction_id.encode(), record.to_bytes(), db=dbs[NAME])


def delete(txn: lmdb.Transaction, dbs: Dbs, transaction_id: str) -> None:
    txn.delete(transaction_id.encode(), db=dbs[NAME])


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[str]:
    """Ids of every transaction of ``user_id`` (a full scan: erasure only)."""
    needle = orjson.dumps(user_id)
    out = []
    for key, raw in txn.cursor(db=dbs[NAME]):
        if needle in bytes(raw) and orjson.loads(raw)[0] == user_id:
            out.append(bytes(key).decode())
    return out
