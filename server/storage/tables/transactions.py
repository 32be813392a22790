"""``transactions``: transaction id -> JSON list of what ScoreTransaction answered (score,
reasons, hold), its label and the transaction's time: ScoreTransaction's idempotency, and
the features a GENUINE label folds in. Records stored before the time was kept have 8
fields (their time reads as 0: unknown).
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
    # The transaction's time (epoch seconds), for retention; 0: unknown (an older record).
    time: float = 0.0

    def to_bytes(self) -> bytes:
        # A plain list, not dataclasses.asdict: this runs per transaction on the hot path.
        fields = [
            self.user_id, self.score, self.reasons, self.baseline_count, self.held,
            self.in_baseline, self.features, self.label, self.time,
        ]
        return orjson.dumps(fields)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> TransactionRecord:
        fields = orjson.loads(raw)
        user_id, score, reasons, count, held, in_baseline, features, label = fields[:8]
        time = float(fields[8]) if len(fields) > 8 else 0.0
        reasons = [(str(c), str(d), float(w)) for c, d, w in reasons]
        return cls(user_id, score, reasons, count, held, in_baseline, features, label, time)

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


def older_than(
    txn: lmdb.Transaction, dbs: Dbs, after: bytes, limit: int, cutoff: float
) -> tuple[list[str], list[str], bytes]:
    """Scan up to ``limit`` records past key ``after`` (b"": from the start): the ids of
    those whose transaction time is before ``cutoff``, of those with no time (stored
    before it was kept), and the key to resume from (b"" once the scan reached the end)."""
    expired: list[str] = []
    timeless: list[str] = []
    cursor = txn.cursor(db=dbs[NAME])
    found = cursor.set_range(after + b"\x00") if after else cursor.first()
    scanned, last = 0, b""
    while found and scanned < limit:
        last = bytes(cursor.key())
        fields = orjson.loads(cursor.value())
        time = float(fields[8]) if len(fields) > 8 else 0.0
        if not time:
            timeless.append(last.decode())
        elif time < cutoff:
            expired.append(last.decode())
        scanned += 1
        found = cursor.next()
    return expired, timeless, last if found else b""
