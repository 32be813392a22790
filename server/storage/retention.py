"""Retention: what the store forgets, and when, so a bank's disk does not fill.

A background pass (one per store: the leader runs it) deletes by age, in small batches
of short write jobs through the group-commit writer, sleeping between batches, so Track
and Decide never wait behind it for more than one batch (~``batch`` deletes):

- seen event ids: after ``seen_seconds`` a replayed event would be stored again, so this
  is the longest a producer may replay;
- the event log (replay, insights; nothing in the server reads it back): after
  ``events_seconds``, which must not be shorter (seen ids are found through the log);
- decision records (audit, and the learner's input until settled): after
  ``decisions_seconds``, never while open (awaiting their goal);
- deliveries: final ones (sent, failed, cancelled) after ``deliveries_seconds``, never
  a scheduled or leased one;
- scored transactions (ScoreTransaction's idempotency, and the record a late fraud label
  needs): ``transactions_seconds`` after the transaction's time. A record stored before
  that time was kept is stamped with the time the pass first sees it, and goes one
  period later.

Events are keyed by sequence, not time: each pass stores a mark (its time and the next
sequence), at most one per ``MARK_SECONDS``; events below the newest mark older than the
cutoff arrived before it. The newest event is never deleted, so sequences never restart.
Decisions, deliveries and transactions have no time index: each pass scans ``scan`` records of them
from where the last pass stopped (a full sweep takes many passes; their retention is long).
What is per user and not by age (the state record, profile, risk baseline, contacts,
which trim themselves) stays until the user is erased (``erasure.py``). The rewards log
is not kept by age but by use: an entry goes once the stored models have learned it
(their position is stored with them), except the newest, which numbers the next.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import lmdb

from nudge.server.clock import Clock
from nudge.server.storage.group_commit import GroupCommitWriter
from nudge.server.storage.tables import (
    decisions,
    deliveries,
    events,
    models,
    rewards,
    transactions,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DAY = 86_400.0
# Events are aged by marks this far apart at most: retention is exact to within this.
MARK_SECONDS = 3_600.0


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of record is kept, in seconds (0: forever)."""

    seen_seconds: float = 14 * DAY
    events_seconds: float = 90 * DAY
    decisions_seconds: float = 730 * DAY
    deliveries_seconds: float = 90 * DAY
    transactions_seconds: float = 180 * DAY
    # Deletes per write job, and records examined per pass in the tables without a time
    # index.
    batch: int = 1_000
    scan: int = 20_000
    # Seconds between passes, and slept between two batches of one pass.
    interval_seconds: float = 300.0
    pause_seconds: float = 0.01

    def __post_init__(self) -> None:
        if self.events_seconds and self.seen_seconds > self.events_seconds:
            raise ValueError(
                "retain_seen_seconds: must not exceed retain_events_seconds (seen ids are "
                "forgotten through the event log; 0 keeps them forever)"
            )


class Retention:
    """The background pass; ``run_once`` does one pass now (tests, ``nudge`` tools)."""

    def __init__(self, writer: GroupCommitWriter, policy: RetentionPolicy, clock: Clock) -> None:
        self.writer = writer
        self.store = writer.store
        self.policy = policy
        self.clock = clock
        self._resume = {decisions.NAME: b"", deliveries.DELIVERIES: b"", transactions.NAME: b""}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="nudge-retention",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.policy.interval_seconds):
            try:
                deleted = self.run_once()
                if deleted:
                    log.info("retention deleted %s", dict(deleted))
            except Exception:  # the next pass tries again; serving goes on
                log.exception("retention pass failed")

    # -- one pass ------------------------------------------------------------------------

    def run_once(self, now: float | None = None) -> Counter[str]:
        """Delete what is past its retention as of ``now``; counts per kind."""
        now = self.clock.now() if now is None else now
        policy = self.policy
        deleted: Counter[str] = Counter()
        self._job(lambda txn: self._mark(txn, now))
        if policy.seen_seconds:
            deleted["seen"] += self._forget_seen(now - policy.seen_seconds)
        if policy.events_seconds:
            deleted["events"] += self._drop_events(now - policy.events_seconds)
        if policy.decisions_seconds:
            deleted["decisions"] += self._sweep_decisions(now - policy.decisions_seconds)
        if policy.deliveries_seconds:
            deleted["deliveries"] += self._sweep_deliveries(now - policy.deliveries_seconds)
        if policy.transactions_seconds:
            deleted["transactions"] += self._sweep_transactions(
                now - policy.transactions_seconds, now
            )
        deleted["rewards"] += self._drop_learned_rewards()
        return +deleted

    def _job(self, job: Callable[[lmdb.Transaction], T]) -> T:
        result = self.writer.submit_job(job).result()
        self._stop.wait(self.policy.pause_seconds)
        return result

    def _mark(self, txn: lmdb.Transaction, now: float) -> None:
        dbs = self.store.dbs
        marks = events.marks(txn, dbs)
        if not marks or now - marks[-1][0] >= MARK_SECONDS:
            events.put_mark(txn, dbs, now, events.last_sequence(txn, dbs) + 1)
        # Keep the newest mark the longest retention still needs; drop older ones.
        horizon = now - max(self.policy.seen_seconds, self.policy.events_seconds)
        older = [at for at, _ in marks if at <= horizon]
        for at in older[:-1]:
            events.delete_mark(txn, dbs, at)

    def _forget_seen(self, cutoff: float) -> int:
        dbs, batch = self.store.dbs, self.policy.batch

        def step(txn: lmdb.Transaction) -> tuple[int, bool]:
            stop = events.arrived_before(txn, dbs, cutoff)
            start = max(events.seen_upto(txn, dbs), events.first_sequence(txn, dbs))
            logged = events.logged(txn, dbs, start, stop, batch)
            forgotten = sum(events.forget_seen(txn, dbs, seq, payload)
                            for seq, payload in logged)
            if logged:
                events.put_seen_upto(txn, dbs, logged[-1][0] + 1)
            return forgotten, len(logged) == batch

        return self._repeat(step)

    def _drop_events(self, cutoff: float) -> int:
        dbs, batch = self.store.dbs, self.policy.batch

        def step(txn: lmdb.Transaction) -> tuple[int, bool]:
            # Never past the seen ids already forgotten, nor the newest event.
            stop = min(events.arrived_before(txn, dbs, cutoff), events.seen_upto(txn, dbs)
                       if self.policy.seen_seconds else 1 << 62,
                       events.last_sequence(txn, dbs))
            logged = events.logged(txn, dbs, events.first_sequence(txn, dbs), stop, batch)
            for seq, _ in logged:
                events.delete(txn, dbs, seq)
            return len(logged), len(logged) == batch

        return self._repeat(step)

    def _drop_learned_rewards(self) -> int:
        dbs, batch = self.store.dbs, self.policy.batch

        def step(txn: lmdb.Transaction) -> tuple[int, bool]:
            # Only what the stored models have learned (their position is stored with
            # them in one commit): a restart resumes after it, so nothing below is read.
            gone = rewards.drop_learned(txn, dbs, models.learned_seq(txn, dbs), batch)
            return gone, gone == batch

        return self._repeat(step)

    def _repeat(self, step: Callable[[lmdb.Transaction], tuple[int, bool]]) -> int:
        total = 0
        while not self._stop.is_set():
            done, more = self._job(step)
            total += done
            if not more:
                break
        return total

    def _sweep_decisions(self, cutoff: float) -> int:
        dbs, policy = self.store.dbs, self.policy
        with self.store.read() as txn:
            expired, resume = decisions.settled_before(
                txn, dbs, self._resume[decisions.NAME], policy.scan, cutoff
            )
        self._resume[decisions.NAME] = resume

        def delete(ids: list[str]) -> Callable[[lmdb.Transaction], int]:
            def job(txn: lmdb.Transaction) -> int:
                n = 0
                for decision_id in ids:  # re-checked: it may have changed since the scan
                    record = decisions.get(txn, dbs, decision_id)
                    if record is not None and record.time < cutoff and record.status != "open":
                        decisions.delete(txn, dbs, decision_id)
                        n += 1
                return n
            return job

        return sum(self._job(delete(expired[i:i + policy.batch]))
                   for i in range(0, len(expired), policy.batch))

    def _sweep_deliveries(self, cutoff: float) -> int:
        dbs, policy = self.store.dbs, self.policy
        with self.store.read() as txn:
            expired, resume = deliveries.final_before(
                txn, dbs, self._resume[deliveries.DELIVERIES], policy.scan, cutoff
            )
        self._resume[deliveries.DELIVERIES] = resume

        def delete(chunk: list[deliveries.Delivery]) -> Callable[[lmdb.Transaction], int]:
            def job(txn: lmdb.Transaction) -> int:
                n = 0
                for d in chunk:
                    current = deliveries.get(txn, dbs, d.delivery_id)
                    if current is not None and current.status in deliveries.FINAL:
                        deliveries.delete(txn, dbs, current)
                        n += 1
                return n
            return job

        return sum(self._job(delete(expired[i:i + policy.batch]))
                   for i in range(0, len(expired), policy.batch))

    def _sweep_transactions(self, cutoff: float, now: float) -> int:
        dbs, policy = self.store.dbs, self.policy
        with self.store.read() as txn:
            expired, timeless, resume = transactions.older_than(
                txn, dbs, self._resume[transactions.NAME], policy.scan, cutoff
            )
        self._resume[transactions.NAME] = resume

        def stamp(ids: list[transactions.TxKey]) -> Callable[[lmdb.Transaction], int]:
            def job(txn: lmdb.Transaction) -> int:
                for key in ids:
                    record = transactions.get(txn, dbs, key)
                    if record is not None and not record.time:
                        record.time = now
                        transactions.put(txn, dbs, key, record)
                return 0
            return job

        def delete(ids: list[transactions.TxKey]) -> Callable[[lmdb.Transaction], int]:
            def job(txn: lmdb.Transaction) -> int:
                n = 0
                for key in ids:
                    record = transactions.get(txn, dbs, key)
                    if record is not None and 0 < record.time < cutoff:
                        transactions.delete(txn, dbs, key)
                        n += 1
                return n
            return job

        for i in range(0, len(timeless), policy.batch):
            self._job(stamp(timeless[i:i + policy.batch]))
        return sum(self._job(delete(expired[i:i + policy.batch]))
                   for i in range(0, len(expired), policy.batch))
