"""Decisions answered but not yet stored: their records and the contacts they plan.

Decide answers from memory; its record (and, for an open decision, its ``open`` and
``deadlines`` entries) and its planned contacts ride the write-behind
(``storage/write_behind.py``) into the next group commit, 1 ms after the reply. Commits
that settle decisions write what is pending first (``write``), so none is missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future

import lmdb

from nudge.server.decisions.guardrails import Contact
from nudge.server.storage.group_commit import GroupCommitWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import contacts as contact_table
from nudge.server.storage.tables import deadlines, open_decisions
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables.decisions import DecisionRecord
from nudge.server.storage.write_behind import WriteBehind

FLUSH_DELAY = 0.001
# Contacts older than this no longer count (caps, contact pressure) and are dropped.
CONTACT_MEMORY = 7 * 86_400.0

# What one write stored: the records and the contacts, by id and by user.
Written = tuple[dict[str, DecisionRecord], dict[str, list[Contact]]]


class PendingDecisions:
    def __init__(self, store: Store, writer: GroupCommitWriter) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._records: dict[str, DecisionRecord] = {}
        self._contacts: dict[str, list[Contact]] = {}
        self._write_behind = WriteBehind(
            "nudge-decision-flusher", writer, self._lock, self.write, self.stored, FLUSH_DELAY
        )

    def add(
        self,
        record: DecisionRecord,
        contacts: list[Contact],
        after_reply: Callable[[Callable[[], None]], bool] | None = None,
    ) -> None:
        """Keep a decision (and the contacts it plans) to store; ``after_reply(fn)`` runs
        ``fn`` once the reply is sent (False if it cannot): the flusher is woken then."""
        with self._lock:
            self._records[record.decision_id] = record
            if contacts:
                self._contacts.setdefault(record.user_id, []).extend(contacts)
            wake = not self._write_behind.requested
            self._write_behind.request(wake=after_reply is None)
        if wake and after_reply is not None and not after_reply(self._write_behind.wake):
            self._write_behind.wake()

    def add_many(self, decided: list[tuple[DecisionRecord, list[Contact]]]) -> None:
        """:meth:`add` for a run of decisions (DecideBatch) under one lock; the flusher is
        woken once."""
        records, by_user = self._records, self._contacts
        with self._lock:
            for record, contacts in decided:
                records[record.decision_id] = record
                if contacts:
                    by_user.setdefault(record.user_id, []).extend(contacts)
            self._write_behind.request(wake=True)

    def contacts(self, user_id: str) -> list[Contact]:
        """The user's contacts not yet stored (a copy)."""
        with self._lock:
            pending = self._contacts.get(user_id)
            return list(pending) if pending else []

    def knows(self, decision_id: str) -> bool:
        with self._lock:
            return decision_id in self._records

    def user_of(self, decision_id: str) -> str | None:
        """The user of a decision not yet stored; None when it is not pending."""
        with self._lock:
            record = self._records.get(decision_id)
            return None if record is None else record.user_id

    def campaign_of(self, decision_id: str) -> str | None:
        """The campaign of a decision not yet stored; None when it is not pending."""
        with self._lock:
            record = self._records.get(decision_id)
            return None if record is None else record.campaign

    def write(self, txn: lmdb.Transaction) -> Written:
        """Write every pending decision and contact into ``txn``; returns what was written."""
        with self._lock:
            records = dict(self._records)
            contacts = {u: list(c) for u, c in self._contacts.items()}
        dbs = self.store.dbs
        # In bulk, each table's keys in order in one cursor call: a DecideBatch leaves tens
        # of thousands here per flush (an open copy already settled in the store is not
        # written back: decisions.put_new).
        pending = list(records.values())
        stored = decision_table.put_new(txn, dbs, pending)
        opened = [r for r, s in zip(pending, stored, strict=True) if s and r.status == "open"]
        if opened:
            open_decisions.add_many(txn, dbs, [(r.user_id, r.decision_id) for r in opened])
            deadlines.add_many(txn, dbs, [(r.window_end, r.decision_id) for r in opened])
        if contacts:
            # A Contact is a tuple in the stored row's order: handed over as it is.
            contact_table.add_many(txn, dbs, contacts, CONTACT_MEMORY)
        return records, contacts

    def stored(self, written: Written) -> None:
        """After the commit that stored ``written``: drop what was not changed since."""
        records, contacts = written
        with self._lock:
            for decision_id, record in records.items():
                if self._records.get(decision_id) is record:
                    del self._records[decision_id]
            for user_id, stored in contacts.items():
                current = self._contacts.get(user_id)
                if current is not None:
                    # Exactly the contacts written (two commits may have stored the same
                    # ones; newer ones, not yet written, stay pending).
                    written_ids = {id(c) for c in stored}
                    current[:] = [c for c in current if id(c) not in written_ids]
                    if not current:
                        del self._contacts[user_id]

    def settled(self, records: list[DecisionRecord]) -> None:
        """After a commit that settled decisions: a pending copy would otherwise be written
        again, as still open, by a later flush. (Not inside the transaction: a retried
        batch must find them open again.)"""
        with self._lock:
            for record in records:
                if record.decision_id in self._records:
                    self._records[record.decision_id] = record

    def wait_below(self, limit: int) -> None:
        """Wait (for flushes) until at most ``limit`` decisions are pending: a producer
        faster than the decision log (DecideBatch) is held to its pace."""
        while True:
            with self._lock:
                if len(self._records) <= limit:
                    return
            self.flush_soon().result()

    def flush_soon(self) -> Future[None]:
        """The future of the flush that will store what is pending now (not waiting)."""
        return self._write_behind.flush_soon()

    def flush(self) -> None:
        """Store everything pending now (tests, shutdown)."""
        self._write_behind.flush()

    def close(self) -> None:
        self._write_behind.close()
