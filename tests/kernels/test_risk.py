"""Risk kernels vs a slow, obvious NumPy reference; guard, learn, cold start, reasons."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from nudge.kernels import risk as R
from nudge.kernels import risk_reasons as RR

P = R.RiskParams()

# ---------------------------------------------------------------------------------------
# Reference implementation: plain NumPy, written for reading, not speed
# ---------------------------------------------------------------------------------------

CATEGORICALS = (  # tx column, total offset, bins slice, contribution index, detail index
    (R.TX_COUNTRY, R.COUNTRY_TOTAL, R.COUNTRY, R.C_COUNTRY, R.DETAIL_USER_COUNTRY),
    (R.TX_MCC, R.MCC_TOTAL, R.MCC, R.C_MCC, R.DETAIL_USER_MCC),
    (R.TX_DEVICE, R.DEVICE_TOTAL, R.DEVICE, R.C_DEVICE, R.DETAIL_USER_DEVICE),
    (R.TX_CHANNEL, R.CHANNEL_TOTAL, R.CHANNEL, R.C_CHANNEL, R.DETAIL_USER_CHANNEL),
)


def ref_learn(state: np.ndarray, feat: np.ndarray, p: R.RiskParams) -> np.ndarray:
    s = state.copy()
    n = s[R.BASELINE_COUNT]
    t = feat[R.TX_TIME]
    x = np.log1p(feat[R.TX_AMOUNT])
    vel = feat[R.FEAT_VEL_OFF:R.FEAT_VEL_OFF + R.N_WINDOWS]
    rate = max(1 / (n + 1), 1 - 0.5 ** (1 / p.amount_half_life_tx))
    if n == 0:
        s[R.AMOUNT_LOC], s[R.AMOUNT_DEV] = x, 0.0
        s[R.VEL_EXPECT] = vel
        s[R.LAST_LEARN] = t
        weight = 1.0
    else:
        sigma = max(R.MAD_TO_SIGMA * s[R.AMOUNT_DEV], p.amount_scale_floor)
        r = np.clip(x - s[R.AMOUNT_LOC], -p.amount_clip * sigma, p.amount_clip * sigma)
        s[R.AMOUNT_LOC] += rate * r
        s[R.AMOUNT_DEV] += rate * (abs(r) - s[R.AMOUNT_DEV])
        s[R.VEL_EXPECT] += rate * (vel - s[R.VEL_EXPECT])
        tau = p.profile_half_life_days * 86400 / np.log(2)
        if t > s[R.LAST_LEARN]:
            s[R.HOUR_TOTAL:] *= np.exp(-(t - s[R.LAST_LEARN]) / tau)
            s[R.LAST_LEARN] = t
            weight = 1.0
        else:
            weight = np.exp(-(s[R.LAST_LEARN] - t) / tau)
    hour_bin = int(feat[R.TX_HOUR])
    s[R.HOUR][hour_bin] += weight
    s[R.HOUR_TOTAL] += weight
    for col, total, bins, _, _ in CATEGORICALS:
        b = int(feat[col])
        if b >= 0:
            s[bins][b] += weight
            s[total] += weight
    s[R.BASELINE_COUNT] = n + 1
    return s


def ref_surprise(user: np.ndarray, user_total: float, pop: np.ndarray, pop_total: float,
                 b: int, w: float, alpha: float) -> tuple[float, float]:
    k = user.size
    prob = w * (user + alpha) / (user_total + alpha * k) \
        + (1 - w) * (pop + alpha) / (pop_total + alpha * k)
    return float(np.log(prob.max() / prob[b])), float(prob[b])


def circular_smooth(c: np.ndarray) -> np.ndarray:
    return 0.25 * np.roll(c, 1) + 0.5 * c + 0.25 * np.roll(c, -1)


def ref_score(state: np.ndarray, pop: np.ndarray, tx: np.ndarray, p: R.RiskParams,
              learn: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = state.copy()
    d = np.zeros(R.DETAIL_LEN)
    t, amount = tx[R.TX_TIME], tx[R.TX_AMOUNT]
    n, pop_n = s[R.BASELINE_COUNT], pop[R.BASELINE_COUNT]
    w = n / (n + p.cold_start_k) if pop_n > 0 else 1.0
    contrib = np.zeros(R.N_CONTRIB)

    x = np.log1p(amount)
    loc = w * s[R.AMOUNT_LOC] + (1 - w) * pop[R.AMOUNT_LOC]
    scale = w * max(R.MAD_TO_SIGMA * s[R.AMOUNT_DEV], p.amount_scale_floor) + (1 - w) * max(
        R.MAD_TO_SIGMA * pop[R.AMOUNT_DEV], p.amount_scale_floor)
    z = (x - loc) / scale if n + pop_n > 0 else 0.0
    contrib[R.C_AMOUNT] = 0.5 * max(z, 0.0) ** 2
    d[R.DETAIL_AMOUNT_RATIO] = np.exp(x - loc) if n + pop_n > 0 else 1.0
    d[R.DETAIL_AMOUNT_Z] = z

    contrib[R.C_HOUR], d[R.DETAIL_HOUR_PROB] = ref_surprise(
        circular_smooth(s[R.HOUR]), s[R.HOUR_TOTAL], circular_smooth(pop[R.HOUR]),
        pop[R.HOUR_TOTAL], int(tx[R.TX_HOUR]), w, p.smoothing)
    for col, total, bins, c, det in CATEGORICALS:
        b = int(tx[col])
        if b < 0:
            d[det] = -1
            continue
        contrib[c], _ = ref_surprise(s[bins], s[total], pop[bins], pop[total], b, w,
                                     p.smoothing)
        d[det] = s[bins][b]

    seen = s[R.SEEN_COUNT] > 0
    dt = max(t - s[R.LAST_SEEN], 0.0) if seen else np.inf
    windows = np.array(p.velocity_windows_s)
    prior = s[R.VEL_COUNT] * np.exp(-dt / windows)
    expect = np.maximum(w * s[R.VEL_EXPECT] + (1 - w) * pop[R.VEL_EXPECT], p.velocity_floor)
    deviance = [v * np.log(v / e) - (v - e) if v > e else 0.0
                for v, e in zip(prior, expect, strict=True)]
    contrib[R.C_VELOCITY] = max(deviance)
    d[R.DETAIL_VEL_WINDOW] = int(np.argmax(deviance)) if max(deviance) > 0 else 0
    ring = s[R.RING][: int(min(s[R.SEEN_COUNT], R.RING_LEN))]
    for k, win in enumerate(windows):
        d[R.DETAIL_WINDOW_COUNT_OFF + k] = 1 + np.sum(t - ring < win)
    d[R.DETAIL_VEL_PRIOR_OFF:R.DETAIL_VEL_PRIOR_OFF + 3] = prior
    d[R.DETAIL_VEL_EXPECT_OFF:R.DETAIL_VEL_EXPECT_OFF + 3] = expect
    sums = s[R.VEL_SUM] * np.exp(-dt / windows) + amount
    d[R.DETAIL_VEL_SUM_OFF:R.DETAIL_VEL_SUM_OFF + 3] = sums
    d[R.DETAIL_SINCE_LAST] = dt if seen else -1

    contrib *= np.array(p.weights)
    total = contrib.sum()
    score = total / (total + p.score_half)
    d[R.DETAIL_CONTRIB_OFF:R.DETAIL_CONTRIB_OFF + R.N_CONTRIB] = contrib
    d[R.DETAIL_SCORE], d[R.DETAIL_TOTAL] = score, total
    d[R.DETAIL_BLEND_WEIGHT], d[R.DETAIL_BASELINE_COUNT] = w, n

    feat = np.r_[tx, prior]
    s[R.VEL_COUNT] = prior + 1
    s[R.VEL_SUM] = sums
    if not seen or t > s[R.LAST_SEEN]:
        s[R.LAST_SEEN] = t
    pos = int(s[R.RING_POS])
    s[R.RING][pos] = t
    s[R.RING_POS] = (pos + 1) % R.RING_LEN
    s[R.SEEN_COUNT] += 1
    d[R.DETAIL_GUARDED] = score >= p.guard_threshold
    if learn and score < p.guard_threshold:
        s = ref_learn(s, feat, p)
        d[R.DETAIL_LEARNED] = 1
    return s, d, feat


# ---------------------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------------------


def random_txs(rng: np.random.Generator, n: int, t0: float = 0.0) -> np.ndarray:
    """Transactions with habits (repeated bins) and surprises (bursts, rare bins, missing,
    an occasional out-of-order time)."""
    gaps = np.where(rng.random(n) < 0.2, rng.exponential(300, n), rng.exponential(40000, n))
    t = t0 + np.cumsum(gaps)
    swap = rng.random(n) < 0.05
    t[swap] -= rng.uniform(0, 2000, swap.sum())
    tx = np.empty((n, R.TX_LEN))
    tx[:, R.TX_TIME] = t
    tx[:, R.TX_AMOUNT] = np.round(np.exp(rng.normal(3.5, 1.0, n)), 2)
    tx[rng.random(n) < 0.03, R.TX_AMOUNT] = 0.0
    tx[:, R.TX_HOUR] = np.mod(rng.normal(14, 4, n), 24)
    for col, bins in ((R.TX_COUNTRY, R.COUNTRY_BINS), (R.TX_MCC, R.MCC_BINS),
                      (R.TX_DEVICE, R.DEVICE_BINS), (R.TX_CHANNEL, R.CHANNEL_BINS)):
        habit = rng.integers(0, bins, 3)
        v = np.where(rng.random(n) < 0.85, habit[rng.integers(0, 3, n)],
                     rng.integers(0, bins, n))
        v[rng.random(n) < 0.05] = -1
        tx[:, col] = v
    return tx


def random_population(rng: np.random.Generator, n: int = 300) -> np.ndarray:
    pop = R.new_risk_state()
    feats = np.c_[random_txs(rng, n), rng.exponential(0.5, (n, R.N_WINDOWS))]
    for f in feats:
        pop = ref_learn(pop, f, P.for_population())
    return pop


def assert_close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Kernel == reference
# ---------------------------------------------------------------------------------------


def test_layout_fits_a_page_and_slices_tile_the_state() -> None:
    assert R.RISK_STATE_LEN * 8 <= 3000
    covered = np.zeros(R.RISK_STATE_LEN, int)
    for off in (R.VERSION, R.BASELINE_COUNT, R.LAST_SEEN, R.LAST_LEARN, R.AMOUNT_LOC,
                R.AMOUNT_DEV, R.SEEN_COUNT, R.RING_POS, R.HOUR_TOTAL, R.COUNTRY_TOTAL,
                R.MCC_TOTAL, R.DEVICE_TOTAL, R.CHANNEL_TOTAL):
        covered[off] += 1
    for sl in (R.VEL_COUNT, R.VEL_SUM, R.VEL_EXPECT, R.RING, R.HOUR, R.COUNTRY, R.MCC,
               R.DEVICE, R.CHANNEL):
        covered[sl] += 1
    assert (covered == 1).all()
    s = R.new_risk_state()
    assert s.shape == (R.RISK_STATE_LEN,) and s.dtype == np.float64
    assert s[R.VERSION] == R.RISK_STATE_VERSION and not s[1:].any()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("guard", [0.3, 2.0])
def test_score_sequence_matches_reference(seed: int, guard: float) -> None:
    rng = np.random.default_rng(seed)
    params = replace(P, guard_threshold=guard, cold_start_k=float(rng.uniform(1, 10)))
    pop = random_population(rng) if seed != 2 else R.new_risk_state()  # 2: empty population
    state_k = state_r = R.new_risk_state()
    held = 0
    for tx in random_txs(rng, 80, t0=1.7e9):
        got = R.score_transaction(state_k, pop, tx, params)
        s_r, d_r, f_r = ref_score(state_r, pop, tx, params)
        assert_close(got.details, d_r)
        assert_close(got.features, f_r)
        assert_close(got.state, s_r)
        assert got.learned == bool(d_r[R.DETAIL_LEARNED])
        if not got.learned:
            held += 1
            # half of the held ones turn out genuine: fold them in later
            if rng.random() < 0.5:
                got_state = R.learn_transaction(got.state, got.features, params)
                s_r = ref_learn(s_r, f_r, params)
                assert_close(got_state, s_r)
                got = replace(got, state=got_state)
        state_k, state_r = got.state, s_r
    assert (held > 0) == (guard < 1)
    assert state_k[R.SEEN_COUNT] == 80


def test_learn_matches_reference_including_late_learning() -> None:
    rng = np.random.default_rng(7)
    state = R.new_risk_state()
    feats = np.c_[random_txs(rng, 50), rng.exponential(0.5, (50, R.N_WINDOWS))]
    rng.shuffle(feats)  # arbitrary order: late labels arrive out of time order
    ref = state
    for f in feats:
        state = R.learn_transaction(state, f, P)
        ref = ref_learn(ref, f, P)
        assert_close(state, ref)
    many = R.learn_transactions(R.new_risk_state().reshape(1, -1), np.zeros(50, np.int64),
                                feats, P)
    assert_close(many[0], ref)


def test_batch_equals_sequential_single_scoring() -> None:
    rng = np.random.default_rng(3)
    pop = random_population(rng)
    n_users = 5
    txs = np.concatenate([random_txs(rng, 40, t0=0.0) for _ in range(n_users)])
    rows = np.repeat(np.arange(n_users), 40)
    order = np.argsort(txs[:, R.TX_TIME], kind="stable")
    txs, rows = txs[order], rows[order]
    states = np.tile(R.new_risk_state(), (n_users, 1))
    states[2] = R.score_transaction(states[2], pop, txs[0], P).state  # some prior history
    batch = R.score_transactions(states, rows, pop, txs, P)
    seq = states.copy()
    for i, (tx, u) in enumerate(zip(txs, rows, strict=True)):
        single = R.score_transaction(seq[u], pop, tx, P)
        seq[u] = single.state
        assert_close(batch.details[i], single.details)
        assert_close(batch.features[i], single.features)
    assert_close(batch.states, seq)
    assert_close(batch.scores, batch.details[:, R.DETAIL_SCORE])
    assert not np.shares_memory(batch.states, states)  # not inplace: a copy


def test_inplace_batch_updates_the_given_matrix() -> None:
    states = np.tile(R.new_risk_state(), (2, 1))
    tx = R.encode_transactions([10.0, 20.0], [0.0, 60.0], [10.0, 11.0], ["US", "US"],
                               ["5411", "5411"], ["d", "d"], ["online", "online"])
    out = R.score_transactions(states, [1, 1], R.new_risk_state(), tx, P, inplace=True)
    assert out.states is states and states[1, R.SEEN_COUNT] == 2 and states[0, 1:].sum() == 0
    states.flags.writeable = False
    with pytest.raises(ValueError, match="states must be writable"):
        R.score_transactions(states, [1, 1], R.new_risk_state(), tx, P, inplace=True)


def test_read_only_inputs_are_accepted_and_never_written() -> None:
    rng = np.random.default_rng(11)
    pop = random_population(rng)
    state = R.new_risk_state()
    for tx in random_txs(rng, 20):
        state = R.score_transaction(state, pop, tx, P).state
    # as the server hands them over: read-only views over bytes
    state_ro = np.frombuffer(state.tobytes(), dtype=np.float64)
    pop_ro = np.frombuffer(pop.tobytes(), dtype=np.float64)
    assert not state_ro.flags.writeable and not pop_ro.flags.writeable
    before = (state_ro.copy(), pop_ro.copy())
    tx = random_txs(rng, 1)[0]
    tx_ro = tx.copy()
    tx_ro.flags.writeable = False
    got = R.score_transaction(state_ro, pop_ro, tx_ro, P)
    expected = R.score_transaction(state, pop, tx, P)
    assert_close(got.state, expected.state)
    assert_close(got.details, expected.details)
    feat_ro = got.features.copy()
    feat_ro.flags.writeable = False
    learned = R.learn_transaction(state_ro, feat_ro, P)
    assert learned.flags.writeable
    states_ro = np.frombuffer(np.tile(state, (2, 1)).tobytes()).reshape(2, -1)
    batch = R.score_transactions(states_ro, [0, 1], pop_ro, np.tile(tx, (2, 1)), P)
    R.learn_transactions(states_ro, [0, 1], batch.features, P)
    assert_close(state_ro, before[0])
    assert_close(pop_ro, before[1])
    assert_close(tx_ro, tx)


# ---------------------------------------------------------------------------------------
# Behaviour: reasons, guard, cold start
# ---------------------------------------------------------------------------------------

DAY = 86400.0


def habitual_user(n: int = 40, pop: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A user who buys groceries in the US from one phone, daytime, ~USD 50, once a day."""
    rng = np.random.default_rng(5)
    pop = pop if pop is not None else population()
    state = R.new_risk_state()
    for i in range(n):
        tx = R.encode_transaction(float(np.round(50 * np.exp(rng.normal(0, 0.3)), 2)),
                                  i * DAY, float(rng.uniform(10, 18)), "US",
                                  ["5411", "5812"][i % 2], "phone-1", "online")
        r = R.score_transaction(state, pop, tx, P)
        assert r.learned
        state = r.state
    return state, pop


def population() -> np.ndarray:
    """A population of mostly US/GB daytime shoppers, ~USD 40."""
    rng = np.random.default_rng(9)
    txs = R.encode_transactions(
        np.exp(rng.normal(np.log(40), 0.8, 2000)), np.sort(rng.uniform(0, 30 * DAY, 2000)),
        rng.uniform(8, 22, 2000), rng.choice(["US", "GB"], 2000).tolist(),
        rng.choice(["5411", "5812", "5541", "4111"], 2000).tolist(),
        [f"dev{i}" for i in rng.integers(0, 500, 2000)], rng.choice(["online", "pos"],
                                                                    2000).tolist())
    feats = np.c_[txs, rng.exponential(0.1, (2000, R.N_WINDOWS))]
    return R.learn_transactions(R.new_risk_state().reshape(1, -1), np.zeros(2000, np.int64),
                                feats, P.for_population())[0]


def score_one(state: np.ndarray, pop: np.ndarray, *, amount: float = 50.0, t: float = 40 * DAY,
              hour: float = 14.0, country: str = "US", mcc: str = "5411",
              device: str = "phone-1", channel: str = "online",
              params: R.RiskParams = P) -> tuple[R.RiskScore, dict[str, RR.RiskReason]]:
    tx = R.encode_transaction(amount, t, hour, country, mcc, device, channel)
    r = R.score_transaction(state, pop, tx, params)
    reasons = RR.explain(r.details, country=country, merchant_category=mcc, local_hour=hour,
                         params=params)
    return r, {x.code: x for x in reasons}


def test_a_typical_transaction_gives_no_reasons() -> None:
    state, pop = habitual_user()
    r, reasons = score_one(state, pop)
    assert reasons == {}
    assert r.score < 0.1 and r.learned and r.baseline_count == 40


def test_big_amount_fires_amount_high_with_the_ratio() -> None:
    state, pop = habitual_user()
    typical = np.expm1(state[R.AMOUNT_LOC])
    r, reasons = score_one(state, pop, amount=round(9.2 * typical, 2))
    assert set(reasons) == {RR.AMOUNT_HIGH}
    assert r.details[R.DETAIL_AMOUNT_RATIO] == pytest.approx(9.2, rel=0.02)
    assert reasons[RR.AMOUNT_HIGH].detail == "amount is 9.2× this user's typical"
    assert reasons[RR.AMOUNT_HIGH].weight > 0.9  # the amount explains the score
    small, reasons = score_one(state, pop, amount=1.0)  # one-sided: small is not suspicious
    assert small.contributions["amount"] == 0.0 and reasons == {}


@pytest.mark.parametrize(("change", "code", "text"), [
    ({"country": "BR"}, RR.NEW_COUNTRY, "first transaction in BR"),
    ({"device": "phone-2"}, RR.NEW_DEVICE, "first transaction from this device"),
    ({"mcc": "6051"}, RR.NEW_MERCHANT_CATEGORY, "first purchase in merchant category 6051"),
    ({"hour": 3.5}, RR.UNUSUAL_HOUR, "03:30 local time is unusual for this user"),
])
def test_each_novelty_reason_fires_in_its_case(change: dict, code: str, text: str) -> None:
    state, pop = habitual_user()
    r, reasons = score_one(state, pop, **change)
    assert code in reasons, (reasons, r.contributions)
    assert reasons[code].detail == text
    assert set(reasons) == {code}


def test_rarely_seen_country_says_rare_not_first() -> None:
    state, pop = habitual_user()
    state = R.learn_transaction(state, score_one(state, pop, country="BR")[0].features, P)
    _, reasons = score_one(state, pop, t=41 * DAY, country="BR")
    if RR.NEW_COUNTRY in reasons:
        assert reasons[RR.NEW_COUNTRY].detail == "rare country for this user: BR"


def test_burst_fires_velocity_with_the_count() -> None:
    state, pop = habitual_user()
    t0 = 40 * DAY
    for dt in (0.0, 120.0, 240.0, 360.0):
        r, reasons = score_one(state, pop, t=t0 + dt)
        state = r.state
    assert RR.VELOCITY_BURST in reasons
    assert reasons[RR.VELOCITY_BURST].detail == "4th transaction in 10 minutes"
    assert r.details[R.DETAIL_WINDOW_COUNT_OFF] == 4


def test_guard_keeps_a_takeover_out_and_learn_folds_it_in() -> None:
    state, pop = habitual_user()
    odd = {"amount": 900.0, "hour": 3.0, "country": "BR", "device": "evil", "mcc": "6051"}
    first, reasons = score_one(state, pop, **odd)
    assert first.guarded and not first.learned
    assert {RR.NEW_COUNTRY, RR.NEW_DEVICE, RR.AMOUNT_HIGH} <= set(reasons)
    br = R.category_bin("BR", R.COUNTRY_BINS)
    held = first.state
    assert held[R.BASELINE_COUNT] == state[R.BASELINE_COUNT]
    assert held[R.COUNTRY][br] == state[R.COUNTRY][br] == 0
    np.testing.assert_array_equal(held[R.HOUR_TOTAL:], state[R.HOUR_TOTAL:])
    assert held[R.SEEN_COUNT] == state[R.SEEN_COUNT] + 1  # velocity still counts it
    # the rest of the burst still looks new, and faster
    second, reasons2 = score_one(held, pop, t=40 * DAY + 600, **odd)
    assert reasons2[RR.NEW_COUNTRY].detail == "first transaction in BR"
    assert second.score >= first.score
    # without the guard the profile learns the attacker and the second looks less new
    no_guard = replace(P, guard_threshold=2.0)
    poisoned, _ = score_one(state, pop, params=no_guard, **odd)
    assert poisoned.learned and poisoned.state[R.COUNTRY][br] > 0
    later, _ = score_one(poisoned.state, pop, t=40 * DAY + 600, params=no_guard, **odd)
    assert later.contributions["country"] < second.contributions["country"]
    # a GENUINE label arrives: learn folds it in
    folded = R.learn_transaction(held, first.features, P)
    assert folded[R.BASELINE_COUNT] == state[R.BASELINE_COUNT] + 1
    assert folded[R.COUNTRY][br] > 0
    assert held[R.COUNTRY][br] == 0  # the input was not touched


@pytest.mark.parametrize("n", [0, 1, 2])
def test_cold_start_blends_toward_the_population(n: int) -> None:
    pop = population()
    state = R.new_risk_state()
    for i in range(n):  # a user who buys big-ticket items
        state = R.score_transaction(state, pop, R.encode_transaction(
            2000.0, i * DAY, 12.0, "US", "5411", "d", "online"), replace(P, guard_threshold=2)
        ).state
    r, reasons = score_one(state, pop, amount=2000.0, device="d", t=10 * DAY)
    w = n / (n + P.cold_start_k)
    assert r.details[R.DETAIL_BLEND_WEIGHT] == pytest.approx(w)
    assert RR.COLD_START in reasons
    plural = "" if n == 1 else "s"
    assert reasons[RR.COLD_START].detail.startswith(f"only {n} earlier transaction{plural}")
    assert reasons[RR.COLD_START].weight == pytest.approx(1 - w)
    loc = w * state[R.AMOUNT_LOC] + (1 - w) * pop[R.AMOUNT_LOC]
    assert r.details[R.DETAIL_AMOUNT_RATIO] == pytest.approx(np.exp(np.log1p(2000.0) - loc))
    if n:  # own history pulls the typical amount up, so the same amount is less surprising
        r0, _ = score_one(R.new_risk_state(), pop, amount=2000.0, device="d", t=10 * DAY)
        assert r.contributions["amount"] < r0.contributions["amount"]
    # an established user does not get COLD_START
    state, _ = habitual_user(pop=pop)
    assert RR.COLD_START not in score_one(state, pop)[1]


# ---------------------------------------------------------------------------------------
# Validation, hashing, helpers
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"amount": -1.0}, "amount must be >= 0"),
    ({"amount": float("nan")}, "amount must be finite"),
    ({"time": float("inf")}, "time must be finite"),
    ({"local_hour": 24.0}, r"local_hour must be in \[0, 24\)"),
    ({"country": 5}, "must be a str"),
])
def test_encode_transaction_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"amount": 1.0, "time": 0.0, "local_hour": 1.0, "country": "US",
            "merchant_category": "5411", "device_id": "", "channel": "pos"} | kwargs
    with pytest.raises(ValueError, match=message):
        R.encode_transaction(**args)


def test_wrappers_reject_bad_arrays() -> None:
    s = R.new_risk_state()
    tx = R.encode_transaction(1.0, 0.0, 1.0, "US", "5411", "", "pos")
    with pytest.raises(ValueError, match="state must have RISK_STATE_LEN"):
        R.score_transaction(s[:-1], s, tx)
    with pytest.raises(ValueError, match="population must be float64"):
        R.score_transaction(s, s.astype(np.float32), tx)
    with pytest.raises(ValueError, match="state layout version"):
        R.score_transaction(np.zeros(R.RISK_STATE_LEN), s, tx)
    with pytest.raises(ValueError, match="transaction must have 7 values"):
        R.score_transaction(s, s, tx[:3])
    bad = tx.copy()
    bad[R.TX_AMOUNT] = -5
    with pytest.raises(ValueError, match="amount must be >= 0"):
        R.score_transaction(s, s, bad)
    bad = tx.copy()
    bad[R.TX_COUNTRY] = R.COUNTRY_BINS
    with pytest.raises(ValueError, match="country bin must be an integer"):
        R.score_transaction(s, s, bad)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 1\)"):
        R.score_transactions(s.reshape(1, -1), [1], s, tx.reshape(1, -1))
    with pytest.raises(ValueError, match="rows must be 1-D with one entry per transaction"):
        R.score_transactions(s.reshape(1, -1), [0, 0], s, tx.reshape(1, -1))
    with pytest.raises(ValueError, match="features must have 10 values"):
        R.learn_transaction(s, tx)
    with pytest.raises(ValueError, match=r"RiskParams\.smoothing must be > 0"):
        R.RiskParams(smoothing=0.0)
    with pytest.raises(ValueError, match=r"RiskParams\.weights must be 7 values"):
        R.RiskParams(weights=(1.0,))


def test_category_bins_are_stable_and_empty_means_missing() -> None:
    def blake(v: bytes, n: int) -> int:
        return int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little") % n

    assert R.category_bin("BR", 96) == blake(b"BR", 96) == 90  # pinned: stored profiles rely on it
    assert R.category_bin("US", 96) != R.category_bin("BR", 96)
    assert R.category_bin("", 64) == -1
    enc = R.encode_transactions([1.0, 2.0], [0.0, 1.0], [0.0, 23.5], ["BR", ""],
                                ["5411", "5411"], ["a", ""], ["pos", "pos"])
    assert enc[0, R.TX_COUNTRY] == blake(b"BR", 96) and enc[1, R.TX_COUNTRY] == -1
    assert_close(enc[0], R.encode_transaction(1.0, 0.0, 0.0, "BR", "5411", "a", "pos"))
    # a missing feature neither scores nor learns
    r = R.score_transaction(R.new_risk_state(), R.new_risk_state(), enc[1])
    assert r.details[R.DETAIL_USER_COUNTRY] == -1 and r.state[R.COUNTRY_TOTAL] == 0


def test_reason_text_helpers() -> None:
    assert [RR._ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th"]
    assert [RR._duration(s) for s in (600, 3600, 7200, 86400, 90)] == [
        "10 minutes", "1 hour", "2 hours", "24 hours", "1.5 minutes"]
    assert RR._times(9.23) == "9.2×" and RR._times(12.6) == "13×"
    with pytest.raises(ValueError, match="details must be one"):
        RR.explain(np.zeros(3))


def test_warm_up_runs_every_kernel() -> None:
    R.warm_up()
    for kernel in (R._score_one_kernel, R._score_batch_kernel, R._learn_one_kernel,
                   R._learn_batch_kernel):
        assert kernel.signatures
