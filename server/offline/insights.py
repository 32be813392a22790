"""Insights: which early behaviours go with retention, which abandoned flows with churn,
what the most valuable customers engage with — estimated beyond mere activity.

Compass-style analysis (Amplitude): for a cohort of new users, compare users who did event
E at least k times in their first N days with those who did not. Its weakness is that
everything an active user does correlates with retention, so "opened the app" ranks first.
Here every comparison is made *within strata of early activity*: users are grouped by an
activity score (log-spaced bins), and the effect is the Mantel–Haenszel risk difference over
the strata:

    RD = Σ_h (a_h n0_h − c_h n1_h) / N_h  /  Σ_h n1_h n0_h / N_h

(``a``, ``c``: outcomes among the ``n1`` who reached and the ``n0`` who did not). Why
stratification and Mantel–Haenszel rather than a regression: the strata are many and the
outermost small when a cohort is a few thousand users; the MH estimator stays unbiased with
sparse strata (where a stratified regression's per-stratum intercepts do not), needs no
model of how activity bends retention (the strata absorb any shape), and its variance has
a closed form valid in both the sparse and the large-strata limit (Sato 1989, as used by
Greenland & Robins 1985), so the whole event × threshold grid is a few array operations
over counts the Numba kernel made. It answers on the risk-difference scale: "+12 points of
retention", the scale a product team reads and the scale planted effects are stated in.

The activity score (``insights_activity.py``) is a weighted sum of the user's early counts
of every event type and days active, each weighed by what it says about activity under a
one-factor model of the counts (signal over noise, ``ℓ_i / ψ_i``), **the candidate's own
events included**. Why included, and why weighted: under Poisson counts whose rates scale
with a latent activity level, the plain total of the markers is that level's sufficient
statistic, so *given the score* a marker's own count says nothing more about activity and
a pure activity marker compares equal to its stratum; a behaviour with a life of its own
weighs little, so reaching it barely moves its users' stratum and its effect is compared
against users as active as they are. The earlier strata (days active × the plain count of
the *other* events) left the candidate's own count out, and it is itself a measurement of
activity: within a stratum a marker's count still ranked users by activity, +2 to +3 points
of residual confounding for every decoy at every threshold on ``heavy_decoys`` seeds 0-5
(and +6 to +8 at the thresholds picked on seed 17, where a +10 driver came out 2.8 standard
errors low at +4.3 and ranked below three decoys); counting all events unweighted
over-corrects (the decoys at -2 to -3: given a plain total, a marker's count says the user
did fewer of the drivers' and noise events). With the weighted score the decoys' mean
adjusted lift is about 0 and the drivers' estimates are unbiased (mean over seeds 21-60
within 0.6 points of the planted effect for every driver of every world).

Each event's threshold k and its place in the ranking come from the MH estimate **shrunk
toward zero**, with a prior fitted to the analysis itself. Why: most behaviours add nothing
beyond activity, and an estimate from little information is mostly noise. The weak slice of
the unshrunk ranking (the plain estimate's Bonferroni lower bound) was an event at an extreme
threshold compared within sparse strata — ``notification_opened`` >= 14 times, 41 users, of
whom only about 12 users' worth of information (``Σ n1 n0 / N``) faced comparable users who
had not reached it, +44 ± 22 points — in 5 of 400 runs of seeds 61-160. The estimate there is
not only noisy but also less normal than its standard error says: over seeds 61-160, the
decoy and noise cells (true effect 0) with less than 40 users' worth of information had
``z > 3`` in 0.4-2.6% of cells against the normal 0.13% (Sato's variance is plugged in
from the same few outcomes that make the estimate extreme; it is right in the limit, not for
a dozen users). A normal prior, ``effect ~ N(0, τ²)``, gives each cell's posterior

    mean = f · RD,  sd = √f · SE,   f = τ² / (τ² + SE²)

so a cell from thousands of users (SE << τ) is barely moved, while a cell with SE ≈ 2τ keeps
a fifth of its estimate — the shrinkage grows with the very uncertainty that makes a fluke
possible, without a cut-off on group size. ``τ²`` is estimated from the analysis's own cells
(every event × threshold tested): ``mean(RD²) − mean(SE²)`` (method of moments: with prior
mean 0, ``E RD² = τ² + SE²``), floored at ``PRIOR_FLOOR`` — so the prior states how large
effects are *in this cohort*, not a constant fitted to a generator (over seeds 61-160 it came
out 0.02-0.09 for retention, 0.06-0.13 for churn flows). Each event's threshold is the one
whose posterior is most surely positive (largest ``mean / sd = √f · z``): below the inflection
the reached group is diluted with users who do not get the effect; above it the effect stays
but fewer users reach it, the interval widens and the shrinkage grows. (Picking the most
significant plain estimate, as before, let a small group's noise pick a far-too-high k — a
``savings_goal_created`` >= 4-8 for a planted 2-3 — in 5 of 400 runs of seeds 61-160; the
posterior pick did so in 2.) Events rank by the posterior's lower bound at that threshold,
the effect we are most sure of first, allowing for the threshold having been *chosen* as
the best of the ``m`` the event tried (Bonferroni over them: ``z`` at ``1 - 0.025 / m``):
picking the best of many thresholds favours an estimate that came out high by chance (the
winner's curse), and an activity marker with counts high enough to try all 15 thresholds
has more chances at it than a driver most users do once or twice. The shrinkage decides
only the threshold and the order: the reported ``adjusted_lift`` and its 95% interval stay
the plain MH estimate and its Sato interval, so the numbers a reader sees keep their plain
meaning (and the interval coverage measured for them). Development: the shrinkage was
chosen over seeds 0-160 (among a minimum of information per comparison, the pooled-null
variance and a fixed prior: README "Insights"); seeds 161-360 were run once, after the
choice. What no ranking here can remove (measured, README "Insights"): in about 1 run in
300 of 6,000-8,000-user worlds a +10-point driver is drawn 2-3 standard errors low and a
decoy 2-4 high; redrawing only the outcome of those runs (same users, same early events)
makes the decoy's lift about 0 and the failure repeat at that base rate, and the estimates
are unbiased with the right spread over seeds — it is the outcome's luck, which only more
users per cohort reduce (the alternative rankings tried did no better). Every event ×
threshold tried gets a two-sided p-value (normal approximation),
and Benjamini–Hochberg q-values are computed over all of them. A comparison with fewer
than ``min_users`` users on either side is not tested and never ranked: an event none of
whose thresholds qualify is reported under ``underpowered``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import lmdb
import numpy as np

from nudge.kernels import insights as kernels
from nudge.server.errors import InvalidArgument
from nudge.server.offline import insights_activity as activity_score
from nudge.server.storage.tables import insights as table

# Bins of the early activity score (in events; ``insights_activity``), the strata:
# log-spaced (one more event matters at 3, not at 300), fine enough that users of one
# stratum are about equally active.
COUNT_EDGES = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 19, 22, 26, 30, 35, 40, 46,
                        53, 61, 70, 80, 92, 106, 122, 140, 161, 185, 213, 245, 282, 324],
                       np.int64)
Z95 = 1.959963984540054
MAX_EARLY_DAYS = 28
MAX_THRESHOLD = 15
MIN_USERS = 30
HOUR = 3600
# The prior's smallest standard deviation (1 point): keeps the posterior defined when no
# effect in the analysis varies beyond noise (every estimate then shrinks almost to zero and
# the order follows the evidence, ``√f · z``).
PRIOR_FLOOR = 0.01


class InsightsError(InvalidArgument):
    """A request the insights cannot answer: INVALID_ARGUMENT naming the field."""


@dataclass(frozen=True)
class Population:
    """Every user's summary entries, decoded for the kernels (see ``tables.insights``)."""

    offsets: np.ndarray
    hours: np.ndarray
    keys: np.ndarray
    counts: np.ndarray
    amounts: np.ndarray
    names: list[str]  # by key id

    @property
    def n_users(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def activity(self) -> np.ndarray:
        """Keys that are events (not flow step marks)."""
        return np.array([table.parse_key_name(n) is None for n in self.names], np.uint8)

    def key_mask(self, names: Sequence[str]) -> np.ndarray:
        wanted = set(names)
        return np.array([n in wanted for n in self.names], np.uint8)


def load_population(txn: lmdb.Transaction, dbs: Any) -> Population:
    """Every summary in the store, as flat arrays (one pass over the table)."""
    offsets, entries = table.scan(txn, dbs)
    ids = table.key_ids(txn, dbs)
    return from_entries(offsets, entries, ids)


def from_entries(offsets: np.ndarray, entries: np.ndarray, ids: dict[str, int]) -> Population:
    names = table.names_by_id(ids) or [""]
    if entries.size and int(entries["key"].max()) >= len(names):
        names += [""] * (int(entries["key"].max()) + 1 - len(names))
    return Population(offsets, np.ascontiguousarray(entries["hour"]),
                      np.ascontiguousarray(entries["key"]),
                      np.ascontiguousarray(entries["count"]),
                      entries["amount"].astype(np.float64), names)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Cohort:
    """Users first seen in ``[start, end)`` (epoch seconds; None: unbounded), judged at
    ``now``."""

    start: float | None
    end: float | None
    now: float


@dataclass(frozen=True)
class RetentionQuery:
    cohort: Cohort
    early_days: int = 7
    retained_from_day: int = 60
    retained_to_day: int = 90
    retained_event_types: tuple[str, ...] = ()
    max_drivers: int = 10
    max_threshold: int = MAX_THRESHOLD
    min_users: int = MIN_USERS


@dataclass(frozen=True)
class ChurnQuery:
    cohort: Cohort
    early_days: int = 14
    retained_from_day: int = 60
    retained_to_day: int = 90
    flow_event_type: str = "flow_abandoned"
    max_flows: int = 10
    min_users: int = MIN_USERS


@dataclass(frozen=True)
class ValueQuery:
    cohort: Cohort
    goal_event_types: tuple[str, ...] = ("loan_completed",)
    value_days: int = 90
    early_days: int = 7
    top_fraction: float = 0.1
    max_drivers: int = 10
    max_threshold: int = MAX_THRESHOLD
    min_users: int = MIN_USERS


# --------------------------------------------------------------------------- results


@dataclass
class Driver:
    """One event (or flow step) at its best threshold, against users as active otherwise."""

    event_type: str
    min_count: int
    users: int
    outcome_if_reached: float
    outcome_if_not: float
    lift: float
    adjusted_lift: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_value: float = math.nan
    q_value: float = math.nan
    too_few_users: bool = False
    text: str = ""
    flow: str = ""
    step: str = ""
    key: int = -1  # the summary key it was counted under

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in self.__dict__.items() if k != "key"}


@dataclass
class Findings:
    """What one analysis found: the cohort, then the ranked drivers."""

    cohort_users: int
    judged_users: int
    too_young: int
    outcome_rate: float
    drivers: list[Driver]
    underpowered: list[Driver]
    tested: int
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"cohort_users": self.cohort_users, "judged_users": self.judged_users,
                "too_young": self.too_young, "outcome_rate": self.outcome_rate,
                "tested": self.tested, **self.extra,
                "drivers": [d.to_dict() for d in self.drivers],
                "underpowered": [d.to_dict() for d in self.underpowered]}


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Estimates:
    """Per candidate x threshold: raw and adjusted comparison (arrays ``[C, K]``)."""

    n1: np.ndarray
    a: np.ndarray
    n0: np.ndarray
    c: np.ndarray
    rd: np.ndarray
    se: np.ndarray
    p: np.ndarray
    tested: np.ndarray

    @property
    def ci_low(self) -> np.ndarray:
        return self.rd - Z95 * self.se

    @property
    def ci_high(self) -> np.ndarray:
        return self.rd + Z95 * self.se


def mantel_haenszel(
    reached: np.ndarray, reached_pos: np.ndarray, base_n: np.ndarray, base_pos: np.ndarray,
    min_users: int,
) -> Estimates:
    """MH risk difference and its Sato variance for every candidate x threshold."""
    n_h = base_n[None, None, :].astype(np.float64)                      # [1, 1, H]
    pos_h = base_pos[None, None, :].astype(np.float64)
    n1 = reached.astype(np.float64)                                     # [C, K, H]
    a = reached_pos.astype(np.float64)
    n0 = n_h - n1
    c = pos_h - a
    with np.errstate(divide="ignore", invalid="ignore"):
        big_n = np.where(n_h > 0, n_h, 1.0)
        w = n1 * n0 / big_n
        num = ((a * n0 - c * n1) / big_n).sum(-1)
        den = w.sum(-1)
        rd = num / den
        p_h = (n1 * n1 * c - n0 * n0 * a + n1 * n0 * (n0 - n1) / 2.0) / (big_n * big_n)
        q_h = (a * (n0 - c) + c * (n1 - a)) / (2.0 * big_n)
        var = (rd * p_h.sum(-1) + q_h.sum(-1)) / (den * den)
        se = np.sqrt(np.maximum(var, 0.0))
        z = rd / se
    n1_all, n0_all = n1.sum(-1), n0.sum(-1)
    tested = (n1_all >= min_users) & (n0_all >= min_users) & (den > 0) & np.isfinite(se)
    tested &= se > 0
    p = np.full(rd.shape, np.nan)
    zt = np.abs(z[tested])
    p[tested] = np.array([math.erfc(v / math.sqrt(2.0)) for v in zt.ravel()])
    return Estimates(n1_all.astype(np.int64), a.sum(-1).astype(np.int64),
                     n0_all.astype(np.int64), c.sum(-1).astype(np.int64), rd, se, p, tested)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values of the finite p-values (NaN stays NaN)."""
    q = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    values = p[ok]
    m = values.size
    if m == 0:
        return q
    order = np.argsort(values)
    ranked = values[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[ok] = out
    return q


# --------------------------------------------------------------------------- analyses


def _cohort_users(pop: Population, first: np.ndarray, cohort: Cohort,
                  judge_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Users first seen in the cohort's range: (judged users, too young users)."""
    now_hour = cohort.now / HOUR
    lo = 0.0 if cohort.start is None else math.floor(cohort.start / HOUR)
    hi = now_hour if cohort.end is None else cohort.end / HOUR
    in_cohort = (first >= 0) & (first >= lo) & (first < hi)
    old_enough = first + judge_days * 24 <= now_hour
    return np.flatnonzero(in_cohort & old_enough), np.flatnonzero(in_cohort & ~old_enough)


def _check_window(early_days: int, from_day: int, to_day: int, prefix: str = "") -> None:
    if not 1 <= early_days <= MAX_EARLY_DAYS:
        raise InsightsError("early_days", f"must be 1-{MAX_EARLY_DAYS}, got {early_days}")
    if not 0 <= from_day < to_day <= table.HORIZON_DAYS:
        raise InsightsError(f"{prefix}retained_from_day",
                            f"need 0 <= retained_from_day < retained_to_day <= "
                            f"{table.HORIZON_DAYS}, got {from_day} and {to_day}")


def _estimates(pop: Population, first: np.ndarray, outcome: np.ndarray,
               candidate: np.ndarray, activity: np.ndarray, judged: np.ndarray,
               early_days: int, max_k: int, min_users: int) -> Estimates:
    """Weigh the judged users' activity score (``insights_activity``), count the tables
    in its strata, estimate."""
    sums, cross, n = kernels.early_moments(pop.offsets, pop.hours, pop.keys, pop.counts,
                                           first, activity, judged, early_days)
    weights, day_weight = activity_score.activity_weights(sums, cross, n, activity)
    tables = kernels.threshold_tables(
        pop.offsets, pop.hours, pop.keys, pop.counts, first, outcome, candidate, activity,
        weights, day_weight, judged, early_days, max_k, COUNT_EDGES)
    return mantel_haenszel(*tables, min_users)


def _candidates(pop: Population, wanted: np.ndarray) -> tuple[np.ndarray, list[int]]:
    candidate = np.full(len(pop.names), -1, np.int64)
    keys = [k for k in range(len(pop.names)) if wanted[k]]
    candidate[keys] = np.arange(len(keys))
    return candidate, keys


def prior_variance(est: Estimates) -> float:
    """``τ²`` of the ranking's prior ``N(0, τ²)`` (module doc): the method-of-moments
    estimate over every tested cell, ``mean(RD²) − mean(SE²)``, at least ``PRIOR_FLOOR²``."""
    t = est.tested
    if not t.any():
        return PRIOR_FLOOR ** 2
    tau2 = float(np.mean(est.rd[t] ** 2) - np.mean(est.se[t] ** 2))
    return max(tau2, PRIOR_FLOOR ** 2)


def shrunk(rd: np.ndarray, se: np.ndarray, tau2: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior (mean, sd) of an effect estimated ``rd ± se`` under the prior
    ``N(0, tau2)``: ``f · rd`` and ``√f · se`` with ``f = tau2 / (tau2 + se²)``."""
    f = tau2 / (tau2 + se * se)
    return f * rd, np.sqrt(f) * se


def _drivers(est: Estimates, keys: list[int], name_of: Any,
             ) -> tuple[list[Driver], list[Driver], int]:
    q = benjamini_hochberg(np.where(est.tested, est.p, np.nan))
    ranked: list[Driver] = []
    underpowered: list[Driver] = []
    rank_low: dict[int, float] = {}
    mean, sd = shrunk(est.rd, est.se, prior_variance(est))
    with np.errstate(divide="ignore", invalid="ignore"):
        sure = np.where(est.tested, mean / sd, -np.inf)
    for row, key in enumerate(keys):
        if not est.tested[row].any():
            k = int(np.argmax(est.n1[row] > 0)) if est.n1[row].any() else -1
            if k >= 0:
                underpowered.append(_driver(name_of(key), key, est, row, k, q, tested=False))
            continue
        # The threshold whose shrunk effect is most surely positive; the event ranks by
        # that posterior's lower bound, allowing for the threshold having been picked as
        # the best of the m it tried (Bonferroni over them: z at 1 - 0.025 / m).
        k = int(np.argmax(sure[row]))
        d = _driver(name_of(key), key, est, row, k, q, tested=True)
        m = int(est.tested[row].sum())
        rank_low[id(d)] = float(mean[row, k]) - _z_upper(0.025 / m) * float(sd[row, k])
        ranked.append(d)
    ranked.sort(key=lambda d: -rank_low[id(d)])
    return ranked, underpowered, int(est.tested.sum())


def _z_upper(tail: float) -> float:
    """The standard normal's quantile with ``tail`` above it."""
    return NormalDist().inv_cdf(1.0 - tail)


def _driver(name: str, key: int, est: Estimates, row: int, k: int, q: np.ndarray,
            tested: bool) -> Driver:
    n1, n0 = int(est.n1[row, k]), int(est.n0[row, k])
    p1 = est.a[row, k] / n1 if n1 else math.nan
    p0 = est.c[row, k] / n0 if n0 else math.nan
    d = Driver(event_type=name, min_count=k + 1, users=n1, outcome_if_reached=float(p1),
               outcome_if_not=float(p0), lift=float(p1 - p0), too_few_users=not tested,
               key=key)
    if tested:
        d.adjusted_lift = float(est.rd[row, k])
        d.ci_low, d.ci_high = float(est.ci_low[row, k]), float(est.ci_high[row, k])
        d.p_value, d.q_value = float(est.p[row, k]), float(q[row, k])
    return d


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _retention_estimates(
    pop: Population, query: RetentionQuery,
) -> tuple[Estimates, list[int], np.ndarray, np.ndarray, np.ndarray]:
    """(estimates, candidate keys, judged users, too young users, retained per user)."""
    _check_window(query.early_days, query.retained_from_day, query.retained_to_day)
    if query.max_threshold < 1 or query.max_threshold > 100:
        raise InsightsError("max_threshold", "must be 1-100")
    activity = pop.activity
    retained_keys = activity if not query.retained_event_types \
        else pop.key_mask(query.retained_event_types)
    first, retained, _ = kernels.user_outcomes(
        pop.offsets, pop.hours, pop.keys, pop.counts, pop.amounts, activity, retained_keys,
        (query.retained_from_day, query.retained_to_day), np.zeros_like(activity), 0)
    judged, young = _cohort_users(pop, first, query.cohort, query.retained_to_day)
    wanted = activity.copy()
    wanted[table.OTHER_KEY] = 0
    candidate, keys = _candidates(pop, wanted)
    est = _estimates(pop, first, retained, candidate, activity, judged, query.early_days,
                     query.max_threshold, query.min_users)
    return est, keys, judged, young, retained


def retention_drivers(pop: Population, query: RetentionQuery) -> Findings:
    """Which early behaviours add month-3 retention beyond activity (see module doc)."""
    est, keys, judged, young, retained = _retention_estimates(pop, query)
    drivers, underpowered, tested = _drivers(est, keys, lambda k: pop.names[k])
    window = f"day {query.retained_from_day}-{query.retained_to_day}"
    for d in drivers + underpowered:
        d.text = _retention_text(d, query.early_days, window)
    rate = float(retained[judged].mean()) if judged.size else math.nan
    return Findings(int(judged.size + young.size), int(judged.size), int(young.size), rate,
                    drivers[: query.max_drivers], underpowered, tested)


def retention_effect(pop: Population, query: RetentionQuery, event_type: str,
                     min_count: int) -> tuple[float, float, float]:
    """(adjusted lift, CI low, CI high) of one event at one threshold (NaN: untested)."""
    est, keys, *_ = _retention_estimates(
        pop, _replace(query, max_threshold=max(query.max_threshold, min_count)))
    if event_type not in pop.names or pop.names.index(event_type) not in keys:
        return (math.nan, math.nan, math.nan)
    row, k = keys.index(pop.names.index(event_type)), min_count - 1
    if not est.tested[row, k]:
        return (math.nan, math.nan, math.nan)
    return (float(est.rd[row, k]), float(est.ci_low[row, k]), float(est.ci_high[row, k]))


def _retention_text(d: Driver, early_days: int, window: str) -> str:
    base = (f"Users who did {d.event_type} at least {d.min_count} "
            f"time{'s' if d.min_count > 1 else ''} in their first {early_days} days "
            f"({d.users:,}) were active at {window} {_pct(d.outcome_if_reached)} of the "
            f"time against {_pct(d.outcome_if_not)}")
    if d.too_few_users:
        return base + "; too few users to tell."
    return (base + f"; against users about as active: {_pts(d.adjusted_lift)} "
            f"points (95% CI {_pts(d.ci_low)} to {_pts(d.ci_high)}, q = {d.q_value:.2g}).")


def churn_flows(pop: Population, query: ChurnQuery) -> Findings:
    """Which abandoned flow steps go with churn (no activity in the retention window),
    against users as active otherwise who did not abandon that step."""
    _check_window(query.early_days, query.retained_from_day, query.retained_to_day)
    activity = pop.activity
    first, retained, _ = kernels.user_outcomes(
        pop.offsets, pop.hours, pop.keys, pop.counts, pop.amounts, activity, activity,
        (query.retained_from_day, query.retained_to_day), np.zeros_like(activity), 0)
    churned = (1 - retained).astype(np.int8)
    judged, young = _cohort_users(pop, first, query.cohort, query.retained_to_day)
    parsed = [table.parse_key_name(n) for n in pop.names]
    wanted = np.array([p is not None and p[0] == query.flow_event_type for p in parsed],
                      np.uint8)
    candidate, keys = _candidates(pop, wanted)
    est = _estimates(pop, first, churned, candidate, activity, judged, query.early_days, 1,
                     query.min_users)

    def name_of(key: int) -> str:
        return query.flow_event_type

    drivers, underpowered, tested = _drivers(est, keys, name_of)
    # Flow steps rank by their effect on churn; attach flow and step to each.
    for d in drivers + underpowered:
        p = parsed[d.key]
        assert p is not None
        d.flow, d.step = p[1], p[2]
        d.text = (f"Users who abandoned {d.flow or 'a flow'} at {d.step} in their first "
                  f"{query.early_days} days ({d.users:,}) churned {_pct(d.outcome_if_reached)}"
                  f" of the time against {_pct(d.outcome_if_not)}")
        if d.too_few_users:
            d.text += "; too few users to tell."
        else:
            d.text += (f"; against users as active otherwise: {_pts(d.adjusted_lift)} points"
                       f" of churn (95% CI {_pts(d.ci_low)} to {_pts(d.ci_high)}, "
                       f"q = {d.q_value:.2g}).")
    rate = float(churned[judged].mean()) if judged.size else math.nan
    return Findings(int(judged.size + young.size), int(judged.size), int(young.size), rate,
                    drivers[: query.max_flows], underpowered, tested)


def value_drivers(pop: Population, query: ValueQuery) -> Findings:
    """Which early behaviours the top value fraction engages with, against the rest, as
    active otherwise. Value: the ``amount`` summed over the goal events of the first
    ``value_days`` days."""
    if not query.goal_event_types:
        raise InsightsError("goal_event_types", "name at least one goal event type")
    if not 0.0 < query.top_fraction < 1.0:
        raise InsightsError("top_fraction", "must be in (0, 1)")
    if not 1 <= query.value_days <= table.HORIZON_DAYS:
        raise InsightsError("value_days", f"must be 1-{table.HORIZON_DAYS}, got "
                            f"{query.value_days}")
    _check_window(query.early_days, 0, query.value_days)
    activity = pop.activity
    goals = pop.key_mask(query.goal_event_types)
    first, _, value = kernels.user_outcomes(
        pop.offsets, pop.hours, pop.keys, pop.counts, pop.amounts, activity, activity,
        (0, 1), goals, query.value_days)
    judged, young = _cohort_users(pop, first, query.cohort, query.value_days)
    top = np.zeros(pop.n_users, np.int8)
    cut = math.inf
    if judged.size:
        cut = float(np.quantile(value[judged], 1.0 - query.top_fraction))
        top[judged] = (value[judged] >= cut) & (value[judged] > 0)
    wanted = activity & (1 - goals)
    wanted[table.OTHER_KEY] = 0
    candidate, keys = _candidates(pop, wanted)
    est = _estimates(pop, first, top, candidate, activity, judged, query.early_days,
                     query.max_threshold, query.min_users)
    drivers, underpowered, tested = _drivers(est, keys, lambda k: pop.names[k])
    for d in drivers + underpowered:
        d.text = (f"Users who did {d.event_type} at least {d.min_count} "
                  f"time{'s' if d.min_count > 1 else ''} in their first {query.early_days} "
                  f"days ({d.users:,}) were in the top value group "
                  f"{_pct(d.outcome_if_reached)} of the time against "
                  f"{_pct(d.outcome_if_not)}")
        d.text += ("; too few users to tell." if d.too_few_users else
                   f"; as active otherwise: {_pts(d.adjusted_lift)} points (95% CI "
                   f"{_pts(d.ci_low)} to {_pts(d.ci_high)}, q = {d.q_value:.2g}).")
    rate = float(top[judged].mean()) if judged.size else math.nan
    return Findings(int(judged.size + young.size), int(judged.size), int(young.size), rate,
                    drivers[: query.max_drivers], underpowered, tested,
                    extra={"value_cut": cut if math.isfinite(cut) else 0.0})


def lift_by_day(pop: Population, query: RetentionQuery, days: Sequence[int],
                event_types: Sequence[str]) -> np.ndarray:
    """Compass heat map: the best adjusted lift of each event type (rows) for each early
    window length (columns); NaN where nothing could be tested."""
    out = np.full((len(event_types), len(days)), np.nan)
    for j, d in enumerate(days):
        found = retention_drivers(pop, _replace(query, early_days=d, max_drivers=10**6))
        best = {x.event_type: x.adjusted_lift for x in found.drivers}
        for i, name in enumerate(event_types):
            out[i, j] = best.get(name, math.nan)
    return out


def _replace(query: RetentionQuery, **changes: Any) -> RetentionQuery:
    from dataclasses import replace

    return replace(query, **changes)
