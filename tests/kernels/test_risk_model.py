"""The likelihood-ratio risk model against a slow, obvious reference, and its contracts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nudge.kernels import risk_model as M
from nudge.kernels.risk import (
    CHANNEL_BINS,
    COUNTRY_BINS,
    DEVICE_BINS,
    MCC_BINS,
    TX_AMOUNT,
    TX_HOUR,
    TX_LEN,
    TX_TIME,
    encode_transaction,
)
from nudge.kernels.risk_model_reasons import REASON_CODES, TAKEOVER_EPISODE, explain, no_reason

PARAMS = M.ModelParams()
BINS = (COUNTRY_BINS, MCC_BINS, DEVICE_BINS, CHANNEL_BINS)


def random_txs(rng: np.random.Generator, n: int, t0: float = 0.0) -> np.ndarray:
    tx = np.empty((n, TX_LEN))
    tx[:, TX_TIME] = t0 + np.cumsum(rng.exponential(3000.0, n))
    tx[:, TX_AMOUNT] = np.round(np.exp(rng.normal(3.5, 1.0, n)), 2)
    tx[:, TX_HOUR] = rng.uniform(0, 24, n)
    for f, b in enumerate(BINS):  # few values per customer, sometimes missing or rare
        col = rng.choice(np.r_[-1, np.arange(3), rng.integers(0, b, 2)], n)
        tx[:, M.CAT_TX[f]] = col
    return tx


def random_states(seed: int, n_users: int = 4, n: int = 300):
    """Customers and a population grown by the kernels from random transactions, plus a
    few random FRAUD labels (so every part of the state is non-trivial)."""
    rng = np.random.default_rng(seed)
    users = np.tile(M.new_user_state(), (n_users, 1))
    pop = M.new_population_state()
    txs = random_txs(rng, n)
    rows = rng.integers(0, n_users, n)
    b = M.score_and_learn(users, rows, pop, txs, PARAMS)
    M.apply_labels(pop, b.features[:20], (rng.random(20) < 0.5).astype(float), PARAMS)
    return rng, users, pop, txs[-1, TX_TIME]


# --- the reference: the docstring's maths, one line at a time ------------------------------


def ref_q(pop, f, b, n):
    off, tot = (M.P_FIRST_OFF, M.P_FIRST_TOTAL) if n == 0 else (M.P_NEWHIST_OFF,
                                                                  M.P_NEWHIST_TOTAL)
    return (pop[off[f] + b] + 0.5) / (pop[tot[f]] + 0.5 * BINS[f])


def ref_recent(user, pop, tx, f, b, n, p: M.ModelParams):
    k = max(j for j, e in enumerate(M.HIST_EDGES) if n >= e)
    seen, recent = pop[M.P_RECENT + (f * M.N_HIST + k) * 2:][:2]
    r = (recent + 0.1) / (seen + 1)
    rr = p.attacker_recent
    is_recent = (user[M.U_RECENT_BIN + f] == b
                 and 0 <= tx[TX_TIME] - user[M.U_RECENT_TIME + f] <= p.recent_window_s)
    return math.log(rr / r) if is_recent else math.log((1 - rr) / (1 - r))


def ref_continuation(user, pop, tx, p: M.ModelParams, ev):
    """z_cont, or None when no episode can be open (nothing scored before, or off)."""
    if not (p.episode_timescale_s > 0 and user[M.U_EP_P] > 0
            and tx[TX_TIME] >= user[M.U_EP_TIME]):
        return None
    e = ev.copy()
    e[M.E_HOUR] = e[M.E_VELOCITY] = 0.0
    for f in range(4):
        b = tx[M.CAT_TX[f]]
        if b < 0:
            continue
        keep = p.attacker_keeps[f]
        if user[M.U_LAST_BIN + f] == b:
            n = user[M.U_CAT_TOTAL[f]]
            k = max(j for j, edge in enumerate(M.HIST_EDGES) if n >= edge)
            tot, same = pop[M.P_SAME + (f * M.N_HIST + k) * 2:][:2]
            e[f] = math.log(keep / ((same + 0.5) / (tot + 1)))
        else:
            e[f] = math.log(1 - keep) + ev[f]
        e[f] = np.clip(e[f], -p.evidence_clip, p.evidence_clip)
    return float((pop[M.P_W:M.P_W + 7] * e).sum())


def ref_amount_location(user, pop, p: M.ModelParams) -> tuple[float, float, float]:
    """The customer's predictive location m and variance of log1p(amount), and the
    population's pooled within-customer variance s_w^2."""
    if pop[M.P_AMT_N] < 2:
        mu, vt = 3.5, 1.0
    else:
        mu, vt = pop[M.P_AMT_MEAN], pop[M.P_AMT_M2] / pop[M.P_AMT_N]
    sw = pop[M.P_WITHIN_S] / pop[M.P_WITHIN_N] if pop[M.P_WITHIN_N] >= 2 else 0.5 * vt
    sw = max(sw, 0.01)
    tau2 = max(vt - sw, 0.05)
    n = user[M.U_AMT_N]
    sig2 = (user[M.U_AMT_S] + p.variance_pseudo * sw) / (n + p.variance_pseudo)
    prec = n / sig2 + 1 / tau2
    return (n * user[M.U_AMT_MEAN] / sig2 + mu / tau2) / prec, sig2 + 1 / prec, sw


def ref_evidence(user, pop, tx, p: M.ModelParams):
    clip, fp = p.evidence_clip, p.fraud_pseudo
    fr_total = pop[M.P_FR_HOUR:M.P_FR_HOUR + 24].sum()
    ev = np.zeros(7)
    new = [-1.0] * 4
    nus = [0.0] * 4
    for f in range(4):
        b = int(tx[M.CAT_TX[f]])
        if b < 0:
            continue
        n = user[M.U_CAT_TOTAL[f]]
        c = user[M.U_CAT_OFF[f] + b]
        k = max(j for j, e in enumerate(M.HIST_EDGES) if n >= e)
        tot, nw = pop[M.P_NOV + (f * M.N_HIST + k) * 2:][:2]
        nu = (nw + p.novelty_pseudo / (1 + n)) / (tot + p.novelty_pseudo)
        rho0 = ((pop[M.P_FR_CAT + 2 * f + 1] + fp * p.attacker_novelty[f])
                / (pop[M.P_FR_CAT + 2 * f] + fp))
        rho = rho0 + (1 - rho0) * nu
        nus[f] = nu
        if c > 0:
            e = math.log((1 - rho) / (1 - nu)) if nu < 1 else 0.0
            e += ref_recent(user, pop, tx, f, b, n, p)
            new[f] = 0.0
        else:
            q = ref_q(pop, f, b, n)
            u = (pop[M.P_FR_HIST_OFF[f] + b] + fp / BINS[f]) / (pop[M.P_FR_HIST_TOTAL[f]] + fp)
            e = math.log(rho * u / (nu * q))
            new[f] = 1.0
        ev[f] = np.clip(e, -clip, clip)
    # device given the country's novelty
    cs = int(new[0] > 0)
    ds = int(new[2]) + 1
    nd = user[M.U_CAT_TOTAL[2]]
    k = max(j for j, e in enumerate(M.HIST_EDGES) if nd >= e)
    cells = pop[M.P_JOINT + k * 6 + cs * 3:][:3]
    pg = (cells[ds] + 1 / 3) / (cells.sum() + 1)
    m = (pop[M.P_FR_NODEV] + fp * p.attacker_no_device) / (fr_total + fp)
    if ds == 0:
        e = math.log(m / pg)
    else:
        rho0 = (pop[M.P_FR_CAT + 5] + fp * p.attacker_novelty[2]) / (pop[M.P_FR_CAT + 4] + fp)
        rho = rho0 + (1 - rho0) * nus[2]
        if ds == 1:
            e = math.log((1 - m) * (1 - rho) / pg)
            e += ref_recent(user, pop, tx, 2, int(tx[M.CAT_TX[2]]), nd, p)
        else:
            b = int(tx[M.CAT_TX[2]])
            q = ref_q(pop, 2, b, nd)
            u = ((pop[M.P_FR_HIST_OFF[2] + b] + fp / DEVICE_BINS)
                 / (pop[M.P_FR_HIST_TOTAL[2]] + fp))
            e = math.log((1 - m) * rho * u / (pg * q))
    ev[M.E_DEVICE] = np.clip(e, -clip, clip)
    # hour
    h = int(tx[TX_HOUR])

    def smooth(a):
        return 0.25 * a[(h - 1) % 24] + 0.5 * a[h] + 0.25 * a[(h + 1) % 24]

    q = (smooth(pop[M.P_HOUR:M.P_HOUR + 24]) + 1) / (pop[M.P_HOUR_TOTAL] + 24)
    pg = (smooth(user[M.U_HOUR:M.U_HOUR + 24]) + p.hour_prior * q) / (user[M.U_N] + p.hour_prior)
    bc, nc = int(tx[M.CAT_TX[0]]), user[M.U_CAT_TOTAL[0]]
    if bc >= 0 and nc > 0 and user[M.U_CAT_OFF[0] + bc] < nc / 2:  # abroad: not home
        pg = ((smooth(pop[M.P_HOUR_NEWC:M.P_HOUR_NEWC + 24]) + 1)
              / (pop[M.P_HOUR_NEWC_TOTAL] + 24))
    pt = (pop[M.P_FR_HOUR + h] + fp / 24) / (fr_total + fp)
    ev[M.E_HOUR] = np.clip(math.log(pt / pg), -clip, clip)
    # amount
    x = math.log1p(tx[TX_AMOUNT])
    mean, var, sw = ref_amount_location(user, pop, p)
    z = (x - mean) / math.sqrt(var)
    dof = p.t_dof
    lg = (math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
          - 0.5 * math.log(var) - (dof + 1) / 2 * math.log1p(z * z / dof))
    an = pop[M.P_FR_AMT_N]
    shift = (pop[M.P_FR_AMT_MEAN] * an + p.fraud_amount_shift * fp) / (an + fp)
    om2 = (max(pop[M.P_FR_AMT_M2] - an * sw, 0) + fp * p.fraud_amount_sd ** 2) / (an + fp)
    lt = -0.5 * (math.log(2 * math.pi * (var + om2)) + (x - mean - shift) ** 2 / (var + om2))
    ev[M.E_AMOUNT] = np.clip(lt - lg, -clip, clip)
    # velocity
    ring = user[M.U_RING:M.U_RING + M.RING]
    dt = tx[TX_TIME] - ring
    kv = min(int(((dt >= 0) & (dt <= p.velocity_window_s)).sum()), M.VEL_K - 1)
    if user[M.U_N] < 3:
        row = 0
    else:
        last = ring[int((user[M.U_RING_POS] - 1) % M.RING)]
        rate = user[M.U_N] / max((last - user[M.U_FIRST]) / 86400, 1)
        row = 1 + sum(rate >= e for e in M.RATE_EDGES)
    counts = pop[M.P_VEL + row * M.VEL_K:][:M.VEL_K]
    pg = (counts[kv] + 1) / (counts.sum() + M.VEL_K)
    fv = np.asarray(p.attacker_velocity) / sum(p.attacker_velocity)
    pt = (pop[M.P_FR_VEL + kv] + fp * fv[kv]) / (fr_total + fp)
    ev[M.E_VELOCITY] = np.clip(math.log(pt / pg), -clip, clip)
    lp = math.log(p.prior / (1 - p.prior))
    p_tx = 1 / (1 + math.exp(-(lp + (pop[M.P_W:M.P_W + 7] * ev).sum())))
    z_cont = ref_continuation(user, pop, tx, p, ev)
    if z_cont is not None:  # the takeover-episode filter: start or continue an episode
        a = min(user[M.U_EP_P] * math.exp(-(tx[TX_TIME] - user[M.U_EP_TIME])
                                          / p.episode_timescale_s), 1 - 1e-9)
        odds = (math.exp(lp + (pop[M.P_W:M.P_W + 7] * ev).sum())
                + a / ((1 - a) * (1 - p.prior)) * math.exp(z_cont))
        p_tx = odds / (1 + odds)
    za = lp + user[M.U_ACCOUNT] - user[M.U_N] * math.log(2) / p.account_half_life_tx
    p_acct = 1 / (1 + math.exp(-za))
    return ev, 1 - (1 - p_acct) * (1 - p_tx), kv


@pytest.mark.parametrize("seed", range(6))
def test_score_matches_reference(seed: int) -> None:
    rng, users, pop, t = random_states(seed)
    for tx in random_txs(rng, 30, t):
        u = users[rng.integers(0, users.shape[0])].copy()
        if rng.random() < 0.5:  # an episode in any state of belief
            u[M.U_EP_P] = rng.random()
        score, det, feat = M.score_one(u, pop, tx, PARAMS)
        ev, ref_score, k = ref_evidence(u, pop, tx, PARAMS)
        np.testing.assert_allclose(det[M.D_EVIDENCE:M.D_EVIDENCE + 7], ev, rtol=1e-9,
                                   atol=1e-9)
        lp = math.log(PARAMS.prior / (1 - PARAMS.prior))
        assert det[M.D_START_LOGIT] == pytest.approx(lp + (pop[M.P_W:M.P_W + 7] * ev).sum(),
                                                     rel=1e-9, abs=1e-9)
        assert det[M.D_EP_PREV] == u[M.U_EP_P]
        assert det[M.D_EP_DT] == tx[TX_TIME] - u[M.U_EP_TIME]
        for f in range(4):
            b, last = tx[M.CAT_TX[f]], u[M.U_LAST_BIN + f]
            assert det[M.D_SAME + f] == (-1 if b < 0 or last < 0 else float(b == last))
        assert score == pytest.approx(ref_score, rel=1e-9, abs=1e-12)
        assert det[M.D_K] == k and feat[M.F_K] == k


@pytest.mark.parametrize("seed", range(4))
def test_learn_matches_reference(seed: int) -> None:
    """Folding a transaction in: counts, amount moments, novelty tables, case-control ring."""
    rng, users, pop, t = random_states(seed)
    for tx in random_txs(rng, 10, t):
        u = users[0].copy()
        _, _det, feat = M.score_one(u, pop, tx, PARAMS)
        u2, p2 = u.copy().reshape(1, -1), pop.copy()
        M.learn_held(u2, np.zeros(1, np.int64), p2, feat, PARAMS)
        ru, rp = u.copy(), pop.copy()
        x = math.log1p(tx[TX_AMOUNT])
        for f in range(4):
            b = int(tx[M.CAT_TX[f]])
            if b < 0:
                continue
            n = ru[M.U_CAT_TOTAL[f]]
            k = max(j for j, e in enumerate(M.HIST_EDGES) if n >= e)
            rp[M.P_NOV + (f * M.N_HIST + k) * 2] += 1
            if u[M.U_CAT_OFF[f] + b] > 0:
                rp[M.P_RECENT + (f * M.N_HIST + k) * 2] += 1
                if (u[M.U_RECENT_BIN + f] == b
                        and 0 <= tx[TX_TIME] - u[M.U_RECENT_TIME + f] <= PARAMS.recent_window_s):
                    rp[M.P_RECENT + (f * M.N_HIST + k) * 2 + 1] += 1
            else:
                ru[M.U_RECENT_BIN + f] = b
                ru[M.U_RECENT_TIME + f] = tx[TX_TIME]
                rp[M.P_NOV + (f * M.N_HIST + k) * 2 + 1] += 1
                off, tot = (M.P_FIRST_OFF, M.P_FIRST_TOTAL) if n == 0 else (
                    M.P_NEWHIST_OFF, M.P_NEWHIST_TOTAL)
                rp[off[f] + b] += 1
                rp[tot[f]] += 1
            ru[M.U_CAT_OFF[f] + b] += 1
            ru[M.U_CAT_TOTAL[f]] += 1
        acct = u[M.U_ACCOUNT]
        for f in range(4):
            b = int(tx[M.CAT_TX[f]])
            if b >= 0 and u[M.U_CAT_TOTAL[f]] == 0:
                fu = ((pop[M.P_FR_HIST_OFF[f] + b] + PARAMS.fraud_pseudo / BINS[f])
                      / (pop[M.P_FR_HIST_TOTAL[f]] + PARAMS.fraud_pseudo))
                acct += np.clip(math.log(fu / ref_q(pop, f, b, 0)), -6, 6)
        assert u2[0, M.U_ACCOUNT] == pytest.approx(acct, rel=1e-12, abs=1e-12)
        an = u[M.U_AMT_N]
        if an >= 1:
            rp[M.P_WITHIN_S] += (x - u[M.U_AMT_MEAN]) ** 2 * an / (an + 1)
            rp[M.P_WITHIN_N] += 1
        assert u2[0, M.U_N] == u[M.U_N] + 1
        assert u2[0, M.U_HOUR + int(tx[TX_HOUR])] == u[M.U_HOUR + int(tx[TX_HOUR])] + 1
        for f in range(4):
            sl = slice(M.U_CAT_TOTAL[f], M.U_CAT_OFF[f] + BINS[f])
            np.testing.assert_array_equal(u2[0, sl], ru[sl])
        bc, nc = int(tx[M.CAT_TX[0]]), u[M.U_CAT_TOTAL[0]]
        if bc >= 0 and nc > 0 and u[M.U_CAT_OFF[0] + bc] < nc / 2:  # abroad: hours abroad
            rp[M.P_HOUR_NEWC + int(tx[TX_HOUR])] += 1
            rp[M.P_HOUR_NEWC_TOTAL] += 1
        np.testing.assert_array_equal(p2[M.P_HOUR_NEWC_TOTAL:M.P_FR_NODEV],
                                      rp[M.P_HOUR_NEWC_TOTAL:M.P_FR_NODEV])
        np.testing.assert_array_equal(p2[M.P_NOV:M.P_HOUR_TOTAL], rp[M.P_NOV:M.P_HOUR_TOTAL])
        np.testing.assert_array_equal(p2[M.P_FIRST_TOTAL[0]:], rp[M.P_FIRST_TOTAL[0]:])
        np.testing.assert_array_equal(u2[0, M.U_RECENT_BIN:], ru[M.U_RECENT_BIN:])
        assert p2[M.P_WITHIN_S] == pytest.approx(rp[M.P_WITHIN_S])
        assert p2[M.P_AMT_N] == pop[M.P_AMT_N] + 1
        if an < PARAMS.amount_memory:
            assert u2[0, M.U_AMT_MEAN] == pytest.approx((u[M.U_AMT_MEAN] * an + x) / (an + 1))
        pos = int(pop[M.P_CC_POS])
        np.testing.assert_array_equal(p2[M.P_CC + pos * 7:M.P_CC + pos * 7 + 7],
                                      feat[M.F_EVIDENCE:M.F_EVIDENCE + 7])


def test_batch_equals_one_by_one() -> None:
    rng = np.random.default_rng(7)
    txs = random_txs(rng, 200)
    rows = rng.integers(0, 3, 200)
    users = np.tile(M.new_user_state(), (3, 1))
    pop = M.new_population_state()
    b = M.score_and_learn(users, rows, pop, txs, PARAMS)
    users1 = np.tile(M.new_user_state(), (3, 1))
    pop1 = M.new_population_state()
    for i in range(200):
        s, _det, _feat = M.score_one(users1[rows[i]], pop1, txs[i], PARAMS)
        assert s == b.scores[i]
        M.score_and_learn(users1, rows[i:i + 1], pop1, txs[i:i + 1], PARAMS)
    np.testing.assert_array_equal(users, users1)
    np.testing.assert_array_equal(pop, pop1)


def test_first_value_is_no_evidence_but_a_new_one_after_long_history_is() -> None:
    """No history: a first country is judged only by how rare it is in the population.
    200 transactions from one country and one phone: a new country and phone are strong."""
    users = np.tile(M.new_user_state(), (1, 1))
    pop = M.new_population_state()
    first = encode_transaction(30.0, 0.0, 12.0, "BR", "5411", "", "card_present")
    _, det0, _ = M.score_one(users[0], pop, first, PARAMS)
    assert det0[M.D_NOVELTY] == 1.0  # nu(0) = 1: a first value is always new
    rows = np.zeros(200, np.int64)
    txs = np.array([encode_transaction(30.0, i * 86400.0, 12.0, "BR", "5411", "phone",
                                       "online") for i in range(200)])
    M.score_and_learn(users, rows, pop, txs, PARAMS)
    away = encode_transaction(300.0, 201 * 86400.0, 3.0, "NG", "6051", "other", "online")
    s, det, _ = M.score_one(users[0], pop, away, PARAMS)
    # the device's evidence is conditional on the country being new (chain rule); with one
    # customer in the population that conditional is still uninformed, the sum is not
    assert det[M.D_EVIDENCE + M.E_COUNTRY] > 3
    assert det[M.D_EVIDENCE + M.E_COUNTRY] + det[M.D_EVIDENCE + M.E_DEVICE] > 5
    assert s > 0.5
    home = encode_transaction(30.0, 201 * 86400.0, 12.0, "BR", "5411", "phone", "online")
    assert M.score_one(users[0], pop, home, PARAMS)[0] < 0.01
    reasons = explain(det, country="NG")
    assert {r.code for r in reasons} >= {"NEW_COUNTRY", "AMOUNT_HIGH"}
    assert not any("weak" in r.detail for r in reasons)
    weak = explain(det0)
    assert weak and weak[-1].code == "COLD_START"


def test_held_transaction_is_not_learned_until_told() -> None:
    users = np.tile(M.new_user_state(), (1, 1))
    pop = M.new_population_state()
    p = M.ModelParams(hold_threshold=1e-12)  # hold everything
    tx = encode_transaction(30.0, 0.0, 12.0, "BR", "5411", "", "card_present")
    b = M.score_and_learn(users, np.zeros(1, np.int64), pop, tx.reshape(1, -1), p)
    assert b.held[0] and users[0, M.U_N] == 0 and users[0, M.U_SEEN] == 1
    M.learn_held(users, np.zeros(1, np.int64), pop, b.features, p)
    assert users[0, M.U_N] == 1


def test_labels_move_the_takeover_model_and_weights() -> None:
    _, _users, pop, _ = random_states(3)
    before = pop.copy()
    feats = np.zeros((4, M.FEAT_LEN))
    feats[:, TX_HOUR] = 3
    feats[:, M.F_EVIDENCE:M.F_EVIDENCE + 7] = 2.0
    M.apply_labels(pop, feats, np.ones(4), PARAMS)
    assert pop[M.P_FR_HOUR + 3] == before[M.P_FR_HOUR + 3] + 4
    assert not np.array_equal(pop[M.P_W:M.P_W + 7], before[M.P_W:M.P_W + 7])
    with pytest.raises(ValueError, match="labels must be 0"):
        M.apply_labels(pop, feats, np.full(4, 2.0), PARAMS)


def test_wrappers_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="user must be"):
        M.score_one(np.zeros(3), M.new_population_state(), np.zeros(TX_LEN))
    with pytest.raises(ValueError, match="prior"):
        M.ModelParams(prior=0.0)
    ro = M.new_population_state()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        M.score_and_learn(np.tile(M.new_user_state(), (1, 1)), np.zeros(1, np.int64), ro,
                          np.zeros((1, TX_LEN)))


def test_read_only_views_score() -> None:
    M.warm_up()
    _, users, pop, t = random_states(1)
    u = users[0].copy()
    u.flags.writeable = False
    pop.flags.writeable = False
    tx = encode_transaction(30.0, t + 1.0, 12.0, "BR", "5411", "", "card_present")
    assert 0.0 < M.score_one(u, pop, tx)[0] < 1.0


def test_out_of_range_bins_and_features_are_refused() -> None:
    users = np.tile(M.new_user_state(), (1, 1))
    pop = M.new_population_state()
    tx = encode_transaction(10.0, 0.0, 12.0, "US", "5411", "", "card_present").reshape(1, -1)
    bad = tx.copy()
    bad[0, M.CAT_TX[0]] = COUNTRY_BINS
    with pytest.raises(ValueError, match="category bins"):
        M.score_and_learn(users, np.zeros(1, np.int64), pop, bad)
    b = M.score_and_learn(users, np.zeros(1, np.int64), pop, tx)
    feats = b.features.copy()
    feats[0, M.F_K] = 99
    with pytest.raises(ValueError, match="velocity count"):
        M.learn_held(users, np.zeros(1, np.int64), pop, feats)


def ref_sgd(w: np.ndarray, ev: np.ndarray, y: float, z0: float, p: M.ModelParams) -> np.ndarray:
    g = 1 / (1 + math.exp(-(z0 + w @ ev))) - y
    return np.maximum(w - p.learning_rate * (g * ev + p.l2 * (w - 1)), 0)


@pytest.mark.parametrize("seed", range(4))
def test_labels_match_reference(seed: int) -> None:
    """FRAUD: the takeover model's counts, then an SGD step on the transaction (y=1) and one
    on the oldest case-control partner (y=0), both at logit 0; GENUINE: one step at the
    prior's logit."""
    rng, users, pop, t = random_states(seed)
    tx = random_txs(rng, 1, t)[0]
    _, _, feat = M.score_one(users[0], pop, tx, PARAMS)
    ev = feat[M.F_EVIDENCE:M.F_EVIDENCE + 7]
    w = pop[M.P_W:M.P_W + 7]
    genuine = pop.copy()
    M.apply_labels(genuine, feat, np.zeros(1), PARAMS)
    lp = math.log(PARAMS.prior / (1 - PARAMS.prior))
    np.testing.assert_allclose(genuine[M.P_W:M.P_W + 7], ref_sgd(w, ev, 0.0, lp, PARAMS),
                               rtol=1e-12)
    fraud = pop.copy()
    M.apply_labels(fraud, feat, np.ones(1), PARAMS)
    pos = int(pop[M.P_CC_POS])
    partner = pop[M.P_CC + pos * 7:M.P_CC + pos * 7 + 7]
    w1 = ref_sgd(ref_sgd(w, ev, 1.0, 0.0, PARAMS), partner, 0.0, 0.0, PARAMS)
    np.testing.assert_allclose(fraud[M.P_W:M.P_W + 7], w1, rtol=1e-12)
    assert fraud[M.P_CC_POS] == (pos + 1) % M.CC_RING
    h = int(feat[TX_HOUR])
    assert fraud[M.P_FR_HOUR + h] == pop[M.P_FR_HOUR + h] + 1
    assert fraud[M.P_FR_VEL + int(feat[M.F_K])] == pop[M.P_FR_VEL + int(feat[M.F_K])] + 1
    for f in range(4):
        b = int(feat[M.CAT_TX[f]])
        if b >= 0:
            assert fraud[M.P_FR_HIST_OFF[f] + b] == pop[M.P_FR_HIST_OFF[f] + b] + 1
            assert fraud[M.P_FR_CAT + 2 * f + 1] == pop[M.P_FR_CAT + 2 * f + 1] + (
                feat[M.F_NEW + f] > 0)
    # the takeover amount moments the amount evidence reads: Welford on r = log1p(amount) -
    # m, the customer's predictive location when it was scored; a GENUINE label leaves them
    r = math.log1p(tx[TX_AMOUNT]) - ref_amount_location(users[0], pop, PARAMS)[0]
    n0, mean0, m20 = pop[M.P_FR_AMT_N], pop[M.P_FR_AMT_MEAN], pop[M.P_FR_AMT_M2]
    assert n0 >= 1  # random_states labelled some FRAUD: an update, not a first value
    n1 = n0 + 1
    mean1 = mean0 + (r - mean0) / n1
    m21 = m20 + (r - mean0) * (r - mean1)
    np.testing.assert_allclose(fraud[[M.P_FR_AMT_N, M.P_FR_AMT_MEAN, M.P_FR_AMT_M2]],
                               [n1, mean1, m21], rtol=1e-9)
    np.testing.assert_array_equal(genuine[M.P_FR_AMT_N:M.P_FR_AMT_M2 + 1],
                                  pop[M.P_FR_AMT_N:M.P_FR_AMT_M2 + 1])


def test_fraud_label_moments_equal_the_labelled_residuals() -> None:
    """Labelled one at a time, the takeover amount moments are the count, mean and sum of
    squared deviations of the labelled rows' residuals (from zero); rows kept before the
    residual (FEAT_LEN_V3) still train the rest of the takeover model, not the moments."""
    _, users, pop, t = random_states(5)
    fresh = pop.copy()
    fresh[M.P_FR_AMT_N:M.P_FR_AMT_M2 + 1] = 0.0
    rng = np.random.default_rng(7)
    b = M.score_and_learn(users, rng.integers(0, 4, 30), pop, random_txs(rng, 30, t), PARAMS)
    r = b.features[:, M.F_AMT_RESID]
    np.testing.assert_allclose(np.exp(r), b.details[:, M.D_AMOUNT_RATIO], rtol=1e-12)
    got = fresh.copy()
    M.apply_labels(got, b.features, np.ones(30), PARAMS)
    np.testing.assert_allclose(got[[M.P_FR_AMT_N, M.P_FR_AMT_MEAN, M.P_FR_AMT_M2]],
                               [30, r.mean(), ((r - r.mean()) ** 2).sum()], rtol=1e-9)
    old = fresh.copy()
    M.apply_labels(old, b.features[:, :M.FEAT_LEN_V3], np.ones(30), PARAMS)
    np.testing.assert_array_equal(old[M.P_FR_AMT_N:M.P_FR_AMT_M2 + 1], 0.0)
    assert old[M.P_FR_HOUR:M.P_FR_HOUR + 24].sum() == got[M.P_FR_HOUR:M.P_FR_HOUR + 24].sum()


def test_score_learn_one_equals_the_batch_and_hold_false_learns_everything() -> None:
    rng = np.random.default_rng(11)
    txs = random_txs(rng, 120)
    rows = rng.integers(0, 2, 120)
    for hold in (True, False):
        users = np.tile(M.new_user_state(), (2, 1))
        pop = M.new_population_state()
        b = M.score_and_learn(users, rows, pop, txs, PARAMS, hold=hold)
        users1 = np.tile(M.new_user_state(), (2, 1))
        pop1 = M.new_population_state()
        for i in range(120):
            det, _feat = M.score_learn_one(users1[rows[i]], pop1, txs[i], PARAMS, hold=hold)
            assert det[M.D_SCORE] == b.scores[i] and bool(det[M.D_HELD]) == b.held[i]
        np.testing.assert_array_equal(users, users1)
        np.testing.assert_array_equal(pop, pop1)
        if hold:
            assert b.held.any()
        else:
            assert not b.held.any() and users[:, M.U_N].sum() == 120


@pytest.mark.parametrize("seed", range(3))
def test_episode_memory_and_same_as_last_counts_match_reference(seed: int) -> None:
    """After scoring, the customer remembers the transaction's P(fraud), time and values;
    a transaction learned right away counts, per categorical and history bucket, whether
    it repeated the previous scored transaction's value (a held one counts nothing)."""
    rng, users, pop, t = random_states(seed)
    for tx in random_txs(rng, 10, t):
        u = users[1:2].copy()
        p2 = pop.copy()
        b = M.score_and_learn(u, np.zeros(1, np.int64), p2, tx.reshape(1, -1), PARAMS)
        assert u[0, M.U_EP_P] == b.scores[0] and u[0, M.U_EP_TIME] == tx[TX_TIME]
        np.testing.assert_array_equal(u[0, M.U_LAST_BIN:M.U_LAST_BIN + 4],
                                      tx[list(M.CAT_TX)])
        ref = pop[M.P_SAME:].copy()
        if not b.held[0]:
            for f in range(4):
                last, v = users[1, M.U_LAST_BIN + f], tx[M.CAT_TX[f]]
                if v < 0 or last < -1:
                    continue
                n = users[1, M.U_CAT_TOTAL[f]]
                k = max(j for j, e in enumerate(M.HIST_EDGES) if n >= e)
                ref[(f * M.N_HIST + k) * 2] += 1
                ref[(f * M.N_HIST + k) * 2 + 1] += last == v
        np.testing.assert_array_equal(p2[M.P_SAME:], ref)
        users[1], pop = u[0], p2


def test_episode_evidence_accumulates_and_fades() -> None:
    """A takeover whose first transaction slipped through (scored under the hold) is not
    forgiven by its own reuse of what it brought: the next attacker transaction minutes
    later scores higher with the episode filter than judged alone; a day later the episode
    has faded and the filter adds less than a tenth of the prior."""
    users = np.tile(M.new_user_state(), (1, 1))
    pop = M.new_population_state()
    rng = np.random.default_rng(3)
    txs = np.array([encode_transaction(float(np.exp(rng.normal(3.5, 0.3))), i * 43200.0,
                                       float(rng.uniform(9, 20)), "BR", "5411", "phone",
                                       "online") for i in range(120)])
    M.score_and_learn(users, np.zeros(120, np.int64), pop, txs, PARAMS)
    t0 = 121 * 43200.0
    first = encode_transaction(120.0, t0, 14.0, "BR", "5999", "evil", "online")
    off = M.ModelParams(episode_timescale_s=0.0)
    for later, boost in ((600.0, True), (86400.0 * 3, False)):
        u_on, p_on = users.copy(), pop.copy()
        b = M.score_and_learn(u_on, np.zeros(1, np.int64), p_on, first.reshape(1, -1),
                              PARAMS, hold=False)  # slipped through and was learned
        assert b.scores[0] > PARAMS.prior
        nxt = encode_transaction(150.0, t0 + later, 14.2, "BR", "5999", "evil", "online")
        s_on, det, _ = M.score_one(u_on[0], p_on, nxt, PARAMS)
        s_alone, det_alone, _ = M.score_one(u_on[0], p_on, nxt, off)
        codes = [r.code for r in explain(det, p_on[M.P_W:M.P_W + 7])]
        assert TAKEOVER_EPISODE not in [r.code for r in explain(det_alone)]
        if boost:  # the odds, at least doubled
            assert s_on / (1 - s_on) > 2 * s_alone / (1 - s_alone)
            lift = det[M.D_LOGIT] - det[M.D_START_LOGIT]
            assert (TAKEOVER_EPISODE in codes) == (lift >= 1.5)
        else:
            assert s_alone <= s_on < s_alone + 0.1 * PARAMS.prior
            assert TAKEOVER_EPISODE not in codes


def test_version_2_rows_migrate_keeping_what_was_learned() -> None:
    rng, users, pop, t = random_states(5)
    old_u = users[0, :M.USER_LEN_V2].copy()
    old_u[0] = M.PREV_MODEL_VERSION
    old_p = pop[:M.POP_LEN_V2].copy()
    old_p[0] = M.PREV_MODEL_VERSION
    u, p = M.migrate_user_state(old_u), M.migrate_population_state(old_p)
    assert u[0] == p[0] == M.MODEL_VERSION
    np.testing.assert_array_equal(u[1:M.USER_LEN_V2], users[0, 1:M.USER_LEN_V2])
    np.testing.assert_array_equal(u[M.USER_LEN_V2:], M.new_user_state()[M.USER_LEN_V2:])
    np.testing.assert_array_equal(p[1:M.POP_LEN_V2], pop[1:M.POP_LEN_V2])
    assert not p[M.POP_LEN_V2:].any()
    tx = random_txs(rng, 1, t)[0]
    score, _det, _feat = M.score_one(u, p, tx, PARAMS)  # no episode open: judged alone
    assert score == M.score_one(u, p, tx, M.ModelParams(episode_timescale_s=0.0))[0]
    with pytest.raises(ValueError, match="version-2"):
        M.migrate_user_state(users[0])
    with pytest.raises(ValueError, match="version-2"):
        M.migrate_population_state(pop)


def test_episode_reason_fires_when_the_filter_drives_the_score() -> None:
    """TAKEOVER_EPISODE: the filter's lift of the logit (score with the "continues" term
    minus the single-transaction logit) against the same 1.5-nat bar as a feature's
    evidence, its weight its share of the positive evidence, the text naming the earlier
    transaction and what is repeated; the other codes and texts are untouched."""
    lp = math.log(PARAMS.prior / (1 - PARAMS.prior))
    det = np.zeros(M.DETAIL_LEN)
    det[M.D_EVIDENCE + M.E_AMOUNT] = 2.0  # AMOUNT_HIGH (2 nats)
    det[M.D_AMOUNT_RATIO] = 4.0
    det[M.D_HISTORY] = 40
    det[M.D_EP_PREV], det[M.D_EP_DT] = 0.42, 1500.0
    det[M.D_SAME:M.D_SAME + 4] = (1, 0, 1, -1)
    det[M.D_START_LOGIT] = lp + 2.0
    for lift, fires in ((0.0, False), (1.49, False), (1.5, True), (4.0, True)):
        det[M.D_LOGIT] = det[M.D_START_LOGIT] + lift
        reasons = explain(det)
        by = {r.code: r for r in reasons}
        assert (TAKEOVER_EPISODE in by) == fires
        assert by["AMOUNT_HIGH"].detail == "amount is 4.0× this user's typical"
        # shares of all positive evidence: a lift under the bar still counts in the total,
        # as a feature's evidence under the bar does
        assert sum(r.weight for r in reasons) == pytest.approx(
            (2.0 + lift * fires) / (2.0 + lift))
        if fires:
            r = by[TAKEOVER_EPISODE]
            assert r.weight == pytest.approx(lift / (lift + 2.0))
            assert r.detail == ("judged as one takeover episode with a transaction 25 minutes "
                                "earlier (P(fraud) 0.42): same country, device")
            assert reasons[0].code == (TAKEOVER_EPISODE if lift > 2.0 else "AMOUNT_HIGH")
    assert REASON_CODES[:7] == ("AMOUNT_HIGH", "NEW_COUNTRY", "NEW_DEVICE",
                                "NEW_MERCHANT_CATEGORY", "UNUSUAL_HOUR", "VELOCITY_BURST",
                                "COLD_START")
    assert REASON_CODES[7:] == ("TAKEOVER_EPISODE", "AMOUNT_LOW")
    det[M.D_LOGIT] = det[M.D_START_LOGIT]
    det[M.D_AMOUNT_RATIO] = 0.072  # far below the usual: the evidence's other side
    assert [(r.code, r.detail) for r in explain(det)] == [
        ("AMOUNT_LOW", "amount is 0.072× this user's typical (unusually low)")]
    det[M.D_AMOUNT_RATIO] = 4.0
    det[M.D_SAME:M.D_SAME + 4] = 0.0
    det[M.D_EP_DT] = 4.5 * 3600
    det[M.D_LOGIT] = det[M.D_START_LOGIT] + 3.0
    assert explain(det)[0].detail == ("judged as one takeover episode with a transaction 4.5 "
                                      "hours earlier (P(fraud) 0.42)")


def test_explain_codes_and_weights_against_a_plain_reference() -> None:
    """explain's quick "nothing fires" exit and its full path give what the rule says:
    a feature when weight × evidence ≥ 1.5 nats, TAKEOVER_EPISODE when the filter's lift
    is, weights as shares of the positive evidence, COLD_START below 5 earlier
    transactions; on random rows around every threshold, NaN evidence included."""
    rng = np.random.default_rng(17)
    features = ("AMOUNT_HIGH", "NEW_COUNTRY", "NEW_DEVICE", "NEW_MERCHANT_CATEGORY",
                "UNUSUAL_HOUR", "VELOCITY_BURST")
    slots = (M.E_AMOUNT, M.E_COUNTRY, M.E_DEVICE, M.E_MCC, M.E_HOUR, M.E_VELOCITY)
    empty = quick_empty = 0
    for case in range(2_000):
        d = np.zeros(M.DETAIL_LEN)
        d[M.D_EVIDENCE:M.D_EVIDENCE + 7] = rng.choice([-1.0, 0.0, 0.5, 1.49, 1.5, 3.0], 7,
                                                        p=[0.2, 0.3, 0.2, 0.2, 0.05, 0.05])
        if case % 50 == 0:
            d[M.D_EVIDENCE + rng.integers(7)] = np.nan
        d[M.D_START_LOGIT] = -3.0
        d[M.D_LOGIT] = -3.0 + rng.choice([0.0, 1.0, 1.5, 2.5], p=[0.4, 0.4, 0.1, 0.1])
        d[M.D_HISTORY] = rng.choice([0, 1, 4, 5, 20])
        w = None if case % 3 == 0 else rng.choice([0.5, 1.0, 2.0], 7)
        ev = [(1.0 if w is None else w[f]) * d[M.D_EVIDENCE + f] for f in range(7)]
        lift = d[M.D_LOGIT] - d[M.D_START_LOGIT]
        positive = sum(e for e in ev if e > 0) + max(lift, 0.0)
        d[M.D_AMOUNT_RATIO] = rng.choice([0.05, 0.99, 1.0, 7.0])
        want = [("AMOUNT_LOW" if f == M.E_AMOUNT and d[M.D_AMOUNT_RATIO] < 1 else code,
                 ev[f] / positive) for code, f in zip(features, slots, strict=True)
                if ev[f] >= 1.5]
        if lift >= 1.5:
            want.append((TAKEOVER_EPISODE, lift / positive))
        want.sort(key=lambda r: r[1], reverse=True)
        if d[M.D_HISTORY] < 5:
            want.append(("COLD_START", 0.0))
        got = explain(d, w)
        assert [(r.code, r.weight) for r in got] == want, case
        empty += not got
        # ScoreTransaction's pre-check: "no reason" only where explain gives none.
        quick = no_reason(d.tolist(), [1.0] * 7 if w is None else w.tolist())
        assert quick <= (not got), case
        quick_empty += quick
    assert 200 < empty < 1_800  # both paths ran
    assert quick_empty > 150
