"""Insights summaries: per user, what they did when, compact enough to count a million users
in seconds (``nudge.kernels.insights`` reads them).

- ``insights``: user id -> the user's entries, ``ENTRY`` records of 12 bytes each
  (``hour`` u4: event time in whole hours since the epoch; ``key`` u2: the entry's key;
  ``count`` u2; ``amount`` f4: the sum of the events' ``amount`` property). Ingest appends
  one entry per event (no read-modify-write of a decoded record: appending bytes is what
  keeps ingest cheap); when a user's entry count crosses a power of two (from
  ``COMPACT_FROM``) the record is compacted: entries of one key on one day (24-hour
  periods from the first entry) merge into one, and entries ``HORIZON_DAYS`` or more after
  the first are dropped. Doubling thresholds keep compaction amortised O(1) per event
  even for a user whose record does not shrink. A compacted entry sits at the start of its
  day; an event arriving later but stamped *before* the user's first entry moves day 0,
  so merged entries may then land one day off (a back-dated first event after weeks of
  history: rare, and documented).
- in ``meta``: ``insights/key/<name>`` -> the key's id (u2), ``insights/next_key`` -> the
  next free id. A name is an event type (``loan_simulated``) or, for an event carrying a
  ``step`` string, its abandoned flow step as JSON ``["flow_abandoned", flow, step]``.
  A flow and a step may be 1,024 bytes each, past LMDB's largest key (511 bytes): a name
  that does not fit is kept as ``insights/key/#<sha256 hex>`` -> the id followed by the
  name's bytes (``#`` begins no type name and no JSON array, so the forms cannot meet).
  Key 0 is ``(other)``: every name after the first ``MAX_KEYS - 1`` shares it.
- in ``meta``: ``insights/position`` -> the next event-log sequence not yet folded into
  the summaries (8 bytes big-endian), stored in the same transaction as the entries: the
  summaries are written behind, and a restart folds the log from here on.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.server.storage.tables import keys

NAME = "insights"
META = "meta"
KEY_PREFIX = b"insights/key/"
NEXT_KEY = b"insights/next_key"
POSITION = b"insights/position"
OTHER_KEY = 0
OTHER_NAME = "(other)"
MAX_KEYS = 4096
HORIZON_DAYS = 400
# LMDB's largest key (its compiled default, ``env.max_key_size()``), less the prefix.
MAX_PLAIN_NAME_BYTES = 511 - len(KEY_PREFIX)
LONG_NAME_MARK = b"#"
COMPACT_FROM = 64
ENTRY = np.dtype([("hour", "<u4"), ("key", "<u2"), ("count", "<u2"), ("amount", "<f4")])
ENTRY_STRUCT = struct.Struct("<IHHf")
ENTRY_BYTES = ENTRY.itemsize
MAX_COUNT = 65_535
COMPACT_BYTES = COMPACT_FROM * ENTRY_BYTES

Dbs = Mapping[str, Any]


def flow_key_name(event_type: str, flow: str, step: str) -> str:
    """The registry name of an abandoned flow step (JSON: never a valid type name)."""
    return orjson.dumps([event_type, flow, step]).decode()


def parse_key_name(name: str) -> tuple[str, str, str] | None:
    """(type, flow, step) of a flow step key name; None for an event type."""
    if not name.startswith("["):
        return None
    event_type, flow, step = orjson.loads(name)
    return str(event_type), str(flow), str(step)


def key_ids(txn: lmdb.Transaction, dbs: Dbs) -> dict[str, int]:
    """Every registered name -> its id (``(other)`` included)."""
    out = {OTHER_NAME: OTHER_KEY}
    for key, value in keys.with_prefix(txn, dbs[META], KEY_PREFIX):
        value = bytes(value)
        name = bytes(key[len(KEY_PREFIX):])
        if name.startswith(LONG_NAME_MARK):
            name = value[2:]
        out[name.decode()] = int.from_bytes(value[:2], "little")
    return out


def names_by_id(ids: Mapping[str, int]) -> list[str]:
    """``key_ids``' names indexed by id ("" where an id is unused)."""
    names = [""] * (max(ids.values(), default=-1) + 1)
    for name, key in ids.items():
        names[key] = name
    return names


def _registry_entry(name: str) -> tuple[bytes, bytes]:
    """The registry's key for ``name`` and what its value holds after the id."""
    raw = name.encode()
    if len(raw) <= MAX_PLAIN_NAME_BYTES:
        return KEY_PREFIX + raw, b""
    return KEY_PREFIX + LONG_NAME_MARK + hashlib.sha256(raw).hexdigest().encode(), raw


def key_id(txn: lmdb.Transaction, dbs: Dbs, name: str) -> int | None:
    key, _ = _registry_entry(name)
    raw = txn.get(key, db=dbs[META])
    return None if raw is None else int.from_bytes(bytes(raw)[:2], "little")


def position(txn: lmdb.Transaction, dbs: Dbs) -> int | None:
    """The next event-log sequence the summaries have not folded (None: never stored)."""
    raw = txn.get(POSITION, db=dbs[META])
    return None if raw is None else int.from_bytes(bytes(raw), "big")


def put_position(txn: lmdb.Transaction, dbs: Dbs, sequence: int) -> None:
    txn.put(POSITION, sequence.to_bytes(8, "big"), db=dbs[META])


# Event-log sequences [start, end) whose events came with their summaries (a partition
# imported from a cluster snapshot, ``partition_rows``): never folded. ``imported/<start>``
# -> end, both 8 bytes big-endian; dropped once the position is past them.
IMPORTED_PREFIX = b"insights/imported/"


def put_imported(txn: lmdb.Transaction, dbs: Dbs, start: int, end: int) -> None:
    txn.put(IMPORTED_PREFIX + start.to_bytes(8, "big"), end.to_bytes(8, "big"), db=dbs[META])


def imported(txn: lmdb.Transaction, dbs: Dbs) -> list[tuple[int, int]]:
    """Every recorded imported range, in order."""
    return [(int.from_bytes(key[len(IMPORTED_PREFIX):], "big"), int.from_bytes(value, "big"))
            for key, value in keys.with_prefix(txn, dbs[META], IMPORTED_PREFIX)]


def drop_imported(txn: lmdb.Transaction, dbs: Dbs, start: int) -> None:
    txn.delete(IMPORTED_PREFIX + start.to_bytes(8, "big"), db=dbs[META])


def register_key(txn: lmdb.Transaction, dbs: Dbs, name: str) -> int:
    """The name's id, giving it the next free one (``OTHER_KEY`` once the registry is
    full). Inside the write transaction: ids taken by an aborted one are free again."""
    found = key_id(txn, dbs, name)
    if found is not None:
        return found
    raw = txn.get(NEXT_KEY, db=dbs[META])
    next_id = 1 if raw is None else int.from_bytes(bytes(raw), "little")
    if next_id >= MAX_KEYS:
        return OTHER_KEY
    key, tail = _registry_entry(name)
    txn.put(key, next_id.to_bytes(2, "little") + tail, db=dbs[META])
    txn.put(NEXT_KEY, (next_id + 1).to_bytes(2, "little"), db=dbs[META])
    return next_id


def pack_entry(hour: int, key: int, amount: float) -> bytes:
    """One event's entry (``amount`` NaN when the event has none: stored as 0)."""
    return ENTRY_STRUCT.pack(hour, key, 1, 0.0 if amount != amount else amount)


def append(txn: lmdb.Transaction, dbs: Dbs, user_id: str, entries: bytes) -> None:
    """Append packed entries to the user's summary (compacting when it crossed a power of
    two entries)."""
    append_sorted(txn, dbs, [user_id.encode()], entries, [len(entries)])


def append_sorted(txn: lmdb.Transaction, dbs: Dbs, keys: list[bytes], raw: bytes,
                  ends: list[int]) -> None:
    """``append`` for many users at once, ``keys`` sorted (no duplicates), user ``i``'s
    entries being ``raw[ends[i - 1]:ends[i]]`` (the write-behind flush's form): their
    summaries read with one ``getmulti`` and written with one ``putmulti``, in key order,
    so what a commit pays per user is one C call's share, not two Python calls."""
    cursor = txn.cursor(db=dbs[NAME])
    old: dict[bytes, bytes] = dict(cursor.getmulti(keys))  # type: ignore[arg-type]
    if not old:  # every user new (a bulk load): each key's slice as it is, by C-level maps
        cursor.putmulti(list(zip(keys, map(raw.__getitem__, map(slice, [0, *ends], ends)),
                                 strict=True)))
        return
    get = old.get
    out: list[tuple[bytes, bytes]] = []
    add = out.append
    start = 0
    for key, end in zip(keys, ends, strict=True):
        entries = raw[start:end]
        start = end
        stored = get(key)
        if stored is None:
            add((key, entries))
            continue
        merged = stored + entries
        if (len(merged) >= COMPACT_BYTES
                and (len(merged) // ENTRY_BYTES).bit_length()
                > (len(stored) // ENTRY_BYTES).bit_length()):
            merged = compact(merged)
        add((key, merged))
    cursor.putmulti(out)


def compact(raw: bytes) -> bytes:
    """Merge entries of one key on one day, drop those past ``HORIZON_DAYS``."""
    e = np.frombuffer(raw, ENTRY)
    if e.size == 0:
        return raw
    first = int(e["hour"].min())
    day = (e["hour"].astype(np.int64) - first) // 24
    keep = day < HORIZON_DAYS
    day, keys = day[keep], e["key"][keep].astype(np.int64)
    cell = day * (1 << 16) + keys
    cells, inverse = np.unique(cell, return_inverse=True)
    counts = np.bincount(inverse, weights=e["count"][keep].astype(np.float64))
    amounts = np.bincount(inverse, weights=e["amount"][keep].astype(np.float64))
    out = np.empty(cells.size, ENTRY)
    out["hour"] = first + (cells >> 16) * 24
    out["key"] = cells & 0xFFFF
    out["count"] = np.minimum(counts, MAX_COUNT)
    out["amount"] = amounts
    return out.tobytes()


def entries(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> np.ndarray:
    """The user's entries (a copy), empty when none."""
    raw = txn.get(user_id.encode(), db=dbs[NAME]) if NAME in dbs else None
    return np.frombuffer(bytes(raw) if raw is not None else b"", ENTRY).copy()


def delete(txn: lmdb.Transaction, dbs: Dbs, user_id: str) -> bool:
    return bool(txn.delete(user_id.encode(), db=dbs[NAME]))


def scan(txn: lmdb.Transaction, dbs: Dbs) -> tuple[np.ndarray, np.ndarray]:
    """Every user's entries: ``(offsets, entries)``, user ``u`` owning
    ``entries[offsets[u]:offsets[u + 1]]`` (users in key order)."""
    if NAME not in dbs:
        return np.zeros(1, np.int64), np.empty(0, ENTRY)
    # One growing buffer, appended in place: about twice as fast at a million users as a
    # list of values joined (no million bytes objects kept alive, one copy of the data).
    buffer = bytearray()
    lengths: list[int] = []
    length = lengths.append
    for value in txn.cursor(db=dbs[NAME]).iternext(keys=False, values=True):
        buffer += value
        length(len(value))
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(np.array(lengths, np.int64) // ENTRY_BYTES, out=offsets[1:])
    return offsets, np.frombuffer(buffer, ENTRY)


def scan_chunks(txn: lmdb.Transaction, dbs: Dbs, keep: Callable[[str], bool],
                max_bytes: int) -> Iterator[tuple[np.ndarray, bytes]]:
    """The summaries of the users ``keep`` accepts, in key order, about ``max_bytes`` of
    entries at a time: ``(entries per user, the entries' bytes)`` (cluster mode: a node
    reads the users of the partitions it serves for another node's analysis)."""
    if NAME not in dbs:
        return
    counts: list[int] = []
    buffer = bytearray()
    for raw_key, value in txn.cursor(db=dbs[NAME]).iternext(keys=True, values=True):
        if not keep(bytes(raw_key).decode()):
            continue
        buffer += value
        counts.append(len(value) // ENTRY_BYTES)
        if len(buffer) >= max_bytes:
            yield np.array(counts, np.uint32), bytes(buffer)
            counts, buffer = [], bytearray()
    if counts:
        yield np.array(counts, np.uint32), bytes(buffer)


def user_ids(txn: lmdb.Transaction, dbs: Dbs) -> Iterator[str]:
    """Users in the same order as ``scan``."""
    if NAME in dbs:
        for raw in txn.cursor(db=dbs[NAME]).iternext(keys=True, values=False):
            yield bytes(raw).decode()
