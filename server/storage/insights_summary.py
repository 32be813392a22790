"""The insights summary kept up to date at ingest: an event hook of the ``EventWriter``,
written behind.

Each stored event becomes a 12-byte entry of its user's summary (``tables.insights``): its
hour, its key (event type), count 1 and its value property (``amount`` unless configured).
An event that carries a ``step`` string also gets an entry under its flow step key
(``[type, flow, step]``), which counts as a flow abandonment and not as activity.

**Written behind.** Appending to a randomly keyed per-user B-tree inside every Track
commit cost a third of ingest throughput (a dirty page per user per commit, a Python loop
per event). The summary is derived data: every entry can be rebuilt from the event log.
So the hook only turns the commit's events into arrays (list comprehensions, no per-user
work) and, once the commit is durable, queues them in memory; a background flush
(``write_behind.DelayedFlusher``, ``flush_seconds`` after the first pending commit) folds
everything pending into the summaries in one group commit: each user touched in that
window is read and written once, in key order. With the entries, the flush stores the
**position** (``tables.insights.position``): the next event-log sequence not folded. A
crash loses what was pending, never the events: on start (``catch_up``), the events from
the position to the end of the log are read back and folded, so no summary stays wrong.
A shared store (several processes writing) folds inline, inside the Track commit, so
each process's position stays exact.

Key ids come from the registry in ``meta``: a name this process has seen committed is
looked up in memory, a new one is registered inside the transaction (so an aborted batch
frees it) and cached only after the commit is durable.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

import lmdb
import numpy as np

from nudge.server.errors import Unavailable
from nudge.server.inputs.events import ValidEvent
from nudge.server.storage.group_commit import GroupCommitWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import events as event_table
from nudge.server.storage.tables import insights
from nudge.server.storage.write_behind import DelayedFlusher
from nudge.v1 import event_pb2

log = logging.getLogger(__name__)

FLOW_STRING = "flow"
STEP_STRING = "step"
SECONDS_PER_HOUR = 3600
DEFAULT_VALUE_PROPERTY = "amount"
# The fields read from every event (C-level getters: cheaper than a comprehension's).
_TYPE, _USER, _TIME, _AMOUNT = (attrgetter(name) for name in ("type", "user_id", "time",
                                                                "amount"))
# Events read back from the log per catch-up commit.
CATCH_UP_BATCH = 50_000


@dataclass
class Chunk:
    """One commit's entries, not yet folded: ``users[i]`` owns ``entries[i]``; every
    event of the log below ``position`` is in this chunk or an earlier one."""

    users: list[str]
    entries: np.ndarray
    position: int


@dataclass
class Folded:
    """What a flush stored: the first ``chunks`` pending chunks."""

    chunks: int


class InsightsSummary:
    """Folds stored events into the per-user insights summaries (``EventWriter`` hook).

    ``flush_seconds`` > 0 writes them behind (above); 0, or a shared store, folds them
    inside the events' own commit."""

    def __init__(
        self,
        store: Store,
        writer: GroupCommitWriter | None = None,
        flush_seconds: float = 5.0,
        value_property: str = DEFAULT_VALUE_PROPERTY,
    ) -> None:
        self.store = store
        self.value_property = value_property
        self._writer = writer
        # CPU seconds this summary's own work took in the writer thread (the hook and the
        # folds, not the commit's fsync): the bench's ingest cost, free of the box's noise.
        self.cpu_seconds = 0.0
        with store.read() as txn:
            self._ids: dict[str, int] = insights.key_ids(txn, store.dbs)
        self._lock = threading.Lock()  # the pending chunks
        self._flushing = threading.Lock()  # one flush in the writer at a time
        self._pending: list[Chunk] = []
        self._behind: DelayedFlusher | None = None
        if writer is not None and flush_seconds > 0 and not store.shared:
            self._behind = DelayedFlusher("nudge-insights-flush", self._flush_now,
                                          flush_seconds, pending=lambda: bool(self._pending))

    # -- the hook (writer thread, inside the Track commit) -------------------------------

    def __call__(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        started = time.thread_time()
        new: dict[str, int] = {}
        chunk = self._chunk(txn, events, new, event_table.last_sequence(txn, self.store.dbs) + 1)
        if self._behind is None:
            self._fold(txn, [chunk])
            self.cpu_seconds += time.thread_time() - started
            return self._remember(new) if new else None
        self.cpu_seconds += time.thread_time() - started
        remember = self._remember(new) if new else None

        def committed() -> None:
            if remember is not None:
                remember()
            with self._lock:
                self._pending.append(chunk)
            self._behind.wake()  # type: ignore[union-attr]

        return committed

    def fold_imported(
        self, txn: lmdb.Transaction, payloads: list[bytes]
    ) -> Callable[[], None] | None:
        """(An import hook: ``EventWriter.add_import_hook``.) Events a cluster snapshot
        brought that its exporter's summaries had not folded yet: folded as Track's are."""
        return self(txn, [_replayed(payload) for payload in payloads])

    def _chunk(
        self, txn: lmdb.Transaction, events: Sequence[ValidEvent], new: dict[str, int],
        position: int,
    ) -> Chunk:
        """The events' entries as arrays: one list comprehension or ``fromiter`` per
        field, a dictionary lookup per distinct type (Track's events of a commit number
        in the thousands: a Python statement per event is what showed in the profile)."""
        n = len(events)
        types = list(map(_TYPE, events))
        key_of = {name: self._key_of(txn, name, new) for name in dict.fromkeys(types)}
        prop = self.value_property
        if prop == DEFAULT_VALUE_PROPERTY:
            values = np.fromiter(map(_AMOUNT, events), np.float64, n)
        else:
            values = np.fromiter((ev.numbers.get(prop, 0.0) for ev in events), np.float64, n)
        step_users: list[str] = []
        step_keys: list[int] = []
        step_times: list[float] = []
        for ev in events:
            strings = ev.strings
            if strings and STEP_STRING in strings:
                name = insights.flow_key_name(ev.type, strings.get(FLOW_STRING, ""),
                                              strings[STEP_STRING])
                flow_key = self._key_of(txn, name, new)
                if flow_key != insights.OTHER_KEY:  # a full registry: the step goes unseen
                    step_users.append(ev.user_id)
                    step_keys.append(flow_key)
                    step_times.append(ev.time)
        users = list(map(_USER, events))
        out = np.zeros(n + len(step_users), insights.ENTRY)
        out["hour"][:n] = np.fromiter(map(_TIME, events), np.float64, n) // SECONDS_PER_HOUR
        out["key"][:n] = np.fromiter(map(key_of.__getitem__, types), np.uint16, n)
        out["count"] = 1
        out["amount"][:n] = np.where(np.isnan(values), 0.0, values)
        if step_users:
            out["hour"][n:] = np.array(step_times) // SECONDS_PER_HOUR
            out["key"][n:] = step_keys
            users += step_users
        return Chunk(users, out, position)

    def _key_of(self, txn: lmdb.Transaction, name: str, new: dict[str, int]) -> int:
        key = self._ids.get(name)
        if key is None:
            key = new.get(name)
            if key is None:
                key = new[name] = insights.register_key(txn, self.store.dbs, name)
        return key

    def _remember(self, new: dict[str, int]) -> Callable[[], None]:
        def committed() -> None:
            self._ids = {**self._ids,
                         **{n: k for n, k in new.items() if k != insights.OTHER_KEY}}

        return committed

    # -- folding ---------------------------------------------------------------------------

    def _fold(self, txn: lmdb.Transaction, chunks: list[Chunk]) -> None:
        """Append the chunks' entries to their users' summaries (each user once, in key
        order) and store the position after the last chunk, in the same transaction."""
        if not chunks:
            return
        users = [u for c in chunks for u in c.users]
        entries = (chunks[0].entries if len(chunks) == 1
                   else np.concatenate([c.entries for c in chunks]))
        if users:
            # Rows in key order: the users' slices of the sorted entries line up with the
            # keys LMDB wants sorted, so the table appends them in one pass.
            # (UTF-8 sorts as code points do: the ids sort as their keys will.)
            ids = sorted(set(users))
            row_of = dict(zip(ids, range(len(ids)), strict=True))
            keys = list(map(str.encode, ids))
            rows = np.fromiter(map(row_of.__getitem__, users), np.int64, len(users))
            order = np.argsort(rows, kind="stable")
            ends = np.cumsum(np.bincount(rows, minlength=len(keys))) * insights.ENTRY_BYTES
            insights.append_sorted(txn, self.store.dbs, keys, entries[order].tobytes(),
                                   ends.tolist())
        insights.put_position(txn, self.store.dbs, chunks[-1].position)

    def _write_pending(self, txn: lmdb.Transaction) -> Folded:
        """(A flush, writer thread.) Fold every pending chunk; they stay pending until
        the commit is durable (a retried commit folds them again, from scratch)."""
        started = time.thread_time()
        with self._lock:
            chunks = list(self._pending)
        self._fold(txn, chunks)
        self.cpu_seconds += time.thread_time() - started
        return Folded(len(chunks))

    def _flush_now(self) -> bool:
        """Fold what is pending in a commit of its own and wait for it; False when the
        store refused it (it stays pending: the flusher tries again, backing off)."""
        writer = self._writer
        assert writer is not None
        with self._flushing:
            with self._lock:
                self._behind.taken()  # type: ignore[union-attr]
                if not self._pending:
                    return True
            try:
                folded = writer.submit_job(self._write_pending).result()
            except Exception as exc:
                log.error("insights: storing the summaries failed (kept pending): %s", exc)
                return False
            with self._lock:
                del self._pending[:folded.chunks]
            return True

    def forget(self, user_id: str) -> bool:
        """(Writer thread, inside erasure's job.) Drop the user's pending entries, so a
        later flush cannot bring back what erasure deleted; restored if the erasure's
        transaction is rolled back (``on_abort``). Returns whether it held any."""
        with self._lock:
            replaced = {}
            for i, chunk in enumerate(self._pending):
                kept = _without(chunk, user_id)
                if kept is not chunk:
                    replaced[id(kept)] = chunk
                    self._pending[i] = kept

        def undo() -> None:
            with self._lock:
                self._pending[:] = [replaced.get(id(c), c) for c in self._pending]

        if self._writer is not None:
            self._writer.on_abort(undo)
        return bool(replaced)

    # -- lifecycle -------------------------------------------------------------------------

    def catch_up(self, writer: GroupCommitWriter) -> int:
        """Fold the logged events the summaries miss (from the stored position to the end
        of the log: what was pending when the process died); returns how many. A store
        without a position: one written by the inline version (a key registry exists)
        was folded up to its last event; one from before insights is back-filled."""
        dbs = self.store.dbs

        # Each batch reads the position inside the transaction that moves it: several
        # processes of a shared store starting together never fold an event twice.
        def job(txn: lmdb.Transaction) -> tuple[int, Callable[[], None] | None]:
            end = event_table.last_sequence(txn, dbs) + 1
            stored = start = insights.position(txn, dbs)
            if start is None:
                inline = len(insights.key_ids(txn, dbs)) > 1
                start = end if inline else event_table.first_sequence(txn, dbs)
            logged = event_table.logged(txn, dbs, start, end, CATCH_UP_BATCH)
            # Events imported with their summaries (a cluster snapshot) are not folded.
            skip = []
            for first, stop in insights.imported(txn, dbs):
                if stop <= start:
                    insights.drop_imported(txn, dbs, first)
                else:
                    skip.append((first, stop))
            if not logged:
                if stored != end:  # nothing left before the end: the position is there
                    insights.put_position(txn, dbs, end)
                return 0, None
            events = [_replayed(payload) for seq, payload in logged
                      if not any(first <= seq < stop for first, stop in skip)]
            new: dict[str, int] = {}
            self._fold(txn, [self._chunk(txn, events, new, logged[-1][0] + 1)])
            return len(logged), self._remember(new) if new else None

        folded = 0
        while True:
            n, remember = writer.submit_job(job).result()
            if remember is not None:
                remember()
            if not n:
                break
            folded += n
        if folded:
            log.info("insights: %d logged events folded into the summaries on start", folded)
        return folded

    def flush(self) -> None:
        """Store everything pending now (an analysis, tests, benchmarks); raises when the
        store refused it."""
        if self._behind is not None and not self._flush_now():
            raise Unavailable("insights: the pending summaries could not be stored; retry")

    def close(self) -> None:
        """Fold what is pending and stop the flusher (before the writer closes)."""
        if self._behind is not None:
            self._behind.close()

    def pending_events(self) -> int:
        with self._lock:
            return sum(len(c.users) for c in self._pending)


def _without(chunk: Chunk, user_id: str) -> Chunk:
    keep = [i for i, u in enumerate(chunk.users) if u != user_id]
    if len(keep) == len(chunk.users):
        return chunk
    return Chunk([chunk.users[i] for i in keep], chunk.entries[keep], chunk.position)


def _replayed(payload: bytes) -> ValidEvent:
    """A logged event, as much of it as the summary needs."""
    ev = event_pb2.Event.FromString(payload)
    numbers = {k: ev.numbers[k] for k in ev.numbers}
    strings = {k: ev.strings[k] for k in ev.strings}
    return ValidEvent(ev.event_id, ev.user_id, ev.type, ev.time.ToNanoseconds() / 1e9,
                      numbers.get("amount", math.nan), None, numbers=numbers, strings=strings)
