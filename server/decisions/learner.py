"""The single learner: settles expired decisions, learns from outcomes in order, publishes.

Settled decisions are appended to the ``rewards`` log in the same commit that settles
them. The learner reads the log after the position stored with its models, updates each
campaign's posterior (kernels/learner.py) and context statistics into copies, and
publishes a new CampaignModel by swapping one reference: deciders never block on it and
never see half an update. Models are stored with the log position every few seconds and
on shutdown, so after a crash the learner resumes from the stored position: every outcome
is learned exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import lmdb
import numpy as np

from nudge.kernels import context as ctx
from nudge.kernels import learner as lrn
from nudge.server.clock import Clock
from nudge.server.decisions.engine import DecisionEngine
from nudge.server.decisions.models import CampaignModel, encode_model, fit_stored
from nudge.server.decisions.outcomes import settle
from nudge.server.errors import Unavailable
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import deadlines
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables import models as model_table
from nudge.server.storage.tables import rewards as reward_log
from nudge.server.storage.tables.decisions import DecisionRecord

log = logging.getLogger(__name__)

EXPIRE_BATCH = 1_000
# A transient failure of a step (UNAVAILABLE) is logged at most once in this many seconds.
UNAVAILABLE_LOG_SECONDS = 5.0


class Learner:
    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        engine: DecisionEngine,
        clock: Clock,
        interval: float = 0.05,
        persist_every: float = 5.0,
        batch: int = 1_000,
    ) -> None:
        self.store = store
        self.writer = writer
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self.persist_every = persist_every
        self.batch = batch
        self.learned_seq = 0
        self.learned = 0
        # Records set aside because they could not be learned (out-of-range reward, an
        # update that would not be finite).
        self.quarantined = 0
        self._dirty = False
        # Cluster mode (cluster/model_sync.py): settled outcomes are shipped to the cluster's
        # rewards stream instead of learned here (one learner for the cluster learns them
        # and every node adopts its models), and only decisions of partitions this node
        # applies are expired.
        self.ship: Callable[[list[DecisionRecord]], None] | None = None
        # (True: expire it here; False: another node's, which expires it; None: not now.)
        self.expires: Callable[[str], bool | None] = lambda _user_id: True
        self._step_lock = threading.Lock()
        self._caught_up_at = clock.now()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._load()
        engine.outcomes.on_settled = self._wake.set
        self._thread = threading.Thread(target=self._run, name="nudge-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        dbs = self.store.dbs
        with self.store.read() as txn:
            self.learned_seq = model_table.learned_seq(txn, dbs)
            for name, initial in list(self.engine.models.items()):
                stored = model_table.get(txn, dbs, name)
                if stored is None:
                    continue
                model = fit_stored(stored, initial, self.learned_seq)
                if model is None:
                    log.warning("stored model of %s does not fit the campaign; starting fresh",
                                name)
                    continue
                self.engine.models[name] = model

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold learning still (no step runs inside): campaigns are replaced here."""
        with self._step_lock:
            yield

    def follow(self) -> bool:
        """In a process that does not lead a shared store: adopt the models the leader
        stored, when it stored newer ones. Returns whether anything changed."""
        with self.store.read() as txn:
            seq = model_table.learned_seq(txn, self.store.dbs)
        if seq == self.learned_seq:
            return False
        with self._step_lock:
            self._load()
        return True

    # -- the learner thread --------------------------------------------------------------

    def _run(self) -> None:
        last_persist = self.clock.now()
        last_warned = -math.inf
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.step()
                if self._dirty and self.clock.now() - last_persist >= self.persist_every:
                    self.persist()
                    last_persist = self.clock.now()
            except Unavailable as exc:
                # Transient (cluster: NATS electing a leader): the step is retried every
                # interval, so say it once per UNAVAILABLE_LOG_SECONDS, not 15 times a second.
                if time.monotonic() - last_warned >= UNAVAILABLE_LOG_SECONDS:
                    log.warning("learner step: %s", exc)
                    last_warned = time.monotonic()
            except Exception:  # keep learning; the failure is in the log
                log.exception("learner step failed")

    def step(self) -> int:
        """Expire what is due, then learn what is settled; returns outcomes learned.

        One step at a time: the learner thread and a caller driving simulated time (tests,
        the demo) must never learn the same outcomes twice."""
        with self._step_lock:
            return self._step()

    def _step(self) -> int:
        self.expire(self.clock.now())
        total = 0
        while True:
            n = self._learn_batch()
            total += n
            if n < self.batch:
                self._caught_up_at = self.clock.now()
                return total

    def expire(self, now: float) -> int:
        """Settle decisions whose goal window has passed with reward 0 (durably)."""
        store = self.store
        with store.read() as txn:
            due = deadlines.due(txn, store.dbs, now, EXPIRE_BATCH)
        if not due:
            return 0

        def job(txn: lmdb.Transaction) -> int:
            settled = 0
            for key in due:
                record = decision_table.get(txn, store.dbs, deadlines.decision_id(key))
                here = record is not None and self.expires(record.user_id)
                if record is not None and record.status == "open" and here:
                    settled += settle(txn, store, record, 0.0)
                elif here is None:  # (cluster) its partition has no owner right now
                    continue
                else:  # settled meanwhile, or lost, or (cluster) another node's partition,
                    # which its owner expires: the deadline has nothing left to do here
                    deadlines.delete(txn, store.dbs, key)
            return settled

        return self.writer.submit_job(job).result()

    def _learn_batch(self) -> int:
        records: list[tuple[int, DecisionRecord]] = []
        dbs = self.store.dbs
        with self.store.read() as txn:
            for seq, decision_id in reward_log.since(txn, dbs, self.learned_seq + 1):
                record = decision_table.get(txn, dbs, decision_id)
                if record is not None:
                    records.append((seq, record))
                if len(records) >= self.batch:
                    break
        if not records:
            return 0
        if self.ship is not None:
            self.ship([record for _, record in records])
        else:
            self._learn(records)
        self.learned_seq = records[-1][0]
        self.learned += len(records)
        self._dirty = True
        return len(records)

    def learn_logged(self, records: list[tuple[int, DecisionRecord]]) -> None:
        """(Cluster, the learner's leader) Learn records of the cluster's rewards stream,
        numbered by their stream sequence."""
        with self._step_lock:
            self._learn(records)

    def adopt(self, stored: dict[str, model_table.StoredModel], position: int) -> None:
        """(Cluster) Decide with the models the cluster's learner published, learned up
        to ``position`` of the rewards stream."""
        with self._step_lock:
            for name, model in stored.items():
                initial = self.engine.models.get(name)
                fitted = None if initial is None else fit_stored(model, initial, position)
                if fitted is not None:
                    self.engine.models[name] = fitted

    def _learn(self, records: list[tuple[int, DecisionRecord]]) -> None:
        by_campaign: dict[str, list[DecisionRecord]] = defaultdict(list)
        for _, record in records:
            by_campaign[record.campaign].append(record)
        for name, batch in by_campaign.items():
            model = self.engine.models.get(name)
            if model is None:
                continue  # a campaign no longer loaded: its outcomes are skipped
            usable = [r for r in batch if len(r.x) == model.layout.n_features]
            low, high = model.campaign.goal.reward_range
            for r in [r for r in usable if not low <= (r.reward or 0.0) <= high]:
                self._quarantine(r, f"reward {r.reward!r} outside [{low:g}, {high:g}]")
                usable.remove(r)
            if not usable:
                continue
            try:
                model = self._learned(model, usable)
            except (ValueError, ArithmeticError):
                # One record broke the update: learn them one at a time, setting aside the
                # ones that fail, rather than failing this batch on every step forever.
                for record in usable:
                    try:
                        model = self._learned(model, [record])
                    except (ValueError, ArithmeticError) as exc:
                        self._quarantine(record, str(exc))
            self.engine.models[name] = CampaignModel(
                model.campaign, model.layout, model.snapshot, model.stats, records[-1][0]
            )

    @staticmethod
    def _learned(model: CampaignModel, usable: list[DecisionRecord]) -> CampaignModel:
        """The model after learning these records (the model given is left unchanged);
        ValueError when the update would not be finite."""
        chosen = np.array([r.choice for r in usable], dtype=np.int64)
        contexts = np.array([r.x for r in usable], dtype=np.float64)
        # The outcome, less the campaign's cost of the messages sent.
        contact_cost = model.campaign.goal.contact_cost
        rewards = np.array([(r.reward or 0.0) - contact_cost * r.messages for r in usable],
                           dtype=np.float64)
        if not (np.isfinite(contexts).all() and np.isfinite(rewards).all()):
            raise ValueError("context or reward: must be finite")
        raw = np.array([[np.nan if v is None else v for v in r.raw] for r in usable])
        space = model.campaign.space
        snapshot = lrn.update_posteriors(
            model.snapshot, space.combo_components, chosen, contexts, rewards,
            model.learner_params, weight=space.component_weight,
        )
        stats = ctx.update_stats(model.layout, model.stats, raw)
        return CampaignModel(model.campaign, model.layout, snapshot, stats, model.learned_seq)

    def _quarantine(self, record: DecisionRecord, why: str) -> None:
        """Skip a record the model cannot learn from: logged once (the position moves past
        it, so it is never read again) and counted (``nudge_learner_quarantined_total``)."""
        self.quarantined += 1
        log.error("learner skipped decision %s of %s: %s", record.decision_id,
                  record.campaign, why)

    def lag_seconds(self) -> float:
        """How long settled outcomes have been waiting for the learner (0: caught up)."""
        with self.store.read() as txn:
            newest = reward_log.last(txn, self.store.dbs)
        if newest <= self.learned_seq:
            return 0.0
        return max(0.0, self.clock.now() - self._caught_up_at)

    def persist(self) -> None:
        """Store every model with the log position it has learned up to."""
        with self._step_lock:  # a consistent pair: models and the position they learned to
            models = dict(self.engine.models)
            seq = self.learned_seq

        def job(txn: lmdb.Transaction) -> None:
            for name, model in models.items():
                model_table.put(txn, self.store.dbs, name, encode_model(model))
            model_table.put_learned_seq(txn, self.store.dbs, seq)

        self.writer.submit_job(job).result()
        self._dirty = False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._dirty:
            self.persist()
