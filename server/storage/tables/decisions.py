"""``decisions``: decision id -> JSON record (context, choice, propensity, model version,
seed, guardrail trace, outcome): the audit trail and the learner's input.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np
import orjson

NAME = "decisions"

Dbs = Mapping[str, Any]


@dataclass
class DecisionRecord:
    """The audit record and learner input of one decision (stored as JSON)."""

    decision_id: str
    user_id: str
    campaign: str
    time: float
    model_version: str
    seed: int
    # Arrays while pending (NaN = missing in raw), lists once loaded: converting them is
    # left to serialisation, which runs in the writer thread, not in the request.
    x: list[float] | np.ndarray
    raw: list[float | None] | np.ndarray
    choice: int
    top: list[int]
    propensity: float
    propensity_samples: int
    holdout: bool
    suppressed: str
    trace: list[tuple[str, str]]
    window_end: float
    # "open" (awaiting its goal), "settled" (rewarded or expired) or "final" (a guardrail
    # decided: nothing to attribute or learn).
    status: str = "open"
    reward: float | None = None
    learn: bool = True
    actions: list[dict[str, Any]] = field(default_factory=list)
    # Messages the decision sends (as the caps count them): the campaign's contact cost
    # is learned per message.
    messages: int = 0

    def to_bytes(self) -> bytes:
        # Arrays serialise as lists, NaN as null (a missing raw feature).
        return orjson.dumps(self.__dict__, option=orjson.OPT_SERIALIZE_NUMPY)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> DecisionRecord:
        data = orjson.loads(raw)
        data["trace"] = [tuple(t) for t in data["trace"]]
        return cls(**data)


def get(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> DecisionRecord | None:
    raw = txn.get(decision_id.encode(), db=dbs[NAME])
    return None if raw is None else DecisionRecord.from_bytes(raw)


def exists(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> bool:
    return txn.get(decision_id.encode(), db=dbs[NAME]) is not None


def put(txn: lmdb.Transaction, dbs: Dbs, record: DecisionRecord) -> None:
    txn.put(record.decision_id.encode(), record.to_bytes(), db=dbs[NAME])


def put_new(txn: lmdb.Transaction, dbs: Dbs, records: list[DecisionRecord]) -> list[bool]:
    """Store decisions made since the last commit (the decision flush), in key order in one
    cursor call, except an open one whose stored copy is already settled (a goal or
    ReportOutcome settled it, maybe earlier in this very commit): a stale open copy must
    never reopen it. Returns, per record, whether it was stored."""
    cursor = txn.cursor(db=dbs[NAME])
    keys = [r.decision_id.encode() for r in records]
    open_keys = sorted(k for k, r in zip(keys, records, strict=True) if r.status == "open")
    settled = {bytes(k) for k, raw in cursor.getmulti(open_keys)
               if orjson.loads(raw)["status"] != "open"} if open_keys else set()
    stored = [not (r.status == "open" and k in settled)
              for k, r in zip(keys, records, strict=True)]
    cursor.putmulti(sorted((k, r.to_bytes())
                           for k, r, s in zip(keys, records, stored, strict=True) if s))
    return stored


def stored_fields(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[dict[str, Any]]:
    """Every stored record as its JSON fields (readers that want no dataclass)."""
    for _, raw in txn.cursor(db=dbs[NAME]):
        yield orjson.loads(raw)


def get_fields(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> dict[str, Any] | None:
    """One stored record as its JSON fields, or None."""
    raw = txn.get(decision_id.encode(), db=dbs[NAME])
    return None if raw is None else orjson.loads(bytes(raw))


def delete(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> None:
    txn.delete(decision_id.encode(), db=dbs[NAME])


def settled_before(
    txn: lmdb.Transaction, dbs: Dbs, after: bytes, limit: int, cutoff: float
) -> tuple[list[str], bytes]:
    """Scan up to ``limit`` records past key ``after`` (b"": from the start): the ids of
    those made before ``cutoff`` and no longer open, and the key to resume from (b"" once
    the scan reached the end)."""
    out: list[str] = []
    cursor = txn.cursor(db=dbs[NAME])
    found = cursor.set_range(after + b"\x00") if after else cursor.first()
    scanned, last = 0, b""
    while found and scanned < limit:
        last = bytes(cursor.key())
        data = orjson.loads(cursor.value())
        if data["time"] < cutoff and data["status"] != "open":
            out.append(data["decision_id"])
        scanned += 1
        found = cursor.next()
    return out, last if found else b""


def pseudonymise(
    txn: lmdb.Transaction, dbs: Dbs, decision_ids: list[str], user_id: str, pseudonym: str
) -> int:
    """Replace ``user_id`` by ``pseudonym`` in the records (erasure keeps the audit
    trail); an open one is closed (its user is gone, nothing will be attributed)."""
    changed = 0
    for decision_id in decision_ids:
        record = get(txn, dbs, decision_id)
        if record is None or record.user_id != user_id:
            continue
        record.user_id = pseudonym
        if record.status == "open":
            record.status = "final"
        put(txn, dbs, record)
        changed += 1
    return changed


def of_user(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> list[str]:
    """Ids of every record of ``user_id`` (a full scan: erasure only)."""
    needle = orjson.dumps(user_id)
    out = []
    for key, raw in txn.cursor(db=dbs[NAME]):
        if needle in bytes(raw) and orjson.loads(raw)["user_id"] == user_id:
            out.append(bytes(key).decode())
    return out
