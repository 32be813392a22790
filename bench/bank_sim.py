"""``nudge simulate``: does nudge learn? A synthetic bank with a hidden ground truth.

A population of bank users (personas: borrowers, savers, travellers, salaried, gig
workers) keeps simulating personal loans and dropping off at the documentation step. Each
drop-off is one *decision*: what to send (message × channel × send time × frequency ×
offer), or nothing. The simulated users answer by a hidden truth that no policy sees
(except the oracle):

- **Response.** ``p = base × message × channel × send hour × offer × frequency × fatigue``
  per persona (``PERSONAS``): e.g. borrowers answer "loan ready" pushes in the morning,
  savers "rate locked" e-mails in the evening, gig workers "advisor" WhatsApps in the
  evening with a fee waiver. "twice" lifts the response by 15% but is a second contact.
- **Fatigue.** Every message received in the last 7 days multiplies the response by 0.7
  (both messages of "twice"; a second message cancelled by the goal is not received).
- **Annoyance.** Each message sent makes the user opt out of that channel with
  ``0.2% + 3% inside the persona's annoyance hours + 1% per other message received in 7 days``
  (+1% for a second message); an opt-out is a Track ``profile`` event with
  ``consent.<channel>=revoked``; a quarter of opt-outs churn (the user never comes back).
  The summary splits the expected opt-outs by these terms (``opt_out_risk``).
- **Journeys.** A conversion before the second message of "twice" cancels it (the goal
  cancels the rest of a journey, as the server's journeys do), for every policy.
- **Conversions** arrive hours or days later (exponential, mean 10 h after the message;
  organic ones anywhere in the 72 h goal window), as ``loan_completed`` goal events.

Policies, on the same seeds (same users, same arrivals, common random numbers):

- ``random``: uniform among the allowed combinations;
- ``rulebook``: a static segmentation as a marketing team would write it (:data:`RULEBOOK`):
  borrowers → "loan_ready" by e-mail in the morning with a rate discount; savers →
  "rate_locked" by e-mail in the evening with a rate discount; travellers → "loan_ready"
  by push now; salaried → "one_step" by e-mail in the morning; gig workers → "one_step" by
  SMS in the evening, twice, with a fee waiver. When the rule's channel is not allowed
  (no consent, capped), the next of e-mail, push, WhatsApp, SMS, in-app is used; when its
  slot is not allowed ("now" in quiet hours), the evening; an excluded pair (SMS ×
  "rate_locked", in-app × morning) falls back to "one_step" / lunch. Once, unless stated.
- ``nudge``: a REAL nudge server (in this process, on a free port, over a temporary
  store, with a ``ManualClock``) through the public gRPC API only: Track (profile with
  consents and the CRM segment, the persona's behavioural events, the loan simulation) →
  Decide (the segment as a request string) → goal and consent events through Track.
  ``server.learner.step()`` runs as simulated time advances (every 30 simulated minutes).
- ``oracle``: knows the truth; sends the allowed combination with the highest expected
  conversion (including fatigue).

Every policy obeys the same guardrails (consent, quiet hours 21:00–08:00 on the actual send
time, the campaign's caps counting every message a decision schedules, the 5% stable-hash
holdout); for the baselines the simulator applies them, for nudge the server does. The
campaign is the shipped ``loan_abandonment.toml`` with a ``[context]`` table (the CRM
segment by its known values, behavioural event counts, contact pressure) and the
exploration options of this module, written to a temporary folder.

The same seed gives the same summary: decision ids and policy seeds come from
``Config(random_seed=seed)``, the simulator draws from seeded NumPy generators, and only
this simulation drives the learner (its background thread is stopped, so learning happens
at the same simulated instants every run).

    python -m nudge.bench.bank_sim --decisions 50000 --out sim-report

``--validate-ope N`` checks ``nudge evaluate``'s estimators against the simulator's truth
instead (:mod:`nudge.bench.ope_validation`).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from nudge.server.decisions.campaign import Campaign, parse_campaign, shipped_campaigns_dir
from nudge.server.decisions.guardrails import in_holdout
from nudge.server.offline.evaluate import LogEntry, allowed_components
from nudge.server.offline.evaluate import Space as CampaignSpace

TZ_NAME = "America/Sao_Paulo"
ZONE = ZoneInfo(TZ_NAME)
START = datetime(2026, 9, 1, 0, 0, tzinfo=ZONE)
TICK = 1800.0  # decisions are made on 30-minute ticks of simulated time
HOUR = 3600.0
DAY = 86_400.0
WEEK = 7 * DAY
WINDOW = 72 * HOUR
MIN_RETURN = 3.5 * DAY  # a user's windows never overlap
MEAN_EXTRA_RETURN = 4.0 * DAY
CAMPAIGN = "loan_abandonment"
POLICIES = ("random", "rulebook", "nudge", "oracle")
MESSAGES = ("loan_ready", "one_step", "advisor", "rate_locked")
CHANNELS = ("push", "whatsapp", "sms", "email", "in_app")
SLOT_NAMES = ("now", "morning", "lunch", "evening")
SLOT_MINUTES = (None, 9 * 60, 12 * 60 + 30, 19 * 60)
CHANNEL_FALLBACK = ("email", "push", "whatsapp", "sms", "in_app")
CONSENT_SHARE = 0.75
FATIGUE = 0.7
TWICE_LIFT = 1.15
ORGANIC = 0.02
CHURN_SHARE = 0.25
# Annoyance: each contact's opt-out probability is the sum of these terms.
OPT_OUT_BASE = 0.002
OPT_OUT_ANNOYED = 0.03  # sent inside the persona's annoyance hours
OPT_OUT_PER_RECENT = 0.01  # per other message received in the last 7 days
OPT_OUT_SECOND = 0.01  # the second message of "twice"
OPT_OUT_CAUSES = ("baseline", "annoy_hours", "recent_contacts", "second_message")
# SquareCB exploration scale of the simulated campaign (shipped file: 10); 40 reached ~81%
# of the oracle after 50,000 decisions on seed 0, 100 ~92%.
GAMMA_SCALE = 100.0

EXPLORATION = """
[exploration]
algorithm = "squarecb"
gamma_scale = {gamma_scale}
forgetting = 0.99995
# Rewards here mix conversions, opt-out penalties and contact costs; the identity link and
# one prior for every weight are what the simulator's targets were met with (the logistic
# link's default gamma_scale is on another scale).
link = "identity"
slope_precision = 1.0

[context]
event_types = ["app_opened", "loan_simulated", "salary_received", "savings_deposit",
               "card_used_abroad", "gig_payout"]
strings = {{ segment = ["borrower", "saver", "traveller", "salaried", "gig"] }}
contact_pressure = true
"""


@dataclass(frozen=True)
class Persona:
    name: str
    share: float
    base: float
    message: dict[str, float]
    channel: dict[str, float]
    best_hour: float
    offer: dict[str, float]
    annoy_hours: tuple[int, int] | None  # [start, end) local hours that annoy
    events: tuple[str, ...]  # behavioural events the bank sees (features for nudge)


PERSONAS: tuple[Persona, ...] = (
    Persona("borrower", 0.30, 0.30,
            {"loan_ready": 1.0, "one_step": 0.7, "advisor": 0.3, "rate_locked": 0.6},
            {"push": 1.0, "whatsapp": 0.8, "sms": 0.4, "email": 0.3, "in_app": 0.6},
            9.0, {"none": 1.0, "rate_discount": 1.4, "fee_waiver": 1.1}, None,
            ("loan_simulated", "app_opened")),
    Persona("saver", 0.15, 0.20,
            {"loan_ready": 0.5, "one_step": 0.5, "advisor": 0.6, "rate_locked": 1.0},
            {"push": 0.5, "whatsapp": 0.4, "sms": 0.3, "email": 1.0, "in_app": 0.8},
            19.0, {"none": 1.0, "rate_discount": 1.5, "fee_waiver": 1.0}, (11, 14),
            ("savings_deposit", "app_opened")),
    Persona("traveller", 0.15, 0.24,
            {"loan_ready": 0.8, "one_step": 1.0, "advisor": 0.4, "rate_locked": 0.5},
            {"push": 0.9, "whatsapp": 1.0, "sms": 0.2, "email": 0.4, "in_app": 0.5},
            12.5, {"none": 1.0, "rate_discount": 1.1, "fee_waiver": 1.4}, None,
            ("card_used_abroad", "app_opened")),
    Persona("salaried", 0.25, 0.24,
            {"loan_ready": 1.0, "one_step": 0.8, "advisor": 0.5, "rate_locked": 0.7},
            {"push": 0.6, "whatsapp": 0.5, "sms": 0.3, "email": 1.0, "in_app": 0.7},
            12.5, {"none": 1.0, "rate_discount": 1.2, "fee_waiver": 1.1}, None,
            ("salary_received",)),
    Persona("gig", 0.15, 0.24,
            {"loan_ready": 0.6, "one_step": 0.8, "advisor": 1.0, "rate_locked": 0.4},
            {"push": 0.7, "whatsapp": 1.0, "sms": 0.7, "email": 0.2, "in_app": 0.5},
            19.0, {"none": 1.0, "rate_discount": 0.9, "fee_waiver": 1.5}, (6, 11),
            ("gig_payout", "app_opened")),
)
PERSONA_BY_NAME = {p.name: p for p in PERSONAS}

# The static segmentation rulebook: segment -> (message, channel, send time, frequency, offer).
RULEBOOK: dict[str, tuple[str, str, str, str, str]] = {
    "borrower": ("loan_ready", "email", "morning", "once", "rate_discount"),
    "saver": ("rate_locked", "email", "evening", "once", "rate_discount"),
    "traveller": ("loan_ready", "push", "now", "once", "none"),
    "salaried": ("one_step", "email", "morning", "once", "none"),
    "gig": ("one_step", "sms", "evening", "twice", "fee_waiver"),
}


# -- the campaign ----------------------------------------------------------------------------


def campaign_text(gamma_scale: float = GAMMA_SCALE, opt_out_cost: float | None = None) -> str:
    """The shipped loan_abandonment.toml, its [exploration] replaced by the simulator's;
    ``opt_out_cost`` replaces the goal's (None keeps the shipped one)."""
    shipped = (shipped_campaigns_dir() / "loan_abandonment.toml").read_text()
    head = shipped.split("\n[exploration]")[0]
    if opt_out_cost is not None:
        head = re.sub(r"(?m)^opt_out_cost = .*$", "", head)
        head = head.replace("[goal]\n", f"[goal]\nopt_out_cost = {opt_out_cost}\n", 1)
    return head.rstrip() + "\n" + EXPLORATION.format(gamma_scale=gamma_scale)


def write_campaign(folder: Path, gamma_scale: float = GAMMA_SCALE,
                   opt_out_cost: float | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{CAMPAIGN}.toml"
    path.write_text(campaign_text(gamma_scale, opt_out_cost))
    return path


class Space(CampaignSpace):
    """The campaign's combinations (nudge evaluate's :class:`CampaignSpace`) with the
    simulator's view: each dimension's value indices and the hidden response factors."""

    def __init__(self, campaign: Campaign) -> None:
        super().__init__(campaign)
        names = self.dimensions
        assert names["message"] == MESSAGES and names["channel"] == CHANNELS
        assert names["send_time"] == SLOT_NAMES
        self.frequencies = names["frequency"]
        self.offers = names["offer"]
        self.msg, self.ch, self.slot, self.freq, self.offer = (
            self.values[:, j] for j in range(5))
        self.twice = np.array([self.frequencies[f] == "twice" for f in self.freq])
        # Per persona: the response factor of every combination except hour and fatigue.
        self.static: dict[str, np.ndarray] = {}
        for p in PERSONAS:
            m = np.array([p.message[x] for x in MESSAGES])[self.msg]
            c = np.array([p.channel[x] for x in CHANNELS])[self.ch]
            o = np.array([p.offer[x] for x in self.offers])[self.offer]
            self.static[p.name] = p.base * m * c * o * np.where(self.twice, TWICE_LIFT, 1.0)


def hour_affinity(best: float, hour: np.ndarray | float) -> np.ndarray:
    d = np.abs(np.asarray(hour, dtype=np.float64) - best)
    d = np.minimum(d, 24.0 - d)
    return 0.45 + 0.55 * np.exp(-(d**2) / (2 * 2.5**2))


def local_hour(t: float) -> float:
    d = datetime.fromtimestamp(t, ZONE)
    return d.hour + d.minute / 60.0


def slot_send_times(now: float) -> list[float]:
    """Next occurrence of each slot in local time (now for "now"), as the server does."""
    local = datetime.fromtimestamp(now, ZONE)
    out = []
    for minute in SLOT_MINUTES:
        if minute is None:
            out.append(now)
            continue
        at = local.replace(hour=minute // 60, minute=minute % 60, second=0, microsecond=0)
        if at <= local:
            at = (local + timedelta(days=1)).replace(
                hour=minute // 60, minute=minute % 60, second=0, microsecond=0)
        out.append(at.timestamp())
    return out


def is_quiet(hour: float) -> bool:
    return hour >= 21.0 or hour < 8.0


# -- guardrails (what the server applies; the simulator applies them for the baselines) -------


@dataclass
class Allowed:
    suppressed: str  # "" when the policy decides
    channels: set[str]
    slots: set[str]

    def mask(self, space: Space) -> np.ndarray:
        ch = np.array([c in self.channels for c in CHANNELS])[space.ch]
        sl = np.array([s in self.slots for s in SLOT_NAMES])[space.slot]
        return ch & sl


def guardrails(user: User, now: float) -> Allowed:
    if in_holdout(CAMPAIGN, user.user_id, 0.05):
        return Allowed("holdout", set(), set())
    # In-app needs no consent on record (every user starts with it), but an opt-out there
    # (consent.in_app revoked) closes it, as the server's guardrail does.
    channels = {c for c in CHANNELS if user.consent[c]}
    if not channels:
        return Allowed("no_consent", set(), set())
    slots = {s for s in SLOT_NAMES if s != "now" or not is_quiet(local_hour(now))}
    recent = [(t, c) for t, c in user.contacts if now - t < WEEK]
    day = [c for t, c in recent if now - t < DAY]
    if len(day) >= 2 or len(recent) >= 5:
        return Allowed("frequency_cap", set(), set())
    for c in list(channels):
        if day.count(c) >= 1 or sum(1 for _, x in recent if x == c) >= 3:
            channels.discard(c)
    if not channels:
        return Allowed("frequency_cap", set(), set())
    return Allowed("", channels, slots)


def allowed_from_components(space: CampaignSpace, components: np.ndarray) -> Allowed:
    """The allowed channels and slots of a logged decision, from the components its
    guardrails left open (nudge evaluate's ``allowed_components`` of its trace)."""
    if not space.allowed(components).any():
        return Allowed("suppressed", set(), set())
    return Allowed("", space.open_values(components, "channel"),
                   space.open_values(components, "send_time"))


def rulebook_choice(space: CampaignSpace, segment: str, allowed: Allowed) -> int | None:
    """The rulebook's combination (index into ``space``) for a segment, or None (nothing)."""
    if allowed.suppressed or segment not in RULEBOOK:
        return None
    message, channel, slot, frequency, offer = RULEBOOK[segment]
    if channel not in allowed.channels:
        options = [c for c in CHANNEL_FALLBACK if c in allowed.channels]
        if not options:
            return None
        channel = options[0]
    if slot not in allowed.slots:
        slot = "evening"
    if channel == "sms" and message == "rate_locked":
        message = "one_step"
    if channel == "in_app" and slot == "morning":
        slot = "lunch"
    return space.by_names[(message, channel, slot, frequency, offer)]


class RulebookPolicy:
    """The rulebook as a target policy of ``nudge evaluate`` (registered as ``rulebook`` in
    the ``nudge.policies`` entry points): the segment from the decision's context (the
    ``segment`` string sent with Decide), the allowed channels and slots from its trace."""

    name = "rulebook"

    def __init__(self, space: CampaignSpace) -> None:
        self.space = space

    def distribution(self, entry: LogEntry, allowed: np.ndarray) -> np.ndarray:
        k = len(self.space)
        dist = np.zeros(k + 1)
        choice = rulebook_choice(self.space, entry.context_value("segment") or "",
                                 allowed_from_components(self.space, entry.components))
        dist[k if choice is None or not allowed[choice] else choice] = 1.0
        return dist


# -- the population ---------------------------------------------------------------------------


@dataclass
class User:
    user_id: str
    index: int
    persona: Persona
    consent: dict[str, bool]
    amount: float
    # (time, channel) of every message scheduled (what the caps count) and of every
    # message received (what fatigue and annoyance count: a cancelled one is not).
    contacts: list[tuple[float, str]] = field(default_factory=list)
    received: list[tuple[float, str]] = field(default_factory=list)
    churned: bool = False
    visits: int = 0


def make_population(n: int, seed: int) -> list[User]:
    rng = np.random.default_rng([seed, 1])
    shares = np.array([p.share for p in PERSONAS])
    kinds = rng.choice(len(PERSONAS), size=n, p=shares / shares.sum())
    consent = rng.random((n, 4)) < CONSENT_SHARE
    amounts = np.round(rng.lognormal(math.log(5000), 0.6, size=n), -2)
    return [
        User(f"u{i:06d}", i, PERSONAS[kinds[i]],
             {c: bool(consent[i, j]) for j, c in enumerate(CHANNELS[:4])} | {"in_app": True},
             float(amounts[i]))
        for i in range(n)
    ]


def expected_response(space: Space, user: User, now: float, send: list[float]) -> np.ndarray:
    """Hidden truth: conversion probability (in the window) of every combination."""
    p = user.persona
    hours = np.array([local_hour(t) for t in send])[space.slot]
    recent = sum(1 for t, _ in user.received if now - t < WEEK)
    msg = space.static[p.name] * hour_affinity(p.best_hour, hours) * FATIGUE**recent
    msg = np.minimum(msg, 0.95)
    return 1.0 - (1.0 - ORGANIC) * (1.0 - msg)


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    policy: str
    users: int = 0
    decisions: int = 0
    conversions: int = 0
    contacts: int = 0
    opt_outs: int = 0
    churned: int = 0
    holdout_decisions: int = 0
    holdout_conversions: int = 0
    acted_decisions: int = 0  # guardrails let the policy decide
    acted_conversions: int = 0
    # Per decision: converted (0/1), expected conversion of the choice and of the best.
    converted: list[int] = field(default_factory=list)
    expected: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    # nudge only: the rulebook's and uniform random's expected conversion at each decision
    # the policy made (the truth an off-policy estimate on nudge's log should find).
    rulebook_counterfactual: list[float] = field(default_factory=list)
    random_counterfactual: list[float] = field(default_factory=list)
    # nudge only: decisions where the server's guardrails allowed other combinations than
    # the simulator's own guardrails (which the baselines obey) would have.
    guardrail_mismatches: int = 0
    random_ips_noise_free: list[float] = field(default_factory=list)
    # Opt-out risk by cause: the sum over contacts of each term of the annoyance model (an
    # unbiased split of the expected opt-outs), and the contacts that carried each term.
    opt_out_risk: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(OPT_OUT_CAUSES, 0.0))
    risky_contacts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(OPT_OUT_CAUSES, 0))
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        n = max(self.decisions, 1)
        fifth = max(n // 5, 1)
        last = self.converted[-fifth:]
        return {
            "policy": self.policy,
            "decisions": self.decisions,
            "conversion_rate": self.conversions / n,
            "conversion_rate_last_fifth": float(np.mean(last)) if last else 0.0,
            "expected_rate_last_fifth": float(np.mean(self.expected[-fifth:]))
            if self.expected else 0.0,
            "opt_outs": self.opt_outs,
            "churned": self.churned,
            "contacts_per_decision": self.contacts / n,
            "contacts_per_user": self.contacts / max(self.users, 1),
            "users": self.users,
            "holdout_decisions": self.holdout_decisions,
            "holdout_conversion_rate": self.holdout_conversions / max(self.holdout_decisions, 1),
            "acted_decisions": self.acted_decisions,
            "acted_conversion_rate": self.acted_conversions / max(self.acted_decisions, 1),
            "regret": float(np.sum(np.array(self.best) - np.array(self.expected))),
            "rulebook_counterfactual_value": float(np.mean(self.rulebook_counterfactual))
            if self.rulebook_counterfactual else None,
            "random_counterfactual_value": float(np.mean(self.random_counterfactual))
            if self.random_counterfactual else None,
            "guardrail_mismatches": self.guardrail_mismatches,
            "random_ips_noise_free": float(np.mean(self.random_ips_noise_free))
            if self.random_ips_noise_free else None,
            "opt_out_risk": {k: round(v, 1) for k, v in self.opt_out_risk.items()},
            "risky_contacts": dict(self.risky_contacts),
            "seconds": round(self.seconds, 1),
        }


Chooser = Callable[[User, float, Allowed, np.ndarray, np.random.Generator], int | None]


class NudgeDriver:
    """A real nudge server in this process, driven through the public gRPC API."""

    def __init__(self, seed: int, folder: Path, gamma_scale: float,
                 opt_out_cost: float | None = None) -> None:
        from nudge.clients.client import Client
        from nudge.server.app import create_server
        from nudge.server.clock import ManualClock
        from nudge.server.config import Config

        write_campaign(folder / "campaigns", gamma_scale, opt_out_cost)
        self.clock = ManualClock(START.timestamp())
        self.server = create_server(
            Config(port=0, data_dir=folder / "data", campaigns_dir=folder / "campaigns",
                   random_seed=seed, learner_thread=False),
            clock=self.clock,
        )
        self.server.start()
        # Only this simulation drives learning (learner_thread=False), at fixed simulated
        # instants: the same seed then gives the same run.
        self.client = Client(f"127.0.0.1:{self.server.port}", timeout=60.0)
        self.client.wait_until_serving()
        self.seq = 0
        self.pending: list[Any] = []

    def event(self, user_id: str, type: str, t: float, **kw: Any) -> None:
        from nudge.clients.client import make_event

        self.seq += 1
        self.pending.append(make_event(user_id, type, time=t, event_id=f"e{self.seq}", **kw))

    def flush(self) -> None:
        for i in range(0, len(self.pending), 2000):
            self.client.track(self.pending[i:i + 2000])
        self.pending = []

    def close(self) -> None:
        self.client.close()
        self.server.stop()


def run_policy(
    policy: str,
    decisions: int,
    seed: int = 0,
    users: int | None = None,
    data_dir: Path | None = None,
    gamma_scale: float = GAMMA_SCALE,
    progress: Callable[[str], None] | None = None,
    opt_out_cost: float | None = None,
) -> Result:
    """Simulate ``decisions`` drop-offs under ``policy``; ``data_dir`` keeps nudge's store."""
    if policy not in POLICIES:
        raise ValueError(f"policy: must be one of {POLICIES}, got {policy!r}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nudge-sim-") as tmp:
        folder = Path(tmp) if data_dir is None else Path(data_dir)
        if data_dir is not None and folder.exists():
            # Only ever replace an earlier simulation's store, never an unrelated folder.
            if {c.name for c in folder.iterdir()} - {"data", "campaigns"}:
                raise ValueError(f"data_dir: {folder} exists and is not a simulation store")
            shutil.rmtree(folder)
        campaign = parse_campaign(campaign_text(gamma_scale, opt_out_cost), "bank_sim")
        space = Space(campaign)
        driver = (NudgeDriver(seed, folder, gamma_scale, opt_out_cost) if policy == "nudge"
                  else None)
        try:
            result = _simulate(policy, decisions, seed, users, space, driver, progress)
        finally:
            if driver is not None:
                driver.close()
    result.seconds = time.perf_counter() - started
    return result


def _simulate(policy: str, n_decisions: int, seed: int, n_users: int | None, space: Space,
              driver: NudgeDriver | None,
              progress: Callable[[str], None] | None) -> Result:
    population = make_population(n_users or max(100, n_decisions // 8), seed)
    result = Result(policy)
    arrivals: list[tuple[float, int]] = []  # (tick time, user index)
    start = START.timestamp()
    rng0 = np.random.default_rng([seed, 2])
    for u in population:
        t = start + rng0.random() * WEEK
        heapq.heappush(arrivals, (math.floor(t / TICK) * TICK, u.index))
    # Scheduled outcomes: (time, order, kind, user index, payload).
    scheduled: list[tuple[float, int, str, int, str]] = []
    order = 0
    tick_t = None
    since_learn = 0
    while result.decisions < n_decisions and arrivals:
        tick_t = arrivals[0][0]
        batch: list[User] = []
        while arrivals and arrivals[0][0] == tick_t and \
                result.decisions + len(batch) < n_decisions:
            batch.append(population[heapq.heappop(arrivals)[1]])
        # 1. What happened up to now: opt-outs and conversions.
        while scheduled and scheduled[0][0] <= tick_t:
            t, _, kind, ui, payload = heapq.heappop(scheduled)
            user = population[ui]
            if kind == "optout":
                user.consent[payload] = False
                if driver:
                    driver.event(user.user_id, "profile", t,
                                 strings={f"consent.{payload}": "revoked"})
            elif driver:
                driver.event(user.user_id, "loan_completed", t)
        if driver:
            driver.flush()
            driver.clock.set(tick_t)
            driver.server.learner.step()
        # 2. The drop-offs of this tick.
        for user in batch:
            if driver:
                p = user.persona
                consents = {f"consent.{c}": "granted" if user.consent[c] else "revoked"
                            for c in CHANNELS[:4]}
                driver.event(user.user_id, "profile", tick_t - 300,
                             strings={"tz": TZ_NAME, "segment": p.name, **consents})
                for k, ev in enumerate(p.events):
                    driver.event(user.user_id, ev, tick_t - 3600 * (k + 1))
                driver.event(user.user_id, "loan_simulated", tick_t - 60,
                             numbers={"amount": user.amount}, strings={"currency": "USD"})
        if driver:
            driver.flush()
        for user in batch:
            order = _decide(policy, user, tick_t, space, driver, result, scheduled, order,
                            seed)
            rng = np.random.default_rng([seed, 3, user.index, user.visits])
            if not user.churned:
                gap = MIN_RETURN + rng.exponential(MEAN_EXTRA_RETURN)
                heapq.heappush(arrivals, (math.floor((tick_t + gap) / TICK) * TICK,
                                          user.index))
        since_learn += len(batch)
        if progress and since_learn >= 5000:
            since_learn = 0
            progress(f"{policy}: {result.decisions} decisions, "
                     f"conversion {result.conversions / result.decisions:.3f}")
    result.churned = sum(u.churned for u in population)
    result.users = len(population)
    return result


def _decide(policy: str, user: User, now: float, space: Space, driver: NudgeDriver | None,
            result: Result, scheduled: list, order: int, seed: int) -> int:
    rng = np.random.default_rng([seed, 4, user.index, user.visits])
    u_conv, u_delay, u_pick, *u_opt = rng.random(6)
    user.visits += 1
    send = slot_send_times(now)
    allowed = guardrails(user, now)
    truth = expected_response(space, user, now, send)
    mask = allowed.mask(space) if not allowed.suppressed else np.zeros(len(truth), bool)
    best = max(float(truth[mask].max()), ORGANIC) if mask.any() else ORGANIC
    choice: int | None = None
    holdout = allowed.suppressed == "holdout"
    acted = not allowed.suppressed
    send_at = now
    if policy == "nudge":
        assert driver is not None
        reply = driver.client.decide(user.user_id, campaign=CAMPAIGN,
                                     strings={"segment": user.persona.name})
        holdout = reply.holdout
        acted = not reply.suppressed_reason or reply.suppressed_reason == "nothing_is_best"
        if reply.actions:
            a = reply.actions[0]
            choice = space.by_names[(a.message, a.channel, SLOT_NAMES[
                _slot_of(a.send_at.seconds, send)], a.frequency, a.offer)]
            send_at = float(a.send_at.seconds)
        if acted:
            # The other policies at this decision, under the server's guardrails (its trace):
            # exactly what an off-policy estimate on nudge's log estimates.
            open_components = allowed_components(
                space, [(r.code, r.detail) for r in reply.reasons], "")
            served = allowed_from_components(space, open_components)
            served_mask = space.allowed(open_components)
            rb = rulebook_choice(space, user.persona.name, served)
            result.rulebook_counterfactual.append(
                float(truth[rb]) if rb is not None else ORGANIC)
            result.random_counterfactual.append(
                float(truth[served_mask].mean()) if served_mask.any() else ORGANIC)
            result.guardrail_mismatches += bool((served_mask != mask).any())
            # IPS of uniform random with the true expected reward in place of the sampled
            # one: how far the weights alone (not the reward noise) move the estimate.
            if choice is None:
                result.random_ips_noise_free.append(0.0)
            else:
                w = (1.0 / served_mask.sum()) / reply.propensity
                result.random_ips_noise_free.append(w * float(truth[choice]))
    elif acted:
        if policy == "random":
            options = np.flatnonzero(mask)
            choice = int(options[min(int(u_pick * len(options)), len(options) - 1)])
        elif policy == "rulebook":
            choice = rulebook_choice(space, user.persona.name, allowed)
        else:
            choice = int(np.flatnonzero(mask)[np.argmax(truth[mask])])
            if truth[choice] <= ORGANIC:
                choice = None
    if choice is not None and policy != "nudge":
        send_at = send[space.slot[choice]]
    expected = float(truth[choice]) if choice is not None else ORGANIC
    result.decisions += 1
    result.expected.append(expected)
    result.best.append(best if acted else expected)
    converted = u_conv < expected
    if choice is not None:
        channel = CHANNELS[space.ch[choice]]
        times = [send_at, send_at + DAY] if space.twice[choice] else [send_at]
        # The caps count every message the decision schedules within the goal window, as
        # the server does; fatigue and annoyance count the messages actually received.
        user.contacts.extend((t, channel) for k, t in enumerate(times)
                             if not k or t <= now + WINDOW)
        recent = sum(1 for t, _ in user.received if now - t < WEEK)
        delay = -10 * HOUR * math.log(max(1.0 - u_delay, 1e-12))
        at = min(send_at + delay, now + WINDOW - 60.0)
        for k, t in enumerate(times):
            if k and converted and at <= t:
                break  # the goal cancels the rest of the journey, as the server does
            result.contacts += 1
            user.received.append((t, channel))
            p = user.persona
            h = local_hour(t)
            annoyed = p.annoy_hours is not None and p.annoy_hours[0] <= h < p.annoy_hours[1]
            terms = {"baseline": OPT_OUT_BASE, "annoy_hours": OPT_OUT_ANNOYED * annoyed,
                     "recent_contacts": OPT_OUT_PER_RECENT * max(recent, 0),
                     "second_message": OPT_OUT_SECOND * k}
            for cause, term in terms.items():
                result.opt_out_risk[cause] += term
                result.risky_contacts[cause] += term > 0
            p_opt = sum(terms.values())
            if u_opt[k] < p_opt:
                result.opt_outs += 1
                order += 1
                heapq.heappush(scheduled, (t + 60.0, order, "optout", user.index, channel))
                if u_opt[2] < CHURN_SHARE:
                    user.churned = True
                break
    else:
        at = now + u_delay * (WINDOW - 60.0)
    if converted:
        order += 1
        heapq.heappush(scheduled, (at, order, "convert", user.index, ""))
        result.conversions += 1
        if holdout:
            result.holdout_conversions += 1
        if acted:
            result.acted_conversions += 1
    result.converted.append(int(converted))
    result.holdout_decisions += holdout
    result.acted_decisions += acted
    return order


def _slot_of(send_at: float, send: list[float]) -> int:
    """Which slot a send time is (the first whose instant matches; else the nearest)."""
    return int(np.argmin([abs(send_at - t) for t in send]))


# -- report -----------------------------------------------------------------------------------


def compare(results: dict[str, Result]) -> dict[str, Any]:
    s = {name: r.summary() for name, r in results.items()}
    out: dict[str, Any] = {"policies": s}
    if "nudge" in s:
        n = s["nudge"]
        if "oracle" in s and s["oracle"]["conversion_rate_last_fifth"] > 0:
            out["nudge_vs_oracle_last_fifth"] = (
                n["conversion_rate_last_fifth"] / s["oracle"]["conversion_rate_last_fifth"])
            out["nudge_vs_oracle_expected_last_fifth"] = (
                n["expected_rate_last_fifth"] / s["oracle"]["expected_rate_last_fifth"])
        if "rulebook" in s and s["rulebook"]["conversion_rate_last_fifth"] > 0:
            out["nudge_vs_rulebook_last_fifth"] = (
                n["conversion_rate_last_fifth"] / s["rulebook"]["conversion_rate_last_fifth"])
            out["nudge_vs_rulebook_expected_last_fifth"] = (
                n["expected_rate_last_fifth"] / s["rulebook"]["expected_rate_last_fifth"])
            out["uplift_vs_rulebook"] = n["conversion_rate"] - s["rulebook"]["conversion_rate"]
            out["opt_outs_vs_rulebook"] = n["opt_outs"] - s["rulebook"]["opt_outs"]
        out["uplift_vs_holdout"] = n["acted_conversion_rate"] - n["holdout_conversion_rate"]
        done = [
            out.get("nudge_vs_oracle_last_fifth", 0) >= 0.85,
            out.get("nudge_vs_rulebook_last_fifth", 0) >= 1.3,
            out.get("opt_outs_vs_rulebook", 1) <= 0,
        ]
        out["done_when_met"] = all(done)
    return out


def plot(results: dict[str, Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in results.items():
        regret = np.cumsum(np.array(r.best) - np.array(r.expected))
        ax1.plot(np.arange(1, len(regret) + 1), regret, label=name)
        window = max(len(r.expected) // 20, 1)
        exp = np.array(r.expected)
        k = len(exp) // window
        if k:
            rates = exp[: k * window].reshape(k, window).mean(axis=1)
            ax2.plot((np.arange(k) + 1) * window, rates, marker="o", ms=3, label=name)
    ax1.set(title="cumulative regret vs the oracle (expected conversions)",
            xlabel="decisions", ylabel="regret")
    ax2.set(title="expected conversion rate per window", xlabel="decisions",
            ylabel="conversion rate")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'policy':<9} {'decisions':>9} {'conv':>7} {'conv last 1/5':>13} "
             f"{'opt-outs':>8} {'churned':>7} {'contacts/user':>13} {'regret':>8} {'secs':>6}"]
    for name, s in report["policies"].items():
        lines.append(
            f"{name:<9} {s['decisions']:>9} {s['conversion_rate']:>7.4f} "
            f"{s['conversion_rate_last_fifth']:>13.4f} {s['opt_outs']:>8} {s['churned']:>7} "
            f"{s['contacts_per_user']:>13.2f} {s['regret']:>8.1f} {s['seconds']:>6.1f}")
    for name, s in report["policies"].items():
        risk = ", ".join(f"{k} {v:.0f}" for k, v in s["opt_out_risk"].items())
        lines.append(f"{name} expected opt-outs by cause: {risk}")
    for key, value in report.items():
        if key != "policies":
            lines.append(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge simulate", description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=None,
                        help="population size (default: decisions / 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--gamma-scale", type=float, default=GAMMA_SCALE)
    parser.add_argument("--out", type=Path, default=Path("bank-sim-report"),
                        help="folder for summary.json and regret.png")
    parser.add_argument("--keep-data", type=Path, default=None,
                        help="keep nudge's store (data/, campaigns/) here for nudge evaluate")
    parser.add_argument("--validate-ope", type=int, metavar="DECISIONS", default=None,
                        help="instead: check nudge evaluate's estimators against the "
                             "simulator's truth on nudge's log of DECISIONS decisions")
    parser.add_argument("--interval", choices=("bernstein", "normal"), default="bernstein",
                        help="with --validate-ope: nudge evaluate's confidence intervals")
    parser.add_argument("--json", action="store_true", help="with --validate-ope: as JSON")
    args = parser.parse_args(argv)
    if args.validate_ope is not None:
        from nudge.bench.ope_validation import format_validation, validate

        result = validate(args.validate_ope, args.seed, args.users, args.gamma_scale,
                          args.interval)
        print(json.dumps(result, indent=2) if args.json else format_validation(result))
        return 0
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    results = {}
    for p in policies:
        results[p] = run_policy(p, args.decisions, args.seed, args.users,
                                args.keep_data if p == "nudge" else None, args.gamma_scale,
                                progress=print)
        print(f"{p}: done in {results[p].seconds:.1f}s", flush=True)
    report = compare(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out / "regret.png")
    print(format_report(report))
    print(f"wrote {args.out / 'summary.json'} and {args.out / 'regret.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
