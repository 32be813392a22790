"""Synthetic card/transfer stream with per-user habits and account-takeover bursts.

Deterministic per seed. Each user has their own amount scale, active hours, favourite
merchant categories, home country (and time zone), devices and channel mix. Genuine noise:
trips abroad (new country, shifted hours), occasional large purchases, a new merchant
category now and then, shopping sprees (several transactions in an hour), a phone upgrade
(new device). Fraud: account-takeover bursts of several transactions within hours, mostly
from a new country and a new device, often at odd hours, with higher amounts and
fraud-prone merchant categories; some hit users with almost no history, some are stealthy
(home country, usual hours, modest amounts).

``local_hour`` is the hour in the user's *home* time zone (what the server can compute from
the profile), so a trip abroad shifts it just as it would in production.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DAY = 86400.0
HOUR = 3600.0

# code, UTC offset (h), weight as a home country, weight as an attacker's country
COUNTRIES: tuple[tuple[str, float, float, float], ...] = (
    ("US", -5, 30, 3), ("BR", -3, 20, 3), ("MX", -6, 12, 2), ("GB", 0, 10, 2),
    ("DE", 1, 8, 1), ("FR", 1, 6, 1), ("ES", 1, 5, 1), ("IT", 1, 4, 1), ("CA", -5, 4, 1),
    ("AR", -3, 4, 1), ("CO", -5, 3, 2), ("CL", -4, 2, 1), ("PE", -5, 0, 1), ("IN", 5.5, 0, 2),
    ("NG", 1, 0, 5), ("ZA", 2, 0, 2), ("AU", 10, 0, 1), ("JP", 9, 0, 1), ("CN", 8, 0, 2),
    ("PH", 8, 0, 3), ("ID", 7, 0, 3), ("TR", 3, 0, 2), ("PL", 1, 0, 1), ("NL", 1, 0, 1),
    ("PT", 0, 0, 1), ("RU", 3, 0, 5), ("UA", 2, 0, 4), ("VN", 7, 0, 4), ("TH", 7, 0, 2),
    ("EG", 2, 0, 2),
)
# everyday merchant categories (ISO 18245 codes), popularity-weighted
EVERYDAY_MCC: tuple[str, ...] = (
    "5411", "5812", "5814", "5541", "5912", "4111", "5311", "5499", "5651", "5691", "5942",
    "5999", "4121", "4814", "4900", "5200", "5300", "5310", "5331", "5399", "5422", "5441",
    "5462", "5533", "5621", "5641", "5661", "5712", "5722", "5813", "5921", "5941", "5977",
    "5992", "5995", "7011", "7230", "7298", "7832", "7997", "8011", "8021", "8062", "8099",
    "8211", "8299", "8398", "4511", "4722", "7512", "5045", "5094",
)
# categories account takers favour (electronics, jewellery, quasi-cash, transfers, games)
FRAUD_MCC: tuple[str, ...] = ("5732", "5944", "6051", "4829", "5816", "7995", "6540", "5967")
CHANNELS: tuple[str, ...] = ("card_present", "contactless", "online", "atm", "transfer")
_DEVICE_CHANNELS = (2, 4)  # online and transfer carry a device id; card/ATM do not


@dataclass(frozen=True)
class RiskStream:
    """Transactions sorted by time; one entry per transaction in every array.

    ``label`` is 1 for fraud, 0 for genuine; ``burst`` is the attack id (-1 genuine);
    ``tag`` says which generator made it ("habit", "travel", "large", "new_merchant",
    "spree", "new_device", "ato", "ato_cold", "ato_stealth"); ``warmup_s`` is the end of
    the period in which every user only builds history (no fraud, excluded from metrics).
    """

    time: np.ndarray
    user: np.ndarray
    amount: np.ndarray
    local_hour: np.ndarray
    country: np.ndarray
    merchant_category: np.ndarray
    device_id: np.ndarray
    channel: np.ndarray
    label: np.ndarray
    burst: np.ndarray
    tag: np.ndarray
    n_users: int
    warmup_s: float

    def __len__(self) -> int:
        return int(self.time.shape[0])


class _Columns:
    """Append-only column buffers (Python lists of numpy chunks), concatenated once."""

    names = ("time", "user", "amount", "local_hour", "country", "merchant_category",
             "device_id", "channel", "label", "burst", "tag")

    def __init__(self) -> None:
        self.parts: dict[str, list] = {n: [] for n in self.names}

    def add(self, **cols: np.ndarray | list) -> None:
        n = len(cols["time"])
        for name in self.names:
            v = cols[name]
            self.parts[name].append(np.full(n, v, dtype=object) if np.isscalar(v)
                                    else np.asarray(v))

    def build(self, n_users: int, warmup_s: float) -> RiskStream:
        cat = {n: np.concatenate(p) if p else np.empty(0) for n, p in self.parts.items()}
        order = np.argsort(cat["time"].astype(np.float64), kind="stable")

        def col(name: str, dtype: type) -> np.ndarray:
            return np.ascontiguousarray(cat[name][order].astype(dtype))

        hours = col("local_hour", np.float64)
        hours[hours >= 24.0] = 0.0  # np.mod of a tiny negative can round up to 24.0
        return RiskStream(time=col("time", np.float64), user=col("user", np.int64),
                          amount=col("amount", np.float64),
                          local_hour=hours,
                          country=col("country", object),
                          merchant_category=col("merchant_category", object),
                          device_id=col("device_id", object), channel=col("channel", object),
                          label=col("label", np.int8), burst=col("burst", np.int64),
                          tag=col("tag", object), n_users=n_users, warmup_s=warmup_s)


def _hours(rng: np.random.Generator, centers: np.ndarray, n: int) -> np.ndarray:
    """Local hours from a user's mixture of active-hour peaks, wrapped to [0, 24)."""
    c = centers[rng.integers(0, len(centers), n)]
    return np.mod(c + rng.normal(0.0, 1.8, n), 24.0)


def generate_stream(n_users: int = 1500, days: float = 60.0, warmup_days: float = 20.0,
                    attacked_share: float = 0.04, cold_attack_share: float = 0.25,
                    stealth_share: float = 0.15, seed: int = 0) -> RiskStream:
    """Generate a labelled stream (same arguments -> identical arrays).

    Args:
        n_users: users; 80% exist from time 0, 20% join after the warm-up.
        days: length of the stream.
        warmup_days: history-only prefix: no fraud, excluded from metrics by the eval.
        attacked_share: share of users hit by one account-takeover burst after warm-up.
        cold_attack_share: share of the bursts aimed at users who joined recently and have
            0-3 transactions.
        stealth_share: share of the bursts from the home country at usual hours.
        seed: everything is drawn from one generator seeded with this.
    """
    if not 0 < warmup_days < days:
        raise ValueError(f"warmup_days must be in (0, days={days}), got {warmup_days}")
    rng = np.random.default_rng(seed)
    codes = [c[0] for c in COUNTRIES]
    tz = np.array([c[1] for c in COUNTRIES])
    home_w = np.array([c[2] for c in COUNTRIES], dtype=float)
    home_w /= home_w.sum()
    attack_w = np.array([c[3] for c in COUNTRIES], dtype=float)
    mcc_pop = 1.0 / np.arange(1, len(EVERYDAY_MCC) + 1) ** 0.8
    mcc_pop /= mcc_pop.sum()
    end = days * DAY
    warmup = warmup_days * DAY
    cols = _Columns()

    joins = np.where(rng.random(n_users) < 0.8, 0.0, rng.uniform(warmup, end - 3 * DAY, n_users))
    homes = rng.choice(len(COUNTRIES), n_users, p=home_w)
    mus = rng.normal(np.log(40.0), 0.7, n_users)
    sigmas = rng.uniform(0.35, 0.8, n_users)
    rates = np.exp(rng.normal(np.log(1.5), 0.6, n_users))
    profiles = []
    for u in range(n_users):
        home = int(homes[u])
        centers = rng.uniform(8.0, 21.0, 1 + int(rng.random() < 0.5))
        favs = rng.choice(len(EVERYDAY_MCC), int(rng.integers(4, 13)), replace=False, p=mcc_pop)
        fav_w = rng.dirichlet(np.ones(len(favs)))
        ch_w = rng.dirichlet(np.array([4.0, 3.0, 2.0, 0.5, 1.0]))
        n_dev = 1 + int(rng.random() < 0.3)
        profiles.append((centers, favs, fav_w, ch_w))

        # habitual transactions: Poisson days x active-hour profile
        start = joins[u]
        n_days = int(np.ceil((end - start) / DAY))
        counts = rng.poisson(rates[u], n_days)
        n = int(counts.sum())
        day = np.repeat(np.arange(n_days), counts) + np.floor(start / DAY)
        hour = _hours(rng, centers, n)
        t = day * DAY + (hour - tz[home]) * HOUR
        amount = np.exp(rng.normal(mus[u], sigmas[u], n))
        mcc = np.array(EVERYDAY_MCC, dtype=object)[favs[rng.choice(len(favs), n, p=fav_w)]]
        ch = rng.choice(len(CHANNELS), n, p=ch_w)
        dev_idx = rng.integers(0, n_dev, n)
        device = np.array([f"u{u}-d{k}" for k in dev_idx], dtype=object)
        country = np.full(n, codes[home], dtype=object)
        tag = np.full(n, "habit", dtype=object)
        local = hour.copy()

        # noise: large purchases, new merchant categories
        big = rng.random(n) < 0.01
        amount[big] *= rng.uniform(4.0, 15.0, big.sum())
        tag[big] = "large"
        new_m = rng.random(n) < 0.04
        mcc[new_m] = rng.choice(np.array(EVERYDAY_MCC + FRAUD_MCC[:2], dtype=object),
                                new_m.sum())
        tag[new_m & ~big] = "new_merchant"
        # a phone upgrade: from a random time on, a new device
        if rng.random() < 0.12 and n:
            t_up = rng.uniform(start, end)
            after = t >= t_up
            device[after] = f"u{u}-d{n_dev}"
            first = np.flatnonzero(after & np.isin(ch, _DEVICE_CHANNELS))
            if first.size:
                tag[first[0]] = "new_device"
        # trips abroad: country and hours (in home time) shift for the trip's length
        for _ in range(rng.poisson((end - start) / DAY / 90.0)):
            dest = int(rng.choice(len(COUNTRIES), p=home_w))
            if dest == home:
                continue
            t0 = rng.uniform(start, end)
            on_trip = (t >= t0) & (t < t0 + rng.uniform(2, 10) * DAY)
            country[on_trip] = codes[dest]
            local[on_trip] = np.mod(hour[on_trip] - (tz[dest] - tz[home]), 24.0)
            t[on_trip] = day[on_trip] * DAY + (hour[on_trip] - tz[dest]) * HOUR
            ch[on_trip] = np.where(rng.random(on_trip.sum()) < 0.8, 0, ch[on_trip])
            tag[on_trip] = "travel"
        device[~np.isin(ch, _DEVICE_CHANNELS)] = ""
        cols.add(time=t, user=np.full(n, u), amount=np.round(amount, 2), local_hour=local,
                 country=country, merchant_category=mcc, device_id=device,
                 channel=np.array(CHANNELS, dtype=object)[ch], label=np.zeros(n, np.int8),
                 burst=np.full(n, -1), tag=tag)

        # shopping sprees: 3-6 transactions within ~1 h, usual place and hours
        for _ in range(rng.poisson((end - start) / DAY * 0.03)):
            m = int(rng.integers(3, 7))
            h0 = _hours(rng, centers, 1)[0]
            d0 = np.floor(rng.uniform(start, end) / DAY)
            offs = np.sort(rng.uniform(0.0, 1.0, m))
            hs = np.mod(h0 + offs, 24.0)
            ts = d0 * DAY + (h0 + offs - tz[home]) * HOUR
            cols.add(time=ts, user=np.full(m, u),
                     amount=np.round(np.exp(rng.normal(mus[u], sigmas[u], m)), 2),
                     local_hour=hs, country=np.full(m, codes[home], dtype=object),
                     merchant_category=np.array(EVERYDAY_MCC, dtype=object)[
                         favs[rng.choice(len(favs), m, p=fav_w)]],
                     device_id=np.full(m, "", dtype=object),
                     channel=np.full(m, "contactless", dtype=object),
                     label=np.zeros(m, np.int8), burst=np.full(m, -1),
                     tag=np.full(m, "spree", dtype=object))

    # account-takeover bursts
    n_attacks = round(attacked_share * n_users)
    late = np.flatnonzero(joins > 0)
    cold_n = min(round(cold_attack_share * n_attacks), late.size)
    victims = np.concatenate([
        rng.choice(late, cold_n, replace=False),
        rng.choice(np.setdiff1d(np.arange(n_users), late), n_attacks - cold_n, replace=False),
    ])
    for b, u in enumerate(victims):
        home = int(homes[u])
        cold = b < cold_n
        stealth = not cold and rng.random() < stealth_share
        t0 = (joins[u] + rng.uniform(0.0, 1.5) * DAY if cold
              else rng.uniform(warmup, end - DAY))
        m = int(rng.integers(3, 9))
        ts = t0 + np.concatenate([[0.0], np.cumsum(rng.exponential(rng.uniform(600, 2400),
                                                                     m - 1))])
        if stealth:
            where = home
            local = _hours(rng, profiles[u][0], m)
            ts = np.floor(t0 / DAY) * DAY + (local - tz[home]) * HOUR + np.arange(m) * 900.0
            amount = np.exp(mus[u] + rng.normal(0.4, 0.4, m))
            kind = "ato_stealth"
        else:
            where = home
            if rng.random() < 0.75:
                w = attack_w.copy()
                w[home] = 0.0
                where = int(rng.choice(len(COUNTRIES), p=w / w.sum()))
            # attackers work on their own clock; half of them in the victim's small hours
            local = (np.mod(rng.uniform(1.0, 5.0) + (ts - t0) / HOUR, 24.0)
                     if rng.random() < 0.5 else np.mod(ts / HOUR + tz[home], 24.0))
            amount = np.exp(mus[u] + rng.normal(np.log(4.0), 0.6, m))
            if rng.random() < 0.3:
                amount[0] = np.exp(mus[u]) * 0.3  # a small test charge first
            kind = "ato_cold" if cold else "ato"
        mcc = np.where(rng.random(m) < 0.7,
                       rng.choice(np.array(FRAUD_MCC, dtype=object), m),
                       rng.choice(np.array(EVERYDAY_MCC, dtype=object), m))
        ch = rng.choice(np.array([2, 4, 3]), m, p=[0.6, 0.3, 0.1])
        device = np.where(np.isin(ch, _DEVICE_CHANNELS),
                          f"atk{b}" if rng.random() < 0.9 else f"u{u}-d0", "").astype(object)
        cols.add(time=ts, user=np.full(m, u), amount=np.round(amount, 2),
                 local_hour=np.mod(local, 24.0),
                 country=np.full(m, codes[where], dtype=object), merchant_category=mcc,
                 device_id=device, channel=np.array(CHANNELS, dtype=object)[ch],
                 label=np.ones(m, np.int8), burst=np.full(m, b), tag=np.full(m, kind, object))
    return cols.build(n_users, warmup)
