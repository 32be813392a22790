"""Decide: one joint decision over message × channel × send time × frequency × offer.

Per request: load the user's state, apply the campaign's guardrails as masks, build the
context, let the policy kernel score every allowed combination (Thompson sampling or
SquareCB), and log the decision with its exact propensity (Monte Carlo for Thompson, the
draw count stated), model version, seed, features and guardrail trace — enough to replay
and to evaluate any other policy offline.

No fsync on this path: the decision is answered from memory and its record rides a flush
into the next group commit, 1 ms later (the README states this crash window). Goal events
arriving through Track settle open decisions inside their own commit (pending decisions
are written into that commit first, so none is missed); ReportOutcome settles one
explicitly; the learner (server/learner.py) settles expired ones with reward 0 and learns
from the rewards log.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import context as ctx
from nudge.kernels import learner as lrn
from nudge.kernels import policy
from nudge.server.campaign import Campaign
from nudge.server.decision_features import context_layout, raw_features
from nudge.server.errors import InvalidArgument, NotFound
from nudge.server.events import ValidEvent
from nudge.server.guardrails import (
    SUPPRESS_HOLDOUT,
    SUPPRESS_NOTHING_BEST,
    SUPPRESS_PROPERTIES,
    Contact,
    apply_guardrails,
)
from nudge.server.ingest import EventWriter, local_hour
from nudge.server.risk_engine import RiskEngine
from nudge.server.store import Store

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.001
CONTACT_MEMORY = 7 * 86_400.0
MAX_TOP_K = 16
TOP_FEATURE_REASONS = 3


@dataclass(frozen=True)
class CampaignModel:
    """What deciders read for one campaign; the learner publishes a new one, never edits."""

    campaign: Campaign
    layout: ctx.ContextLayout
    snapshot: lrn.PolicySnapshot
    stats: ctx.ContextStats
    # Last rewards-log sequence this model has learned from.
    learned_seq: int = 0

    @property
    def version(self) -> str:
        return f"{self.campaign.name}/v{self.snapshot.version}"

    @cached_property
    def names(self) -> tuple[list[str], list[str]]:
        """(component names, feature names), for explanations."""
        return self.campaign.component_names(), self.layout.feature_names()

    @cached_property
    def policy_params(self) -> policy.PolicyParams:
        e = self.campaign.exploration
        return policy.PolicyParams(
            mode=e.algorithm,
            noise_variance=e.noise_variance,
            gamma_scale=e.gamma_scale,
            mc_samples=e.propensity_samples,
            mc_max_samples=e.propensity_samples,
        )

    @classmethod
    def initial(cls, campaign: Campaign) -> CampaignModel:
        layout = context_layout(campaign)
        snapshot = lrn.initial_snapshot(
            campaign.n_components, layout.n_features, campaign.exploration.prior_precision
        )
        return cls(campaign, layout, snapshot, ctx.initial_stats(layout))


@dataclass
class DecideInput:
    user_id: str
    campaign: str
    time: float
    top_k: int
    numbers: dict[str, float]
    strings: dict[str, str]
    dry_run: bool


@dataclass
class ActionOut:
    message: str
    channel: str
    send_at: float
    frequency: str
    offer: str
    text: str
    score: float


@dataclass
class DecisionOutcome:
    decision_id: str
    actions: list[ActionOut]
    propensity: float
    propensity_samples: int
    holdout: bool
    suppressed_reason: str
    reasons: list[tuple[str, str, float]]
    model_version: str


@dataclass
class DecisionRecord:
    """The audit record and learner input of one decision (stored as JSON)."""

    decision_id: str
    user_id: str
    campaign: str
    time: float
    model_version: str
    seed: int
    x: list[float]
    raw: list[float | None]
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

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.__dict__)

    @classmethod
    def from_bytes(cls, raw: bytes | memoryview) -> DecisionRecord:
        data = orjson.loads(raw)
        data["trace"] = [tuple(t) for t in data["trace"]]
        return cls(**data)


def open_key(user_id: str, decision_id: str) -> bytes:
    return f"{user_id}\x00{decision_id}".encode()


def deadline_key(window_end: float, decision_id: str) -> bytes:
    return int(window_end * 1000).to_bytes(8, "big") + decision_id.encode()


class DecisionEngine:
    def __init__(
        self,
        store: Store,
        writer: EventWriter,
        risk: RiskEngine,
        campaigns: dict[str, Campaign],
        half_life_seconds: float,
        default_campaign: str | None = None,
    ) -> None:
        self.store = store
        self.writer = writer
        self.risk = risk
        self.half_life_seconds = half_life_seconds
        self.campaigns = campaigns
        self.default_campaign = default_campaign or sorted(campaigns)[0]
        if self.default_campaign not in campaigns:
            raise InvalidArgument("default_campaign", f"{self.default_campaign!r} is not loaded")
        self.models: dict[str, CampaignModel] = {
            name: CampaignModel.initial(c) for name, c in campaigns.items()
        }
        self._goal_types = {t for c in campaigns.values() for t in c.goal.events}
        self._lock = threading.Lock()
        self._pending: dict[str, DecisionRecord] = {}
        self._pending_contacts: dict[str, list[Contact]] = {}
        self._flush_future: Future[None] | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self.on_settled: Callable[[], None] = lambda: None
        writer.add_event_hook(self._on_events)
        self._flusher = threading.Thread(target=self._run_flusher, name="nudge-decision-flusher",
                                         daemon=True)
        self._flusher.start()

    # -- Decide --------------------------------------------------------------------------

    def campaign_model(self, name: str) -> CampaignModel:
        name = name or self.default_campaign
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise InvalidArgument("campaign", f"unknown campaign {name!r} (loaded: {known})")
        return model

    def decide(self, request: DecideInput) -> DecisionOutcome:
        model = self.campaign_model(request.campaign)
        campaign = model.campaign
        now = request.time
        top_k = max(1, request.top_k)
        if top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be at most {MAX_TOP_K}")
        view = self.store.get_user(request.user_id)
        profile = view.profile if view is not None else None
        tz = profile.tz if profile is not None else "UTC"
        properties: dict[str, Any] = profile.properties() if profile is not None else {}
        properties.update(request.numbers)
        properties.update(request.strings)
        renderable = [all(p in properties for p in m.properties) for m in campaign.messages]
        consents = {c: g for c, (g, _) in profile.consents.items()} if profile else {}
        guard = apply_guardrails(
            campaign, request.user_id, now, tz, consents, self._contacts(request.user_id, now),
            renderable, self.risk.recently_anomalous(request.user_id, now),
        )
        if guard.suppressed == SUPPRESS_PROPERTIES:
            needs = "; ".join(
                f"{m.name} needs {[p for p in m.properties if p not in properties]}"
                for m in campaign.messages
            )
            raise InvalidArgument(
                "numbers/strings",
                f"campaign {campaign.name}: no message can be filled from the request or the "
                f"user's events ({needs})",
            )
        decision_id = uuid.uuid4().hex
        hour = local_hour(now, tz)
        raw, buckets = raw_features(
            campaign, model.layout, view, self.store.type_slots, now, hour, request.numbers,
            request.strings, self.half_life_seconds,
        )
        x = ctx.build_context(model.layout, model.stats, raw, buckets)
        reasons: list[tuple[str, str, float]] = [(c, d, 0.0) for c, d in guard.trace]
        record = DecisionRecord(
            decision_id=decision_id, user_id=request.user_id, campaign=campaign.name, time=now,
            model_version=model.version, seed=0, x=x.tolist(),
            raw=[None if math.isnan(v) else v for v in raw.tolist()],
            choice=campaign.nothing_combo, top=[], propensity=1.0, propensity_samples=0,
            holdout=guard.suppressed == SUPPRESS_HOLDOUT, suppressed=guard.suppressed,
            trace=guard.trace, window_end=now + campaign.goal.window_seconds,
        )
        actions: list[ActionOut] = []
        if guard.suppressed:
            # A guardrail decided, not the policy: nothing to learn. Holdout decisions stay
            # open so the holdout's own conversions measure uplift.
            record.learn = False
            if not record.holdout:
                record.status = "final"
        else:
            seed = secrets.randbits(63)
            choice = policy.decide(
                model.snapshot, campaign.space, x, seed, component_mask=guard.component_mask,
                top_k=top_k + 1, params=model.policy_params,
            )
            record.seed = seed
            record.choice = choice.choice
            record.top = [int(c) for c in choice.top_k]
            record.propensity = float(choice.propensity)
            record.propensity_samples = int(choice.propensity_samples)
            if choice.choice == campaign.nothing_combo:
                record.suppressed = SUPPRESS_NOTHING_BEST
            else:
                # Action.score is the posterior-mean score (an expected reward) for either
                # algorithm; the order is the policy's (the choice first).
                for combo, score in zip(choice.top_k.tolist(), choice.mean_scores.tolist(),
                                        strict=True):
                    if combo != campaign.nothing_combo and len(actions) < top_k:
                        actions.append(
                            self._action(campaign, combo, score, guard.send_at, properties)
                        )
                reasons = self._feature_reasons(model, x, choice.choice) + reasons
            record.actions = [a.__dict__ for a in actions]
        if not request.dry_run:
            with self._lock:
                self._pending[decision_id] = record
                if actions:
                    first = actions[0]
                    self._pending_contacts.setdefault(request.user_id, []).append(
                        Contact(first.send_at, first.channel, campaign.name, decision_id)
                    )
                self._request_flush()
        return DecisionOutcome(
            decision_id=decision_id,
            actions=actions,
            propensity=record.propensity,
            propensity_samples=record.propensity_samples,
            holdout=record.holdout,
            suppressed_reason=record.suppressed,
            reasons=reasons,
            model_version=model.version,
        )

    def _action(
        self,
        campaign: Campaign,
        combo: int,
        score: float,
        send_at: list[float],
        properties: dict[str, Any],
    ) -> ActionOut:
        values = campaign.combo_values(combo)
        assert values is not None
        m, ch, st, fr, off = values
        message = campaign.messages[m]
        return ActionOut(
            message=message.name,
            channel=campaign.channels[ch],
            send_at=send_at[st],
            frequency=campaign.frequencies[fr].name,
            offer=campaign.offers[off].name,
            text=message.render(properties),
            score=score,
        )

    def _feature_reasons(
        self, model: CampaignModel, x: np.ndarray, combo: int
    ) -> list[tuple[str, str, float]]:
        """The features that pushed the chosen combination's components most (weighted
        posterior mean × feature value), strongest first. Same terms as policy.explain,
        computed lean: this runs inside every Decide."""
        space = model.campaign.space
        row = space.combo_components[combo]
        comps = row[row >= 0]
        terms = model.snapshot.mean_t[:, comps].T * x * space.component_weight[comps, None]
        flat = np.abs(terms).ravel()
        k = min(TOP_FEATURE_REASONS, flat.size)
        top = np.argpartition(-flat, k - 1)[:k]
        names, features = model.names
        out = []
        for index in top[np.argsort(-flat[top])].tolist():
            c, j = divmod(index, terms.shape[1])
            score = float(terms[c, j])
            if score == 0.0:
                continue
            direction = "for" if score > 0 else "against"
            out.append(("FEATURE", f"{features[j]} counted {direction} {names[comps[c]]}", score))
        return out

    # -- contacts (for frequency caps) ---------------------------------------------------

    def _contacts(self, user_id: str, now: float) -> list[Contact]:
        with self.store.read() as txn:
            raw = txn.get(user_id.encode(), db=self.store.dbs["contacts"])
            stored = [Contact(*c) for c in orjson.loads(raw)] if raw is not None else []
        with self._lock:
            pending = list(self._pending_contacts.get(user_id, []))
        # A flush may commit between the two reads: count each decision's contact once.
        unique = {c.decision_id: c for c in [*stored, *pending]}
        return [c for c in unique.values() if now - c.time < CONTACT_MEMORY]

    # -- outcomes ------------------------------------------------------------------------

    def report_outcome(self, decision_id: str, reward: float, when: float) -> Future[bool]:
        """Settle a decision with an explicit reward; the future says whether it was
        attributed (False when it was already settled) once durable."""
        if not math.isfinite(reward):
            raise InvalidArgument("reward", "must be finite")
        result: dict[str, Any] = {}

        def job(txn: lmdb.Transaction) -> None:
            self._write_pending(txn)
            record = self._load(txn, decision_id)
            if record is None:
                result["missing"] = True
                return
            result["attributed"] = self._settle(txn, record, reward)
            result["record"] = record

        future: Future[bool] = Future()

        def done(committed: Future[None]) -> None:
            error = committed.exception()
            if error is not None:
                future.set_exception(error)
            elif result.get("missing"):
                future.set_exception(NotFound(f"decision_id: {decision_id!r} is unknown"))
            else:
                if result.get("attributed"):
                    self._replace_pending([result["record"]])
                    self.on_settled()
                future.set_result(bool(result.get("attributed")))

        with self._lock:
            known = decision_id in self._pending
        if not known:
            with self.store.read() as txn:
                known = txn.get(decision_id.encode(), db=self.store.dbs["decisions"]) is not None
        if not known:
            raise NotFound(f"decision_id: {decision_id!r} is unknown")
        self.writer.submit_job(job).add_done_callback(done)
        return future

    def _load(self, txn: lmdb.Transaction, decision_id: str) -> DecisionRecord | None:
        raw = txn.get(decision_id.encode(), db=self.store.dbs["decisions"])
        return None if raw is None else DecisionRecord.from_bytes(raw)

    def _settle(self, txn: lmdb.Transaction, record: DecisionRecord, reward: float) -> bool:
        """Give an open decision its reward and queue it for the learner (in ``txn``)."""
        if record.status != "open":
            return False
        dbs = self.store.dbs
        record.status = "settled"
        record.reward = float(reward)
        txn.put(record.decision_id.encode(), record.to_bytes(), db=dbs["decisions"])
        txn.delete(open_key(record.user_id, record.decision_id), db=dbs["open"])
        txn.delete(deadline_key(record.window_end, record.decision_id), db=dbs["deadlines"])
        if record.learn:
            cursor = txn.cursor(db=dbs["rewards"])
            seq = int.from_bytes(cursor.key(), "big") + 1 if cursor.last() else 1
            txn.put(seq.to_bytes(8, "big"), record.decision_id.encode(), db=dbs["rewards"])
        return True

    def _replace_pending(self, settled: list[DecisionRecord]) -> None:
        """After a commit that settled decisions: a pending copy would otherwise be written
        again, as still open, by a later flush. (Not inside the transaction: a retried
        batch must find them open again.)"""
        with self._lock:
            for record in settled:
                if record.decision_id in self._pending:
                    self._pending[record.decision_id] = record

    def _on_events(
        self, txn: lmdb.Transaction, events: list[ValidEvent]
    ) -> Callable[[], None] | None:
        """Goal events settle the user's open decisions of campaigns with that goal."""
        goals = [ev for ev in events if ev.type in self._goal_types]
        if not goals:
            return None
        written = self._write_pending(txn)
        settled: list[DecisionRecord] = []
        cursor = txn.cursor(db=self.store.dbs["open"])
        for ev in goals:
            prefix = f"{ev.user_id}\x00".encode()
            ids = []
            if cursor.set_range(prefix):
                for key in cursor.iternext(values=False):
                    if not bytes(key).startswith(prefix):
                        break
                    ids.append(bytes(key)[len(prefix):].decode())
            for decision_id in ids:
                record = self._load(txn, decision_id)
                if record is None:
                    continue
                campaign = self.campaigns.get(record.campaign)
                if campaign is None or ev.type not in campaign.goal.events:
                    continue
                if record.time <= ev.time <= record.window_end and self._settle(
                    txn, record, campaign.goal.value
                ):
                    settled.append(record)

        def after() -> None:
            self._forget(written)
            if settled:
                self._replace_pending(settled)
                self.on_settled()

        return after

    # -- storing decisions ---------------------------------------------------------------

    def _request_flush(self) -> Future[None]:
        if self._flush_future is None:
            self._flush_future = Future()
            self._wake.set()
        return self._flush_future

    def _run_flusher(self) -> None:
        """Store pending decisions FLUSH_DELAY after the first one (not inside the request,
        where waking the writer would hand it the GIL mid-reply)."""
        while True:
            self._wake.wait(timeout=0.1)
            if self._closing.is_set():
                self._flush_now()
                return
            if self._wake.is_set():
                time.sleep(FLUSH_DELAY)
                self._flush_now()

    def _flush_now(self) -> None:
        with self._lock:
            self._wake.clear()
            future, self._flush_future = self._flush_future, None
        if future is None:
            return
        job = self.writer.submit_job(self._write_pending)

        def done(committed: Future[tuple[dict, dict]]) -> None:
            # Runs in the writer thread right after the commit, before its next batch, so
            # a later commit never writes the same pending contacts again.
            error = committed.exception()
            if error is not None:
                log.error("storing decisions failed: %s", error)
                future.set_exception(error)
                with self._lock:
                    self._request_flush()  # still pending: the next flush tries again
                return
            self._forget(committed.result())
            future.set_result(None)

        job.add_done_callback(done)
        future.exception()  # wait: one flush in the writer at a time

    def _write_pending(self, txn: lmdb.Transaction) -> tuple[dict, dict]:
        """Write every pending decision and contact into ``txn``; returns what was written."""
        with self._lock:
            records = dict(self._pending)
            contacts = {u: list(c) for u, c in self._pending_contacts.items()}
        dbs = self.store.dbs
        for decision_id, record in records.items():
            txn.put(decision_id.encode(), record.to_bytes(), db=dbs["decisions"])
            if record.status == "open":
                txn.put(open_key(record.user_id, decision_id), b"", db=dbs["open"])
                txn.put(deadline_key(record.window_end, decision_id), b"", db=dbs["deadlines"])
        for user_id, new in contacts.items():
            raw = txn.get(user_id.encode(), db=dbs["contacts"])
            stored = orjson.loads(raw) if raw is not None else []
            horizon = max(c.time for c in new) - CONTACT_MEMORY
            merged = [c for c in stored if c[0] >= horizon]
            merged += [[c.time, c.channel, c.campaign, c.decision_id] for c in new]
            txn.put(user_id.encode(), orjson.dumps(merged), db=dbs["contacts"])
        return records, contacts

    def _forget(self, written: tuple[dict, dict]) -> None:
        records, contacts = written
        with self._lock:
            for decision_id, record in records.items():
                if self._pending.get(decision_id) is record:
                    del self._pending[decision_id]
            for user_id, stored in contacts.items():
                current = self._pending_contacts.get(user_id)
                if current is not None:
                    del current[: len(stored)]
                    if not current:
                        del self._pending_contacts[user_id]

    def flush(self) -> None:
        """Store everything pending now (tests, shutdown)."""
        with self._lock:
            future = self._request_flush()
        future.result()

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._flusher.join()

    def decisions(self, ids: Iterable[str]) -> list[DecisionRecord | None]:
        with self.store.read() as txn:
            return [self._load(txn, i) for i in ids]
