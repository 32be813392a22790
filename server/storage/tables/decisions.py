"""``decisions``: decision id -> record (context, choice, propensity, model version, seed,
guardrail trace, outcome): the audit trail and the learner's input.

A record is stored in one of two formats, told apart by its first byte:

- JSON (``{``): every field as JSON, the context ``x`` and ``raw`` as lists (``null`` for a
  missing value). Records written before the binary format stay readable as they are.
- binary (``FORMAT_BINARY``, written since): the byte, ``len(x)`` and ``len(raw)`` as
  little-endian uint32, the two as little-endian float64 arrays, then the other fields as
  JSON. ``x`` and ``raw`` — ~72 floats — were most of a JSON record's bytes (1.8 KB → 1.1
  KB) and of its encoding in the decision flush (float to shortest text); as bytes they are
  copied, and read back bit for bit.

Either way a reader sees the same fields: :func:`decode` gives ``x`` and ``raw`` as lists
of floats, a non-finite value as ``None`` (JSON writes NaN and infinities as ``null``).
Readers that need no context (status, user, time) use :func:`decode_meta`, which skips the
arrays.
"""

from __future__ import annotations

import struct
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
    """The audit record and learner input of one decision (stored as the module docstring says)."""

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
        """The binary format (module docstring); a loaded record's lists (``None`` for a
        missing value) convert back to the arrays they were read from."""
        fields = self.__dict__.copy()
        x = np.asarray(fields.pop("x"), dtype="<f8")
        raw = np.asarray(fields.pop("raw"), dtype="<f8")
        return b"".join((_HEADER.pack(FORMAT_BINARY, x.shape[0], raw.shape[0]),
                         x.tobytes(), raw.tobytes(), orjson.dumps(fields)))

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> DecisionRecord:
        data = decode(raw)
        data["trace"] = [tuple(t) for t in data["trace"]]
        return cls(**data)


# The first byte of a record in the binary format (a JSON record starts with "{"), then
# the lengths of x and raw.
FORMAT_BINARY = 1
_HEADER = struct.Struct("<BII")


def decode(value: bytes | memoryview) -> dict[str, Any]:
    """A stored record's fields, whichever its format, ``x`` and ``raw`` as lists (a
    non-finite value ``None``, as JSON stores it)."""
    if value[0] != FORMAT_BINARY:
        return orjson.loads(value)
    view = memoryview(value)
    _, n_x, n_raw = _HEADER.unpack_from(view)
    values = struct.unpack_from(f"<{n_x + n_raw}d", view, _HEADER.size)
    fields: dict[str, Any] = orjson.loads(view[_HEADER.size + 8 * (n_x + n_raw):])
    fields["x"] = _as_json_list(values[:n_x])
    fields["raw"] = _as_json_list(values[n_x:])
    return fields


def _as_json_list(values: tuple[float, ...]) -> list[float | None]:
    """The floats as JSON reads them back: NaN and ±inf as None. ``v - v`` is 0.0 for a
    finite ``v`` only, and so is the sum's when every value is finite (or it overflowed:
    then the values are checked one by one, as when some are missing)."""
    total = sum(values)
    if total - total == 0.0:
        return list(values)
    return [v if v - v == 0.0 else None for v in values]


def decode_meta(value: bytes | memoryview) -> dict[str, Any]:
    """A stored record's fields without reading its context: ``x`` and ``raw`` absent from
    a binary record (present, as stored, in a JSON one). For readers of status, user or
    time only, which then skip converting ~72 floats."""
    if value[0] != FORMAT_BINARY:
        return orjson.loads(value)
    view = memoryview(value)
    _, n_x, n_raw = _HEADER.unpack_from(view)
    return orjson.loads(view[_HEADER.size + 8 * (n_x + n_raw):])


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
               if decode_meta(raw)["status"] != "open"} if open_keys else set()
    stored = [not (r.status == "open" and k in settled)
              for k, r in zip(keys, records, strict=True)]
    cursor.putmulti(sorted((k, r.to_bytes())
                           for k, r, s in zip(keys, records, stored, strict=True) if s))
    return stored


def stored_fields(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[dict[str, Any]]:
    """Every stored record as its fields (:func:`decode`; readers that want no dataclass)."""
    for _, raw in txn.cursor(db=dbs[NAME]):
        yield decode(raw)


def get_fields(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> dict[str, Any] | None:
    """One stored record's fields (:func:`decode`), or None."""
    raw = txn.get(decision_id.encode(), db=dbs[NAME])
    return None if raw is None else decode(bytes(raw))


def get_meta(txn: lmdb.Transaction, dbs: Dbs, decision_id: str) -> dict[str, Any] | None:
    """One stored record's fields without its context (:func:`decode_meta`), or None."""
    raw = txn.get(decision_id.encode(), db=dbs[NAME])
    return None if raw is None else decode_meta(bytes(raw))


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
        data = decode_meta(cursor.value())
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
        if needle in bytes(raw) and decode_meta(raw)["user_id"] == user_id:
            out.append(bytes(key).decode())
    return out
