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
import io
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator

import lmdb
import numpy as np

from nudge.kernels import context as ctx
from nudge.kernels import learner as lrn
from nudge.kernels.snapshot import PolicySnapshot
from nudge.server.clock import Clock
from nudge.server.decisions.engine import CampaignModel, DecisionEngine, DecisionRecord
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store

log = logging.getLogger(__name__)

LEARNED_SEQ_KEY = b"learner/learned_seq"
EXPIRE_BATCH = 1_000


def encode_model(model: CampaignModel) -> bytes:
    s, st = model.snapshot, model.stats
    buffer = io.BytesIO()
    np.savez(
        buffer, mean_t=s.mean_t, factor_t=s.factor_t, precision=s.precision, b=s.b,
        n_eff=s.n_eff, prior=np.array([s.prior_precision]), version=np.array([s.version]),
        stats_mean=st.mean, stats_var=st.var, stats_count=st.count,
        features=np.array(model.layout.feature_names()),
        components=np.array(model.campaign.component_names()),
    )
    return buffer.getvalue()


def decode_model(raw: bytes, initial: CampaignModel, learned_seq: int) -> CampaignModel | None:
    """The stored model, or None when it no longer fits the campaign: another shape, or the
    same shape with features or components that mean something else (event types or a
    string's known values reordered, a value renamed)."""
    with np.load(io.BytesIO(raw), allow_pickle=False) as data:
        if data["mean_t"].shape != initial.snapshot.mean_t.shape:
            return None
        names = {"features": initial.layout.feature_names(),
                 "components": initial.campaign.component_names()}
        for key, expected in names.items():
            if key in data.files and data[key].tolist() != expected:
                return None
        snapshot = PolicySnapshot(
            mean_t=data["mean_t"], factor_t=data["factor_t"], precision=data["precision"],
            b=data["b"], n_eff=data["n_eff"], prior_precision=float(data["prior"][0]),
            version=int(data["version"][0]),
        )
        stats = ctx.ContextStats(
            mean=data["stats_mean"], var=data["stats_var"], count=data["stats_count"]
        )
    return CampaignModel(initial.campaign, initial.layout, snapshot, stats, learned_seq)


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
        self._dirty = False
        self._step_lock = threading.Lock()
        self._caught_up_at = clock.now()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._load()
        engine.on_settled = self._wake.set
        self._thread = threading.Thread(target=self._run, name="nudge-learner", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _load(self) -> None:
        with self.store.read() as txn:
            raw_seq = txn.get(LEARNED_SEQ_KEY, db=self.store.dbs["meta"])
            self.learned_seq = int(bytes(raw_seq)) if raw_seq is not None else 0
            for name, initial in list(self.engine.models.items()):
                raw = txn.get(name.encode(), db=self.store.dbs["models"])
                if raw is None:
                    continue
                model = decode_model(bytes(raw), initial, self.learned_seq)
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
            raw_seq = txn.get(LEARNED_SEQ_KEY, db=self.store.dbs["meta"])
            seq = int(bytes(raw_seq)) if raw_seq is not None else 0
        if seq == self.learned_seq:
            return False
        with self._step_lock:
            self._load()
        return True

    # -- the learner thread --------------------------------------------------------------

    def _run(self) -> None:
        last_persist = self.clock.now()
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.step()
                if self._dirty and self.clock.now() - last_persist >= self.persist_every:
                    self.persist()
                    last_persist = self.clock.now()
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
        limit = int(now * 1000).to_bytes(8, "big")
        with self.store.read() as txn:
            cursor = txn.cursor(db=self.store.dbs["deadlines"])
            due = []
            if cursor.first():
                for key in cursor.iternext(values=False):
                    key = bytes(key)
                    if key[:8] > limit or len(due) >= EXPIRE_BATCH:
                        break
                    due.append(key)
        if not due:
            return 0
        engine = self.engine

        def job(txn: lmdb.Transaction) -> int:
            settled = 0
            for key in due:
                record = engine._load(txn, key[8:].decode())
                if record is not None and record.status == "open":
                    settled += engine._settle(txn, record, 0.0)
                else:  # settled meanwhile, or lost: the deadline has nothing left to do
                    txn.delete(key, db=self.store.dbs["deadlines"])
            return settled

        return self.writer.submit_job(job).result()

    def _learn_batch(self) -> int:
        start = (self.learned_seq + 1).to_bytes(8, "big")
        records: list[tuple[int, DecisionRecord]] = []
        with self.store.read() as txn:
            cursor = txn.cursor(db=self.store.dbs["rewards"])
            if cursor.set_range(start):
                for key, value in cursor:
                    record = self.engine._load(txn, bytes(value).decode())
                    if record is not None:
                        records.append((int.from_bytes(bytes(key), "big"), record))
                    if len(records) >= self.batch:
                        break
        if not records:
            return 0
        by_campaign: dict[str, list[DecisionRecord]] = defaultdict(list)
        for _, record in records:
            by_campaign[record.campaign].append(record)
        for name, batch in by_campaign.items():
            model = self.engine.models.get(name)
            if model is None:
                continue  # a campaign no longer loaded: its outcomes are skipped
            usable = [r for r in batch if len(r.x) == model.layout.n_features]
            if not usable:
                continue
            chosen = np.array([r.choice for r in usable], dtype=np.int64)
            contexts = np.array([r.x for r in usable], dtype=np.float64)
            # The outcome, less the campaign's cost of the messages sent.
            contact_cost = model.campaign.goal.contact_cost
            rewards = np.array([(r.reward or 0.0) - contact_cost * r.messages for r in usable],
                               dtype=np.float64)
            raw = np.array([[np.nan if v is None else v for v in r.raw] for r in usable])
            snapshot = lrn.update_posteriors(
                model.snapshot, model.campaign.space.combo_components, chosen, contexts, rewards,
                lrn.LearnerParams(forgetting=model.campaign.exploration.forgetting),
            )
            stats = ctx.update_stats(model.layout, model.stats, raw)
            self.engine.models[name] = CampaignModel(
                model.campaign, model.layout, snapshot, stats, records[-1][0]
            )
        self.learned_seq = records[-1][0]
        self.learned += len(records)
        self._dirty = True
        return len(records)

    def lag_seconds(self) -> float:
        """How long settled outcomes have been waiting for the learner (0: caught up)."""
        with self.store.read() as txn:
            cursor = txn.cursor(db=self.store.dbs["rewards"])
            newest = int.from_bytes(cursor.key(), "big") if cursor.last() else 0
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
                txn.put(name.encode(), encode_model(model), db=self.store.dbs["models"])
            txn.put(LEARNED_SEQ_KEY, str(seq).encode(), db=self.store.dbs["meta"])

        self.writer.submit_job(job).result()
        self._dirty = False

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._dirty:
            self.persist()
