"""Campaigns: TOML files declaring the decision space, the goal and the guardrails.

Loaded and validated at start-up; every error names the file, the key and the rule. A
campaign compiles into the policy's ActionSpace (kernels/action_space.py): every combination of
(message, channel, send time, frequency, offer) in C order, the ones its exclusions rule
out masked, each made of one component per dimension value plus the pairwise cells
channel × send time and message × offer; "send nothing" is the last combination.
"""

from __future__ import annotations

import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from nudge.kernels.action_space import ActionSpace, build_action_space
from nudge.kernels.learner import (
    CREDITS,
    DEFAULT_CREDIT,
    DEFAULT_FORGETTING,
    DEFAULT_INTERCEPT_VARIANCE,
    DEFAULT_LEARNED_PRIOR,
    DEFAULT_LINK,
    DEFAULT_PRIOR_PRECISION,
    DEFAULT_SLOPE_PRECISION,
    LEARNED_PRIOR_CELLS,
    LEARNED_PRIOR_NONE,
    LINK_IDENTITY,
    LINK_LOGISTIC,
)
from nudge.kernels.policy import DEFAULT_OPTIMISM, DEFAULT_POLICY
from nudge.server.decisions.triggers import Trigger, parse_triggers
from nudge.server.errors import CampaignError

CHANNELS = ("push", "whatsapp", "sms", "email", "in_app")
DIMENSIONS = ("message", "channel", "send_time", "frequency", "offer")
# Pairwise interaction cells: channel × send time, message × offer (dimension indices).
PAIRS = ((1, 2), (0, 4))
NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
ALGORITHMS = ("squarecb", "thompson")
LINKS = (LINK_LOGISTIC, LINK_IDENTITY)
LEARNED_PRIORS = (LEARNED_PRIOR_NONE, LEARNED_PRIOR_CELLS)
# How many times the goal's value one outcome may be worth at most (Goal.reward_range).
MAX_REWARD_MULTIPLE = 10.0


@dataclass(frozen=True)
class Message:
    name: str
    template: str
    properties: tuple[str, ...]

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the template; raises KeyError naming the first missing property, and
        ValueError (or TypeError) when a value does not fit its format (``"lots"`` for
        ``{amount:,.0f}``)."""
        missing = [p for p in self.properties if p not in values]
        if missing:
            raise KeyError(missing[0])
        return self.template.format_map(values)

    def fills(self, values: Mapping[str, Any]) -> bool:
        """Whether ``values`` fill the template: every property present and of a kind its
        format takes. A message that cannot be filled for this user is masked, as a
        missing property is, never an error for the whole request."""
        return self.text_or_none(values) is not None

    def text_or_none(self, values: Mapping[str, Any]) -> str | None:
        """The filled template, or None when ``values`` do not fill it (:meth:`fills`):
        Decide keeps the text it tried, so a chosen message is not rendered twice."""
        try:
            return self.render(values)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            return None


@dataclass(frozen=True)
class SendTime:
    name: str
    # Minutes after local midnight; None means "as soon as allowed".
    minute_of_day: int | None


@dataclass(frozen=True)
class Frequency:
    name: str
    count: int
    gap_hours: float

    def send_times(self, first: float, until: float) -> list[float]:
        """When its messages go out: from ``first``, every ``gap_hours``, those due by
        ``until`` (the caps count exactly these; a journey delivers exactly these)."""
        gap = self.gap_hours * 3600.0
        return [first + k * gap for k in range(self.count) if first + k * gap <= until]


@dataclass(frozen=True)
class Offer:
    name: str
    credit: bool


@dataclass(frozen=True)
class Goal:
    events: tuple[str, ...]
    value: float
    window_seconds: float
    # Reward (negative) when the user revokes consent for the decision's channel within
    # the window: opting out is a cost the policy learns to avoid. 0 turns it off.
    opt_out_cost: float = 0.0
    # Learned cost of each message a decision sends (channel fees, the customer's
    # attention): a certain cost, so unlike opt-outs it adds no noise to what is learned.
    contact_cost: float = 0.0

    @property
    def reward_range(self) -> tuple[float, float]:
        """The rewards ReportOutcome accepts: from -max(opt_out_cost, value) (an opt-out,
        or undoing a conversion) to value × MAX_REWARD_MULTIPLE (a conversion worth more
        than the usual one). Wider ones would let one client skew every score."""
        return (-max(self.opt_out_cost, self.value), self.value * MAX_REWARD_MULTIPLE)


@dataclass(frozen=True)
class Caps:
    per_channel_day: int | None
    per_channel_week: int | None
    all_channels_day: int | None
    all_channels_week: int | None


@dataclass(frozen=True)
class Guardrails:
    consent: bool
    # (start, end) in minutes after local midnight; the window may wrap past midnight.
    quiet_hours: tuple[int, int] | None
    caps: Caps | None
    holdout: float

    def is_quiet(self, minute_of_day: float) -> bool:
        return self.quiet_hours is not None and in_quiet_hours(minute_of_day, self.quiet_hours)


def in_quiet_hours(minute_of_day: float, quiet_hours: Sequence[int]) -> bool:
    """Whether a local minute of the day falls in quiet hours ``(start, end)`` (minutes
    after local midnight, wrapping past midnight when start > end). One rule for the
    decision's guardrail and the outbox's check when a delivery goes out."""
    start, end = quiet_hours
    if start <= end:
        return start <= minute_of_day < end
    return minute_of_day >= start or minute_of_day < end


@dataclass(frozen=True)
class Exploration:
    """A campaign's [exploration] table. Every default is the kernels' own
    (``nudge.kernels.policy.DEFAULT_POLICY``, ``nudge.kernels.learner``), so a campaign
    without the table runs exactly what the README documents and ``nudge bench`` measures
    (tests/server/decisions/test_campaign_defaults.py holds the three together)."""

    algorithm: str = DEFAULT_POLICY.mode
    # Observation noise variance of the per-component Bayesian regressions.
    noise_variance: float = DEFAULT_POLICY.noise_variance
    # Prior precision (ridge) of each component's bias weight …
    prior_precision: float = DEFAULT_PRIOR_PRECISION
    # … and of its other weights (the context's features).
    slope_precision: float = DEFAULT_SLOPE_PRECISION
    # Prior variance of the logistic link's shared intercept, which takes the base rate
    # (0: none; every component then learns the base rate on its own).
    intercept_variance: float = DEFAULT_INTERCEPT_VARIANCE
    # How a component's scores become a reward: "logistic" (the combination's summed score
    # is a logit, components share each outcome's credit) or "identity" (each component
    # regresses the raw reward on its own).
    link: str = DEFAULT_LINK
    # Which components' slope priors are learned from the data (logistic link): "cells"
    # (each pair's cells share one prior per feature, set by empirical Bayes after every
    # batch) or "none" (every component keeps slope_precision).
    learned_prior: str = DEFAULT_LEARNED_PRIOR
    # How one outcome's information is shared among the combination's components'
    # posteriors (logistic link; kernels/learner.py, "Credit"): "marginal" (each keeps its
    # exact marginal), "sum" (the summed logit's variance as the joint posterior's) or
    # "harmonic" (the joint's cross terms split by the components' variances) or "split"
    # (the outcome's information split by the components' variances).
    credit: str = DEFAULT_CREDIT
    # Per-update forgetting factor (< 1 tracks drift; 1 never forgets).
    forgetting: float = DEFAULT_FORGETTING
    # SquareCB learning rate, scaled by the number of allowed actions.
    gamma_scale: float = DEFAULT_POLICY.gamma_scale
    # SquareCB explores the greedy combination's neighbours (each one dimension away) and
    # spreads explore_all over every allowed combination; false: every combination by gap.
    neighbourhood: bool = True
    explore_all: float = DEFAULT_POLICY.explore_all
    # SquareCB scores each combination by its mean plus this many posterior standard
    # deviations (0: the mean alone).
    optimism: float = DEFAULT_OPTIMISM
    # Monte Carlo draws behind a Thompson-sampling propensity.
    propensity_samples: int = DEFAULT_POLICY.mc_samples
    # "Send nothing" competes as an arm (turn off for messages that must always go out).
    nothing_arm: bool = True


# A "reached" flag looks at most this many days after first seen (the insights summaries
# keep 400 days), and thresholds past this many events are not a behaviour but a firehose.
MAX_REACHED_DAYS = 400
MAX_REACHED_COUNT = 1000
MAX_REACHED_FLAGS = 16


@dataclass(frozen=True)
class ReachedFlag:
    """An insight flag as a feature: 1 when the user did ``event`` at least ``at_least``
    times within ``within_days`` days of first being seen (days counted from the hour of
    their first event, as the insights' early window is), else 0 — "reached driver X"."""

    event: str
    at_least: int
    within_days: int

    @property
    def feature(self) -> str:
        return f"reached.{self.event}.{self.at_least}x{self.within_days}d"


@dataclass(frozen=True)
class ContextSpec:
    """Which features describe the user and the request to the policy."""

    # Event types whose decayed counts are features (the goal events are always added).
    event_types: tuple[str, ...] = ("app_opened", "loan_simulated", "flow_abandoned")
    # Decide request numbers used as features, by name (others are ignored).
    numbers: tuple[str, ...] = ()
    # Decide request strings one-hot encoded: name -> number of hash buckets, or the list of
    # known values (one feature each, plus one for any other value; never collides).
    strings: tuple[tuple[str, int | tuple[str, ...]], ...] = ()
    # Contact pressure as features: the user's messages from any campaign in the last 7
    # days and the hours since the last one (fatigue and opt-out risk grow with them).
    contact_pressure: bool = False
    # Insight flags ("reached driver X"), each a 0/1 feature (``ReachedFlag``).
    reached: tuple[ReachedFlag, ...] = ()


@dataclass(frozen=True)
class Campaign:
    name: str
    description: str
    source: str
    messages: tuple[Message, ...]
    channels: tuple[str, ...]
    send_times: tuple[SendTime, ...]
    frequencies: tuple[Frequency, ...]
    offers: tuple[Offer, ...]
    goal: Goal
    guardrails: Guardrails
    exploration: Exploration
    context: ContextSpec
    space: ActionSpace = field(repr=False)
    # Its [[triggers]], parsed from the same read of the file: a reload never pairs a
    # campaign with another version's triggers.
    triggers: tuple[Trigger, ...] = ()

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type this campaign names (features, goal, triggers, cancellations):
        each keeps a slot of its own in the type registry."""
        return frozenset((*self.context.event_types, *self.goal.events,
                          *(f.event for f in self.context.reached),
                          *(t.event for t in self.triggers),
                          *(e for t in self.triggers for e in t.cancel_on)))

    @property
    def n_components(self) -> int:
        return self.space.n_components

    @property
    def nothing_combo(self) -> int:
        return self.space.nothing_combo

    def combo_values(self, combo: int) -> tuple[int, int, int, int, int] | None:
        """(message, channel, send_time, frequency, offer) indices; None for nothing."""
        if combo == self.space.nothing_combo:
            return None
        return self._combo_values[combo]

    @cached_property
    def _combo_values(self) -> list[tuple[int, int, int, int, int]]:
        # Built once: np.unravel_index per call costs microseconds inside every Decide.
        n = self.space.n_combos - (1 if self.space.nothing_combo >= 0 else 0)
        columns = np.unravel_index(np.arange(n), self.space.dim_sizes)
        return [tuple(v) for v in np.stack(columns, axis=1).tolist()]

    def component_ids(self, dim: str) -> np.ndarray:
        """Component id of each value of a dimension (for guardrail masks; read-only)."""
        return self._component_ids[dim]

    @cached_property
    def _component_ids(self) -> dict[str, np.ndarray]:
        out = {}
        for index, dim in enumerate(DIMENSIONS):
            ids = self.space.components_of_dim(index)
            ids.flags.writeable = False
            out[dim] = ids
        return out

    @cached_property
    def dimension_ids(self) -> dict[str, tuple[int, ...]]:
        """``component_ids`` of every dimension as plain ints (cheap to index per request)."""
        return {dim: tuple(ids.tolist()) for dim, ids in self._component_ids.items()}

    def dimension_names(self, dim: str) -> tuple[str, ...]:
        values: tuple[Any, ...] = {
            "message": self.messages,
            "channel": self.channels,
            "send_time": self.send_times,
            "frequency": self.frequencies,
            "offer": self.offers,
        }[dim]
        return tuple(v if isinstance(v, str) else v.name for v in values)

    def component_names(self) -> list[str]:
        """Readable name per component id, for explanations."""
        names = [f"{dim}={v}" for dim in DIMENSIONS for v in self.dimension_names(dim)]
        names += [f"channel×send_time={c}×{s.name}" for c in self.channels for s in self.send_times]
        names += [f"message×offer={m.name}×{o.name}" for m in self.messages for o in self.offers]
        if self.space.nothing_combo >= 0:
            names.append("nothing")
        return names


def _fail(source: str, key: str, rule: str) -> CampaignError:
    return CampaignError(f"{source}: {key}: {rule}")


def _table(data: Mapping[str, Any], key: str, source: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict) or not value:
        raise _fail(source, key, "must be a non-empty table")
    return value


def _name(value: str, key: str, source: str) -> str:
    if not NAME.fullmatch(value):
        raise _fail(source, key, f"{value!r} must match [a-z][a-z0-9_]{{0,63}}")
    return value


def _minute(value: Any, key: str, source: str) -> int:
    match = CLOCK.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise _fail(source, key, f'must be a local time "HH:MM", got {value!r}')
    return int(match.group(1)) * 60 + int(match.group(2))


def _number(value: Any, key: str, source: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(source, key, f"must be a number, got {value!r}")
    if not low <= value <= high:
        raise _fail(source, key, f"must be in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _count(value: Any, key: str, source: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(source, key, f"must be a whole number ≥ {low}, got {value!r}")
    return value


def _known(data: Mapping[str, Any], allowed: set[str], where: str, source: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            expected = f"unknown key (expected one of {sorted(allowed)})"
            raise _fail(source, f"{prefix}{key}", expected)


def _messages(data: dict[str, Any], source: str) -> tuple[Message, ...]:
    out = []
    for name, template in _table(data, "messages", source).items():
        key = f"messages.{name}"
        _name(name, key, source)
        if not isinstance(template, str) or not template.strip():
            raise _fail(source, key, "must be a non-empty template string")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise _fail(source, key, f"is not a valid template: {exc}") from None
        for f in fields:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", f):
                raise _fail(source, key, f"placeholder {{{f}}} must be a plain property name")
        out.append(Message(name, template, tuple(dict.fromkeys(fields))))
    return tuple(out)


def _channels(data: dict[str, Any], source: str) -> tuple[str, ...]:
    values = _table(data, "channels", source).get("values")
    if not isinstance(values, list) or not values:
        raise _fail(source, "channels.values", "must be a non-empty list")
    for v in values:
        if v not in CHANNELS:
            raise _fail(source, "channels.values", f"{v!r} is not one of {list(CHANNELS)}")
    if len(set(values)) != len(values):
        raise _fail(source, "channels.values", "must not repeat a channel")
    return tuple(values)


def _send_times(data: dict[str, Any], source: str) -> tuple[SendTime, ...]:
    out = []
    for name, value in _table(data, "send_times", source).items():
        key = f"send_times.{name}"
        _name(name, key, source)
        out.append(SendTime(name, None if value == "now" else _minute(value, key, source)))
    return tuple(out)


def _frequencies(data: dict[str, Any], source: str) -> tuple[Frequency, ...]:
    out = []
    for name, spec in _table(data, "frequencies", source).items():
        key = f"frequencies.{name}"
        _name(name, key, source)
        if not isinstance(spec, dict):
            raise _fail(source, key, "must be a table such as { count = 1 }")
        _known(spec, {"count", "gap_hours"}, key, source)
        count = _count(spec.get("count"), f"{key}.count", source)
        gap = _number(spec.get("gap_hours", 0), f"{key}.gap_hours", source, 0, 24 * 30)
        if count > 1 and gap <= 0:
            raise _fail(source, f"{key}.gap_hours", "must be > 0 when count > 1")
        out.append(Frequency(name, count, gap))
    return tuple(out)


def _offers(data: dict[str, Any], source: str) -> tuple[Offer, ...]:
    out = []
    for name, spec in _table(data, "offers", source).items():
        key = f"offers.{name}"
        _name(name, key, source)
        if not isinstance(spec, dict):
            raise _fail(source, key, "must be a table such as { credit = true }")
        _known(spec, {"credit"}, key, source)
        credit = spec.get("credit", False)
        if not isinstance(credit, bool):
            raise _fail(source, f"{key}.credit", "must be true or false")
        out.append(Offer(name, credit))
    return tuple(out)


def _goal(data: dict[str, Any], source: str) -> Goal:
    goal = _table(data, "goal", source)
    _known(goal, {"events", "value", "window_hours", "opt_out_cost", "contact_cost"}, "goal",
           source)
    events = goal.get("events")
    if not isinstance(events, list) or not events:
        raise _fail(source, "goal.events", "must be a non-empty list of event types")
    for e in events:
        if not isinstance(e, str) or not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", e):
            raise _fail(source, "goal.events", f"{e!r} is not a valid event type")
    value = _number(goal.get("value", 1.0), "goal.value", source, 0, 1e9)
    window = _number(goal.get("window_hours"), "goal.window_hours", source, 1 / 60, 24 * 90)
    cost = _number(goal.get("opt_out_cost", 0.0), "goal.opt_out_cost", source, 0, 1e9)
    contact = _number(goal.get("contact_cost", 0.0), "goal.contact_cost", source, 0, 1e9)
    return Goal(tuple(events), value, window * 3600.0, cost, contact)


def _guardrails(data: dict[str, Any], source: str) -> Guardrails:
    g = data.get("guardrails", {})
    if not isinstance(g, dict):
        raise _fail(source, "guardrails", "must be a table")
    _known(g, {"consent", "quiet_hours", "holdout", "caps"}, "guardrails", source)
    consent = g.get("consent", True)
    if not isinstance(consent, bool):
        raise _fail(source, "guardrails.consent", "must be true or false")
    quiet = g.get("quiet_hours", False)
    quiet_hours = None
    if quiet is not False:
        if not isinstance(quiet, dict):
            raise _fail(source, "guardrails.quiet_hours", "must be { start, end } or false")
        _known(quiet, {"start", "end"}, "guardrails.quiet_hours", source)
        start = _minute(quiet.get("start"), "guardrails.quiet_hours.start", source)
        end = _minute(quiet.get("end"), "guardrails.quiet_hours.end", source)
        if start == end:
            raise _fail(source, "guardrails.quiet_hours", "start and end must differ")
        quiet_hours = (start, end)
    holdout = _number(g.get("holdout", 0.0), "guardrails.holdout", source, 0.0, 0.5)
    caps = None
    raw_caps = g.get("caps", False)
    if raw_caps is not False:
        if not isinstance(raw_caps, dict):
            raise _fail(source, "guardrails.caps", "must be a table or false")
        names = ("per_channel_day", "per_channel_week", "all_channels_day", "all_channels_week")
        _known(raw_caps, set(names), "guardrails.caps", source)
        values = {
            n: None if n not in raw_caps else _count(raw_caps[n], f"guardrails.caps.{n}", source, 0)
            for n in names
        }
        caps = Caps(**values)
    return Guardrails(consent, quiet_hours, caps, holdout)


def _exploration(data: dict[str, Any], source: str) -> Exploration:
    e = data.get("exploration", {})
    if not isinstance(e, dict):
        raise _fail(source, "exploration", "must be a table")
    defaults = Exploration()
    _known(e, {f for f in Exploration.__dataclass_fields__}, "exploration", source)
    algorithm = e.get("algorithm", defaults.algorithm)
    if algorithm not in ALGORITHMS:
        raise _fail(source, "exploration.algorithm", f"must be one of {list(ALGORITHMS)}")
    return Exploration(
        algorithm=algorithm,
        noise_variance=_number(
            e.get("noise_variance", defaults.noise_variance), "exploration.noise_variance",
            source, 1e-6, 1e6,
        ),
        prior_precision=_number(
            e.get("prior_precision", defaults.prior_precision), "exploration.prior_precision",
            source, 1e-6, 1e6,
        ),
        slope_precision=_number(
            e.get("slope_precision", defaults.slope_precision), "exploration.slope_precision",
            source, 1e-6, 1e6,
        ),
        link=_link(e.get("link", defaults.link), source),
        learned_prior=_choice(e.get("learned_prior", defaults.learned_prior), LEARNED_PRIORS,
                              "exploration.learned_prior", source),
        intercept_variance=_number(
            e.get("intercept_variance", defaults.intercept_variance),
            "exploration.intercept_variance", source, 0.0, 1e3,
        ),
        credit=_choice(e.get("credit", defaults.credit), tuple(CREDITS),
                       "exploration.credit", source),
        forgetting=_number(
            e.get("forgetting", defaults.forgetting), "exploration.forgetting", source, 0.9, 1.0
        ),
        gamma_scale=_number(
            e.get("gamma_scale", defaults.gamma_scale), "exploration.gamma_scale", source,
            1e-3, 1e9,
        ),
        propensity_samples=_count(
            e.get("propensity_samples", defaults.propensity_samples),
            "exploration.propensity_samples", source,
        ),
        nothing_arm=_bool(e.get("nothing_arm", defaults.nothing_arm), "exploration.nothing_arm",
                          source),
        neighbourhood=_bool(e.get("neighbourhood", defaults.neighbourhood),
                            "exploration.neighbourhood", source),
        explore_all=_number(e.get("explore_all", defaults.explore_all),
                            "exploration.explore_all", source, 0.0, 1.0),
        optimism=_number(e.get("optimism", defaults.optimism), "exploration.optimism", source,
                         0.0, 1e3),
    )


def _link(value: Any, source: str) -> str:
    if value not in LINKS:
        raise _fail(source, "exploration.link", f"must be one of {list(LINKS)}")
    return str(value)


def _choice(value: Any, choices: tuple[str, ...], key: str, source: str) -> str:
    if value not in choices:
        raise _fail(source, key, f"must be one of {list(choices)}")
    return str(value)


def _bool(value: Any, key: str, source: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, key, "must be true or false")
    return value


def _exclusions(
    data: dict[str, Any], source: str, names: dict[str, tuple[str, ...]]
) -> list[dict[str, int]]:
    rules = data.get("exclude", [])
    if not isinstance(rules, list):
        raise _fail(source, "exclude", "must be an array of tables ([[exclude]])")
    out = []
    for i, rule in enumerate(rules):
        key = f"exclude[{i}]"
        if not isinstance(rule, dict) or not rule:
            raise _fail(source, key, "must be a non-empty table")
        _known(rule, set(DIMENSIONS), key, source)
        compiled = {}
        for dim, value in rule.items():
            if value not in names[dim]:
                raise _fail(source, f"{key}.{dim}", f"{value!r} is not one of {list(names[dim])}")
            compiled[dim] = names[dim].index(value)
        out.append(compiled)
    return out


def _allowed(dims: dict[str, tuple[str, ...]], exclusions: list[dict[str, int]]) -> np.ndarray:
    """uint8 mask over every combination in C order (message slowest, offer fastest)."""
    sizes = [len(dims[d]) for d in DIMENSIONS]
    values = np.indices(sizes).reshape(len(sizes), -1).T
    allowed = np.ones(values.shape[0], dtype=bool)
    for rule in exclusions:
        hit = np.ones(values.shape[0], dtype=bool)
        for dim, v in rule.items():
            hit &= values[:, DIMENSIONS.index(dim)] == v
        allowed &= ~hit
    return allowed.astype(np.uint8)


def _context(data: dict[str, Any], source: str, goal: Goal) -> ContextSpec:
    c = data.get("context", {})
    if not isinstance(c, dict):
        raise _fail(source, "context", "must be a table")
    _known(c, {"event_types", "numbers", "strings", "contact_pressure", "reached"}, "context",
           source)
    default = ContextSpec()
    event_types = c.get("event_types", list(default.event_types))
    if not isinstance(event_types, list) or not all(
        isinstance(e, str) and re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", e) for e in event_types
    ):
        raise _fail(source, "context.event_types", "must be a list of event types")
    numbers = c.get("numbers", [])
    if not isinstance(numbers, list) or not all(isinstance(n, str) and n for n in numbers):
        raise _fail(source, "context.numbers", "must be a list of request number names")
    strings = c.get("strings", {})
    if not isinstance(strings, dict):
        raise _fail(source, "context.strings",
                    "must be a table of name = buckets or name = [known values]")
    encodings: list[tuple[str, int | tuple[str, ...]]] = []
    for name, spec in strings.items():
        key = f"context.strings.{name}"
        if isinstance(spec, list):
            if not spec or not all(isinstance(v, str) and v for v in spec):
                raise _fail(source, key, "must list at least one non-empty string value")
            if len(set(spec)) != len(spec):
                raise _fail(source, key, "must not list a value twice")
            encodings.append((name, tuple(spec)))
        else:
            encodings.append((name, _count(spec, key, source)))
    pressure = c.get("contact_pressure", False)
    if not isinstance(pressure, bool):
        raise _fail(source, "context.contact_pressure", "must be true or false")
    types = tuple(dict.fromkeys([*event_types, *goal.events]))
    return ContextSpec(types, tuple(numbers), tuple(encodings), pressure,
                       _reached(c.get("reached", []), source))


def _reached(value: Any, source: str) -> tuple[ReachedFlag, ...]:
    """``reached = [{ event = "pix_sent", at_least = 3, within_days = 7 }, ...]``."""
    if not isinstance(value, list) or len(value) > MAX_REACHED_FLAGS:
        raise _fail(source, "context.reached",
                    f"must be a list of at most {MAX_REACHED_FLAGS} tables "
                    '{ event = "type", at_least = k, within_days = n }')
    flags: list[ReachedFlag] = []
    for i, entry in enumerate(value):
        key = f"context.reached[{i}]"
        if not isinstance(entry, dict):
            raise _fail(source, key, 'must be a table { event = "type", at_least = k, '
                                     "within_days = n }")
        _known(entry, {"event", "at_least", "within_days"}, key, source)
        for part in ("event", "at_least", "within_days"):
            if part not in entry:
                raise _fail(source, f"{key}.{part}", "is required")
        event = entry["event"]
        if not isinstance(event, str) or not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", event):
            raise _fail(source, f"{key}.event", f"must be an event type, got {event!r}")
        at_least = _count(entry["at_least"], f"{key}.at_least", source)
        if at_least > MAX_REACHED_COUNT:
            raise _fail(source, f"{key}.at_least", f"must be at most {MAX_REACHED_COUNT}")
        days = _count(entry["within_days"], f"{key}.within_days", source)
        if days > MAX_REACHED_DAYS:
            raise _fail(source, f"{key}.within_days",
                        f"must be at most {MAX_REACHED_DAYS} (the summaries' horizon)")
        flag = ReachedFlag(event, at_least, days)
        if flag in flags:
            raise _fail(source, key, "names the same flag as an earlier entry")
        flags.append(flag)
    return tuple(flags)


def parse_campaign(text: str, source: str) -> Campaign:
    """Parse and validate one campaign's TOML text (``source`` names it in errors)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{source}: not valid TOML: {exc}") from None
    _known(
        data,
        {"campaign", "messages", "channels", "send_times", "frequencies", "offers", "exclude",
         "goal", "guardrails", "exploration", "context", "triggers"},
        "", source,
    )
    head = _table(data, "campaign", source)
    _known(head, {"name", "description"}, "campaign", source)
    name = _name(head.get("name", ""), "campaign.name", source)
    description = head.get("description", "")
    if not isinstance(description, str):
        raise _fail(source, "campaign.description", "must be a string")
    messages = _messages(data, source)
    channels = _channels(data, source)
    send_times = _send_times(data, source)
    frequencies = _frequencies(data, source)
    offers = _offers(data, source)
    dims = {
        "message": tuple(m.name for m in messages),
        "channel": channels,
        "send_time": tuple(s.name for s in send_times),
        "frequency": tuple(f.name for f in frequencies),
        "offer": tuple(o.name for o in offers),
    }
    allowed = _allowed(dims, _exclusions(data, source, dims))
    if not allowed.any():
        raise _fail(source, "exclude", "rules out every combination")
    exploration = _exploration(data, source)
    space = build_action_space(
        [len(dims[d]) for d in DIMENSIONS], pairs=PAIRS, include_nothing=exploration.nothing_arm,
        allowed=allowed,
    )
    goal = _goal(data, source)
    return Campaign(
        name=name,
        description=description,
        source=source,
        messages=messages,
        channels=channels,
        send_times=send_times,
        frequencies=frequencies,
        offers=offers,
        goal=goal,
        guardrails=_guardrails(data, source),
        exploration=exploration,
        context=_context(data, source, goal),
        space=space,
        triggers=parse_triggers(data, source, name, goal.events),
    )


def shipped_campaigns_dir() -> Path:
    return Path(str(resources.files("nudge.server") / "campaigns"))


def load_campaigns(folder: Path | None = None) -> dict[str, Campaign]:
    """Every ``*.toml`` in ``folder`` (the shipped campaigns when None), by name."""
    folder = folder or shipped_campaigns_dir()
    if not folder.is_dir():
        raise CampaignError(f"{folder}: campaigns folder does not exist")
    campaigns: dict[str, Campaign] = {}
    for path in sorted(folder.glob("*.toml")):
        campaign = parse_campaign(path.read_text(), str(path))
        if campaign.name in campaigns:
            raise _fail(
                str(path), "campaign.name",
                f"{campaign.name!r} is already defined in {campaigns[campaign.name].source}",
            )
        campaigns[campaign.name] = campaign
    if not campaigns:
        raise CampaignError(f"{folder}: no campaign files (*.toml)")
    return campaigns
