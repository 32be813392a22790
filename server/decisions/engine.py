"""Decide: one joint decision over message × channel × send time × frequency × offer.

Per request: load the user's state, apply the campaign's guardrails as masks, build the
context, let the policy kernel score every allowed combination (Thompson sampling or
SquareCB), and log the decision with its exact propensity (Monte Carlo for Thompson, the
draw count stated), model version, seed, features and guardrail trace — enough to replay
and to evaluate any other policy offline.

No fsync on this path: the decision is answered from memory and its record rides a flush
into the next group commit, 1 ms after the reply (pending.py; the README states this crash
window). Outcomes are attributed in outcomes.py; the models decided with live in
models.py, where the learner (learner.py) publishes new ones.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import lmdb
import numpy as np

from nudge.kernels import contributions, policy
from nudge.kernels.policy import MAX_TOP_K
from nudge.server.decisions.campaign import Campaign, Message
from nudge.server.decisions.early_counts import EarlyCounts
from nudge.server.decisions.features import FeaturePlan, user_context, user_contexts
from nudge.server.decisions.guardrails import (
    SUPPRESS_HOLDOUT,
    SUPPRESS_NOTHING_BEST,
    SUPPRESS_PROPERTIES,
    TRACE_PROPERTIES,
    Contact,
    GuardrailPlan,
    GuardrailResult,
    LocalNow,
    apply_guardrails,
    local_now,
)
from nudge.server.decisions.models import CampaignModel, ModelCache
from nudge.server.decisions.outcomes import Outcomes
from nudge.server.decisions.pending import CONTACT_MEMORY, PendingDecisions
from nudge.server.errors import InvalidArgument
from nudge.server.risk.engine import RiskEngine
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import contacts as contact_table
from nudge.server.storage.tables import decisions as decision_table
from nudge.server.storage.tables import users
from nudge.server.storage.tables.decisions import DecisionRecord
from nudge.server.storage.tables.users import UserProfile

TOP_FEATURE_REASONS = 3
# A user as Decide reads it: the state record's stored bytes (None: no event stored; the
# feature kernel decodes them), profile and recent contacts.
UserRead = tuple[bytes | None, UserProfile | None, list[Contact]]
# The same, and whether credit offers are withheld (DecideBatch reads both in one go).
Prefetched = tuple[bytes | None, UserProfile | None, list[Contact], bool]
# DecideBatch's policy call splits a run over this many threads (the kernel releases the
# GIL; rows are independent, so the bits are the same however they are split). One: while
# the kernel runs, the group commit stores the previous chunk's decisions on the other core,
# and a second kernel thread only contended with it (in process, 20,000 users, load ~3:
# 133 µs a user with one thread, 159 with two).
BATCH_POLICY_THREADS = 1
# Profiles Decide keeps decoded, keyed by their stored bytes (cleared when full): about
# 1.5 KB each with the key, so at most ~15 MB.
PROFILE_CACHE = 10_000
# Bounds the wait for the log's acknowledgement (the publish itself gives up sooner, with
# UNAVAILABLE).
LOG_DECISION_TIMEOUT_SECONDS = 10.0


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
        # A campaign whose templates need no property (bench/worlds.py's) has fixed texts:
        # rendered here once, Decide neither merges the user's and the request's properties
        # nor renders per request. None: some template needs properties (or cannot be
        # filled without them), so Decide renders as before.
        self.fixed_texts: dict[str, str] | None = None
        if not any(self.message_needs):
            texts = {m.name: m.text_or_none({}) for m in c.messages}
            if all(t is not None for t in texts.values()):
                self.fixed_texts = {name: t for name, t in texts.items() if t is not None}
        self.all_renderable = [True] * len(c.messages)
        # Every component allowed (read-only): the mask of a decision no guardrail touched.
        self.all_allowed = np.frombuffer(self.guard.all_allowed, np.uint8)
        # Whether the consent guardrail reads the profile's consents at all.
        self.reads_consents = c.guardrails.consent
        # Whether anything reads the user's recent contacts (the caps, contact pressure):
        # if not, Decide skips their LMDB read, JSON and pending copy.
        self.reads_contacts = c.guardrails.caps is not None or self.features.contacts is not None
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


# Decisions drawn per operating-system read of random bytes.
ID_POOL_DRAWS = 512
_ID_BYTES = 24


class _IdPool:
    """Decision ids (a random UUID4's hex) and 63-bit policy seeds, cut ``ID_POOL_DRAWS``
    at a time from one read of operating-system random bytes (:meth:`take_many`) and
    handed out one by one from a list iterator.

    Why one read per batch: ``os.urandom`` is a system call that releases the GIL, and
    inside a handler the thread then waits for whichever thread took it (the flusher,
    grpc's poller) before it can reply; cutting the pool with NumPy once per batch leaves
    a Decide one ``next()`` (about 0.2 µs, against ~1 µs to slice, mask and convert its
    24 bytes per call under a lock). Why the ids stay unique across restarts and workers:
    each is 122 fresh random bits from the operating system (nothing is derived from a
    counter, a clock or the process), so two processes, or one process before and after a
    restart, collide only by chance (~n²/2¹²³). ``next()`` on a list iterator is one C call
    under the GIL, so concurrent handlers never share an entry; the refill is under a lock
    so only one thread reads new bytes when the batch runs out. A forked child starts with
    an empty pool, so it never repeats its parent's ids."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._drawn: Iterator[tuple[str, int]] = iter(())
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._drawn = iter(())

    def take(self) -> tuple[str, int]:
        try:
            return next(self._drawn)
        except StopIteration:
            pass
        with self._lock:
            try:
                return next(self._drawn)  # another thread refilled meanwhile
            except StopIteration:
                self._drawn = iter(self.take_many(ID_POOL_DRAWS))
                return next(self._drawn)

    def take_many(self, n: int) -> list[tuple[str, int]]:
        """``n`` of :meth:`take` (DecideBatch, and the pool's refill), from fresh random
        bytes read at once and cut with NumPy: UUID4 version and variant bits, 63-bit
        seeds."""
        raw = np.frombuffer(os.urandom(_ID_BYTES * n), np.uint8).reshape(n, _ID_BYTES).copy()
        raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
        raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
        hexes = raw[:, :16].tobytes().hex()
        seeds = (np.ascontiguousarray(raw[:, 16:]).view(">u8")[:, 0] >> np.uint64(1)).tolist()
        return [(hexes[32 * i : 32 * i + 32], seeds[i]) for i in range(n)]


_ID_POOL = _IdPool()


def _new_ids() -> tuple[str, int]:
    """A decision id and a policy seed from the process's pool of random bytes."""
    return _ID_POOL.take()


@dataclass
class DecideInput:
    user_id: str
    campaign: str
    time: float
    top_k: int
    numbers: Mapping[str, float]
    strings: dict[str, str]
    dry_run: bool
    # The latest time a message of this decision may go out (a journey's trigger window);
    # None: the goal window. Caps count only the messages that can be sent.
    send_until: float | None = None
    # Compute the feature reasons of the choice (DecideBatch may leave them out: they are
    # not part of the logged record).
    explain: bool = True
    # ``numbers`` already in the order of ``number_plan.number_names`` (the servicer read
    # them from the request's bytes, see :meth:`DecisionEngine.number_plan`); used only
    # while that is still the campaign's plan (a reload may have replaced it meanwhile).
    number_values: np.ndarray | None = None
    number_plan: FeaturePlan | None = None


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


# What the policy picked for one user: (seed, top combinations with the choice first,
# their mean scores, the choice's propensity, the samples that estimated it).
_Picked = tuple[int, list[int], list[float], float, int]


def _settings(request: DecideInput) -> tuple[Any, ...]:
    """What a run of :meth:`DecisionEngine.decide_many` must share besides the users."""
    r = request
    return (r.campaign, r.time, r.top_k, r.numbers, r.strings, r.dry_run, r.send_until,
            r.explain)


def _unfillable(campaign: Campaign, properties: dict[str, Any]) -> str:
    """Why no message of ``campaign`` can be filled from ``properties``."""
    needs = "; ".join(
        f"{m.name} needs {[p for p in m.properties if p not in properties]}"
        if any(p not in properties for p in m.properties)
        else f"{m.name} cannot format {list(m.properties)} with the values given"
        for m in campaign.messages
    )
    return (f"campaign {campaign.name}: no message can be filled from the request or the "
            f"user's events ({needs})")


def _guardrails(
    plan: CampaignPlan, user_id: str, when: LocalNow, consents: dict[str, bool],
    contacts: list[Contact], renderable: list[bool], credit_blocked: bool,
    send_until: float | None, send_at: list[float] | None = None,
) -> GuardrailResult:
    """:func:`apply_guardrails`, answered without the call when nothing can mask: a
    campaign whose guardrails read neither the user, the clock nor the contacts
    (``GuardrailPlan.inert``), every message fillable, no credit hold, no journey window.
    Then the call would return every component allowed, the send times and an empty trace,
    which is what this returns (the mask a read-only view shared by every such decision:
    the policy only reads it)."""
    if (plan.guard.inert and not credit_blocked and send_until is None
            and (renderable is plan.all_renderable or all(renderable))):
        return GuardrailResult(plan.all_allowed,
                               plan.guard.send_times(when) if send_at is None else send_at, [])
    return apply_guardrails(plan.guard, user_id, when, consents, contacts, renderable,
                            credit_blocked, send_until, send_at)


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
        self._early_counts = EarlyCounts(store)  # "reached" flags the record cannot settle
        # Stored profile bytes -> the profile decoded from them (see ``_profile``).
        self._profiles: dict[bytes, UserProfile] = {}
        self.cache = ModelCache(campaigns, default_campaign)
        self._plans = {name: CampaignPlan(m) for name, m in self.cache.models.items()}
        self.pending = PendingDecisions(store, writer)
        self.outcomes = Outcomes(store, writer, self.pending, campaigns)
        # Cluster mode: a decision's record goes to the replicated log before Decide
        # answers (the future resolves once JetStream stored it), so a new owner of the
        # user's partition has it after a failover.
        self.log_decision: Callable[[DecisionRecord, list[Contact]], Future[Any]] | None = None

    # -- Decide --------------------------------------------------------------------------

    def _new_ids(self) -> tuple[str, int]:
        if self._random is None:
            return _ID_POOL.take()
        with self._random_lock:
            return f"{self._random.getrandbits(128):032x}", self._random.getrandbits(63)

    @property
    def models(self) -> dict[str, CampaignModel]:
        """Each campaign's current model (the learner publishes into it)."""
        return self.cache.models

    @property
    def campaigns(self) -> dict[str, Campaign]:
        return self.cache.campaigns

    @property
    def default_campaign(self) -> str:
        return self.cache.default_campaign

    def replace_campaigns(self, campaigns: dict[str, Campaign]) -> None:
        """Decide with these campaigns from now on (start, and reloads without restart).

        A campaign whose dimension values and context features are unchanged keeps its
        learned model (texts, guardrails, goal and exploration settings may all change);
        one whose shape changed starts from the prior, and a new one too. Decisions already
        made keep their campaign's name and are settled as before. The caller holds the
        learner still (``Learner.paused``) so it cannot write back a model of the old
        campaign."""
        self.cache.replace(campaigns)
        self._plans = {name: CampaignPlan(model) for name, model in self.cache.models.items()}
        self.outcomes.replace_campaigns(campaigns)

    def number_plan(self, name: str) -> FeaturePlan | None:
        """The feature plan of campaign ``name`` ("" the default) if Decide can take its
        request numbers as an array in the plan's order instead of a mapping (its message
        texts need no request property); None otherwise, or for an unknown campaign (the
        mapping path then answers, and raises, as before)."""
        plan = self._plans.get(name or self.cache.default_campaign)
        return plan.features if plan is not None and plan.fixed_texts is not None else None

    def campaign_model(self, name: str) -> CampaignModel:
        return self.cache.get(name)

    def decide_many(self, requests: list[DecideInput]) -> list[DecisionOutcome]:
        """Decide for many users: each exactly as :meth:`decide` would (same ids, choices,
        propensities and records), a run of requests sharing one request's settings at a
        time (:meth:`decide_users`)."""
        out: list[DecisionOutcome] = []
        start = 0
        while start < len(requests):
            first = requests[start]
            same = _settings(first)
            end = start + 1
            while end < len(requests) and _settings(requests[end]) == same:
                end += 1
            out += self.decide_users(first, [r.user_id for r in requests[start:end]])
            start = end
        return out

    def decide_users(self, settings: DecideInput, user_ids: list[str]
                     ) -> list[DecisionOutcome]:
        """Decide for each of ``user_ids`` with ``settings``' campaign, time, numbers and
        options (its ``user_id`` ignored) — DecideBatch's chunk, with no per-user request
        object: each exactly as :meth:`decide` would, a run of distinct users at a time
        (:meth:`_decide_together`). A user named again is decided in the next run, read
        after the first decision, so it sees the contacts that decision planned, as
        back-to-back Decides would."""
        out: list[DecisionOutcome] = []
        if len(set(user_ids)) == len(user_ids):  # the usual case: no repeat, one run
            return self._decide_together(settings, user_ids)
        start = 0
        while start < len(user_ids):
            seen: set[str] = set()
            end = start
            while end < len(user_ids) and user_ids[end] not in seen:
                seen.add(user_ids[end])
                end += 1
            out += self._decide_together(settings, user_ids[start:end])
            start = end
        return out

    def _decide_together(self, r0: DecideInput, user_ids: list[str]
                         ) -> list[DecisionOutcome]:
        """:meth:`decide` for distinct users with the settings of ``r0``, in stages over
        the whole run instead of the whole path per user: the users read in one
        transaction, guardrails and ids per user (in order, so a seeded engine draws what
        back-to-back Decides draw), every context in one kernel call, every policy
        decision in one (releasing the GIL), then the records and replies, and the
        decisions handed to the flush under one lock. Each step is the single path's, so
        each decision is the same bits (tests/server/decisions/test_decide_batch.py holds
        a batch against Decides on a twin server). What every user of the run shares is
        looked up once: the texts of a campaign whose templates read no property, and,
        for a user no guardrail can mask (``_guardrails``' shortcut), one result per time
        zone (the mask and send times are only read)."""
        model, campaign, plan = self._model_plan(r0.campaign)
        now = r0.time
        top_k = max(1, r0.top_k)
        if top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be at most {MAX_TOP_K}")
        read = self._read_users(user_ids, now, plan.reads_contacts)
        # Per zone: its clock at ``now``, the send-time slots' instants (one reading for
        # the whole run, as every user is decided at the same instant) and the guardrails'
        # result of a user nothing can mask.
        clocks: dict[str, tuple[LocalNow, list[float], GuardrailResult]] = {}
        n = len(user_ids)
        out: list[DecisionOutcome | None] = [None] * n
        # Per decided user (not refused for missing properties), in order: its index, the
        # guardrails' result, properties and texts, contacts, and ids.
        kept: list[int] = []
        guards: list[GuardrailResult] = []
        filled: list[tuple[dict[str, Any], dict[str, str]]] = []
        contact_lists: list[list[Contact]] = []
        hours: list[float] = []
        states: list[bytes | None] = []
        send_until = r0.send_until
        fixed: tuple[dict[str, Any], dict[str, str], list[bool]] | None = (
            ({}, plan.fixed_texts, plan.all_renderable) if plan.fixed_texts else None)
        # _guardrails' shortcut, but for the user's contacts, texts and credit hold.
        inert = plan.guard.inert and send_until is None
        reads_consents = plan.reads_consents
        for i, user_id in enumerate(user_ids):
            state, profile, contacts, credit_blocked = read[i]
            tz = profile.tz if profile is not None else "UTC"
            properties, texts, renderable = (
                fixed if fixed is not None else self._texts(plan, profile, r0))
            zone = clocks.get(tz)
            if zone is None:
                when = local_now(now, tz)
                send_times = plan.guard.send_times(when)
                zone = clocks[tz] = (when, send_times,
                                     GuardrailResult(plan.all_allowed, send_times, []))
            when, send_at, unmasked = zone
            if (inert and not credit_blocked
                    and (renderable is plan.all_renderable or all(renderable))):
                guard = unmasked
            else:
                consents = ({c: g for c, (g, _) in profile.consents.items()}
                            if profile and reads_consents else {})
                guard = _guardrails(plan, user_id, when, consents, contacts, renderable,
                                    credit_blocked, send_until, list(send_at))
            if guard.suppressed == SUPPRESS_PROPERTIES:
                # Decide would refuse this one user (no message can be filled): in a batch
                # the others go on, and this user gets no decision (nothing is logged).
                out[i] = DecisionOutcome(
                    decision_id="", actions=[], propensity=1.0, propensity_samples=0,
                    holdout=False, suppressed_reason=SUPPRESS_PROPERTIES,
                    reasons=[(TRACE_PROPERTIES, _unfillable(campaign, properties), 0.0)],
                    model_version=model.version)
                continue
            kept.append(i)
            guards.append(guard)
            filled.append((properties, texts))
            contact_lists.append(contacts)
            hours.append(when.hour)
            states.append(state)
        if not kept:
            return [o for o in out if o is not None]
        ids = self._new_ids_many(len(kept))
        features = plan.features
        raw, x = user_contexts(
            features, model.stats, states, self.store.type_slots, now, hours, r0.numbers,
            r0.strings, self.half_life_seconds,
            [[c.time for c in cs] for cs in contact_lists]
            if features.contacts is not None else None,
            [self._early_counts.of(user_ids[i]) for i in kept]
            if features.reached else None)
        x.flags.writeable = False
        active = np.frombuffer(bytes([not g.suppressed for g in guards]), np.uint8)
        choices = None
        if active.any():
            masks = np.frombuffer(b"".join([g.component_mask.tobytes() for g in guards]),
                                  np.uint8).reshape(len(kept), -1)
            seeds = np.fromiter([seed for _, seed in ids], np.int64, len(ids))
            choices = policy.decide_batch_trusted(
                model.snapshot, campaign.space, x, seeds, masks, active, top_k + 1,
                model.policy_params, BATCH_POLICY_THREADS)
        logged: list[Future[Any]] = []
        decided: list[tuple[DecisionRecord, list[Contact]]] = []
        schedules: dict[tuple[str, float, float], list[float]] = {}
        if choices is not None:  # the chunk's arrays as lists at once, not per row
            tops, means = choices.top_k.tolist(), choices.scores[:, 1].tolist()
            ks, props = choices.filled.tolist(), choices.propensity.tolist()
            samples = choices.propensity_samples.tolist()
        dry_run, explain, version = r0.dry_run, r0.explain, model.version
        record_of, planned_of, log = self._record, self._planned, self.log_decision
        for row, i in enumerate(kept):
            guard = guards[row]
            decision_id, seed = ids[row]
            properties, texts = filled[row]
            picked: _Picked | None = None
            if choices is not None and not guard.suppressed:
                k = ks[row]
                picked = (seed, tops[row][:k], means[row][:k], props[row], samples[row])
            record, actions, reasons = record_of(
                model, plan, user_ids[i], explain, guard, decision_id, now, x[row], raw[row],
                top_k, properties, texts, picked)
            if not dry_run:
                planned = planned_of(plan, campaign, record, actions, send_until, schedules)
                decided.append((record, planned))
                if log is not None:
                    logged.append(log(record, planned))
            out[i] = DecisionOutcome(decision_id, actions, record.propensity,
                                     record.propensity_samples, record.holdout,
                                     record.suppressed, reasons, version)
        if decided:
            self.pending.add_many(decided)
        # Cluster mode: the run's records went to the log at once and are waited for
        # together (one replication round trip a run, not one a user).
        for future in logged:
            future.result(LOG_DECISION_TIMEOUT_SECONDS)
        return [o for o in out if o is not None]

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
        model, campaign, plan = self._model_plan(request.campaign)
        now = request.time
        top_k = max(1, request.top_k)
        if top_k > MAX_TOP_K:
            raise InvalidArgument("top_k", f"must be at most {MAX_TOP_K}")
        user_id = request.user_id
        state, profile, contacts = self._read_user(user_id, now, plan.reads_contacts)
        tz = profile.tz if profile is not None else "UTC"
        properties, texts, renderable = self._texts(plan, profile, request)
        consents = ({c: g for c, (g, _) in profile.consents.items()}
                    if profile and plan.reads_consents else {})
        when = local_now(now, tz)
        credit_blocked = self.risk.recently_anomalous(user_id, now)
        guard = _guardrails(plan, user_id, when, consents, contacts, renderable,
                            credit_blocked, request.send_until)
        if guard.suppressed == SUPPRESS_PROPERTIES:
            raise InvalidArgument("numbers/strings", _unfillable(campaign, properties))
        decision_id, seed = self._new_ids()
        raw, x = user_context(
            plan.features, model.stats, state, self.store.type_slots, now, when.hour,
            request.numbers, request.strings, self.half_life_seconds,
            [c.time for c in contacts] if plan.features.contacts is not None else (),
            self._early_counts.of(user_id) if plan.features.reached else None,
            request.number_values if request.number_plan is plan.features else None,
        )
        picked: _Picked | None = None
        if not guard.suppressed:
            choice = policy.decide_trusted(
                model.snapshot, campaign.space, x, seed, guard.component_mask, top_k + 1,
                model.policy_params,
            )
            picked = (seed, choice.top_k.tolist(), choice.mean_scores.tolist(),
                      float(choice.propensity), int(choice.propensity_samples))
        record, actions, reasons = self._record(
            model, plan, user_id, request.explain, guard, decision_id, now, x, raw, top_k,
            properties, texts, picked)
        if not request.dry_run:
            planned = self._planned(plan, campaign, record, actions, request.send_until)
            self.pending.add(record, planned, after_reply)
            if self.log_decision is not None:
                self.log_decision(record, planned).result(LOG_DECISION_TIMEOUT_SECONDS)
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

    def _record(
        self, model: CampaignModel, plan: CampaignPlan, user_id: str, explain: bool,
        guard: GuardrailResult, decision_id: str, now: float, x: np.ndarray,
        raw: np.ndarray, top_k: int, properties: dict[str, Any], texts: dict[str, str],
        picked: _Picked | None,
    ) -> tuple[DecisionRecord, list[ActionOut], list[tuple[str, str, float]]]:
        """A decision's record, actions and reasons from the guardrails' result and what
        the policy picked (None: a guardrail decided) — one way for Decide and
        DecideBatch, so a batch's decision is a Decide's. The record is built in one
        constructor call with its final fields (DecideBatch builds one per user)."""
        campaign = plan.campaign
        nothing = campaign.nothing_combo
        trace = guard.trace
        reasons: list[tuple[str, str, float]] = [(c, d, 0.0) for c, d in trace]
        holdout = guard.suppressed == SUPPRESS_HOLDOUT
        window_end = now + campaign.goal.window_seconds
        if picked is None:
            # A guardrail decided, not the policy: nothing to learn. Holdout decisions stay
            # open so the holdout's own conversions measure uplift.
            record = DecisionRecord(
                decision_id, user_id, campaign.name, now, model.version, 0, x, raw, nothing,
                [], 1.0, 0, holdout, guard.suppressed, trace, window_end,
                "open" if holdout else "final", None, False)
            return record, [], reasons
        seed, top, means, propensity, samples = picked
        actions: list[ActionOut] = []
        choice = top[0]  # the policy's order: the choice first
        suppressed = guard.suppressed
        if choice == nothing:
            suppressed = SUPPRESS_NOTHING_BEST
        else:
            # Action.score is the posterior-mean score (an expected reward) for either
            # algorithm.
            send_at = guard.send_at
            for combo, score in zip(top, means, strict=True):
                if combo != nothing and len(actions) < top_k:
                    actions.append(self._action(plan, combo, score, send_at, properties,
                                                texts))
            if explain:
                reasons = self._feature_reasons(model, plan, x, choice) + reasons
        # A fresh list for an empty trace: a shared GuardrailResult's is not the record's.
        record = DecisionRecord(
            decision_id, user_id, campaign.name, now, model.version, seed, x, raw, choice,
            top, propensity, samples, holdout, suppressed, trace or [], window_end, "open",
            None, True, [a.__dict__ for a in actions])
        return record, actions, reasons

    def _model_plan(self, name: str) -> tuple[CampaignModel, Campaign, CampaignPlan]:
        """The campaign's current model, the campaign and its plan (consistent)."""
        model = self.campaign_model(name)
        campaign = model.campaign
        plan = self._plans.get(campaign.name)
        if plan is None or plan.campaign is not campaign:  # a reload swapped them meanwhile
            model = self.campaign_model(name)
            campaign = model.campaign
            plan = CampaignPlan(model)
        return model, campaign, plan

    @staticmethod
    def _texts(plan: CampaignPlan, profile: UserProfile | None, request: DecideInput
               ) -> tuple[dict[str, Any], dict[str, str], list[bool]]:
        """The properties the templates see, the texts filled (by message name) and which
        messages can be filled for this user and request."""
        if plan.fixed_texts is not None:  # no template reads a property
            return {}, plan.fixed_texts, plan.all_renderable
        properties = profile.properties() if profile is not None else {}
        properties.update(request.numbers)
        properties.update(request.strings)
        known = properties.keys()
        # Present is not enough: a value of the wrong kind ("lots" for {amount:,.0f})
        # cannot fill the template, so that message is masked for this user.
        # The texts filled here are the actions' texts (by message name).
        texts: dict[str, str] = {}
        renderable = []
        for wanted, m in zip(plan.message_needs, plan.campaign.messages, strict=True):
            if not wanted:
                renderable.append(True)
            elif known >= wanted and (text := m.text_or_none(properties)) is not None:
                texts[m.name] = text
                renderable.append(True)
            else:
                renderable.append(False)
        return properties, texts, renderable

    @staticmethod
    def _planned(plan: CampaignPlan, campaign: Campaign, record: DecisionRecord,
                 actions: list[ActionOut], send_until: float | None,
                 schedules: dict[tuple[str, float, float], list[float]] | None = None,
                 ) -> list[Contact]:
        """The contacts a decision plans (setting ``record.messages``): every message the
        frequency sends within the goal window counts against caps and contact pressure,
        not only the first (a "twice" on e-mail is two e-mails). ``schedules`` remembers
        each (frequency, first send, until)'s times across a DecideBatch run."""
        if not actions:
            return []
        first = actions[0]
        until = record.window_end
        if send_until is not None:
            until = min(until, send_until)
        # The first message goes out even past the goal window (a late slot).
        key = (first.frequency, first.send_at, max(until, first.send_at))
        times = None if schedules is None else schedules.get(key)
        if times is None:
            times = plan.frequencies[first.frequency].send_times(key[1], key[2])
            if schedules is not None:
                schedules[key] = times
        record.messages = len(times)
        return [Contact(at, first.channel, campaign.name, record.decision_id) for at in times]

    def _new_ids_many(self, n: int) -> list[tuple[str, int]]:
        """``n`` of :meth:`_new_ids`, in order (a seeded engine draws the same sequence)."""
        if self._random is None:
            return _ID_POOL.take_many(n)
        with self._random_lock:
            bits = self._random.getrandbits
            return [(f"{bits(128):032x}", bits(63)) for _ in range(n)]

    def _read_user(self, user_id: str, now: float, contacts: bool = True) -> UserRead:
        """The user's state record (as float64s; None if no event was ever stored), profile
        and recent contacts (none read when ``contacts`` is False: the campaign has no use
        for them), in one read transaction."""
        if not contacts:
            with self.store.read() as txn:
                return self._user_in(txn, user_id, now, None)
        # Pending before stored: a flush committing between the two reads then shows in
        # both (counted once), never in neither.
        pending = self.pending.contacts(user_id)
        with self.store.read() as txn:
            return self._user_in(txn, user_id, now, pending)

    def _read_users(self, user_ids: list[str], now: float, contacts: bool
                    ) -> list[Prefetched]:
        """:meth:`_read_user` for many users decided at ``now``, in one read transaction
        (the records and the risk holds each in one cursor call), and whether recent
        activity looks anomalous; no contacts read unless ``contacts`` (the campaign has no
        use for them). A user with no state record has no profile either (ingest writes
        the record with the first event), so its profile is not looked up."""
        pending: list[list[Contact] | None] = (
            [self.pending.contacts(u) for u in user_ids] if contacts
            else [None] * len(user_ids))
        with self.store.read() as txn:
            states = users.records_bytes(txn, self.store.dbs, user_ids)
            anomalous = self.risk.recently_anomalous_many(txn, user_ids, now)
            user_with = self._user_with
            return [(state, None, [], a) if state is None and p is None
                    else (*user_with(txn, u, now, p, state), a)
                    for u, p, state, a in zip(user_ids, pending, states, anomalous,
                                              strict=True)]

    def _user_in(
        self, txn: lmdb.Transaction, user_id: str, now: float, pending: list[Contact] | None
    ) -> UserRead:
        """The user as :meth:`_read_user` reads it; ``pending`` None: no contacts wanted."""
        state = users.record_bytes(txn, self.store.dbs, user_id)
        return self._user_with(txn, user_id, now, pending, state, True)

    def _user_with(
        self, txn: lmdb.Transaction, user_id: str, now: float, pending: list[Contact] | None,
        state: bytes | None, remember: bool = False,
    ) -> UserRead:
        """:meth:`_user_in` given the state record's bytes (None: no event stored); the
        profile kept decoded for the next read when ``remember`` (see :meth:`_profile`)."""
        dbs = self.store.dbs
        profile = None
        if state is not None:
            profile = self._profile(txn.get(user_id.encode(), db=dbs[users.PROFILES]),
                                    remember)
        if pending is None:
            return state, profile, []
        stored = contact_table.rows(txn, dbs, user_id)
        if not pending and not stored:
            return state, profile, []
        # Count each of a decision's messages once (stored and pending may both hold it):
        # keyed on the raw rows (time first, decision last, as Contact's fields), the last
        # copy of a key wins; only the contacts still remembered become Contacts.
        unique: dict[tuple[str, float], Contact | list[Any]] = {(c[3], c[0]): c for c in stored}
        for c in pending:
            unique[(c.decision_id, c.time)] = c
        make = Contact._make
        return state, profile, [c if type(c) is Contact else make(c)
                                for c in unique.values() if now - c[0] < CONTACT_MEMORY]

    def _profile(self, raw: bytes | memoryview | None, remember: bool) -> UserProfile:
        """The profile stored as ``raw`` (None: none stored), decoded once per distinct
        content: Decide reads a user's profile on every call and decoding it (orjson and
        three dict builds) cost several µs between RPCs, while a profile changes only when
        an event sets a time zone, a consent or properties. Keyed by the stored bytes
        themselves (a read-only LMDB view hashes as its bytes), so a profile rewritten by
        ingest, an erasure or another worker is simply another key: nothing to invalidate.
        The cached objects are shared, so no reader may change them (Decide and DecideBatch
        only read them). ``remember`` False (DecideBatch over a whole base) looks up but
        does not add, so a batch does not churn the cache."""
        if raw is None:
            return UserProfile()
        profile = self._profiles.get(raw)  # type: ignore[arg-type]
        if profile is None:
            profile = UserProfile.from_bytes(raw)
            if remember:
                if len(self._profiles) >= PROFILE_CACHE:
                    self._profiles = {}
                self._profiles[bytes(raw)] = profile
        return profile

    @staticmethod
    def _action(
        plan: CampaignPlan,
        combo: int,
        score: float,
        send_at: list[float],
        properties: dict[str, Any],
        texts: dict[str, str],
    ) -> ActionOut:
        message, channel, slot, frequency, offer = plan.combos[combo]
        text = texts.get(message.name)
        return ActionOut(
            message=message.name,
            channel=channel,
            send_at=send_at[slot],
            frequency=frequency,
            offer=offer,
            text=message.render(properties) if text is None else text,
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

    # -- outcomes and storing ------------------------------------------------------------

    def report_outcome(self, decision_id: str, reward: float, when: float) -> Future[bool]:
        """Settle a decision with an explicit reward (see ``Outcomes.report``)."""
        return self.outcomes.report(decision_id, reward, when)

    def flush(self) -> None:
        """Store everything pending now (tests, shutdown)."""
        self.pending.flush()

    def close(self) -> None:
        self.pending.close()

    def decisions(self, ids: Iterable[str]) -> list[DecisionRecord | None]:
        with self.store.read() as txn:
            return [decision_table.get(txn, self.store.dbs, i) for i in ids]
