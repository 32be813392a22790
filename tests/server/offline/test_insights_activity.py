"""The activity score's weights: a one-factor model of the early counts (see
``server/offline/insights_activity.py``), on counts drawn from that model."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.server.offline.insights_activity import activity_weights, factor_loadings


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    return x.sum(0), x.T @ x, x.shape[0]


def test_factor_loadings_recover_a_one_factor_covariance() -> None:
    loading = np.array([2.0, 1.5, 0.5, 0.0, 1.0])
    psi = np.array([1.0, 2.0, 0.5, 3.0, 1.5])
    got_l, got_psi = factor_loadings(np.outer(loading, loading) + np.diag(psi),
                                     np.full(5, 1e-6))
    np.testing.assert_allclose(got_l, loading, atol=1e-4)
    np.testing.assert_allclose(got_psi, psi, atol=1e-4)


def test_markers_weigh_alike_and_noise_nothing() -> None:
    rng = np.random.default_rng(7)
    n = 40_000
    lam = rng.lognormal(-0.3, 0.8, n)
    markers = [rng.poisson(r * lam) for r in (10.0, 7.0, 3.0)]  # rates ∝ activity
    noise = rng.poisson(1.4, n)  # the same for everyone
    own = rng.poisson(2.0 * rng.gamma(1.0, 1.0, n))  # a life of its own
    counts = np.column_stack([*markers, noise, own, np.zeros(n)]).astype(np.float64)
    days = np.minimum(7, rng.poisson(3 * lam))
    x = np.column_stack([counts, days]).astype(np.float64)
    activity = np.array([1, 1, 1, 1, 1, 0], np.uint8)  # the last key is not activity
    weights, day_weight = activity_weights(*_moments(x), activity)
    # Poisson markers: the sufficient statistic of activity is their plain total.
    assert weights[1] == pytest.approx(weights[0], rel=0.1)
    assert weights[2] == pytest.approx(weights[0], rel=0.1)
    assert abs(weights[3]) < 0.05 * weights[0] and weights[4] < 0.05 * weights[0]
    assert weights[5] == 0.0 and day_weight > 0.0
    # Scaled so the score's mean is the mean early event count.
    score_mean = (x[:, :6] @ weights + day_weight * days).mean()
    assert score_mean == pytest.approx(counts[:, :5].sum(1).mean(), rel=1e-9)


def test_too_few_measurements_fall_back_to_the_plain_count() -> None:
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.poisson(3.0, 500), np.zeros(500), np.ones(500)]).astype(float)
    weights, day_weight = activity_weights(*_moments(x), np.array([1, 1], np.uint8))
    np.testing.assert_array_equal(weights, [1.0, 1.0])
    assert day_weight == 0.0
