"""Customer populations with planted truth, for the insights (issue 18): a family of worlds
x seeds, each a list of back-dated events and the truth the insights should find.

Every user signs up (``app_opened`` at the first hour) some 20-150 days before ``now``
and has a latent activity level ``λ`` (log-normal). In the first 7 days:

- **decoys** (``app_opened``, ``balance_viewed``, ``notification_opened``) happen at a
  rate proportional to ``λ``: they only mark active users, who retain better; they add
  nothing themselves;
- **noise** types (``settings_viewed``, ``help_viewed``) happen regardless of anything;
- **planted drivers** happen at a rate mostly of their own (a per-user propensity, weakly
  tied to ``λ``): a user who reaches the driver's threshold ``k`` in the first 7 days
  gets ``+effect`` on the probability of being active at day 60-90 (additive: the
  planted effect is a risk difference, the scale the insights estimate);
- **abandoned flows** (``flow_abandoned`` with ``flow`` and ``step``) in the first 14
  days: planted ones cut retention by their effect, a decoy flow is abandoned more by
  active users (who start more flows) and changes nothing;
- **value**: ``loan_completed`` with an ``amount``; users who reach the value driver's
  threshold complete more loans.

Retained users are then active until some day past 90; churned ones stop between day 14
and 59 (never inside the early windows, so early activity is not an effect of churn).
Worlds differ in activity spread, driver rates, thresholds and effects; the insights were
tuned on ``baseline`` seed 0 only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DAY = 86_400.0
HOUR = 3_600.0
NOW = 1_780_000_000.0 - (1_780_000_000.0 % HOUR)  # 2026-05-28, on an hour
DECOYS = ("app_opened", "balance_viewed", "notification_opened")
DECOY_RATES = (1.5, 1.0, 0.4)  # per day at λ = 1
NOISE = ("settings_viewed", "help_viewed")
NOISE_RATE = 0.2
FLOW_EVENT = "flow_abandoned"
GOAL = "loan_completed"


@dataclass(frozen=True)
class PlantedDriver:
    event_type: str
    threshold: int
    effect: float  # added to P(retained) when the threshold is reached in 7 days
    rate: float  # events per day at propensity 1


@dataclass(frozen=True)
class WorldSpec:
    users: int = 6_000
    activity_sigma: float = 0.6
    base_retention: tuple[float, float] = (0.12, 0.40)  # at λ -> 0, added at λ -> inf
    drivers: tuple[PlantedDriver, ...] = (
        PlantedDriver("pix_sent", 3, 0.15, 0.35),
        PlantedDriver("card_activated", 1, 0.12, 0.08),
        PlantedDriver("savings_goal_created", 2, 0.10, 0.2),
        PlantedDriver("budget_viewed", 4, 0.04, 0.5),  # small: below the +10 bar
    )
    driver_activity_power: float = 0.3  # driver rate ∝ λ ** this (0: independent)
    churn_flows: tuple[tuple[str, str, float, float], ...] = (
        ("loan", "documentation", 0.15, 0.14),  # flow, step, P(abandon), churn effect
        ("account", "selfie", 0.10, 0.12),
    )
    decoy_flow: tuple[str, str, float] = ("transfer", "confirmation", 0.08)  # rate/day at λ=1
    noise_flow: tuple[str, str, float] = ("card", "address", 0.12)  # P(abandon)
    value_driver: PlantedDriver = PlantedDriver("investment_viewed", 2, 0.0, 0.2)
    value_loans: tuple[float, float] = (0.3, 1.5)  # mean loans: base, added by the driver


WORLDS: dict[str, WorldSpec] = {
    "baseline": WorldSpec(),
    # Activity varies much more: decoys correlate with retention far more strongly.
    "heavy_decoys": WorldSpec(activity_sigma=0.9),
    # Higher thresholds, rarer drivers.
    "high_thresholds": WorldSpec(drivers=(
        PlantedDriver("pix_sent", 5, 0.14, 0.7),
        PlantedDriver("card_activated", 1, 0.10, 0.05),
        PlantedDriver("savings_goal_created", 3, 0.12, 0.35),
        PlantedDriver("budget_viewed", 2, 0.03, 0.3),
    )),
    # Drivers tied to activity as much as decoys partly are: the hard case.
    "entangled": WorldSpec(driver_activity_power=0.7, users=8_000),
}


@dataclass
class World:
    """Events (columns) and the planted truth."""

    name: str
    seed: int
    spec: WorldSpec
    now: float
    user: np.ndarray  # int64 user index per event
    types: list[str]  # type names; ``type_idx`` indexes them
    type_idx: np.ndarray
    time: np.ndarray  # epoch seconds
    amount: np.ndarray  # NaN when the event has none
    flow_idx: np.ndarray  # -1, or an index into ``flows``
    flows: list[tuple[str, str]]
    first: np.ndarray  # per user, signup time
    retained: np.ndarray  # per user, the drawn outcome
    p_retained: np.ndarray  # per user, the probability it was drawn with (the truth)
    truth: dict = field(default_factory=dict)

    @property
    def n_events(self) -> int:
        return int(self.user.size)

    def user_id(self, u: int) -> str:
        return f"{self.name}-{self.seed}-u{u:06d}"

    def events(self) -> Iterator[tuple[int, str, float, float, tuple[str, str] | None]]:
        """(event index, type, time, amount, (flow, step) or None), in time order."""
        for i in np.argsort(self.time, kind="stable"):
            f = int(self.flow_idx[i])
            yield (int(i), self.types[self.type_idx[i]], float(self.time[i]),
                   float(self.amount[i]), self.flows[f] if f >= 0 else None)


def generate(name: str, seed: int, spec: WorldSpec | None = None,
             outcome_draw: int | None = None) -> World:
    """Draw world ``name`` with ``seed`` (see the module doc).

    ``outcome_draw`` (None: the world as always drawn; else an integer >= 0) keeps
    everything up to each user's retention probability — signups, activity, early events,
    abandoned flows — and draws the outcome and what follows from it (retained or not,
    later activity, loans) again from a stream of its own. Why: it tells a failure that
    comes from the early events (the adjustment, or the users' behaviour: it repeats on
    most redraws) from one that comes from the luck of the outcome draw (it repeats at the
    base rate), see ``insights_bench.outcome_redraws``."""
    spec = spec or WORLDS[name]
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    n = spec.users
    now = NOW
    age_days = rng.uniform(20, 150, n)
    first = np.floor((now - age_days * DAY) / HOUR) * HOUR
    lam = rng.lognormal(-spec.activity_sigma ** 2 / 2, spec.activity_sigma, n)
    types = [*DECOYS, *NOISE, *(d.event_type for d in spec.drivers),
             spec.value_driver.event_type, FLOW_EVENT, GOAL]
    tix = {t: i for i, t in enumerate(types)}
    flows = [(f, s) for f, s, _, _ in spec.churn_flows] + [spec.decoy_flow[:2],
                                                           spec.noise_flow[:2]]
    cols: dict[str, list[np.ndarray]] = {"user": [], "type": [], "time": [], "amount": [],
                                         "flow": []}

    def add(users: np.ndarray, type_name: str, times: np.ndarray,
            amounts: np.ndarray | None = None, flow: int = -1) -> None:
        cols["user"].append(users.astype(np.int64))
        cols["type"].append(np.full(users.size, tix[type_name], np.int64))
        cols["time"].append(times)
        cols["amount"].append(np.full(users.size, np.nan) if amounts is None else amounts)
        cols["flow"].append(np.full(users.size, flow, np.int64))

    def early(rate: np.ndarray, days: float) -> tuple[np.ndarray, np.ndarray]:
        counts = rng.poisson(rate * days)
        users = np.repeat(np.arange(n), counts)
        return counts, first[users] + rng.uniform(0, days * DAY, users.size)

    all_users = np.arange(n)
    add(all_users, "app_opened", first.copy())  # signup
    for t, r in zip(DECOYS, DECOY_RATES, strict=True):
        counts, times = early(r * lam, 7)
        add(np.repeat(all_users, counts), t, times)
    for t in NOISE:
        counts, times = early(np.full(n, NOISE_RATE), 7)
        add(np.repeat(all_users, counts), t, times)
    p = spec.base_retention[0] + spec.base_retention[1] * lam / (1 + lam)
    reached = {}
    for d in (*spec.drivers, spec.value_driver):
        propensity = rng.gamma(1.0, 1.0, n) * lam ** spec.driver_activity_power
        counts, times = early(d.rate * propensity, 7)
        add(np.repeat(all_users, counts), d.event_type, times)
        reached[d.event_type] = counts >= d.threshold
        p = p + d.effect * reached[d.event_type]
    for f, (_flow, _step, prob, effect) in enumerate(spec.churn_flows):
        hit = rng.random(n) < prob
        users = np.flatnonzero(hit)
        add(users, FLOW_EVENT, first[users] + rng.uniform(0, 14 * DAY, users.size), flow=f)
        p = p - effect * hit
    decoy_f = len(spec.churn_flows)
    counts, times = early(spec.decoy_flow[2] * lam, 14)
    add(np.repeat(all_users, counts), FLOW_EVENT, times, flow=decoy_f)
    noisy = np.flatnonzero(rng.random(n) < spec.noise_flow[2])
    add(noisy, FLOW_EVENT, first[noisy] + rng.uniform(0, 14 * DAY, noisy.size),
        flow=decoy_f + 1)
    p = np.clip(p, 0.01, 0.97)
    if outcome_draw is not None:
        rng = np.random.default_rng([seed, sum(map(ord, name)), outcome_draw])
    retained = rng.random(n) < p
    # Later activity: retained users through some day past 90 (one event in 60-90 at
    # least), churned ones until a day in 14-59; app opens at a steady rate in between (a
    # churned user is no busier before leaving: early activity is not an effect of churn).
    last_day = np.where(retained, rng.uniform(91, 130, n), rng.uniform(14, 59.9, n))
    later = rng.poisson(0.1 * lam * (last_day - 7))  # a steady rate until they stop
    users = np.repeat(all_users, later)
    times = first[users] + rng.uniform(7, last_day[users]) * DAY
    add(users, "app_opened", times)
    stay = np.flatnonzero(retained)
    add(stay, "app_opened", first[stay] + rng.uniform(60, 90, stay.size) * DAY)
    # Value: loans over days 7-90 while active.
    vd = spec.value_driver
    loans = rng.poisson((spec.value_loans[0] + spec.value_loans[1] * reached[vd.event_type])
                        * np.sqrt(lam))
    users = np.repeat(all_users, loans)
    times = first[users] + rng.uniform(7, np.minimum(last_day[users], 90)) * DAY
    add(users, GOAL, times, amounts=np.round(rng.lognormal(8.0, 0.5, users.size), 2))

    user = np.concatenate(cols["user"])
    time = np.concatenate(cols["time"])
    keep = time <= now  # nothing from the future: young users are partly observed
    world = World(
        name=name, seed=seed, spec=spec, now=now, user=user[keep], types=types,
        type_idx=np.concatenate(cols["type"])[keep], time=time[keep],
        amount=np.concatenate(cols["amount"])[keep], flow_idx=np.concatenate(cols["flow"])[keep],
        flows=flows, first=first, retained=retained, p_retained=p,
    )
    world.truth = {
        "drivers": {d.event_type: (d.threshold, d.effect) for d in spec.drivers},
        "decoys": list(DECOYS),
        "noise": list(NOISE),
        "churn_flows": {(f, s): e for f, s, _, e in spec.churn_flows},
        "decoy_flows": [spec.decoy_flow[:2], spec.noise_flow[:2]],
        "value_driver": (vd.event_type, vd.threshold),
    }
    return world



def summary_entries(world: World) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The insights summaries ingest would build from the world's events, built directly
    (``nudge.server.storage.insights_summary`` packs the same entries): ``(offsets,
    entries, key ids)``, users in index order, entries in time order."""
    from nudge.server.storage.tables import insights as table

    ids: dict[str, int] = {table.OTHER_NAME: table.OTHER_KEY}
    for t in world.types:
        ids.setdefault(t, len(ids))
    flow_names = [table.flow_key_name(FLOW_EVENT, f, s) for f, s in world.flows]
    for name in flow_names:
        ids.setdefault(name, len(ids))
    type_keys = np.array([ids[t] for t in world.types], np.int64)
    flow_keys = np.array([ids[nm] for nm in flow_names], np.int64)
    has_flow = world.flow_idx >= 0
    users = np.concatenate([world.user, world.user[has_flow]])
    times = np.concatenate([world.time, world.time[has_flow]])
    keys = np.concatenate([type_keys[world.type_idx], flow_keys[world.flow_idx[has_flow]]])
    amounts = np.concatenate([np.nan_to_num(world.amount), np.zeros(int(has_flow.sum()))])
    order = np.lexsort((times, users))
    entries = np.empty(order.size, table.ENTRY)
    entries["hour"] = np.floor(times[order] / HOUR).astype(np.uint32)
    entries["key"] = keys[order]
    entries["count"] = 1
    entries["amount"] = amounts[order]
    offsets = np.zeros(world.spec.users + 1, np.int64)
    np.cumsum(np.bincount(users, minlength=world.spec.users), out=offsets[1:])
    return offsets, entries, ids


def world_events(world: World, batch: int = 5_000) -> Iterator[list[Any]]:
    """The world's events as Track messages (back-dated ``time``; ``amount`` as a number,
    ``flow`` and ``step`` as strings), in time order, ``batch`` at a time."""
    from nudge.v1 import event_pb2

    out: list[Any] = []
    for i, event_type, t, amount, flow in world.events():
        ev = event_pb2.Event(event_id=f"e{i}", user_id=world.user_id(int(world.user[i])),
                             type=event_type)
        ev.time.FromNanoseconds(round(t * 1e9))
        if amount == amount:
            ev.numbers["amount"] = amount
        if flow is not None:
            ev.strings["flow"], ev.strings["step"] = flow
        out.append(ev)
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out


def write_store(world: World, path: Any) -> None:
    """A real store holding the world's summaries (written with the table's own functions:
    the ingest path itself is tested against ``summary_entries`` in tests/server/rpc)."""
    from nudge.server.storage.store import Store
    from nudge.server.storage.tables import insights as table

    offsets, entries, ids = summary_entries(world)
    store = Store(path, map_size=1 << 28)
    try:
        with store.env.begin(write=True) as txn:
            by_id = sorted((k, n) for n, k in ids.items() if k != table.OTHER_KEY)
            for key, name in by_id:
                assert table.register_key(txn, store.dbs, name) == key
            raw = entries.tobytes()
            eb = table.ENTRY_BYTES
            for u in range(world.spec.users):
                table.append(txn, store.dbs, world.user_id(u),
                             raw[offsets[u] * eb:offsets[u + 1] * eb])
    finally:
        store.close()
