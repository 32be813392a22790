"""Per-customer fraud scoring: score first, then learn, durably and idempotently.

The model is ``nudge.kernels.risk_model``: ``score`` is P(fraud | the transaction, the
customer's history) under the configured prior rate, from a likelihood ratio "takeover"
vs "this genuine customer" whose genuine side is learned from the whole population.
Per customer a ``USER_LEN`` float64 row; one population row, written by one writer at a
time (this engine under its lock, or the group commit's write transaction on a shared
store), stored beside the customers through ``tables.risk_baselines``.

ScoreTransaction sits inside a card authorisation, so its reply cannot wait for an fsync
(milliseconds). The engine keeps an in-memory overlay of every customer row and
transaction record it changed but has not yet seen committed; scoring reads the overlay
first, so the next transaction of the same customer sees the previous one at once. The
changes ride the next group commit of the shared writer; once durable, overlay entries
that were not changed again are dropped. The crash window — a score that was answered but
whose learning had not yet committed — is a few milliseconds (README, "Risk scoring").

On a store shared by several server processes (``--workers``) another process may score
the same customer at the same moment, so the overlay cannot be trusted across calls: each
call then scores inside a write transaction of the group commit — reading the rows,
scoring, learning and storing under LMDB's single-writer lock — and replies after the
commit. No update is lost and there is no crash window, at the price of the commit.

Holds: a transaction whose score reaches the model's hold threshold is kept out of the
customer's and the population's rows, with its features in its transaction record and an
entry in the hold index. A GENUINE label folds it in; FRAUD never does; a hold that gets
no FRAUD label within ``hold_seconds`` of *event time* (the latest scored transaction's
time) is folded in as genuine by the expiry pass (:meth:`RiskEngine.expire_holds`, run in
the background by the store's leader). The fold, the record's ``learned_by`` and the
removal of the index entry commit together, so each held transaction is learned once
across retries, restarts and workers. Every label (the first one per transaction) also
trains the model's takeover side and supervised weights (``apply_labels``); a FRAUD label
on a transaction already learned (expired, or scored low) is recorded and trains, but the
customer's row is not un-learned (README, "Risk scoring").

Events of type ``transaction`` sent through Track are scored, held and learned the same
way inside their own commit (and are idempotent with ScoreTransaction by transaction id);
ScoreTransactions with ``learn_only`` learns every transaction without holding (backfill).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import lmdb
import numpy as np

from nudge.kernels.risk import encode_transaction_trusted, encode_transactions
from nudge.kernels.risk_model import (
    D_HELD,
    D_HISTORY,
    D_SCORE,
    DEFAULT_MODEL_PARAMS,
    N_EVIDENCE,
    P_W,
    USER_LEN,
    ModelParams,
    apply_labels,
    learn_held,
    new_population_state,
    new_user_state,
    score_and_learn,
    score_learn_one_trusted,
)
from nudge.kernels.risk_model_reasons import explain, no_reason
from nudge.server.errors import InvalidArgument, NotFound
from nudge.server.inputs.events import ValidEvent
from nudge.server.inputs.transactions import (
    TRANSACTION_EVENT,
    ValidTransaction,
    transaction_from_event,
)
from nudge.server.risk import population_merge
from nudge.server.storage.ingest import EventWriter, local_hour
from nudge.server.storage.store import Store
from nudge.server.storage.tables import risk_baselines, users
from nudge.server.storage.tables import transactions as transaction_table
from nudge.server.storage.tables.transactions import TransactionRecord, TxKey
from nudge.server.storage.write_behind import WriteBehind

# Fields the Track hook reads from every event of a commit (C-level getters).
_TZ, _TYPE = attrgetter("tz"), attrgetter("type")
log = logging.getLogger(__name__)

# How long a held (anomalous) transaction keeps credit offers away from the user.
ANOMALY_MEMORY = 86_400.0
MAX_REASONS = 5
TIME_ZONE_CACHE = 100_000
# Held times remembered for users not waiting to be stored (a cache of the store's).
HELD_CACHE = 100_000
# Customers' rows kept decoded beside the bytes last stored for them (_decoded): a row is
# up to 2.6 KB, so at most ~50 MB.
DECODED_CACHE = 10_000
# Delay between the first unsaved change and its flush (see DelayedFlusher).
FLUSH_DELAY = 0.001
LABELS = ("FRAUD", "GENUINE")
DEFAULT_HOLD_SECONDS = 7 * 86_400.0
# The expiry pass: how often it looks for due holds, and how many it folds per commit.
EXPIRY_INTERVAL = 1.0
EXPIRY_BATCH = 5_000
_ROW0 = np.zeros(1, np.int64)
# Cluster mode: how long ScoreTransaction waits for the log to store its record.
LOG_TIMEOUT = 10.0


_NOT_READ = object()  # _ReadAhead: left unread, the overlay (or the tz cache) had it


@dataclass(slots=True)
class _ReadAhead:
    """One transaction's reads from the store, made before the engine's lock: its stored
    record (idempotent replays), the customer's stored row (decoded, a new array) and time
    zone; ``_NOT_READ`` / None where the overlay or the cache had it."""

    generation: int
    record: TransactionRecord | object | None
    state: np.ndarray | object | None
    tz: str | None


class RiskEngine:
    def __init__(
        self, store: Store, writer: EventWriter, params: ModelParams = DEFAULT_MODEL_PARAMS,
        hold_seconds: float = DEFAULT_HOLD_SECONDS,
    ) -> None:
        self.store = store
        self.writer = writer
        self.params = params
        self.hold_seconds = hold_seconds
        self._lock = threading.Lock()
        self._states: dict[str, np.ndarray] = {}
        # (user id, transaction id) -> record: transaction ids are unique per user.
        self._records: dict[TxKey, TransactionRecord] = {}
        self._time_zones: dict[str, str] = {}
        self._held_at: dict[str, float] = {}
        # user id -> (bytes this engine last stored as the user's row, those bytes decoded,
        # read-only). A read that finds exactly these bytes in the store takes a copy
        # instead of decoding them again (a stored row read back is the usual
        # ScoreTransaction once the flush has dropped the user from the overlay): keyed by
        # content, so whoever wrote the store since — another worker, an erasure, a
        # partition's import, a rolled-back commit — it is right or it is not used.
        self._decoded: dict[str, tuple[bytes, np.ndarray]] = {}
        # Bumped (inside the lock) whenever an entry leaves the overlay: what was read from
        # the store before the lock is then checked again (_read_ahead, _still_valid).
        self._generation = 0
        # The overlay is what is pending: a flush stores all of it.
        self._write_behind = WriteBehind(
            "nudge-risk-flusher", writer, self._lock, lambda txn: self._write(txn),
            lambda written: self._forget(*written), FLUSH_DELAY,
        )
        with store.read() as txn:
            stored = risk_baselines.population(txn, store.dbs)
            self._population = new_population_state() if stored is None else stored.copy()
            self._clock = risk_baselines.clock(txn, store.dbs)
            if stored is None and risk_baselines.has_legacy_state(txn, store.dbs):
                log.warning("risk: this store holds baselines of the pre-model layout; they "
                            "are ignored and every customer starts from the prior")
        self._population.flags.writeable = False
        # Cluster mode (population_sync.py): the population as of the last delta taken.
        self._shipped_from = self._population
        self._expiry_stop = threading.Event()
        self._expiry_thread: threading.Thread | None = None
        writer.add_event_hook(self._on_events)
        # Cluster mode (cluster/node.py): scored records go to their users' partitions of
        # the replicated log before ScoreTransaction answers, and a label is logged and
        # applied by the partition's owner (``apply_logged_*``), so a new owner after a
        # failover has both.
        self.log_scored: Callable[[list[tuple[TxKey, TransactionRecord]]], Future[Any]] | None = (
            None)
        self.log_label: Callable[[str, dict[str, Any]], Future[Any]] | None = None

    # -- public operations ---------------------------------------------------------------

    def score(
        self, transactions: list[ValidTransaction], learn_only: bool = False,
        after_reply: Callable[[Callable[[], None]], bool] | None = None,
    ) -> list[TransactionRecord]:
        """Score (then learn) each transaction in order; replies without waiting for the
        commit (on a shared store: after it). A transaction id seen before returns its
        first answer unchanged. ``learn_only``: a backfill of history — every transaction
        is learned, none held, and no reasons are written.

        ``after_reply(fn)`` runs ``fn`` once the reply has been sent, or returns False if it
        cannot (the servicer passes grpc's ``context.add_callback``): the flusher is woken
        then, as Decide's is, not mid-request, where it would take the GIL from the reply."""
        if self.store.shared:
            return self._score_committed(transactions, learn_only)
        ahead = self._read_ahead(transactions[0]) if len(transactions) == 1 and not (
            learn_only) else None
        with self._lock:
            if ahead is not None and self._still_valid(ahead, transactions[0]):
                records = [self._score_one(transactions[0], None, ahead)]
            else:
                with self.store.read() as txn:
                    records = self._score_in_lock(transactions, learn_only, txn)
            wake = not self._write_behind.requested
            self._write_behind.request(wake=after_reply is None)
        if wake and after_reply is not None and not after_reply(self._write_behind.wake):
            self._write_behind.wake()
        if self.log_scored is not None:
            keys = [(tx.user_id, tx.transaction_id) for tx in transactions]
            self.log_scored(list(zip(keys, records, strict=True))).result(LOG_TIMEOUT)
        return records

    def expire_holds(self) -> int:
        """Fold in, as genuine and once, the held transactions whose hold delay (event
        time) has passed without a FRAUD label; returns how many were folded."""
        dbs = self.store.dbs
        with self._lock, self.store.read() as txn:
            clock = max(self._clock, risk_baselines.clock(txn, dbs))
            if not any(risk_baselines.holds_due(txn, dbs, clock - self.hold_seconds)):
                return 0  # the usual case: nothing due, no commit

        # In a write transaction: the index read there is what every process committed, and
        # the folds, the records and the index entries they drop commit together. A retried
        # job finds its records already folded in the overlay and only writes them again.
        def job(txn: lmdb.Transaction) -> tuple[int, tuple]:
            with self._lock:
                self._clock = max(self._clock, risk_baselines.clock(txn, dbs))
                due = self._due(txn)
                users = {u for _, u, _ in due}
                ids = [(u, t) for _, u, t in due]
                if self.store.shared:
                    self._reload(txn, users, ids)
                folded = self._expire(due, txn)
            return folded, self._write(txn, users, ids)

        folded, written = self.writer.submit_job(job).result()
        self._forget(*written)
        return folded

    def start_hold_expiry(self, interval: float = EXPIRY_INTERVAL) -> None:
        """Run :meth:`expire_holds` every ``interval`` seconds in a thread (once per store:
        the leader runs it; the commit keeps it exactly once even if two ever did)."""
        if self._expiry_thread is not None:
            return

        def run() -> None:
            while not self._expiry_stop.wait(interval):
                try:
                    while self.expire_holds() >= EXPIRY_BATCH:
                        pass
                except Exception:  # keep going: the next pass retries what is due
                    log.exception("risk: hold expiry pass failed; will retry")

        self._expiry_thread = threading.Thread(target=run, name="nudge-risk-expiry",
                                               daemon=True)
        self._expiry_thread.start()

    def label(self, user_id: str, transaction_id: str, label: str) -> Future[bool]:
        """Record an investigated label; GENUINE folds a held transaction into the baseline.

        Returns a future of ``in_baseline`` resolving once the label is durable.
        """
        if label not in LABELS:
            raise InvalidArgument("label", "must be TRANSACTION_LABEL_FRAUD or _GENUINE")
        key = (user_id, transaction_id)
        if self.log_label is not None:
            with self._lock, self.store.read() as txn:
                if self._record(key, txn) is None:
                    raise NotFound(f"transaction_id: {transaction_id!r} was never scored for "
                                   "this user")
            return self.log_label(user_id, {"user_id": user_id, "transaction_id": transaction_id,
                                            "label": label})
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

    def apply_logged_scores(
        self, records: list[tuple[TxKey, TransactionRecord]],
        position: Callable[[lmdb.Transaction], None], contributes: bool = True,
    ) -> Future[Any]:
        """(Cluster, the owner) Store scored records from the log that this store lacks
        (a new owner after a failover; the node that scored them has them), in the
        transaction that stores the log position: each as it was answered, folded into the
        customer's row when it was (the fold a GENUINE label does), its hold left waiting
        when held. Into the population too unless ``contributes`` is False: records a
        previous owner applied (a new owner catching up) are in the cluster's population
        already, through that owner's deltas (population_sync.py)."""
        def job(txn: lmdb.Transaction) -> tuple[Any, ...]:
            position(txn)
            fresh: list[TxKey] = []
            with self._lock, self._population_kept(contributes):
                for key, logged in records:
                    if self._record(key, txn) is not None:
                        continue
                    record = logged.copy()
                    features = record.model_features
                    if record.in_baseline and features is not None:
                        self._learn_held(record.user_id,
                                         np.asarray(features, dtype=np.float64).reshape(1, -1),
                                         txn)
                    elif record.waiting:
                        self._held_at[key[0]] = max(self._held_at.get(key[0], -math.inf),
                                                    record.time)
                    self._records[key] = record
                    self._clock = max(self._clock, record.time)
                    fresh.append(key)
            if not fresh:
                return ({}, {})
            return self._write(txn, {k[0] for k in fresh}, fresh)

        return self._committed(job, lambda _written: None)

    def apply_logged_label(
        self, payload: dict[str, Any], position: Callable[[lmdb.Transaction], None],
        contributes: bool = True,
    ) -> Future[Any]:
        """(Cluster, the owner) Apply a logged label (with the log position, in one
        transaction); resolves with ``in_baseline``, or NotFound. ``contributes``: as
        :meth:`apply_logged_scores`."""
        key = (str(payload["user_id"]), str(payload["transaction_id"]))
        result: dict[str, Any] = {}

        def job(txn: lmdb.Transaction) -> tuple[Any, ...]:
            position(txn)
            with self._lock, self._population_kept(contributes):
                try:
                    record = self._label_one(key, str(payload["label"]), txn)
                except NotFound as exc:
                    result["error"] = exc
                    return ({}, {})
                result["in_baseline"] = record.in_baseline
            return self._write(txn, [key[0]], [key])

        def answer(_written: Any) -> Any:
            if "error" in result:
                raise result["error"]
            return result["in_baseline"]

        return self._committed(job, answer)

    def _committed(
        self, job: Callable[[lmdb.Transaction], tuple[Any, ...]], answer: Callable[[Any], Any]
    ) -> Future[Any]:
        """Run ``job`` in the group commit; once durable, drop what it stored from the
        overlay and resolve with ``answer`` (or what it raised)."""
        future: Future[Any] = Future()

        def done(committed: Future[Any]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
                return
            written = committed.result()
            self._forget(*written)
            try:
                future.set_result(answer(written))
            except Exception as exc:
                future.set_exception(exc)

        self.writer.submit_job(job).add_done_callback(done)
        return future

    def recently_anomalous(self, user_id: str, now: float) -> bool:
        """A transaction of this user was held as anomalous within ANOMALY_MEMORY and not
        labelled genuine since: the decision side withholds credit offers then.

        A user already in the cache is answered without the engine's lock (one dict read,
        atomic under the GIL): Decide then never waits behind a ScoreTransaction holding
        it. The cache only ever holds what the locked path below would return."""
        if not self.store.shared:
            held = self._held_at.get(user_id)
            if held is not None:
                return now - held < ANOMALY_MEMORY
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

    def recently_anomalous_in(self, txn: lmdb.Transaction, user_id: str, now: float) -> bool:
        """:meth:`recently_anomalous` for a reader already inside a read transaction
        (DecideBatch reads a chunk of users in one): a user this engine does not remember
        is read in ``txn`` and not remembered (a batch over a whole base would only churn
        the cache). What is not in the cache is not pending (pending holds stay cached),
        so the store answers for it."""
        held = None if self.store.shared else self._held_at.get(user_id)
        if held is None:
            stored = risk_baselines.held_at(txn, self.store.dbs, user_id)
            held = stored if stored is not None else -math.inf
        return now - held < ANOMALY_MEMORY

    def recently_anomalous_many(self, txn: lmdb.Transaction, user_ids: list[str],
                                now: float) -> list[bool]:
        """:meth:`recently_anomalous_in` for many users (DecideBatch's chunk): the stored
        holds of those not cached read in key order in one cursor call."""
        cached = {} if self.store.shared else self._held_at
        wanted = sorted({u.encode() for u in user_ids if u not in cached})
        stored = risk_baselines.held_at_many(txn, self.store.dbs, wanted) if wanted else {}
        out = []
        for u in user_ids:
            held = cached.get(u)
            if held is None:
                held = stored.get(u, -math.inf)
            out.append(now - held < ANOMALY_MEMORY)
        return out

    def population(self) -> np.ndarray:
        """A copy of the population state as this process last saw it."""
        with self._lock:
            return self._population.copy()

    # -- cluster mode: one population for every node (cluster/population_sync.py) --------

    def population_delta(self) -> np.ndarray | None:
        """What this node's population learned since the last call, in the additive form
        (``population_merge``), or None when nothing."""
        with self._lock:
            now = self._population
            gained = population_merge.delta(now, self._shipped_from)
            self._shipped_from = now
        return gained if np.any(gained) else None

    def adopt_population(self, base: np.ndarray, extra: np.ndarray) -> None:
        """Score with the cluster's population: ``base`` (additive form, every node's
        deltas up to a stream position) plus ``extra`` (this node's deltas not in it yet)
        plus what this node learned since its last delta was taken."""
        with self._lock:
            unshipped = population_merge.delta(self._population, self._shipped_from)
            local = self._population
            self._set_population(population_merge.from_additive(base + extra + unshipped,
                                                                local))
            shipped_from = population_merge.from_additive(base + extra, local)
            shipped_from.flags.writeable = False
            self._shipped_from = shipped_from

    @contextlib.contextmanager
    def _population_kept(self, contributes: bool) -> Iterator[None]:
        """(Inside the lock.) Put the population back as it was unless ``contributes``."""
        kept = self._population
        try:
            yield
        finally:
            if not contributes:
                self._population = kept

    def transaction(self, user_id: str, transaction_id: str) -> TransactionRecord | None:
        """The record of a scored transaction (overlay first), or None."""
        with self._lock, self.store.read() as txn:
            record = self._record((user_id, transaction_id), txn)
            return None if record is None else record.copy()

    def baseline(self, user_id: str) -> np.ndarray | None:
        """The user's current risk baseline (overlay first), or None if never scored."""
        with self._lock, self.store.read() as txn:
            if user_id in self._states:
                return self._states[user_id].copy()
            stored = risk_baselines.baseline(txn, self.store.dbs, user_id)
            return None if stored is None else stored.copy()

    # -- on a shared store: inside the write transaction ---------------------------------

    def _score_committed(
        self, transactions: list[ValidTransaction], learn_only: bool
    ) -> list[TransactionRecord]:
        users = {tx.user_id for tx in transactions}
        ids = [(tx.user_id, tx.transaction_id) for tx in transactions]

        def job(txn: lmdb.Transaction) -> tuple[list[TransactionRecord], tuple]:
            with self._lock:
                self._reload(txn, users, ids)
                records = self._score_in_lock(transactions, learn_only, txn)
            return records, self._write(txn, users, ids)

        records, written = self.writer.submit_job(job).result()
        self._forget(*written)
        return records

    def _label_committed(self, key: TxKey, label: str) -> Future[bool]:
        in_baseline: list[bool] = []

        def job(txn: lmdb.Transaction) -> tuple[Any, ...]:
            with self._lock:
                self._reload(txn, [key[0]], [key])
                record = self._label_one(key, label, txn)
            in_baseline.append(record.in_baseline)
            return self._write(txn, [record.user_id], [key])

        return self._committed(job, lambda _written: in_baseline[0])

    def _reload(
        self, txn: lmdb.Transaction, users: Iterable[str], transaction_ids: Iterable[TxKey]
    ) -> None:
        """(Inside the lock.) Drop what this process remembers of these users and
        transactions, and re-read the population: the write transaction holds LMDB's
        writer lock, so what it reads now is what every process last committed."""
        dbs = self.store.dbs
        self._generation += 1
        for user_id in users:
            self._states.pop(user_id, None)
            self._time_zones.pop(user_id, None)
            held = risk_baselines.held_at(txn, dbs, user_id)
            if held is None:
                self._held_at.pop(user_id, None)
            else:
                self._held_at[user_id] = held
        for key in transaction_ids:
            self._records.pop(key, None)
        stored = risk_baselines.population(txn, dbs)
        if stored is not None:
            population = stored.copy()
            population.flags.writeable = False
            self._population = population
        self._clock = max(self._clock, risk_baselines.clock(txn, dbs))

    # -- before the lock: one transaction's reads --------------------------------------

    def _read_ahead(self, tx: ValidTransaction) -> _ReadAhead:
        """What scoring ``tx`` needs from the store and the overlay does not hold, read
        before the engine's lock is taken: LMDB reads release the GIL, and a thread that
        releases it while holding the lock lets every other ScoreTransaction queue on the
        lock behind it while it waits to get the GIL back. The generation is read before
        the read transaction begins, so a commit whose overlay entries were dropped after
        that began shows as a new generation (:meth:`_still_valid`)."""
        generation = self._generation
        key = (tx.user_id, tx.transaction_id)
        dbs = self.store.dbs
        record: TransactionRecord | object | None = _NOT_READ
        state: np.ndarray | object | None = _NOT_READ
        tz: str | None = None
        with self.store.read() as txn:
            if key not in self._records:
                record = transaction_table.get(txn, dbs, key)
            if tx.user_id not in self._states:
                raw = risk_baselines.stored_bytes(txn, dbs, tx.user_id)
                if raw is None:
                    state = None
                else:
                    known = self._decoded.get(tx.user_id)
                    state = (known[1].copy() if known is not None and known[0] == raw
                             else risk_baselines.decode_baseline(raw))
            if tx.local_hour is None and tx.user_id not in self._time_zones:
                tz = users.profile(txn, dbs, tx.user_id).tz
        return _ReadAhead(generation, record, state, tz)

    def _still_valid(self, ahead: _ReadAhead, tx: ValidTransaction) -> bool:
        """(Inside the lock.) Whether what :meth:`_read_ahead` read is what the store holds
        for every entry the overlay does not: no overlay entry was dropped since (each drop
        — after a commit, a rollback, a reload or an erasure — starts a new generation),
        and what it left unread because the overlay (or the time zone cache) had it, they
        still have."""
        return (ahead.generation == self._generation
                and (ahead.record is not _NOT_READ
                     or (tx.user_id, tx.transaction_id) in self._records)
                and (ahead.state is not _NOT_READ or tx.user_id in self._states)
                and (ahead.tz is not None or tx.local_hour is not None
                     or tx.user_id in self._time_zones))

    # -- inside the lock -----------------------------------------------------------------

    def _label_one(self, key: TxKey, label: str, txn: lmdb.Transaction) -> TransactionRecord:
        """The labelled copy of a scored transaction (now in the overlay). The first label
        of a transaction trains the model; GENUINE folds a held one into the customer's and
        the population's rows; FRAUD on one already learned is recorded, not un-learned."""
        record = self._record(key, txn)
        if record is None:
            raise NotFound(f"transaction_id: {key[1]!r} was never scored for this user")
        record = record.copy()
        first = record.label == ""
        record.label = label
        features = record.model_features
        if features is not None:
            f = np.asarray(features, dtype=np.float64).reshape(1, -1)
            if first:
                population = self._population.copy()
                apply_labels(population, f, np.array([1.0 if label == "FRAUD" else 0.0]),
                             self.params)
                self._set_population(population)
            if label == "GENUINE" and not record.in_baseline:
                self._learn_held(record.user_id, f, txn)
                record.in_baseline = True
                record.learned_by = "genuine_label"
                self._held_at[record.user_id] = -math.inf
        self._records[key] = record
        return record

    def _due(self, txn: lmdb.Transaction) -> list[tuple[float, str, str]]:
        """(Inside the lock.) The waiting holds whose delay has passed, oldest first."""
        until = self._clock - self.hold_seconds
        return list(itertools.islice(
            risk_baselines.holds_due(txn, self.store.dbs, until), EXPIRY_BATCH))

    def _expire(self, due: list[tuple[float, str, str]], txn: lmdb.Transaction) -> int:
        """(Inside the lock, in a write transaction.) Fold the due holds that still wait;
        every due record goes to the overlay, so the write drops its index entry; entries
        whose record is gone (erased, or past retention) are dropped here."""
        folded = 0
        for at, user_id, transaction_id in due:
            key = (user_id, transaction_id)
            record = self._record(key, txn)
            if record is None:
                risk_baselines.clear_hold(txn, self.store.dbs, at, user_id, transaction_id)
                continue
            record = record.copy()
            features = record.model_features
            if record.waiting and features is not None:
                self._learn_held(record.user_id,
                                 np.asarray(features, dtype=np.float64).reshape(1, -1), txn)
                record.in_baseline = True
                record.learned_by = "hold_expiry"
                folded += 1
            self._records[key] = record
        return folded

    def _learn_held(self, user_id: str, features: np.ndarray, txn: lmdb.Transaction) -> None:
        state = self._state(user_id, txn).copy().reshape(1, USER_LEN)
        population = self._population.copy()
        learn_held(state, _ROW0, population, features, self.params)
        self._states[user_id] = state[0]
        self._set_population(population)

    def _set_population(self, population: np.ndarray) -> None:
        """Copy on write: a flush may be storing the previous one. (``setflags``: the
        ``flags`` attribute builds a flags object, on every ScoreTransaction.)"""
        population.setflags(write=False)
        self._population = population

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
        return new_user_state() if stored is None else stored

    def _score_in_lock(
        self, transactions: list[ValidTransaction], learn_only: bool, txn: lmdb.Transaction
    ) -> list[TransactionRecord]:
        if not learn_only:
            return [self._score_one(tx, txn) for tx in transactions]
        fresh: dict[TxKey, ValidTransaction] = {}
        for tx in transactions:
            key = (tx.user_id, tx.transaction_id)
            if key not in fresh and self._record(key, txn) is None:
                fresh[key] = tx
        if fresh:
            self._score_batch(list(fresh.values()), txn, hold=False)
        records = []
        for tx in transactions:
            record = self._record((tx.user_id, tx.transaction_id), txn)
            assert record is not None  # scored now or before
            records.append(record)
        return records

    def _score_one(self, tx: ValidTransaction, txn: lmdb.Transaction | None,
                   ahead: _ReadAhead | None = None) -> TransactionRecord:
        """Score and learn one transaction, reading in ``txn``, or (``txn`` None) taking
        what the overlay does not hold from ``ahead`` (checked by :meth:`_still_valid`)."""
        key = (tx.user_id, tx.transaction_id)
        if ahead is None:
            assert txn is not None
            previous = self._record(key, txn)
            if previous is not None:
                return previous
            hour = self._local_hour(tx, txn)
            state = self._state(tx.user_id, txn).copy()
        else:
            previous = self._records.get(key)
            if previous is None:
                previous = ahead.record  # type: ignore[assignment]  # read: not _NOT_READ
            if previous is not None:
                return previous
            hour = self._local_hour_ahead(tx, ahead.tz)
            overlay = self._states.get(tx.user_id)
            stored: np.ndarray | None = ahead.state  # type: ignore[assignment]
            # A stored row is decoded into a new array, used once: no copy needed.
            state = overlay.copy() if overlay is not None else (
                new_user_state() if stored is None else stored)
        # Every transaction scored one at a time comes from validate_transaction(s)
        # (amount finite and >= 0, time finite), the hour from local_hour or Track: the
        # checks of encode_transaction would repeat them.
        vector = encode_transaction_trusted(
            tx.amount, tx.time, hour, tx.country, tx.merchant_category, tx.device_id, tx.channel
        )
        population = self._population.copy()
        details, features = score_learn_one_trusted(state, population, vector, self.params)
        v = details.tolist()  # one conversion, read as Python floats below
        held = bool(v[D_HELD])
        weights = population[P_W:P_W + N_EVIDENCE]
        # Most transactions have no reason: asked on the lists first, explain only if not.
        reasons = [] if no_reason(v, weights.tolist()) else explain(
            details,
            weights,
            country=tx.country,
            merchant_category=tx.merchant_category,
            local_hour=hour,
            params=self.params,
            max_reasons=MAX_REASONS,
        )
        record = TransactionRecord(
            user_id=tx.user_id,
            score=v[D_SCORE],
            reasons=[(r.code, r.detail, r.weight) for r in reasons] if reasons else [],
            baseline_count=int(v[D_HISTORY]),
            held=held,
            in_baseline=not held,
            features=features.tolist(),
            time=tx.time,
            learned_by="" if held else "scored",
        )
        self._states[tx.user_id] = state
        self._records[(tx.user_id, tx.transaction_id)] = record
        self._clock = max(self._clock, tx.time)
        if held:
            self._held_at[tx.user_id] = max(self._held_at.get(tx.user_id, -math.inf), tx.time)
        else:
            self._set_population(population)
        return record

    def _local_hour(self, tx: ValidTransaction, txn: lmdb.Transaction) -> float:
        if tx.local_hour is not None:
            return tx.local_hour
        return local_hour(tx.time, self._time_zone(tx.user_id, txn))

    def _local_hour_ahead(self, tx: ValidTransaction, read_tz: str | None) -> float:
        """:meth:`_local_hour` with the time zone read ahead (None: the cache has it)."""
        if tx.local_hour is not None:
            return tx.local_hour
        tz = self._time_zones.get(tx.user_id)
        if tz is None:
            assert read_tz is not None  # _still_valid
            tz = read_tz
            if len(self._time_zones) >= TIME_ZONE_CACHE:
                self._time_zones.clear()
            self._time_zones[tx.user_id] = tz
        return local_hour(tx.time, tz)

    def _time_zone(self, user_id: str, txn: lmdb.Transaction) -> str:
        """The user's time zone, cached: parsing the profile costs more than scoring."""
        tz = self._time_zones.get(user_id)
        if tz is None:
            tz = users.profile(txn, self.store.dbs, user_id).tz
            if len(self._time_zones) >= TIME_ZONE_CACHE:
                self._time_zones.clear()
            self._time_zones[user_id] = tz
        return tz

    # -- commits -------------------------------------------------------------------------

    def flush(self) -> None:
        """Store the overlay now (erasure must find everything in the store)."""
        self._write_behind.flush()

    def forget_user(self, user_id: str) -> None:
        """Drop what is cached about an erased user."""
        with self._lock:
            self._generation += 1
            self._states.pop(user_id, None)
            self._time_zones.pop(user_id, None)
            self._held_at.pop(user_id, None)
            self._decoded.pop(user_id, None)  # not needed to be right: to free it
            for key in [k for k in self._records if k[0] == user_id]:
                del self._records[key]

    def close(self) -> None:
        """Stop the expiry pass, store what is still unsaved and stop the flusher (before
        the writer closes)."""
        self._expiry_stop.set()
        if self._expiry_thread is not None:
            self._expiry_thread.join()
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
            clock = self._clock
        decoded = []
        for user_id, state in states.items():
            raw = risk_baselines.put_baseline(txn, dbs, user_id, state)
            if not self.store.shared:  # there every score reads in its write transaction
                row = risk_baselines.decode_baseline(raw)
                if row is not None:
                    row.setflags(write=False)
                    decoded.append((user_id, raw, row))
        if decoded:
            if len(self._decoded) + len(decoded) > DECODED_CACHE:
                self._decoded = {}
            cache = self._decoded
            for user_id, raw, row in decoded:
                cache[user_id] = (raw, row)
        for key, record in records.items():
            transaction_table.put(txn, dbs, key, record)
            if record.held and record.time > 0:
                if record.waiting:
                    risk_baselines.put_hold(txn, dbs, record.time, *key)
                else:
                    risk_baselines.clear_hold(txn, dbs, record.time, *key)
        for user_id in states:
            held = self._held_at.get(user_id)
            if held is not None and held > -math.inf:
                risk_baselines.put_held_at(txn, dbs, user_id, held)
            elif held is not None:
                risk_baselines.clear_held(txn, dbs, user_id)
        risk_baselines.put_population(txn, dbs, population)
        if clock > -math.inf:
            risk_baselines.put_clock(txn, dbs, clock)
        return states, records

    def _forget(
        self, states: dict[str, np.ndarray], records: dict[TxKey, TransactionRecord]
    ) -> None:
        with self._lock:
            self._generation += 1
            for user_id, state in states.items():
                if self._states.get(user_id) is state:
                    del self._states[user_id]
            for key, record in records.items():
                if self._records.get(key) is record:
                    del self._records[key]

    def _on_events(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        """Track's transaction events update the same baselines, in the events' commit,
        through the batch kernel (Track carries bulk history)."""
        if any(map(_TZ, events)):
            with self._lock:
                for ev in events:
                    if ev.tz is not None and ev.user_id in self._time_zones:
                        self._time_zones[ev.user_id] = ev.tz
        # Only transaction events can become transactions: the rest are not looked at.
        if TRANSACTION_EVENT not in set(map(_TYPE, events)):
            return None
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
                self._score_batch(list(fresh.values()), txn, hold=True)
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
                self._generation += 1
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

    def _score_batch(
        self, txs: list[ValidTransaction], txn: lmdb.Transaction, hold: bool
    ) -> None:
        """Score and learn in order through the batch kernel (Track's bulk history, and
        backfills with ``hold`` False); only held transactions get reasons."""
        rows: dict[str, int] = {}
        for tx in txs:
            rows.setdefault(tx.user_id, len(rows))
        states = np.empty((len(rows), USER_LEN), dtype=np.float64)
        for user_id, row in rows.items():
            states[row] = self._state(user_id, txn)
        hours = [self._local_hour(tx, txn) for tx in txs]
        vectors = encode_transactions(
            [tx.amount for tx in txs], [tx.time for tx in txs], hours,
            [tx.country for tx in txs], [tx.merchant_category for tx in txs],
            [tx.device_id for tx in txs], [tx.channel for tx in txs],
        )
        user_rows = np.array([rows[tx.user_id] for tx in txs], dtype=np.int64)
        population = self._population.copy()
        batch = score_and_learn(states, user_rows, population, vectors, self.params, hold=hold)
        weights = population[P_W:P_W + N_EVIDENCE]
        learned_by = "scored" if hold else "backfill"
        for i, tx in enumerate(txs):
            held = bool(batch.held[i])
            reasons = explain(
                batch.details[i], weights, country=tx.country,
                merchant_category=tx.merchant_category, local_hour=hours[i],
                params=self.params, max_reasons=MAX_REASONS,
            ) if held else []
            self._records[(tx.user_id, tx.transaction_id)] = TransactionRecord(
                user_id=tx.user_id,
                score=float(batch.scores[i]),
                reasons=[(r.code, r.detail, r.weight) for r in reasons],
                baseline_count=int(batch.details[i, D_HISTORY]),
                held=held,
                in_baseline=not held,
                features=batch.features[i].tolist(),
                time=tx.time,
                learned_by="" if held else learned_by,
            )
            if held:
                self._held_at[tx.user_id] = max(self._held_at.get(tx.user_id, -math.inf), tx.time)
        self._clock = max(self._clock, max(tx.time for tx in txs))
        for user_id, row in rows.items():
            self._states[user_id] = states[row].copy()
        self._set_population(population)
