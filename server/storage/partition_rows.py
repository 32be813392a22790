"""A partition's rows, portable from one store to another: what a cluster snapshot holds
(``cluster/snapshots.py``) and how a new owner takes them in.

**Why rows and not LMDB pages.** A node's store holds the partitions it owns (and rows it
kept of partitions it owned before), so a partition is a subset of every table, picked
by user: the tables keyed by user id (state, profile, risk baseline, contacts, insights
summary), the ones keyed ``user NUL item`` (seen event ids, scored transactions, open
decisions, a user's deliveries, journey triggers), and the ones whose value names the user
(decision records, deliveries, the event log) with their indexes (deadlines, the outbox
queue). Three things in those rows are numbered by each store itself, so bytes copied
from one store would mean something else in another; the export names them and the
import maps the names to this store's numbers:

- **event type slots** of the user state record (``COUNTS``/``TOTALS``/``TYPE_LAST``
  blocks, ``kernels/user_state.py``): a slot is whatever type the store registered there
  first. The export carries the exporter's ``name -> slot`` registry; the importer gives
  each name its own slot (registering it if new, ``EventWriter.slot_for``) and moves the
  blocks. Counts of a slot with no name, and of the shared "other" slot, go to "other".
  When both registries agree (campaigns name their types at start, sorted, so nodes of
  one cluster usually do) the record bytes are kept as they are.
- **insights key ids** of the summary entries (``tables.insights``): the same, by key name.
- **event log sequences** (``events``, and ``seen``'s values pointing into it): the
  imported events are appended at this store's end under new sequences, in their order,
  and each ``seen`` row points at its event's new sequence. Those the exporter's summaries
  had folded are recorded as such (``tables.insights.put_imported``): the summary rows
  came with the snapshot, so a catch-up after a crash must not fold them a second time;
  the few it had not (the summaries are written behind) are folded by the importer's
  (``EventWriter.add_import_hook``).

**Import replaces.** Every row this store holds of the partition is deleted first, in
the same transaction (the rows found by a scan just before it, ``stale_rows``): rows
left from an earlier ownership are older than the snapshot (their position is below it,
or the snapshot would not be used) and the snapshot has all they had. The partition's
applied position is set to the snapshot's in that transaction, so the log is applied
from just after it, exactly once.

**Cost.** An export reads every table once (a full scan, picking rows by user: one hash
per distinct user, and each logged event and decision record parsed for its user), so a
node exports all the partitions it snapshots in one pass; an import scans once more, in a
read transaction, to find what to delete. Both are background work of a partition
move or a snapshot round, never on a reply path; only the import's writes run inside the
group commit (the writer waits for them: milliseconds per thousand rows).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import user_state
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables import events as event_table
from nudge.server.storage.tables import insights, keys, meta, risk_baselines, users

FORMAT = 1
MAGIC = b"nudge-partition"
# Tables whose key is the user id.
BY_USER = ("users", "profiles", "risk", "contacts", "insights")
# Tables whose key is ``user NUL item`` (``keys.pair``).
BY_PAIR = ("seen", "transactions", "open", "user_deliveries", "triggered")
# Every table a partition's rows are in (``meta`` for the per-user risk keys).
TABLES = (*BY_USER, *BY_PAIR, "decisions", "deadlines", "deliveries", "outbox", "events",
          "meta")
_FRAME = struct.Struct("<BII")  # table index, key length, value length

Dbs = Mapping[str, Any]
PartitionOf = Callable[[str], int]


@dataclass
class PartitionRows:
    """One partition's rows as exported: ``rows[table]`` is a list of (key, value) in the
    exporting store's numbering; ``types`` and ``insight_keys`` name its numbers; ``events``
    are the logged events in sequence order, keyed by their old sequence."""

    partition: int
    position: int  # the replicated log's sequence the rows reflect (applied up to)
    types: dict[str, int] = field(default_factory=dict)
    insight_keys: dict[str, int] = field(default_factory=dict)
    risk_clock: float | None = None
    # Old sequences of the exported events the exporter's summaries had not folded yet
    # (written behind: the last seconds' events): the importer folds them itself.
    unfolded: list[int] = field(default_factory=list)
    rows: dict[str, list[tuple[bytes, bytes]]] = field(
        default_factory=lambda: {t: [] for t in TABLES})

    def users(self) -> set[str]:
        """The users the rows are of (what an importer drops from its caches)."""
        return {_user_of(t, k).decode() for t in (*BY_USER, *BY_PAIR) for k, _ in self.rows[t]}

    def count(self) -> int:
        return sum(len(r) for r in self.rows.values())

    # -- bytes -----------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """A header (JSON) and the rows framed by table, compressed (zlib: the rows are
        mostly JSON and sparse float records)."""
        header = orjson.dumps({
            "format": FORMAT, "partition": self.partition, "position": self.position,
            "types": self.types, "insight_keys": self.insight_keys,
            "risk_clock": self.risk_clock, "unfolded": self.unfolded,
        })
        parts = [MAGIC, struct.pack("<I", len(header)), header]
        for index, table in enumerate(TABLES):
            for key, value in self.rows[table]:
                parts += [_FRAME.pack(index, len(key), len(value)), key, value]
        return zlib.compress(b"".join(parts), 1)

    @classmethod
    def from_bytes(cls, blob: bytes) -> PartitionRows:
        """ValueError when ``blob`` is not an export of this format."""
        try:
            raw = zlib.decompress(blob)
        except zlib.error as exc:
            raise ValueError(f"not a partition snapshot: {exc}") from None
        if not raw.startswith(MAGIC):
            raise ValueError("not a partition snapshot")
        at = len(MAGIC)
        (length,) = struct.unpack_from("<I", raw, at)
        at += 4
        header = orjson.loads(raw[at:at + length])
        at += length
        if header.get("format") != FORMAT:
            raise ValueError(f"partition snapshot format {header.get('format')}, this nudge "
                             f"reads {FORMAT}")
        out = cls(int(header["partition"]), int(header["position"]),
                  {str(k): int(v) for k, v in header["types"].items()},
                  {str(k): int(v) for k, v in header["insight_keys"].items()},
                  header["risk_clock"], [int(q) for q in header["unfolded"]])
        view = memoryview(raw)
        while at < len(raw):
            index, klen, vlen = _FRAME.unpack_from(raw, at)
            at += _FRAME.size
            key = bytes(view[at:at + klen])
            at += klen
            out.rows[TABLES[index]].append((key, bytes(view[at:at + vlen])))
            at += vlen
        return out


# -- export --------------------------------------------------------------------------------


def export(txn: lmdb.Transaction, dbs: Dbs, partition_of: PartitionOf,
           wanted: Iterable[int], positions: Mapping[int, int] | None = None,
           ) -> dict[int, PartitionRows]:
    """The rows of each ``wanted`` partition, read in one pass over every table in one
    read transaction. Each is labelled with its applied position as stored in that
    transaction, or with ``positions[p]`` when given: a position at or below the stored
    one whose records are all in the store (see ``cluster/snapshots.py``: a record
    applied after it may show in the rows too, and applying it again changes nothing)."""
    wanted = set(wanted)
    types = meta.type_slots(txn, dbs)
    key_names = insights.key_ids(txn, dbs)
    clock = risk_baselines.clock(txn, dbs)
    folded_upto = insights.position(txn, dbs) or 0
    skips = insights.imported(txn, dbs)
    out = {p: PartitionRows(
        p, meta.applied_position(txn, dbs, p) if positions is None else positions[p],
        dict(types), dict(key_names), clock if clock > -float("inf") else None) for p in wanted}
    for table, key, value, p in _partition_rows(txn, dbs, partition_of, wanted):
        out[p].rows[table].append((key, value))
        if table == "events":
            seq = int.from_bytes(key, "big")
            if seq >= folded_upto and not any(a <= seq < b for a, b in skips):
                out[p].unfolded.append(seq)
    return out


def _partition_rows(
    txn: lmdb.Transaction, dbs: Dbs, partition_of: PartitionOf, wanted: set[int],
) -> Iterable[tuple[str, bytes, bytes, int]]:
    """(table, key, value, partition) of every row of a ``wanted`` partition."""
    memo: dict[bytes, int] = {}

    def of(user: bytes) -> int:
        p = memo.get(user)
        if p is None:
            p = memo[user] = partition_of(user.decode())
        return p

    for table in (*BY_USER, *BY_PAIR):
        for key, value in txn.cursor(db=dbs[table]):
            key = bytes(key)
            p = of(_user_of(table, key))
            if p in wanted:
                yield table, key, bytes(value), p
    # Records that name the user (a decision in the JSON part of its record), and their
    # indexes keyed by an 8-byte time and the record's id (a decision's deadline, a
    # delivery's place in the outbox queue).
    for records, index in (("decisions", "deadlines"), ("deliveries", "outbox")):
        partition_of_id: dict[bytes, int] = {}
        for key, value in txn.cursor(db=dbs[records]):
            fields = (decision_table.decode_meta(value) if records == "decisions"
                      else orjson.loads(value))
            p = of(fields["user_id"].encode())
            if p in wanted:
                partition_of_id[bytes(key)] = p
                yield records, bytes(key), bytes(value), p
        for key, value in txn.cursor(db=dbs[index]):
            key = bytes(key)
            p = partition_of_id.get(key[8:], -1)
            if p in wanted:
                yield index, key, bytes(value), p
    for key, value in txn.cursor(db=dbs["events"]):
        p = of(event_table.event_ids(bytes(value))[1].encode())
        if p in wanted:
            yield "events", bytes(key), bytes(value), p
    for prefix, user_at in ((risk_baselines.HELD_PREFIX, len(risk_baselines.HELD_PREFIX)),
                            (risk_baselines.HOLDS_PREFIX, len(risk_baselines.HOLDS_PREFIX) + 8)):
        for key, value in keys.with_prefix(txn, dbs["meta"], prefix):
            p = of(key[user_at:].split(b"\x00", 1)[0])
            if p in wanted:
                yield "meta", key, bytes(value), p


# -- import --------------------------------------------------------------------------------


@dataclass
class Imported:
    """What an import wrote: the users whose rows it dropped or wrote (caches of them are
    stale) and the event sequences it used, [first, end)."""

    users: set[str]
    first: int
    end: int
    unfolded: list[bytes]  # imported events the summaries are still to fold


def stale_rows(txn: lmdb.Transaction, dbs: Dbs, partition_of: PartitionOf,
               partition: int) -> list[tuple[str, bytes]]:
    """(table, key) of every row this store holds of ``partition``: what an import
    deletes. Read before the import's write transaction, in a read transaction of its
    own (a full scan, like an export's: inside the writer it would hold up every other
    write), which is right as long as nothing writes the partition's rows in between —
    a node restoring a partition serves it only once the import is done."""
    return [(t, k) for t, k, _, _ in _partition_rows(txn, dbs, partition_of, {partition})]


def import_rows(
    txn: lmdb.Transaction, dbs: Dbs, rows: PartitionRows, stale: list[tuple[str, bytes]],
    slot_for: Callable[[str], int], first_sequence: int,
) -> Imported:
    """Replace the partition's rows in this store with ``rows`` (see the module docstring):
    ``stale`` are the rows to delete first (``stale_rows``); ``slot_for(name)`` is this
    store's slot for an event type (registering it when new); imported events take
    sequences from ``first_sequence`` on."""
    touched = rows.users()
    for table, key in stale:
        if table in BY_USER or table in BY_PAIR:
            touched.add(_user_of(table, key).decode())
        txn.delete(key, db=dbs[table])

    # Event log: new sequences at this store's end, in the exported order; the runs the
    # exporter's summaries held are recorded as folded, the rest go to the summaries.
    renumbered: dict[bytes, bytes] = {}
    unfolded_old = set(rows.unfolded)
    unfolded: list[bytes] = []
    sequence = run = first_sequence
    for old, payload in rows.rows["events"]:
        new = event_table.sequence_key(sequence)
        renumbered[old] = new
        txn.put(new, payload, db=dbs["events"], append=True)
        if int.from_bytes(old, "big") in unfolded_old:
            unfolded.append(payload)
            if run < sequence:
                insights.put_imported(txn, dbs, run, sequence)
            run = sequence + 1
        sequence += 1
    if run < sequence:
        insights.put_imported(txn, dbs, run, sequence)
    for key, old in rows.rows["seen"]:
        # A seen id whose event the exporter had already dropped (retention forgets seen
        # ids before events, so only in a race with it) points below this store's log.
        txn.put(key, renumbered.get(old, event_table.sequence_key(0)), db=dbs["seen"])

    # State records: event type slots renumbered by name.
    move = _slot_map(rows.types, {name: slot_for(name) for name in rows.types})
    for key, value in rows.rows["users"]:
        if move is not None:
            value = users.encode_record(remap_slots(users.decode_record(value), move))
        txn.put(key, value, db=dbs["users"])

    # Insights summaries: key ids renumbered by name.
    theirs = {i: name for name, i in rows.insight_keys.items()}
    lut = np.arange(max(theirs, default=0) + 1, dtype=np.uint16)
    for their_id, name in theirs.items():
        lut[their_id] = insights.register_key(txn, dbs, name)
    same = all(int(lut[i]) == i for i in theirs)
    for key, value in rows.rows["insights"]:
        if not same:
            entries = np.frombuffer(value, insights.ENTRY).copy()
            ids = entries["key"].astype(np.int64)
            known = ids < len(lut)
            entries["key"] = np.where(known, lut[np.where(known, ids, 0)], insights.OTHER_KEY)
            value = entries.tobytes()
        txn.put(key, value, db=dbs["insights"])

    for table in ("profiles", "risk", "contacts", *BY_PAIR[1:], "decisions", "deadlines",
                  "deliveries", "outbox", "meta"):
        for key, value in rows.rows[table]:
            txn.put(key, value, db=dbs[table])
    if rows.risk_clock is not None and rows.risk_clock > risk_baselines.clock(txn, dbs):
        risk_baselines.put_clock(txn, dbs, rows.risk_clock)
    meta.put_applied_position(txn, dbs, rows.partition, rows.position)
    return Imported(touched, first_sequence, sequence, unfolded)


def _user_of(table: str, key: bytes) -> bytes:
    """The user id a key of a ``BY_USER`` or ``BY_PAIR`` table belongs to."""
    return key if table in BY_USER else key.split(b"\x00", 1)[0]


def _slot_map(theirs: Mapping[str, int], mine: Mapping[str, int]) -> np.ndarray | None:
    """Source slot -> target slot for every slot (None when it is the identity): named
    slots by name, every other one (unnamed, or the shared "other") to "other"."""
    move = np.full(user_state.N_TYPES, user_state.OTHER_TYPE_SLOT, dtype=np.int64)
    for name, slot in theirs.items():
        if 0 <= slot < user_state.N_TYPES:
            move[slot] = mine[name]
    # Slots no name holds are zero (a registry reset clears them), so the identity on
    # the named ones is the identity.
    named = set(theirs.values()) | {user_state.OTHER_TYPE_SLOT}
    if all(move[s] == s for s in named):
        return None
    return move


def remap_slots(record: np.ndarray, move: np.ndarray) -> np.ndarray:
    """A state record with its per-type blocks moved to other slots (``move[source] =
    target``): counts and totals add up where several land in one slot ("other"), the
    last time is the latest."""
    out = record.copy()
    n = user_state.N_TYPES
    counts = out[user_state.COUNTS:user_state.COUNTS + n]
    totals = out[user_state.TOTALS:user_state.TOTALS + n]
    last = out[user_state.TYPE_LAST:user_state.TYPE_LAST + n]
    counts[:] = 0.0
    totals[:] = 0.0
    last[:] = 0.0
    np.add.at(counts, move, record[user_state.COUNTS:user_state.COUNTS + n])
    np.add.at(totals, move, record[user_state.TOTALS:user_state.TOTALS + n])
    np.maximum.at(last, move, record[user_state.TYPE_LAST:user_state.TYPE_LAST + n])
    return out

