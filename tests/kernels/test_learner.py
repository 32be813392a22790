"""Learner kernels against direct recomputation with numpy.linalg."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import learner
from nudge.kernels.learner import LearnerParams, initial_snapshot, update_posteriors
from nudge.kernels.snapshot import OFFSET_PRIOR_VARIANCE

D = 5


def _combos() -> np.ndarray:
    # 4 combinations over 6 components; the last one is "nothing" (its own component).
    return np.array([[0, 2, -1], [0, 3, 4], [1, 2, 4], [5, -1, -1]], dtype=np.int32)


def _batch(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs = rng.normal(size=(n, D))
    xs[:, 0] = 1.0
    return rng.integers(0, 4, n), xs, rng.normal(size=n)


def _reference(combos, chosen, xs, rewards, lam, alpha, n_comp):
    a = np.broadcast_to(alpha * np.eye(D), (n_comp, D, D)).copy()
    b = np.zeros((n_comp, D))
    n_eff = np.zeros(n_comp)
    for ch, x, r in zip(chosen, xs, rewards, strict=True):
        for c in combos[ch]:
            if c < 0:
                continue
            a[c] = lam * a[c] + (1 - lam) * alpha * np.eye(D) + np.outer(x, x)
            b[c] = lam * b[c] + r * x
            n_eff[c] = lam * n_eff[c] + 1
    return a, b, n_eff


@pytest.mark.parametrize("lam", [1.0, 0.97])
def test_update_matches_direct_recomputation(lam: float) -> None:
    rng = np.random.default_rng(1)
    alpha = 2.5
    snap = initial_snapshot(6, D, prior_precision=alpha)
    chosen, xs, rewards = _batch(rng, 60)
    new = update_posteriors(snap, _combos(), chosen, xs, rewards, LearnerParams(lam))
    a, b, n_eff = _reference(_combos(), chosen, xs, rewards, lam, alpha, 6)
    assert np.allclose(new.precision, a, rtol=1e-12, atol=1e-12)
    assert np.allclose(new.b, b, rtol=1e-12, atol=1e-12)
    assert np.allclose(new.n_eff, n_eff)
    for c in range(6):
        cov = np.linalg.inv(a[c])
        f = new.cov_factor(c)
        assert np.allclose(f, np.triu(f))
        assert np.allclose(f @ f.T, cov, rtol=1e-10, atol=1e-12)
        assert np.allclose(new.mu[c], cov @ b[c], rtol=1e-9, atol=1e-12)


def test_no_forgetting_is_ridge_regression() -> None:
    rng = np.random.default_rng(2)
    snap = initial_snapshot(6, D, prior_precision=1.0)
    chosen, xs, rewards = _batch(rng, 200)
    new = update_posteriors(snap, _combos(), chosen, xs, rewards, LearnerParams(1.0))
    rows = chosen == 3  # only "nothing" touches component 5
    x5, r5 = xs[rows], rewards[rows]
    ridge = np.linalg.solve(np.eye(D) + x5.T @ x5, x5.T @ r5)
    assert np.allclose(new.mu[5], ridge)


def test_batches_compose_and_untouched_components_keep_prior() -> None:
    rng = np.random.default_rng(3)
    snap = initial_snapshot(6, D)
    chosen, xs, rewards = _batch(rng, 80)
    chosen[chosen == 2] = 1  # component 1 is never chosen
    params = LearnerParams(0.99)
    once = update_posteriors(snap, _combos(), chosen, xs, rewards, params)
    twice = update_posteriors(update_posteriors(snap, _combos(), chosen[:30], xs[:30],
                                                rewards[:30], params),
                              _combos(), chosen[30:], xs[30:], rewards[30:], params)
    for name in ("precision", "b", "mean_t", "factor_t", "n_eff"):
        assert np.allclose(getattr(once, name), getattr(twice, name), atol=1e-12), name
    assert np.array_equal(once.mu[1], np.zeros(D))
    assert np.array_equal(once.precision[1], np.eye(D))
    assert twice.version == 2


def test_forgetting_keeps_precision_above_prior() -> None:
    rng = np.random.default_rng(4)
    snap = initial_snapshot(6, D, prior_precision=0.5)
    xs = np.zeros((3000, D))
    xs[:, 0] = 1.0  # only the bias direction is ever excited
    new = update_posteriors(snap, _combos(), np.full(3000, 3), xs, rng.random(3000),
                            LearnerParams(0.99))
    eig = np.linalg.eigvalsh(new.precision[5])
    assert eig.min() >= 0.5 - 1e-9
    assert new.n_eff[5] == pytest.approx((1 - 0.99**3000) / 0.01)


def test_posterior_moves_toward_rewarded_arm() -> None:
    rng = np.random.default_rng(5)
    combos = np.array([[0], [1]], dtype=np.int32)
    snap = initial_snapshot(2, D)
    n = 400
    xs = rng.normal(size=(n, D))
    xs[:, 0] = 1.0
    chosen = rng.integers(0, 2, n)
    rewards = (chosen == 0).astype(float)
    new = update_posteriors(snap, combos, chosen, xs, rewards)
    x = xs[0]
    assert new.mu[0] @ x > 0.8 and abs(new.mu[1] @ x) < 0.2


def test_snapshot_is_not_modified_and_read_only() -> None:
    rng = np.random.default_rng(6)
    snap = initial_snapshot(6, D)
    copies = {k: getattr(snap, k).copy() for k in ("precision", "b", "mean_t", "factor_t")}
    chosen, xs, rewards = _batch(rng, 20)
    xs.flags.writeable = False
    new = update_posteriors(snap, _combos(), chosen, xs, rewards)
    for k, v in copies.items():
        assert np.array_equal(getattr(snap, k), v)
        assert not getattr(new, k).flags.writeable
    with pytest.raises(ValueError):
        new.mean_t[0, 0] = 1.0
    assert new.version == snap.version + 1


def test_inverse_factor_matches_numpy() -> None:
    rng = np.random.default_rng(7)
    for d in (1, 3, 32):
        m = rng.normal(size=(d, d))
        a = m @ m.T + d * np.eye(d)
        f = np.zeros((d, d))
        assert learner._inverse_factor(a, f, np.zeros((d, d)))
        assert np.allclose(f @ f.T, np.linalg.inv(a), atol=1e-12)
    assert not learner._inverse_factor(-np.eye(2), np.zeros((2, 2)), np.zeros((2, 2)))


def test_validation_errors() -> None:
    snap = initial_snapshot(6, D)
    chosen, xs, rewards = _batch(np.random.default_rng(8), 4)
    with pytest.raises(ValueError, match="contexts: shape"):
        update_posteriors(snap, _combos(), chosen, xs[:, :3], rewards)
    with pytest.raises(ValueError, match="rewards: shape"):
        update_posteriors(snap, _combos(), chosen, xs, rewards[:2])
    with pytest.raises(ValueError, match="chosen: combination indices"):
        update_posteriors(snap, _combos(), chosen + 10, xs, rewards)
    bad = rewards.copy()
    bad[0] = np.inf
    with pytest.raises(ValueError, match="must be finite"):
        update_posteriors(snap, _combos(), chosen, xs, bad)
    with pytest.raises(ValueError, match="combo_components: ids"):
        update_posteriors(snap, _combos() + 10, chosen, xs, rewards)
    with pytest.raises(ValueError, match="forgetting"):
        LearnerParams(1.5)
    with pytest.raises(ValueError, match="prior_precision"):
        initial_snapshot(2, 2, prior_precision=0.0)


def test_warm_up_runs() -> None:
    learner.warm_up()


# --------------------------------------------------------------------------- logistic link

WEIGHT = np.array([0.5, 0.5, 0.5, 1 / 3, 1 / 3, 1.0])  # 1/k per combination, 1 for "nothing"


def _credit_rho(credit, h, v_c, others, v):
    """``ρ_c`` of the module docstring's "Credit", written out: ``others`` are the other
    blocks' variances of the same outcome (the shared intercept's included)."""
    if credit == "split":
        info = h * v_c / v
        return info * v_c / (1 + info * v_c)
    if credit == "marginal":
        m = v_c
    elif credit == "sum":
        m = v
    else:
        m = min(v, v_c + sum(2 * v_c * o / (v_c + o) for o in others if v_c + o > 0))
    return h * m / (1 + h * v)


def _logistic_reference(combos, chosen, xs, y, lam, alpha, slope, n_comp, start=None,
                        credit="marginal"):
    """The shared-credit Kalman steps written out with dense numpy, one outcome at a time."""
    prior = np.full(D, slope)
    prior[0] = alpha
    if start is None:
        a = np.broadcast_to(np.diag(prior), (n_comp, D, D)).copy()
        mu = np.zeros((n_comp, D))
    else:
        a, mu = start.precision.copy(), start.mu.copy()
    sigma = np.array([np.linalg.inv(m) for m in a])
    seen = np.zeros(n_comp)
    o, s2 = (0.0, OFFSET_PRIOR_VARIANCE) if start is None else (start.offset, start.offset_var)
    for ch, x, r in zip(chosen, xs, y, strict=True):
        comps = [c for c in combos[ch] if c >= 0]
        sx = {c: sigma[c] @ x for c in comps}
        q = {c: x @ sx[c] for c in comps}
        s2 /= lam
        eta = float(np.clip(o + sum(WEIGHT[c] * mu[c] @ x for c in comps), -30, 30))
        v = s2 + sum(WEIGHT[c] ** 2 * q[c] for c in comps)
        p = 1 / (1 + np.exp(-eta))
        h = max(p * (1 - p), 1e-6)
        blocks = {c: WEIGHT[c] ** 2 * q[c] for c in comps}
        s2_before = s2
        o += s2 * (r - p) / (1 + h * v)
        s2 -= s2 * _credit_rho(credit, h, s2, list(blocks.values()), v)
        for c in comps:
            others = [s2_before] if s2_before > 0 else []
            others += [blocks[e] for e in comps if e != c]
            rho = _credit_rho(credit, h, blocks[c], others, v)
            mu[c] += WEIGHT[c] * (r - p) / (1 + h * v) * sx[c]
            sigma[c] -= rho / q[c] * np.outer(sx[c], sx[c])
            a[c] += rho / (q[c] * (1 - rho)) * np.outer(x, x)
            seen[c] += 1
    for c in range(n_comp):
        if seen[c]:
            decay = lam ** seen[c]
            a[c] = decay * a[c] + (1 - decay) * np.diag(prior)
    return a, mu, o, s2


@pytest.mark.parametrize("lam", [1.0, 0.97])
def test_logistic_update_matches_reference(lam: float) -> None:
    rng = np.random.default_rng(11)
    snap = initial_snapshot(6, D, prior_precision=0.7, slope_precision=4.0,
                            intercept_variance=OFFSET_PRIOR_VARIANCE)
    params = LearnerParams(lam, link=learner.LINK_LOGISTIC)
    chosen, xs, _ = _batch(rng, 80)
    y = (rng.random(80) < 0.3).astype(float)
    new = update_posteriors(snap, _combos(), chosen, xs, y, params, weight=WEIGHT)
    a, mu, o, s2 = _logistic_reference(_combos(), chosen, xs, y, lam, 0.7, 4.0, 6)
    assert np.allclose(new.precision, a, rtol=1e-10, atol=1e-12)
    assert np.allclose(new.mu, mu, rtol=1e-9, atol=1e-12)
    assert (new.offset, new.offset_var) == pytest.approx((o, s2), rel=1e-10)
    # A second batch starts from the published factor, not from the working covariance.
    chosen2, xs2, _ = _batch(rng, 40)
    y2 = (rng.random(40) < 0.3).astype(float)
    newer = update_posteriors(new, _combos(), chosen2, xs2, y2, params, weight=WEIGHT)
    a2, mu2, o2, _ = _logistic_reference(_combos(), chosen2, xs2, y2, lam, 0.7, 4.0, 6,
                                         start=new)
    assert newer.offset == pytest.approx(o2, rel=1e-10)
    assert np.allclose(newer.precision, a2, rtol=1e-9, atol=1e-11)
    assert np.allclose(newer.mu, mu2, rtol=1e-8, atol=1e-11)
    for c in range(6):
        f = newer.cov_factor(c)
        assert np.allclose(f @ f.T, np.linalg.inv(a2[c]), rtol=1e-9, atol=1e-12)
        assert np.allclose(newer.b[c], a2[c] @ mu2[c], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("credit", ["sum", "harmonic", "split"])
def test_logistic_credit_matches_reference(credit: str) -> None:
    rng = np.random.default_rng(21)
    snap = initial_snapshot(6, D, prior_precision=0.7, slope_precision=4.0,
                            intercept_variance=OFFSET_PRIOR_VARIANCE)
    params = LearnerParams(0.98, link=learner.LINK_LOGISTIC, credit=credit)
    for start in (None, "published"):
        chosen, xs, _ = _batch(rng, 60)
        y = (rng.random(60) < 0.3).astype(float)
        new = update_posteriors(snap, _combos(), chosen, xs, y, params, weight=WEIGHT)
        a, mu, o, s2 = _logistic_reference(_combos(), chosen, xs, y, 0.98, 0.7, 4.0, 6,
                                           start=None if start is None else snap,
                                           credit=credit)
        assert np.allclose(new.precision, a, rtol=1e-9, atol=1e-11)
        assert np.allclose(new.mu, mu, rtol=1e-8, atol=1e-11)
        assert (new.offset, new.offset_var) == pytest.approx((o, s2), rel=1e-9)
        snap = new
    with pytest.raises(ValueError, match="credit"):
        LearnerParams(credit="joint")


def _joint_step(snap, comps, x, r):
    """One outcome's exact Kalman step on the concatenated design ``z = (w_c·x)_c`` from the
    block-diagonal prior (dense, with the cross-block covariance): means, covariance, z."""
    d = x.shape[0]
    sigma = np.zeros((len(comps) * d, len(comps) * d))
    for i, c in enumerate(comps):
        f = snap.cov_factor(c)
        sigma[i * d:(i + 1) * d, i * d:(i + 1) * d] = f @ f.T
    z = np.concatenate([WEIGHT[c] * x for c in comps])
    mu = np.concatenate([snap.mu[c] for c in comps])
    p = 1 / (1 + np.exp(-(z @ mu)))
    h, sz = p * (1 - p), sigma @ z
    denom = 1 + h * (z @ sz)
    return mu + sz * (r - p) / denom, sigma - h * np.outer(sz, sz) / denom, z


@pytest.mark.parametrize("credit", ["marginal", "sum", "harmonic", "split"])
def test_one_outcome_against_the_joint_posterior(credit: str) -> None:
    """Every credit takes the joint step's means; "marginal" keeps the joint posterior's
    blocks, "sum" the joint posterior's variance of the observed combination's logit,
    "harmonic" lies between the two (equal to "sum" when the blocks' variances are equal),
    and "split" keeps more variance than the marginals."""
    rng = np.random.default_rng(22)
    snap = initial_snapshot(6, D, prior_precision=1.0, slope_precision=2.0)
    chosen, xs, _ = _batch(rng, 40)  # a first batch, so the blocks' variances differ
    snap = update_posteriors(snap, _combos(), chosen, xs, (rng.random(40) < 0.3) * 1.0,
                             LearnerParams(1.0, link=learner.LINK_LOGISTIC), weight=WEIGHT)
    comps, x = [0, 3, 4], np.concatenate([[1.0], rng.normal(size=D - 1)])
    mu_j, sigma_j, z = _joint_step(snap, comps, x, 1.0)
    one = update_posteriors(snap, _combos(), np.array([1]), x[None], np.array([1.0]),
                            LearnerParams(1.0, link=learner.LINK_LOGISTIC, credit=credit),
                            weight=WEIGHT)
    blocks = [np.linalg.inv(one.precision[c]) for c in comps]
    assert np.allclose(np.concatenate([one.mu[c] for c in comps]), mu_j, rtol=1e-9)
    summed = sum(WEIGHT[c] ** 2 * x @ b @ x for c, b in zip(comps, blocks, strict=True))
    joint = z @ sigma_j @ z
    marginal = sum(z[i * D:(i + 1) * D] @ sigma_j[i * D:(i + 1) * D, i * D:(i + 1) * D]
                   @ z[i * D:(i + 1) * D] for i in range(len(comps)))
    if credit == "marginal":
        for i, b in enumerate(blocks):
            assert np.allclose(b, sigma_j[i * D:(i + 1) * D, i * D:(i + 1) * D], rtol=1e-9)
    elif credit == "sum":
        assert summed == pytest.approx(joint, rel=1e-9)
    elif credit == "harmonic":
        assert joint * (1 - 1e-9) <= summed <= marginal * (1 + 1e-9)
    else:
        before = sum(WEIGHT[c] ** 2 * x @ np.linalg.inv(snap.precision[c]) @ x for c in comps)
        assert marginal < summed < before
    assert joint < marginal  # the cross terms the block-diagonal posterior drops


def test_harmonic_credit_is_sum_for_equal_blocks() -> None:
    snap = initial_snapshot(6, D)  # every block at the same prior: equal variances
    x = np.concatenate([[1.0], np.random.default_rng(23).normal(size=D - 1)])
    got = {credit: update_posteriors(snap, np.array([[0, 1, 2]], dtype=np.int32),
                                     np.array([0]), x[None], np.array([1.0]),
                                     LearnerParams(1.0, link=learner.LINK_LOGISTIC,
                                                   credit=credit),
                                     weight=np.full(6, 1 / 3))
           for credit in ("sum", "harmonic")}
    assert np.allclose(got["sum"].precision, got["harmonic"].precision, rtol=1e-12)


def test_logistic_link_learns_an_additive_logit() -> None:
    """Two dimensions whose effects add on the logit, 4% base rate: the summed scores rank
    the combinations as the truth does, which independent regressions of the raw reward
    on each component are not asked to do."""
    rng = np.random.default_rng(12)
    combos = np.array([[i, 3 + j] for i in range(3) for j in range(3)], dtype=np.int32)
    weight = np.full(6, 0.5)
    d = 3
    effects = rng.normal(0.0, 0.8, (6, d))
    n = 20_000
    xs = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, d - 1))], axis=1)
    chosen = rng.integers(0, 9, n)
    logit = -3.5 + np.einsum("nd,nkd->n", xs, effects[combos[chosen]])
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    snap = initial_snapshot(6, d, prior_precision=1.0, slope_precision=1.0)
    for s in range(0, n, 250):
        snap = update_posteriors(snap, combos, chosen[s:s + 250], xs[s:s + 250], y[s:s + 250],
                                 LearnerParams(1.0, link=learner.LINK_LOGISTIC), weight=weight)
    test = np.concatenate([np.ones((200, 1)), rng.normal(size=(200, d - 1))], axis=1)
    truth = np.einsum("nd,kjd->nk", test, effects[combos])
    fitted = np.einsum("nd,kjd->nk", test, 0.5 * snap.mu[combos])
    agree = (truth.argmax(axis=1) == fitted.argmax(axis=1)).mean()
    assert agree >= 0.85
    centred = [np.corrcoef(t - t.mean(), f - f.mean())[0, 1] for t, f in zip(truth, fitted,
                                                                             strict=True)]
    assert np.mean(centred) > 0.9


def test_logistic_link_needs_weights_and_rescales_rewards() -> None:
    snap = initial_snapshot(6, D)
    chosen, xs, _ = _batch(np.random.default_rng(13), 30)
    params = LearnerParams(1.0, link=learner.LINK_LOGISTIC, reward_range=(-2.0, 1.0))
    with pytest.raises(ValueError, match="weight"):
        update_posteriors(snap, _combos(), chosen, xs, np.zeros(30), params)
    # Rewards map from [-2, 1] onto [0, 1] and are clipped there: 4 is a 1, -5 a 0.
    raw = np.array([4.0, -5.0, 1.0, -2.0] * 7 + [0.0, 0.0])
    scaled = np.clip((raw + 2.0) / 3.0, 0.0, 1.0)
    got = update_posteriors(snap, _combos(), chosen, xs, raw, params, weight=WEIGHT)
    want = update_posteriors(snap, _combos(), chosen, xs, scaled,
                             LearnerParams(1.0, link=learner.LINK_LOGISTIC), weight=WEIGHT)
    assert np.allclose(got.mean_t, want.mean_t)
    with pytest.raises(ValueError, match="link"):
        LearnerParams(link="probit")
    with pytest.raises(ValueError, match="reward_range"):
        LearnerParams(reward_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="slope_precision"):
        initial_snapshot(2, 2, slope_precision=-1.0)


def test_no_shared_intercept_when_its_variance_is_zero() -> None:
    rng = np.random.default_rng(14)
    chosen, xs, _ = _batch(rng, 50)
    y = (rng.random(50) < 0.2).astype(float)
    params = LearnerParams(0.99, link=learner.LINK_LOGISTIC)
    off = update_posteriors(initial_snapshot(6, D, intercept_variance=0.0), _combos(), chosen,
                            xs, y, params, weight=WEIGHT)
    assert (off.offset, off.offset_var) == (0.0, 0.0)
    on = update_posteriors(initial_snapshot(6, D, intercept_variance=OFFSET_PRIOR_VARIANCE),
                           _combos(), chosen, xs, y, params, weight=WEIGHT)
    assert on.offset < -0.5  # a 20% rate: the intercept moved towards its logit
    with pytest.raises(ValueError, match="offset_var"):
        initial_snapshot(2, 2, intercept_variance=-1.0)


# --------------------------------------------------------------------------- learned prior


def test_group_prior_is_the_em_step_and_the_group_moves_to_it() -> None:
    """Components 2..4 share a learned prior: after a batch, their precisions hold the
    same data plus the new prior, their means and factors follow from them, and the prior
    is ``n / Σ_c (μ_cj² + Σ_c,jj)`` of the posteriors it replaced (numpy, written out)."""
    rng = np.random.default_rng(15)
    snap = initial_snapshot(6, D, prior_precision=0.7, slope_precision=2.0)
    chosen, xs, _ = _batch(rng, 120)
    y = (rng.random(120) < 0.3).astype(float)
    fixed = update_posteriors(snap, _combos(), chosen, xs, y,
                              LearnerParams(0.99, link=learner.LINK_LOGISTIC), weight=WEIGHT)
    learned = update_posteriors(
        snap, _combos(), chosen, xs, y,
        LearnerParams(0.99, link=learner.LINK_LOGISTIC, prior_groups=((2, 5),)), weight=WEIGHT)
    group = range(2, 5)
    second = sum(fixed.mu[c] ** 2 + np.diag(np.linalg.inv(fixed.precision[c])) for c in group)
    want = np.concatenate([[0.7], np.clip(3 / second[1:], *learner.PRIOR_BOUNDS)])
    assert not np.allclose(want, fixed.prior[2])  # the test would show nothing otherwise
    for c in range(6):
        prior = want if c in group else fixed.prior[c]
        assert np.allclose(learned.prior[c], prior, rtol=1e-10)
        data = fixed.precision[c] - np.diag(fixed.prior[c])
        assert np.allclose(learned.precision[c], data + np.diag(prior), rtol=1e-10, atol=1e-12)
        assert np.allclose(learned.mu[c], np.linalg.solve(learned.precision[c], fixed.b[c]),
                           rtol=1e-9, atol=1e-12)
        f = learned.cov_factor(c)
        assert np.allclose(f @ f.T, np.linalg.inv(learned.precision[c]), rtol=1e-9, atol=1e-12)
    # Forgetting in the next batch pulls the group toward its new prior, not the old one.
    chosen2, xs2, _ = _batch(rng, 60)
    y2 = (rng.random(60) < 0.3).astype(float)
    newer = update_posteriors(learned, _combos(), chosen2, xs2, y2,
                              LearnerParams(0.99, link=learner.LINK_LOGISTIC), weight=WEIGHT)
    a, _, _, _ = _logistic_reference(_combos(), chosen2, xs2, y2, 0.99, 0.7, 2.0, 6,
                                     start=learned)
    for c in group:  # the reference's pull is toward the old prior: correct for it
        seen = sum(c in _combos()[ch] for ch in chosen2)
        a[c] += (1 - 0.99 ** seen) * np.diag(want - fixed.prior[c])
    assert np.allclose(newer.precision, a, rtol=1e-9, atol=1e-11)


def test_group_prior_stays_put_when_nothing_moved_and_needs_the_logistic_link() -> None:
    snap = initial_snapshot(6, D)
    same = update_posteriors(
        snap, _combos(), np.zeros(0, np.int64), np.zeros((0, D)), np.zeros(0),
        LearnerParams(link=learner.LINK_LOGISTIC, prior_groups=((2, 5),)), weight=WEIGHT)
    assert np.array_equal(same.prior, snap.prior)  # untouched components are the prior
    assert np.array_equal(same.mean_t, snap.mean_t)
    with pytest.raises(ValueError, match="prior_groups"):
        LearnerParams(link=learner.LINK_IDENTITY, prior_groups=((0, 2),))
    with pytest.raises(ValueError, match="prior_groups"):
        LearnerParams(link=learner.LINK_LOGISTIC, prior_groups=((3, 3),))
    with pytest.raises(ValueError, match="prior_groups"):
        update_posteriors(snap, _combos(), np.zeros(0, np.int64), np.zeros((0, D)),
                          np.zeros(0), LearnerParams(link=learner.LINK_LOGISTIC,
                                                     prior_groups=((2, 9),)), weight=WEIGHT)
