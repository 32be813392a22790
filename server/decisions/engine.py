"""Decide: one joint decision over message × channel × send time × frequency × offer.

Per request: load the user's state, apply the campaign's guardrails as masks, build the
context, let the policy kernel score every allowed combination (Thompson sampling or
SquareCB), and log the decision with its exact propensity (Monte Carlo for Thompson, the
draw count stated), model version, seed, features and guardrail trace — enough to replay
and to evaluate any other policy offline.

No fsync on this path: the decision is answered from memory and its record rides a flush
into the next group commit, 1 ms after the reply (the README states this crash window). Goal events
arriving through Track settle open decisions inside their own commit (pending decisions
are written into that commit first, so none is missed); ReportOutcome settles one
explicitly; the learner (server/decisions/learner.py) settles expired ones with reward 0 and learns
from the rewards log.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.kernels import context as ctx
from nudge.kernels import contributions, policy
from nudge.kernels import learner as lrn
from nudge.kernels.policy import MAX_TOP_K
from nudge.kernels.snapshot import PolicySnapshot
from nudge.server.decisions.campaign import Campaign, Message
from nudge.server.decisions.features import FeaturePlan, context_layout, raw_features
from nudge.server.decisions.guardrails import (
    SUPPRESS_HOLDOUT,
    SUPPRESS_NOTHING_BEST,
    SUPPRESS_PROPERTIES,
    Contact,
    GuardrailPlan,
    apply_guardrails,
    local_now,
)
from nudge.server.errors import InvalidArgument, NotFound
from nudge.server.inputs.events import ValidEvent
from nudge.server.risk.engine import RiskEngine
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store, UserProfile
from nudge.server.storage.write_behind import DelayedFlusher

log = logging.getLogger(__name__)

FLUSH_DELAY = 0.001
# How long ReportOutcome looks for a decision another worker of a shared store has made
# but not yet stored (its flush follows the reply by milliseconds).
OTHER_WORKER_FLUSH_GRACE = 0.25
CONTACT_MEMORY = 7 * 86_400.0
TOP_FEATURE_REASONS = 3


@dataclass(frozen=True)
class CampaignModel:
    """What deciders read for one campaign; the learner publishes a new one, never edits."""

    campaign: Campaign
    layout: ctx.ContextLayout
    snapshot: PolicySnapshot
    stats: ctx.ContextStats
    # Last rewards-log sequence this model has learned from.
    learned_seq: int = 0

    @cached_property
    def version(self) -> str:
        return f"{self.campaign.name}/v{self.snapshot.version}"

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


class CampaignPlan:
    """What Decide derives from a campaign once, not per request: guardrail and feature
    positions, and the explanation texts (built the first time each is needed)."""

    def __init__(self, model: CampaignModel) -> None:
        self.campaign = model.campaign
        self.guard = GuardrailPlan(model.campaign)
        self.features = FeaturePlan(model.campaign, model.layout)
        self.component_names = model.campaign.component_names()
        self.feature_names = model.layout.feature_names()
        self._reason_texts: dict[tuple[int, int, bool], str] = {}
        c = model.campaign
        # The properties each message's template needs.
        self.message_needs = [frozenset(m.properties) for m in c.messages]
        # Per frequency name: its messages' schedule. Every message is a contact.
        self.frequencies = {f.name: f for f in c.frequencies}
        # Per combination (the nothing arm excluded): message, channel name, send-time slot,
        # frequency name, offer name.
        self.combos: list[tuple[Message, str, int, str, str]] = []
        for i in range(c.space.n_combos):  # "nothing" is last: indices stay combo indices
            values = c.combo_values(i)
            if values is not None:
                m, ch, st, fr, off = values
                self.combos.append((c.messages[m], c.channels[ch], st,
                                    c.frequencies[fr].name, c.offers[off].name))

    def reason_text(self, feature: int, component: int, positive: bool) -> str:
        key = (feature, component, positive)
        text = self._reason_texts.get(key)
        if text is None:
            direction = "for" if positive else "against"
            text = (f"{self.feature_names[feature]} counted {direction} "
                    f"{self.component_names[component]}")
            self._reason_texts[key] = text
        return text


def _new_ids() -> tuple[str, int]:
    """A decision id (a random UUID4's hex) and a 63-bit policy seed from one urandom read
    (``uuid4`` and ``secrets.randbits`` cost a system call and object work each)."""
    b = bytearray(os.urandom(24))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b[:16].hex(), int.from_bytes(b[16:], "big") >> 1


@dataclass
class DecideInput:
    user_id: str
    campaign: str
    time: float
    top_k: int
    numbers: dict[str, float]
    strings: dict[str, str]
    dry_run: bool
    # The latest time a message of this decision may go out (a journey's trigger window);
    # None: the goal window. Caps count only the messages that can be sent.
    send_until: float | None = None


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
    # Arrays while pending (NaN = missing in raw), lists once loaded: converting them is
    # left to serialisation, which runs in the writer thread, not in the request.
    x: list[float] | np.ndarray
    raw: list[float | None] | np.ndarray
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
    # Messages the decision sends (as the caps count them): the campaign's contact cost
    # is learned per message.
    messages: int = 0

    def to_bytes(self) -> bytes:
        # Arrays serialise as lists, NaN as null (a missing raw feature).
        return orjson.dumps(self.__dict__, option=orjson.OPT_SERIALIZE_NUMPY)

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
        random_seed: int | None = None,
    ) -> None:
        """``random_seed`` makes decision ids and policy seeds reproducible (simulations,
        the demo); None draws them from the operating system."""
        self.store = store
        self._random = random.Random(random_seed) if random_seed is not None else None
        self._random_lock = threading.Lock()
        self.writer = writer
        self.risk = risk
        self.half_life_seconds = half_life_seconds
        self._configured_default = default_campaign
        self.models: dict[str, CampaignModel] = {}
        self.replace_campaigns(campaigns)
        self._lock = threading.Lock()
        self._pending: dict[str, DecisionRecord] = {}
        self._pending_contacts: dict[str, list[Contact]] = {}
        self._flush_future: Future[None] | None = None
        self.on_settled: Callable[[], None] = lambda: None
        writer.add_event_hook(self._on_events)
        self._flusher = DelayedFlusher(
            "nudge-decision-flusher", self._flush_now, FLUSH_DELAY,
            pending=lambda: self._flush_future is not None,
        )

    # -- Decide --------------------------------------------------------------------------

    def _new_ids(self) -> tuple[str, int]:
        if self._random is None:
            return _new_ids()
        with self._random_lock:
            return f"{self._random.getrandbits(128):032x}", self._random.getrandbits(63)

    def replace_campaigns(self, campaigns: dict[str, Campaign]) -> None:
        """Decide with these campaigns from now on (start, and reloads without restart).

        A campaign whose dimension values and context features are unchanged keeps its
        learned model (texts, guardrails, goal and exploration settings may all change);
        one whose shape changed starts from the prior, and a new one too. Decisions already
        made keep their campaign's name and are settled as before. The caller holds the
        learner still (``Learner.paused``) so it cannot write back a model of the old
        campaign."""
        default = self._configured_default or sorted(campaigns)[0]
        if default not in campaigns:
            raise InvalidArgument("default_campaign", f"{default!r} is not loaded")
        models: dict[str, CampaignModel] = {}
        for name, campaign in campaigns.items():
            fresh = CampaignModel.initial(campaign)
            old = self.models.get(name)
            if (old is not None and old.layout == fresh.layout
                    and old.campaign.component_names() == campaign.component_names()):
                fresh = CampaignModel(campaign, old.layout, old.snapshot, old.stats,
                                      old.learned_seq)
            models[name] = fresh
        self._plans = {name: CampaignPlan(model) for name, model in models.items()}
        self.models = models
        self.campaigns = campaigns
        self.default_campaign = default
        self._goal_types = {t for c in campaigns.values() for t in c.goal.events}
        self._opt_out_costs = any(c.goal.opt_out_cost for c in campaigns.values())

    def campaign_model(self, name: str) -> CampaignModel:
        name = name or self.default_campaign
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models))
            raise InvalidArgument("campaign", f"unknown campaign {name!r} (loaded: {known})")
        return model

    def decide(
        self,
        request: DecideInput,
        after_reply: Callable[[Callable[[], None]], bool] | None = None,
    ) -> DecisionOutcome:
        """Decide for one user now. Every step runs between gRPC calls that evict the CPU
        caches, so campaign-derived work lives in CampaignPlan, kernels are called through
        their trusted entries (this code built their inputs), and the audit record's
        conversions are left to the writer thread that stores it.

        ``after_reply(fn)`` runs ``fn`` once the reply has been sent, or returns False if it
        cannot (the servicer passes grpc's ``context.add_callback``): the flusher is woken
        then, not mid-request, where it would take the GIL from the reply."""
        model = self.campaign_model(request.campaign)
        campaign = model.campaign
        plan = self._plans.get(campaign.name)
        if plan is None or plan.campaign is not campaign:  # a reload swapped them meanwhile
            model = self.campaign_model(request.campaign)
            campaign = model.campaign
            plan = CampaignPlan(model)
        now = request.time
        top_k = max(1, request.top_k)
        if top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be at most {MAX_TOP_K}")
        user_id = request.user_id
        state, profile, contacts = self._read_user(user_id, now)
        tz = profile.tz if profile is not None else "UTC"
        properties: dict[str, Any] = profile.properties() if profile is not None else {}
        properties.update(request.numbers)
        properties.update(request.strings)
        known = properties.keys()
        renderable = [known >= needs for needs in plan.message_needs]
        consents = {c: g for c, (g, _) in profile.consents.items()} if profile else {}
        when = local_now(now, tz)
        guard = apply_guardrails(
            plan.guard, user_id, when, consents, contacts, renderable,
            self.risk.recently_anomalous(user_id, now), request.send_until,
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
        decision_id, seed = self._new_ids()
        raw, buckets = raw_features(
            plan.features, state, self.store.type_slots, now, when.hour, request.numbers,
            request.strings, self.half_life_seconds,
            [c.time for c in contacts] if plan.features.contacts is not None else (),
        )
        x = ctx.build_context_trusted(model.layout, model.stats, raw, buckets)
        reasons: list[tuple[str, str, float]] = [(c, d, 0.0) for c, d in guard.trace]
        record = DecisionRecord(
            decision_id=decision_id, user_id=user_id, campaign=campaign.name, time=now,
            model_version=model.version, seed=0, x=x, raw=raw,
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
            choice = policy.decide_trusted(
                model.snapshot, campaign.space, x, seed, guard.component_mask, top_k + 1,
                model.policy_params,
            )
            record.seed = seed
            record.choice = choice.choice
            record.top = choice.top_k.tolist()
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
                            self._action(plan, combo, score, guard.send_at, properties)
                        )
                reasons = self._feature_reasons(model, plan, x, choice.choice) + reasons
            record.actions = [a.__dict__ for a in actions]
        if not request.dry_run:
            with self._lock:
                self._pending[decision_id] = record
                if actions:
                    # Every message the frequency sends within the goal window counts
                    # against caps and contact pressure, not only the first: a "twice" on
                    # e-mail is two e-mails.
                    first = actions[0]
                    until = record.window_end
                    if request.send_until is not None:
                        until = min(until, request.send_until)
                    # The first message goes out even past the goal window (a late slot).
                    times = plan.frequencies[first.frequency].send_times(
                        first.send_at, max(until, first.send_at))
                    self._pending_contacts.setdefault(user_id, []).extend(
                        Contact(at, first.channel, campaign.name, decision_id) for at in times)
                    record.messages = len(times)
                wake = self._flush_future is None
                self._request_flush(wake=after_reply is None)
            if wake and after_reply is not None and not after_reply(self._flusher.wake):
                self._flusher.wake()
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

    def _read_user(
        self, user_id: str, now: float
    ) -> tuple[memoryview | None, UserProfile | None, list[Contact]]:
        """The user's state record (as float64s; None if no event was ever stored), profile
        and recent contacts, in one read transaction."""
        # Pending before stored: a flush committing between the two reads then shows in
        # both (counted once), never in neither.
        with self._lock:
            pending = self._pending_contacts.get(user_id)
            pending = list(pending) if pending else []
        key = user_id.encode()
        dbs = self.store.dbs
        with self.store.read() as txn:
            raw = txn.get(key, db=dbs["users"])
            state = profile = None
            if raw is not None:
                state = memoryview(bytes(raw)).cast("d")
                profile = UserProfile.from_bytes(txn.get(key, db=dbs["profiles"]))
            raw_contacts = txn.get(key, db=dbs["contacts"])
            stored = ([Contact(*c) for c in orjson.loads(raw_contacts)]
                      if raw_contacts is not None else [])
        if not pending and not stored:
            return state, profile, []
        # Count each of a decision's messages once (stored and pending may both hold it).
        unique = {(c.decision_id, c.time): c for c in [*stored, *pending]}
        return state, profile, [c for c in unique.values() if now - c.time < CONTACT_MEMORY]

    @staticmethod
    def _action(
        plan: CampaignPlan,
        combo: int,
        score: float,
        send_at: list[float],
        properties: dict[str, Any],
    ) -> ActionOut:
        message, channel, slot, frequency, offer = plan.combos[combo]
        return ActionOut(
            message=message.name,
            channel=channel,
            send_at=send_at[slot],
            frequency=frequency,
            offer=offer,
            text=message.render(properties),
            score=score,
        )

    def _feature_reasons(
        self, model: CampaignModel, plan: CampaignPlan, x: np.ndarray, combo: int
    ) -> list[tuple[str, str, float]]:
        """The features that pushed the chosen combination's components most (weighted
        posterior mean × feature value), strongest first (ties: the combination's earlier
        component, then the lower feature). Same terms as contributions.explain, in one
        kernel call: this runs inside every Decide."""
        components, features, terms = contributions.top_feature_terms_trusted(
            model.snapshot, model.campaign.space, x, combo, TOP_FEATURE_REASONS
        )
        out = []
        for c, j, score in zip(components.tolist(), features.tolist(), terms.tolist(),
                               strict=True):
            if score == 0.0:
                continue
            out.append(("FEATURE", plan.reason_text(j, c, score > 0), score))
        return out

    # -- outcomes ------------------------------------------------------------------------

    def report_outcome(self, decision_id: str, reward: float, when: float) -> Future[bool]:
        """Settle a decision with an explicit reward; the future says whether it was
        attributed (False when it was already settled) once durable."""
        if not math.isfinite(reward):
            raise InvalidArgument("reward", "must be finite")
        result: dict[str, Any] = {}

        def job(txn: lmdb.Transaction) -> None:
            result["written"] = self._write_pending(txn)
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
                return
            self._forget(result["written"])  # stored: the next flush need not repeat it
            if result.get("missing"):
                future.set_exception(NotFound(f"decision_id: {decision_id!r} is unknown"))
            else:
                if result.get("attributed"):
                    self._replace_pending([result["record"]])
                    self.on_settled()
                future.set_result(bool(result.get("attributed")))

        with self._lock:
            known = decision_id in self._pending
        if not known:
            known = self._stored(decision_id)
        if not known:
            raise NotFound(f"decision_id: {decision_id!r} is unknown")
        self.writer.submit_job(job).add_done_callback(done)
        return future

    def _stored(self, decision_id: str) -> bool:
        """Whether the decision is stored. On a shared store the decision may have been
        made by another worker a moment ago and still await its flush (milliseconds):
        look again for a short while before calling it unknown."""
        deadline = time.monotonic() + (OTHER_WORKER_FLUSH_GRACE if self.store.shared else 0.0)
        while True:
            with self.store.read() as txn:
                if txn.get(decision_id.encode(), db=self.store.dbs["decisions"]) is not None:
                    return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

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
        """Goal events settle the user's open decisions of campaigns with that goal; a
        consent revoked for a decision's channel settles it with the campaign's
        opt-out cost (when it has one)."""
        goals = [ev for ev in events
                 if ev.type in self._goal_types or (self._opt_out_costs and ev.consents
                                                    and not all(ev.consents.values()))]
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
            revoked = {c for c, granted in ev.consents.items() if not granted}
            for decision_id in ids:
                record = self._load(txn, decision_id)
                if record is None:
                    continue
                campaign = self.campaigns.get(record.campaign)
                if campaign is None or not record.time <= ev.time <= record.window_end:
                    continue
                if ev.type in campaign.goal.events:
                    reward = campaign.goal.value
                elif (campaign.goal.opt_out_cost and record.actions
                      and record.actions[0]["channel"] in revoked):
                    reward = -campaign.goal.opt_out_cost
                else:
                    continue
                if self._settle(txn, record, reward):
                    settled.append(record)

        def after() -> None:
            self._forget(written)
            if settled:
                self._replace_pending(settled)
                self.on_settled()

        return after

    # -- storing decisions ---------------------------------------------------------------

    def _request_flush(self, wake: bool = True) -> Future[None]:
        """(Inside the lock.) The future of the next flush; ``wake=False`` leaves waking
        the flusher to the caller (Decide wakes it after its reply)."""
        if self._flush_future is None:
            self._flush_future = Future()
            if wake:
                self._flusher.wake()
        return self._flush_future

    def _flush_now(self) -> bool:
        """Store the pending decisions and contacts; False when the store refused them."""
        with self._lock:
            self._flusher.taken()
            future, self._flush_future = self._flush_future, None
        if future is None:
            return True
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
        return future.exception() is None  # wait: one flush in the writer at a time

    def _write_pending(self, txn: lmdb.Transaction) -> tuple[dict, dict]:
        """Write every pending decision and contact into ``txn``; returns what was written."""
        with self._lock:
            records = dict(self._pending)
            contacts = {u: list(c) for u, c in self._pending_contacts.items()}
        dbs = self.store.dbs
        for decision_id, record in records.items():
            key = decision_id.encode()
            if record.status == "open":
                # Settled since this copy was taken (maybe earlier in this very commit, by a
                # goal event or ReportOutcome): a stale open copy must never reopen it.
                current = txn.get(key, db=dbs["decisions"])
                if current is not None and DecisionRecord.from_bytes(current).status != "open":
                    continue
            txn.put(key, record.to_bytes(), db=dbs["decisions"])
            if record.status == "open":
                txn.put(open_key(record.user_id, decision_id), b"", db=dbs["open"])
                txn.put(deadline_key(record.window_end, decision_id), b"", db=dbs["deadlines"])
        for user_id, new in contacts.items():
            raw = txn.get(user_id.encode(), db=dbs["contacts"])
            stored = orjson.loads(raw) if raw is not None else []
            horizon = max(c.time for c in new) - CONTACT_MEMORY
            merged = [c for c in stored if c[0] >= horizon]
            known = {(c[0], c[3]) for c in merged}  # written earlier in this commit
            merged += [[c.time, c.channel, c.campaign, c.decision_id] for c in new
                       if (c.time, c.decision_id) not in known]
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
                    # Exactly the contacts written (two commits may have stored the same
                    # ones; newer ones, not yet written, stay pending).
                    written_ids = {id(c) for c in stored}
                    current[:] = [c for c in current if id(c) not in written_ids]
                    if not current:
                        del self._pending_contacts[user_id]

    def flush(self) -> None:
        """Store everything pending now (tests, shutdown)."""
        with self._lock:
            future = self._request_flush()
        future.result()

    def close(self) -> None:
        self._flusher.close()

    def decisions(self, ids: Iterable[str]) -> list[DecisionRecord | None]:
        with self.store.read() as txn:
            return [self._load(txn, i) for i in ids]
