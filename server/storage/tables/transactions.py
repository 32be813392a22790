"""``transactions``: user id + NUL + transaction id -> JSON list of what ScoreTransaction
answered (score, reasons, hold), its label, the transaction's time and how it entered the
profile: ScoreTransaction's idempotency, and the features
(``nudge.kernels.risk_model.FEAT_LEN`` values, or ``FEAT_LEN_V3`` kept before the amount
residual) a label trains on and a hold folds in.
Records of the surprisal model before ``risk_model`` carry features of another length,
which are never handed to the model (``model_features`` is None). Ids are per user: one user's id
never collides with (or reveals) another's; a transaction is named by ``TxKey`` (user id,
transaction id). Records stored before the time was kept have 8 fields (their time reads
as 0: unknown), before ``learned_by`` 9. Schema versions 1 and 2 keyed by the transaction id alone
(``rekey_by_user`` migrates them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb
import orjson

from nudge.kernels.risk_model import FEAT_LEN, FEAT_LEN_V3
from nudge.server.storage.tables import keys

NAME = "transactions"

Dbs = Mapping[str, Any]
# A transaction: (user id, transaction id).
TxKey = tuple[str, str]


def _key(key: TxKey) -> bytes:
    return keys.pair(*key)


def _parse(raw: bytes) -> TxKey:
    user_id, _, transaction_id = raw.decode().partition("\x00")
    return user_id, transaction_id


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
    # The transaction's time (epoch seconds), for retention and the hold delay; 0: unknown
    # (an older record).
    time: float = 0.0
    # How it entered the profile: "scored", "backfill", "genuine_label", "hold_expiry";
    # "" while it has not.
    learned_by: str = ""

    @property
    def model_features(self) -> list[float] | None:
        """The features kept from scoring, if they are the model's (not a legacy record's).
        Rows kept before the amount residual (``FEAT_LEN_V3``) are the model's too: the
        kernels' checks take them, their residual unknown."""
        return self.features if len(self.features) in (FEAT_LEN, FEAT_LEN_V3) else None

    @property
    def waiting(self) -> bool:
        """Held, and still waiting for a label or the end of its hold delay."""
        return (self.held and not self.in_baseline and self.label != "FRAUD"
                and self.model_features is not None)

    def to_bytes(self) -> bytes:
        # A plain list, not dataclasses.asdict: this runs per transaction on the hot path.
        fields = [
            self.user_id, self.score, self.reasons, self.baseline_count, self.held,
            self.in_baseline, self.features, self.label, self.time, self.learned_by,
        ]
        return orjson.dumps(fields)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> TransactionRecord:
        fields = orjson.loads(raw)
        user_id, score, reasons, count, held, in_baseline, features, label = fields[:8]
        time = float(fields[8]) if len(fields) > 8 else 0.0
        learned_by = str(fields[9]) if len(fields) > 9 else ""
        reasons = [(str(c), str(d), float(w)) for c, d, w in reasons]
        return cls(user_id, score, reasons, count, held, in_baseline, features, label, time,
                   learned_by)

    def copy(self) -> TransactionRecord:
        return replace(self, reasons=list(self.reasons), features=list(self.features))


def get(txn: lmdb.Transaction, dbs: Dbs, key: TxKey) -> TransactionRecord | None:
    raw = txn.get(_key(key), db=dbs[NAME])
    return None if raw is None else TransactionRecord.from_bytes(raw)


def put(txn: lmdb.Transaction, dbs: Dbs, key: TxKey, record: TransactionRecord) -> None:
    txn.put(_key(key), record.to_bytes(), db=dbs[NAME])


def delete(txn: lmdb.Transaction, dbs: Dbs, key: TxKey) -> None:
    txn.delete(_key(key), db=dbs[NAME])


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[TxKey]:
    """Every transaction of ``user_id`` (a prefix scan: its keys start with the user)."""
    return [(user_id, t) for t in keys.items_of(txn, dbs[NAME], user_id)]


def rekey_by_user(txn: lmdb.Transaction, dbs: Dbs) -> int:
    """Schema 2 -> 3: records keyed by transaction id alone get their owner's id in front
    (the record names its user). Returns the records rekeyed."""
    old = [(bytes(k), bytes(v)) for k, v in txn.cursor(db=dbs[NAME])]
    for key, raw in old:
        record = TransactionRecord.from_bytes(raw)
        txn.delete(key, db=dbs[NAME])
        txn.put(_key((record.user_id, key.decode())), raw, db=dbs[NAME])
    return len(old)


def older_than(
    txn: lmdb.Transaction, dbs: Dbs, after: bytes, limit: int, cutoff: float
) -> tuple[list[TxKey], list[TxKey], bytes]:
    """Scan up to ``limit`` records past key ``after`` (b"": from the start): the ids of
    those whose transaction time is before ``cutoff``, of those with no time (stored
    before it was kept), and the key to resume from (b"" once the scan reached the end)."""
    expired: list[TxKey] = []
    timeless: list[TxKey] = []
    cursor = txn.cursor(db=dbs[NAME])
    found = cursor.set_range(after + b"\x00") if after else cursor.first()
    scanned, last = 0, b""
    while found and scanned < limit:
        last = bytes(cursor.key())
        fields = orjson.loads(cursor.value())
        time = float(fields[8]) if len(fields) > 8 else 0.0
        if not time:
            timeless.append(_parse(last))
        elif time < cutoff:
            expired.append(_parse(last))
        scanned += 1
        found = cursor.next()
    return expired, timeless, last if found else b""
