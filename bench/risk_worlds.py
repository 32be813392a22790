"""A family of synthetic transaction worlds for judging the fraud engine on regimes it was
not tuned on (``bench/risk_stream.py`` stays the one shipped stream, unchanged).

Each world is a bank's customer base with its own stated mechanics. Genuine customers have
a home country (and time zone), a personal amount scale, active hours, a handful of
favourite merchant categories, one or two phones and a channel mix; they travel (new
country, hours shifted by the time difference, mostly card present), replace phones, try
new merchants, make a rare big purchase and go on shopping sprees. Fraud comes in kinds:

* ``ato``: account takeover: a burst of 3-8 transactions within hours, mostly from the
  attacker's country and device, often at the victim's night, high amounts, quasi-cash and
  electronics merchants, sometimes a small test charge first;
* ``ato_long``: the same with 8-20 transactions;
* ``low_slow``: one or two transactions at 1-2.5x the victim's usual amount, half of them
  through a proxy in the victim's country, everyday merchants half the time;
* ``cold``: a takeover (or an account opened with a stolen identity) within the
  customer's first few transactions: there is no history to compare with;
* ``first_party``: the customer's own device and country, a few large purchases before a
  charge-back (the hardest kind; only some worlds have it).

Regimes (``WORLDS``): ``launch`` (a new bank: everyone joins in the first three weeks with
no history, fraud from day one), ``mature`` (90 days of history before any fraud),
``travel`` (frequent trips and phone changes), ``low_slow``, ``bursts`` (long takeovers
and heavy spree shoppers), ``merchant_mix`` (broad and shifting merchant mixes, fraud at
everyday merchants), and two label regimes on the base world: ``labels_fraud`` (5% of
frauds labelled FRAUD 14 days after the fact) and ``labels_genuine`` (a random 1% of
genuine transactions labelled GENUINE after 3 days). Every other world has no labels.

Each transaction carries its truth ``label`` and ``history``: how many earlier
transactions the customer had at that moment (warm-up included). ``local_hour`` is in the
customer's *home* time zone (what a server can compute from the profile). Worlds are
deterministic per (regime, seed).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from nudge.bench.risk_stream import (
    _DEVICE_CHANNELS,
    CHANNELS,
    COUNTRIES,
    DAY,
    EVERYDAY_MCC,
    FRAUD_MCC,
    HOUR,
)

FRAUD_KINDS = ("ato", "ato_long", "low_slow", "cold", "first_party")
LABEL_NONE = "none"
LABEL_FRAUD = "fraud"  # a share of frauds labelled FRAUD after a delay
LABEL_GENUINE = "genuine"  # a random share of genuine labelled GENUINE after a delay


@dataclass(frozen=True)
class WorldSpec:
    """The knobs of one world. Rates are per customer unless said otherwise."""

    n_customers: int = 1500
    days: float = 60.0
    warmup_days: float = 20.0  # history only (no fraud), excluded from metrics
    late_join_share: float = 0.25  # join after the warm-up, with no history
    join_spread_days: float = 0.0  # >0: everyone joins uniformly in [0, spread) (launch)
    tx_per_day: float = 1.5  # median of the lognormal per-customer rate
    trips_per_90d: float = 1.0
    trip_days: tuple[float, float] = (2.0, 10.0)
    phone_changes_per_60d: float = 0.12
    new_merchant_share: float = 0.04
    favourites: tuple[int, int] = (4, 13)
    big_purchase_share: float = 0.01
    sprees_per_day: float = 0.03
    attacked_share: float = 0.05  # customers hit once by fraud during the scored period
    kinds: tuple[float, ...] = (0.45, 0.1, 0.15, 0.25, 0.05)  # FRAUD_KINDS shares
    fraud_mcc_share: float = 0.7
    labels: str = LABEL_NONE
    label_share: float = 0.0
    label_delay_days: float = 0.0


_BASE = WorldSpec()
WORLDS: dict[str, WorldSpec] = {
    "launch": replace(_BASE, warmup_days=0.0, late_join_share=0.0, join_spread_days=21.0,
                      kinds=(0.4, 0.1, 0.15, 0.3, 0.05)),
    "mature": replace(_BASE, days=150.0, warmup_days=90.0, late_join_share=0.05,
                      n_customers=900, kinds=(0.5, 0.15, 0.2, 0.1, 0.05)),
    "travel": replace(_BASE, trips_per_90d=5.0, trip_days=(1.0, 6.0),
                      phone_changes_per_60d=0.5),
    "low_slow": replace(_BASE, kinds=(0.1, 0.0, 0.75, 0.1, 0.05)),
    "bursts": replace(_BASE, kinds=(0.3, 0.5, 0.0, 0.2, 0.0), sprees_per_day=0.12),
    "merchant_mix": replace(_BASE, favourites=(10, 30), new_merchant_share=0.15,
                            fraud_mcc_share=0.35),
    "labels_fraud": replace(_BASE, labels=LABEL_FRAUD, label_share=0.05,
                            label_delay_days=14.0),
    "labels_genuine": replace(_BASE, labels=LABEL_GENUINE, label_share=0.01,
                              label_delay_days=3.0),
}


@dataclass(frozen=True)
class World:
    """Transactions sorted by time (one entry per transaction in each array) and the label
    feed (``label_time``/``label_index``/``label_value``: at ``label_time`` transaction
    ``label_index`` is labelled ``label_value``, 1 FRAUD or 0 GENUINE; sorted by time)."""

    name: str
    seed: int
    spec: WorldSpec
    time: np.ndarray
    user: np.ndarray
    amount: np.ndarray
    local_hour: np.ndarray
    country: np.ndarray
    merchant_category: np.ndarray
    device_id: np.ndarray
    channel: np.ndarray
    label: np.ndarray
    kind: np.ndarray  # generator tag: habit, travel, spree, ..., or a FRAUD_KINDS name
    history: np.ndarray  # earlier transactions of this customer at that moment
    label_time: np.ndarray
    label_index: np.ndarray
    label_value: np.ndarray
    n_users: int
    warmup_s: float

    def __len__(self) -> int:
        return int(self.time.shape[0])


def _hours(rng: np.random.Generator, centers: np.ndarray, n: int) -> np.ndarray:
    return np.mod(centers[rng.integers(0, len(centers), n)] + rng.normal(0.0, 1.8, n), 24.0)


def generate_world(name: str, seed: int, spec: WorldSpec | None = None) -> World:
    """The world ``name`` (a ``WORLDS`` key) drawn with ``seed``; ``spec`` overrides the
    regime's knobs (e.g. a smaller ``n_customers`` for tests). Same inputs, same arrays."""
    if spec is None:
        if name not in WORLDS:
            raise ValueError(f"unknown world {name!r}; choose one of {sorted(WORLDS)}")
        spec = WORLDS[name]
    if not 0 <= spec.warmup_days < spec.days:
        raise ValueError(f"warmup_days must be in [0, days={spec.days}), got {spec.warmup_days}")
    rng = np.random.default_rng([seed, sum(map(ord, name))])
    codes = np.array([c[0] for c in COUNTRIES], dtype=object)
    tz = np.array([c[1] for c in COUNTRIES])
    home_w = np.array([c[2] for c in COUNTRIES], dtype=float)
    home_w /= home_w.sum()
    travel_w = home_w + 0.02  # mostly neighbours and popular places, anywhere now and then
    travel_w /= travel_w.sum()
    attack_w = np.array([c[3] for c in COUNTRIES], dtype=float)
    mcc_pop = 1.0 / np.arange(1, len(EVERYDAY_MCC) + 1) ** 0.8
    mcc_pop /= mcc_pop.sum()
    everyday = np.array(EVERYDAY_MCC, dtype=object)
    fraud_mcc = np.array(FRAUD_MCC, dtype=object)
    channels = np.array(CHANNELS, dtype=object)
    end = spec.days * DAY
    warmup = spec.warmup_days * DAY
    n_users = spec.n_customers

    if spec.join_spread_days > 0:
        joins = rng.uniform(0.0, spec.join_spread_days * DAY, n_users)
    else:
        late = rng.random(n_users) < spec.late_join_share
        joins = np.where(late, rng.uniform(warmup, end - 3 * DAY, n_users), 0.0)
    homes = rng.choice(len(COUNTRIES), n_users, p=home_w)
    mus = rng.normal(np.log(40.0), 0.7, n_users)
    sigmas = rng.uniform(0.35, 0.8, n_users)
    rates = np.exp(rng.normal(np.log(spec.tx_per_day), 0.6, n_users))
    parts: list[dict] = []
    profiles = []

    def add(**cols) -> None:
        parts.append(cols)

    for u in range(n_users):
        home = int(homes[u])
        centers = rng.uniform(8.0, 21.0, 1 + int(rng.random() < 0.5))
        lo, hi = spec.favourites
        favs = rng.choice(len(EVERYDAY_MCC), min(int(rng.integers(lo, hi)), len(EVERYDAY_MCC)),
                          replace=False, p=mcc_pop)
        fav_w = rng.dirichlet(np.ones(len(favs)))
        ch_w = rng.dirichlet(np.array([4.0, 3.0, 2.0, 0.5, 1.0]))
        n_dev = 1 + int(rng.random() < 0.3)
        profiles.append((centers, favs))
        start = joins[u]
        n_days = int(np.ceil((end - start) / DAY))
        counts = rng.poisson(rates[u], n_days)
        n = int(counts.sum())
        day = np.repeat(np.arange(n_days), counts) + np.floor(start / DAY)
        hour = _hours(rng, centers, n)
        t = np.maximum(day * DAY + (hour - tz[home]) * HOUR, start)
        amount = np.exp(rng.normal(mus[u], sigmas[u], n))
        mcc = everyday[favs[rng.choice(len(favs), n, p=fav_w)]]
        ch = rng.choice(len(CHANNELS), n, p=ch_w)
        dev = rng.integers(0, n_dev, n)
        country = np.full(n, codes[home], dtype=object)
        kind = np.full(n, "habit", dtype=object)
        local = hour.copy()
        big = rng.random(n) < spec.big_purchase_share
        amount[big] *= rng.uniform(4.0, 15.0, big.sum())
        kind[big] = "large"
        new_m = rng.random(n) < spec.new_merchant_share
        mcc[new_m] = rng.choice(np.r_[everyday, fraud_mcc[:2]], new_m.sum())
        kind[new_m & ~big] = "new_merchant"
        # phone changes: from a random moment on, the next phone
        for _ in range(rng.poisson(spec.phone_changes_per_60d * (end - start) / (60 * DAY))):
            dev[t >= rng.uniform(start, end)] = n_dev
            n_dev += 1
        for _ in range(rng.poisson(spec.trips_per_90d * (end - start) / (90 * DAY))):
            dest = int(rng.choice(len(COUNTRIES), p=travel_w))
            if dest == home:
                continue
            t0 = rng.uniform(start, end)
            on = (t >= t0) & (t < t0 + rng.uniform(*spec.trip_days) * DAY)
            country[on] = codes[dest]
            local[on] = np.mod(hour[on] - (tz[dest] - tz[home]), 24.0)
            t[on] = np.maximum(day[on] * DAY + (hour[on] - tz[dest]) * HOUR, start)
            ch[on] = np.where(rng.random(on.sum()) < 0.8, 0, ch[on])
            kind[on] = "travel"
        device = np.array([f"u{u}-d{k}" for k in dev], dtype=object)
        device[~np.isin(ch, _DEVICE_CHANNELS)] = ""
        add(time=t, user=np.full(n, u), amount=amount, local_hour=local, country=country,
            merchant_category=mcc, device_id=device, channel=channels[ch],
            label=np.zeros(n, np.int8), kind=kind)
        for _ in range(rng.poisson((end - start) / DAY * spec.sprees_per_day)):
            m = int(rng.integers(3, 8))
            h0 = _hours(rng, centers, 1)[0]
            d0 = np.floor(rng.uniform(start, end) / DAY)
            offs = np.sort(rng.uniform(0.0, 1.2, m))
            sch = rng.choice(len(CHANNELS), m, p=ch_w)
            sdev = np.where(np.isin(sch, _DEVICE_CHANNELS), f"u{u}-d{n_dev - 1}", "")
            add(time=np.maximum(d0 * DAY + (h0 + offs - tz[home]) * HOUR, start),
                user=np.full(m, u), amount=np.exp(rng.normal(mus[u], sigmas[u], m)),
                local_hour=np.mod(h0 + offs, 24.0), country=np.full(m, codes[home], object),
                merchant_category=everyday[favs[rng.choice(len(favs), m, p=fav_w)]],
                device_id=sdev.astype(object), channel=channels[sch],
                label=np.zeros(m, np.int8), kind=np.full(m, "spree", object))

    # fraud: one incident per attacked customer, after the warm-up
    n_attacks = round(spec.attacked_share * n_users)
    kinds = rng.choice(len(FRAUD_KINDS), n_attacks, p=np.array(spec.kinds) / sum(spec.kinds))
    # a cold attack needs an account with (almost) no history: one that opened after the
    # warm-up (in a launch, everyone); the other kinds hit anyone
    fresh = joins >= warmup
    order = rng.permutation(n_users)
    pools = [list(order[fresh[order]]), list(order[~fresh[order]])]
    victims = np.empty(n_attacks, np.int64)
    for b, k in enumerate(kinds):
        first = 0 if FRAUD_KINDS[k] == "cold" or not pools[1] else 1
        pool = pools[first] or pools[1 - first]
        victims[b] = pool.pop()
    for b, (u, k) in enumerate(zip(victims.tolist(), kinds, strict=True)):
        kname = FRAUD_KINDS[k]
        home = int(homes[u])
        t_first = max(joins[u], warmup)
        if kname == "cold":  # within the first day or two of the account's life
            t0 = max(joins[u], warmup) + rng.uniform(0.0, 2.0) * DAY
        else:
            t0 = rng.uniform(t_first + DAY, end - DAY)
        m = {"ato": int(rng.integers(3, 9)), "ato_long": int(rng.integers(8, 21)),
             "low_slow": int(rng.integers(1, 3)), "cold": int(rng.integers(2, 8)),
             "first_party": int(rng.integers(2, 5))}[kname]
        gap = {"low_slow": 3 * DAY, "first_party": 0.5 * DAY}.get(kname, rng.uniform(300, 2400))
        ts = t0 + np.r_[0.0, np.cumsum(rng.exponential(gap, m - 1))]
        where = home
        atk_device = f"atk{seed}-{b}"
        attack_clock = rng.random() < 0.5
        if kname == "first_party":
            local = _hours(rng, profiles[u][0], m)
            ts = np.floor(ts / DAY) * DAY + (local - tz[home]) * HOUR
            amount = np.exp(mus[u] + rng.normal(np.log(5.0), 0.5, m))
            atk_device = f"u{u}-d0"
            mcc = np.where(rng.random(m) < 0.5, rng.choice(fraud_mcc[:3], m),
                           everyday[rng.choice(profiles[u][1], m)])
            ch = rng.choice(np.array([2, 0, 1]), m)
        else:
            proxy = kname == "low_slow" and rng.random() < 0.5
            if not proxy and rng.random() < 0.8:
                w = attack_w.copy()
                w[home] = 0.0
                where = int(rng.choice(len(COUNTRIES), p=w / w.sum()))
            if attack_clock:  # the attacker's own daytime, the victim's small hours or not
                local = np.mod(rng.uniform(0.0, 24.0) + (ts - t0) / HOUR, 24.0)
            else:
                local = np.mod(ts / HOUR + tz[home], 24.0)
            if kname == "low_slow":
                amount = np.exp(mus[u]) * rng.uniform(1.0, 2.5, m)
                fm = 0.5
            else:
                amount = np.exp(mus[u] + rng.normal(np.log(4.0), 0.7, m))
                if rng.random() < 0.3:
                    amount[0] = np.exp(mus[u]) * 0.3  # a small test charge first
                fm = spec.fraud_mcc_share
            mcc = np.where(rng.random(m) < fm, rng.choice(fraud_mcc, m),
                           rng.choice(everyday, m))
            ch = rng.choice(np.array([2, 4, 3]), m, p=[0.6, 0.3, 0.1])
            if rng.random() < 0.1:
                atk_device = f"u{u}-d0"  # session hijack on the victim's own phone
        dev = np.where(np.isin(ch, _DEVICE_CHANNELS), atk_device, "").astype(object)
        add(time=ts, user=np.full(m, u), amount=amount, local_hour=np.mod(local, 24.0),
            country=np.full(m, codes[where], object), merchant_category=mcc, device_id=dev,
            channel=channels[ch], label=np.ones(m, np.int8), kind=np.full(m, kname, object))

    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    keep = cat["time"] < end
    order = np.flatnonzero(keep)[np.argsort(cat["time"][keep], kind="stable")]

    def col(k: str, dtype: type) -> np.ndarray:
        return np.ascontiguousarray(cat[k][order].astype(dtype))

    user = col("user", np.int64)
    hours = col("local_hour", np.float64)
    hours[hours >= 24.0] = 0.0
    history = np.empty(user.size, np.int64)
    seen = np.zeros(n_users, np.int64)
    for i, u in enumerate(user.tolist()):
        history[i] = seen[u]
        seen[u] += 1
    time_ = col("time", np.float64)
    label = col("label", np.int8)
    lt, li, lv = _label_feed(spec, rng, time_, label)
    return World(name=name, seed=seed, spec=spec, time=time_, user=user,
                 amount=np.round(col("amount", np.float64), 2), local_hour=hours,
                 country=col("country", object), merchant_category=col("merchant_category",
                                                                        object),
                 device_id=col("device_id", object), channel=col("channel", object),
                 label=label, kind=col("kind", object), history=history, label_time=lt,
                 label_index=li, label_value=lv, n_users=n_users, warmup_s=warmup)


def _label_feed(spec: WorldSpec, rng: np.random.Generator, time_: np.ndarray,
                label: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if spec.labels == LABEL_NONE:
        idx = np.zeros(0, np.int64)
    elif spec.labels in (LABEL_FRAUD, LABEL_GENUINE):
        want = 1 if spec.labels == LABEL_FRAUD else 0
        cand = np.flatnonzero(label == want)
        idx = np.sort(cand[rng.random(cand.size) < spec.label_share])
    else:
        raise ValueError(f"labels must be one of none/fraud/genuine, got {spec.labels!r}")
    lt = time_[idx] + spec.label_delay_days * DAY * rng.uniform(0.8, 1.2, idx.size)
    o = np.argsort(lt, kind="stable")
    return lt[o], idx[o], label[idx][o].astype(np.int8)
