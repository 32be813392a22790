"""Learner kernels against direct recomputation with numpy.linalg."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import learner
from nudge.kernels.learner import LearnerParams, initial_snapshot, update_posteriors

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
