"""Per-user risk scoring: score first, then learn, durably and idempotently.

ScoreTransaction sits inside a card authorisation, so its reply cannot wait for an fsync
(milliseconds). The engine keeps an in-memory overlay of every baseline and transaction
record it changed but has not yet seen committed; scoring reads the overlay first, so the
next transaction of the same user sees the previous one at once. The changes ride the
next group commit of the shared writer; once durable, overlay entries that were not
changed again are dropped. The crash window — a score that was answered but whose
baseline update had not yet committed — is a few milliseconds (README, "Risk").

On a store shared by several server processes (``--workers``) another process may score
the same user at the same moment, so the overlay cannot be trusted across calls: each
call then scores inside a write transaction of the group commit — reading the baseline,
scoring, learning and storing under LMDB's single-writer lock — and replies after the
commit. No update is lost and there is no crash window, at the price of the commit.

A transaction scoring at or above the guard threshold is held out of the baseline with
the features needed to learn it later: LabelTransaction GENUINE folds it in, FRAUD never
does. Events of type ``transaction`` sent through Track update the same baselines inside
their own commit (and are idempotent with ScoreTransaction by transaction id).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any

import lmdb
import numpy as np

from nudge.kernels import risk
from nudge.kernels.risk_reasons import explain
from nudge.server.errors import InvalidArgument, NotFound
from nudge.server.inputs.events import ValidEvent
from nudge.server.inputs.transactions import ValidTransaction, transaction_from_event
from nudge.server.storage.ingest import EventWriter, local_hour
from nudge.server.storage.store import Store
from nudge.server.storage.tables import risk_baselines, users
from nudge.server.storage.tables import transactions as transaction_table
from nudge.server.storage.tables.transactions import TransactionRecord, TxKey
from nudge.server.storage.write_behind import WriteBehind

# How long a held (anomalous) transaction keeps credit offers away from the user.
ANOMALY_MEMORY = 86_400.0
MAX_REASONS = 5
TIME_ZONE_CACHE = 100_000
# Held times remembered for users not waiting to be stored (a cache of the store's).
HELD_CACHE = 100_000
# Delay between the first unsaved change and its flush (see DelayedFlusher).
FLUSH_DELAY = 0.001
LABELS = ("FRAUD", "GENUINE")


class RiskEngine:
    def __init__(
        self, store: Store, writer: EventWriter, params: risk.RiskParams = risk.DEFAULT_PARAMS
    ) -> None:
        self.store = store
        self.writer = writer
        self.params = params
        self.population_params = params.for_population()
        self._lock = threading.Lock()
        self._states: dict[str, np.ndarray] = {}
        # (user id, transaction id) -> record: transaction ids are unique per user.
        self._records: dict[TxKey, TransactionRecord] = {}
        self._time_zones: dict[str, str] = {}
        self._held_at: dict[str, float] = {}
        # The overlay is what is pending: a flush stores all of it.
        self._write_behind = WriteBehind(
            "nudge-risk-flusher", writer, self._lock, lambda txn: self._write(txn),
            lambda written: self._forget(*written), FLUSH_DELAY,
        )
        with store.read() as txn:
            stored = risk_baselines.population(txn, store.dbs)
            self._population = risk.new_risk_state() if stored is None else stored.copy()
        self._population.flags.writeable = False
        writer.add_event_hook(self._on_events)

    # -- public operations ---------------------------------------------------------------

    def score(self, transactions: list[ValidTransaction]) -> list[TransactionRecord]:
        """Score (then learn) each transaction in order; replies without waiting for the
        commit (on a shared store: after it). A transaction id seen before returns its
        first answer unchanged."""
        if self.store.shared:
            return self._score_committed(transactions)
        with self._lock, self.store.read() as txn:
            records = [self._score_one(tx, txn) for tx in transactions]
            self._write_behind.request()
        return records

    def label(self, user_id: str, transaction_id: str, label: str) -> Future[bool]:
        """Record an investigated label; GENUINE folds a held transaction into the baseline.

        Returns a future of ``in_baseline`` resolving once the label is durable.
        """
        if label not in LABELS:
            raise InvalidArgument("label", "must be TRANSACTION_LABEL_FRAUD or _GENUINE")
        key = (user_id, transaction_id)
        if self.store.shared:
            return self._label_committed(key, label)
        with self._lock, self.store.read() as txn:
            record = self._label_one(key, label, txn)
            in_baseline = record.in_baseline
            flushed = self._write_behind.request()
        future: Future[bool] = Future()

        def settle(committed: Future[None]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(in_baseline)

        flushed.add_done_callback(settle)
        return future

    def recently_anomalous(self, user_id: str, now: float) -> bool:
        """A transaction of this user was held as anomalous within ANOMALY_MEMORY and not
        labelled genuine since: the decision side withholds credit offers then."""
        with self._lock:
            held = None if self.store.shared else self._held_at.get(user_id)
            if held is None:
                with self.store.read() as txn:
                    stored = risk_baselines.held_at(txn, self.store.dbs, user_id)
                held = stored if stored is not None else -math.inf
                if len(self._held_at) >= HELD_CACHE:
                    # Keep only what is not stored yet: the rest is read again when asked.
                    self._held_at = {u: h for u, h in self._held_at.items()
                                     if u in self._states}
                self._held_at[user_id] = held
        return now - held < ANOMALY_MEMORY

    def baseline(self, user_id: str) -> np.ndarray | None:
        """The user's current risk baseline (overlay first), or None if never scored."""
        with self._lock, self.store.read() as txn:
            if user_id in self._states:
                return self._states[user_id].copy()
            stored = risk_baselines.baseline(txn, self.store.dbs, user_id)
            return None if stored is None else stored.copy()

    # -- on a shared store: inside the write transaction ---------------------------------

    def _score_committed(self, transactions: list[ValidTransaction]) -> list[TransactionRecord]:
        users = {tx.user_id for tx in transactions}
        ids = [(tx.user_id, tx.transaction_id) for tx in transactions]

        def job(txn: lmdb.Transaction) -> tuple[list[TransactionRecord], tuple]:
            with self._lock:
                self._reload(txn, users, ids)
                records = [self._score_one(tx, txn) for tx in transactions]
            return records, self._write(txn, users, ids)

        records, written = self.writer.submit_job(job).result()
        self._forget(*written)
        return records

    def _label_committed(self, key: TxKey, label: str) -> Future[bool]:
        def job(txn: lmdb.Transaction) -> tuple[bool, tuple]:
            with self._lock:
                self._reload(txn, [key[0]], [key])
                record = self._label_one(key, label, txn)
            return record.in_baseline, self._write(txn, [record.user_id], [key])

        future: Future[bool] = Future()

        def settle(committed: Future[tuple[bool, tuple]]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
                return
            in_baseline, written = committed.result()
            self._forget(*written)
            future.set_result(in_baseline)

        self.writer.submit_job(job).add_done_callback(settle)
        return future

    def _reload(
        self, txn: lmdb.Transaction, users: Iterable[str], transaction_ids: Iterable[TxKey]
    ) -> None:
        """(Inside the lock.) Drop what this process remembers of these users and
        transactions, and re-read the population: the write transaction holds LMDB's
        writer lock, so what it reads now is what every process last committed."""
        dbs = self.store.dbs
        for user_id in users:
            self._states.pop(user_id, None)
            self._time_zones.pop(user_id, None)
            held = risk_baselines.held_at(txn, dbs, user_id)
            if held is None:
                self._held_at.pop(user_id, None)
            else:
                self._held_at[user_id] = held
        for transaction_id in transaction_ids:
            self._records.pop(transaction_id, None)
        stored = risk_baselines.population(txn, dbs)
        if stored is not None:
            population = stored.copy()
            population.flags.writeable = False
            self._population = population

    # -- inside the lock -----------------------------------------------------------------

    def _label_one(self, key: TxKey, label: str, txn: lmdb.Transaction) -> TransactionRecord:
        """The labelled copy of a scored transaction (now in the overlay); GENUINE folds a
        held one into the user's and the population's baselines."""
        record = self._record(key, txn)
        if record is None:
            raise NotFound(f"transaction_id: {key[1]!r} was never scored for this user")
        record = record.copy()
        record.label = label
        if label == "GENUINE" and not record.in_baseline:
            features = np.asarray(record.features, dtype=np.float64)
            state = self._state(record.user_id, txn)
            self._states[record.user_id] = risk.learn_transaction(state, features, self.params)
            self._learn_population(features)
            record.in_baseline = True
            self._held_at[record.user_id] = -math.inf
        self._records[key] = record
        return record

    def _record(self, key: TxKey, txn: lmdb.Transaction) -> TransactionRecord | None:
        record = self._records.get(key)
        if record is not None:
            return record
        return transaction_table.get(txn, self.store.dbs, key)

    def _state(self, user_id: str, txn: lmdb.Transaction) -> np.ndarray:
        state = self._states.get(user_id)
        if state is not None:
            return state
        stored = risk_baselines.baseline(txn, self.store.dbs, user_id)
        return risk.new_risk_state() if stored is None else stored

    def _score_one(self, tx: ValidTransaction, txn: lmdb.Transaction) -> TransactionRecord:
        previous = self._record((tx.user_id, tx.transaction_id), txn)
        if previous is not None:
            return previous
        hour = self._local_hour(tx, txn)
        vector = risk.encode_transaction(
            tx.amount, tx.time, hour, tx.country, tx.merchant_category, tx.device_id, tx.channel
        )
        result = risk.score_transaction(
            self._state(tx.user_id, txn), self._population, vector, self.params
        )
        reasons = explain(
            result.details,
            country=tx.country,
            merchant_category=tx.merchant_category,
            local_hour=hour,
            params=self.params,
            max_reasons=MAX_REASONS,
        )
        record = TransactionRecord(
            user_id=tx.user_id,
            score=result.score,
            reasons=[(r.code, r.detail, r.weight) for r in reasons],
            baseline_count=result.baseline_count,
            held=not result.learned,
            in_baseline=result.learned,
            features=[] if result.learned else result.features.tolist(),
            time=tx.time,
        )
        self._states[tx.user_id] = result.state
        self._records[(tx.user_id, tx.transaction_id)] = record
        if result.learned:
            self._learn_population(result.features)
        else:
            self._held_at[tx.user_id] = max(self._held_at.get(tx.user_id, -math.inf), tx.time)
        return record

    def _local_hour(self, tx: ValidTransaction, txn: lmdb.Transaction) -> float:
        if tx.local_hour is not None:
            return tx.local_hour
        return local_hour(tx.time, self._time_zone(tx.user_id, txn))

    def _time_zone(self, user_id: str, txn: lmdb.Transaction) -> str:
        """The user's time zone, cached: parsing the profile costs more than scoring."""
        tz = self._time_zones.get(user_id)
        if tz is None:
            tz = users.profile(txn, self.store.dbs, user_id).tz
            if len(self._time_zones) >= TIME_ZONE_CACHE:
                self._time_zones.clear()
            self._time_zones[user_id] = tz
        return tz

    def _learn_population(self, features: np.ndarray) -> None:
        """Fold genuine features into the population baseline, in order, synchronously:
        scores must not depend on when a background job happened to run."""
        if features.ndim == 1:
            population = risk.learn_transaction(
                self._population, features, self.population_params
            )
        else:
            population = risk.learn_transactions(
                self._population[None, :].copy(), np.zeros(features.shape[0], np.int64),
                features, self.population_params, inplace=True,
            )[0]
        population.flags.writeable = False
        self._population = population

    # -- commits -------------------------------------------------------------------------

    def flush(self) -> None:
        """Store the overlay now (erasure must find everything in the store)."""
        self._write_behind.flush()

    def forget_user(self, user_id: str) -> None:
        """Drop what is cached about an erased user."""
        with self._lock:
            self._states.pop(user_id, None)
            self._time_zones.pop(user_id, None)
            self._held_at.pop(user_id, None)
            for key in [k for k in self._records if k[0] == user_id]:
                del self._records[key]

    def close(self) -> None:
        """Store what is still unsaved and stop the flusher (before the writer closes)."""
        self._write_behind.close()

    def _write(
        self, txn: lmdb.Transaction, user_ids: Iterable[str] | None = None,
        transaction_ids: Iterable[TxKey] | None = None,
    ) -> tuple[dict[str, np.ndarray], dict[TxKey, TransactionRecord]]:
        """Store the overlay's entries of these users and transactions (all of the overlay
        when None) and the population; returns what was stored."""
        dbs = self.store.dbs
        with self._lock:
            if user_ids is None:
                user_ids = list(self._states)
            if transaction_ids is None:
                transaction_ids = list(self._records)
            states = {u: self._states[u] for u in user_ids if u in self._states}
            records = {t: self._records[t] for t in transaction_ids if t in self._records}
            population = self._population
        for user_id, state in states.items():
            risk_baselines.put_baseline(txn, dbs, user_id, state)
        for key, record in records.items():
            transaction_table.put(txn, dbs, key, record)
        for user_id in states:
            held = self._held_at.get(user_id)
            if held is not None and held > -math.inf:
                risk_baselines.put_held_at(txn, dbs, user_id, held)
            elif held is not None:
                risk_baselines.clear_held(txn, dbs, user_id)
        risk_baselines.put_population(txn, dbs, population)
        return states, records

    def _forget(
        self, states: dict[str, np.ndarray], records: dict[TxKey, TransactionRecord]
    ) -> None:
        with self._lock:
            for user_id, state in states.items():
                if self._states.get(user_id) is state:
                    del self._states[user_id]
            for transaction_id, record in records.items():
                if self._records.get(transaction_id) is record:
                    del self._records[transaction_id]

    def _on_events(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        """Track's transaction events update the same baselines, in the events' commit,
        through the batch kernel (Track carries bulk history)."""
        with self._lock:
            for ev in events:
                if ev.tz is not None and ev.user_id in self._time_zones:
                    self._time_zones[ev.user_id] = ev.tz
        candidates = [t for t in map(transaction_from_event, events) if t is not None]
        if not candidates:
            return None
        with self._lock:
            if self.store.shared:
                self._reload(txn, {tx.user_id for tx in candidates},
                             [(tx.user_id, tx.transaction_id) for tx in candidates])
            undo, mark = self._undo_point(candidates)
            self.writer.on_abort(undo)
            fresh: dict[TxKey, ValidTransaction] = {}
            for tx in candidates:
                key = (tx.user_id, tx.transaction_id)
                if key not in fresh and self._record(key, txn) is None:
                    fresh[key] = tx
            if fresh:
                self._score_batch(list(fresh.values()), txn)
            mark()
        written = self._write(
            txn, {tx.user_id for tx in candidates},
            [(tx.user_id, tx.transaction_id) for tx in candidates],
        )
        return lambda: self._forget(*written)

    def _undo_point(
        self, txs: list[ValidTransaction]
    ) -> tuple[Callable[[], None], Callable[[], None]]:
        """(Inside the lock.) What puts the overlay back as it is now for these
        transactions and their users, should the commit they ride be rolled back; an entry
        changed again since (by a score on another thread) is left alone."""
        users = {tx.user_id for tx in txs}
        ids = {(tx.user_id, tx.transaction_id) for tx in txs}
        before = (
            {u: self._states.get(u) for u in users}, {t: self._records.get(t) for t in ids},
            {u: self._held_at.get(u) for u in users}, self._population,
        )
        after: list[tuple] = []

        def undo() -> None:
            with self._lock:
                states, records, held, population = before
                # The hook failed before it marked: nothing ran since, restore it all.
                now = after[0] if after else (
                    {u: self._states.get(u) for u in users},
                    {t: self._records.get(t) for t in ids},
                    {u: self._held_at.get(u) for u in users}, self._population,
                )
                now_states, now_records, now_held, now_population = now
                tables: tuple[tuple[dict[Any, Any], dict[Any, Any], dict[Any, Any]], ...] = (
                    (self._states, states, now_states), (self._records, records, now_records),
                    (self._held_at, held, now_held),
                )
                for table, old, new in tables:
                    for key, value in old.items():
                        if table.get(key) is new.get(key):
                            if value is None:
                                table.pop(key, None)
                            else:
                                table[key] = value
                if self._population is now_population:
                    self._population = population

        def mark() -> None:  # what the hook left: undo only what is still its own
            after.append((
                {u: self._states.get(u) for u in users}, {t: self._records.get(t) for t in ids},
                {u: self._held_at.get(u) for u in users}, self._population,
            ))

        return undo, mark

    def _score_batch(self, txs: list[ValidTransaction], txn: lmdb.Transaction) -> None:
        rows: dict[str, int] = {}
        for tx in txs:
            rows.setdefault(tx.user_id, len(rows))
        states = np.empty((len(rows), risk.RISK_STATE_LEN), dtype=np.float64)
        for user_id, row in rows.items():
            states[row] = self._state(user_id, txn)
        hours = [self._local_hour(tx, txn) for tx in txs]
        vectors = risk.encode_transactions(
            [tx.amount for tx in txs], [tx.time for tx in txs], hours,
            [tx.country for tx in txs], [tx.merchant_category for tx in txs],
            [tx.device_id for tx in txs], [tx.channel for tx in txs],
        )
        user_rows = np.array([rows[tx.user_id] for tx in txs], dtype=np.int64)
        batch = risk.score_transactions(
            states, user_rows, self._population, vectors, self.params, inplace=True
        )
        for i, tx in enumerate(txs):
            learned = bool(batch.learned[i])
            reasons = [] if learned else explain(
                batch.details[i], country=tx.country, merchant_category=tx.merchant_category,
                local_hour=hours[i], params=self.params, max_reasons=MAX_REASONS,
            )
            self._records[(tx.user_id, tx.transaction_id)] = TransactionRecord(
                user_id=tx.user_id,
                score=float(batch.scores[i]),
                reasons=[(r.code, r.detail, r.weight) for r in reasons],
                baseline_count=int(batch.details[i, risk.DETAIL_BASELINE_COUNT]),
                held=not learned,
                in_baseline=learned,
                features=[] if learned else batch.features[i].tolist(),
                time=tx.time,
            )
        for i, tx in enumerate(txs):
            if not batch.learned[i]:
                self._held_at[tx.user_id] = max(self._held_at.get(tx.user_id, -math.inf), tx.time)
        for user_id, row in rows.items():
            self._states[user_id] = batch.states[row].copy()
        learned = batch.features[batch.learned]
        if learned.shape[0]:
            self._learn_population(learned)

