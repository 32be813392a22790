"""The activity score the insights stratify on: how active a user was in the early window,
estimated from all of their early events, each event type weighed by what it says about
activity.

Model: every user has a latent activity level; each event type's early count and the
number of days active are noisy measurements of it — an activity marker (app opened,
balance viewed) a good one, a behaviour with a life of its own (a savings goal, help
viewed) a poor one or none. That is a one-factor model of the early counts ``x_i``:

    x_i = μ_i + ℓ_i f + e_i,   Var f = 1,   Var e_i = ψ_i (independent of f and each other)

so ``Cov(x) = ℓ ℓᵀ + diag(ψ)``: the off-diagonal covariances are the loadings' products
alone, and the loadings are estimated by principal-axis factoring (the first eigenvector
of the covariance with its diagonal replaced by the common part ``Var x_i − ψ_i``,
iterated). The best linear score of ``f`` weighs each measurement by ``ℓ_i / ψ_i``
(Bartlett's and Thomson's scores are both proportional to it): signal over noise. For
counts that are Poisson given activity with rates ∝ activity (the markers), ``ℓ_i / ψ_i``
is the same for every such type and the score is their plain total — the sufficient
statistic for the activity level, so *given the score a marker's own count says nothing
more about activity*, which is what the earlier stratification on the other events' plain
count could not give (see ``insights.py``). A type whose counts vary for reasons of its
own (large ``ψ_i``, small ``ℓ_i``) gets a small weight: its events barely move its users'
stratum, so a behaviour is compared with users as active as its users, not with users who
did the behaviour's events in something else.

Guards, none of them tuned: a count given activity varies at least as a Poisson count does,
so ``ψ_i ≥ mean_i`` for event counts; every ``ψ_i ≥ 5%`` of its variance (a measurement
without noise — a Heywood case — would take all the weight); negative loadings weigh 0
(an event that goes with less activity does not measure it). With fewer than three
measurements that vary, one factor is not identified and the score falls back to the plain
early event count. The score is scaled so its mean is the users' mean early event count,
so the strata's log-spaced bins keep their meaning in events.
"""

from __future__ import annotations

import math

import numpy as np

ITERATIONS = 100
MIN_UNIQUE_SHARE = 0.05


def factor_loadings(cov: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-factor principal-axis factoring of ``cov``: (loadings ℓ, uniquenesses ψ), with
    ``ψ >= floor``; ℓ's sign makes its sum positive."""
    d = np.diag(cov).copy()
    psi = np.maximum(d * 0.5, floor)
    loading = np.zeros_like(d)
    for _ in range(ITERATIONS):
        values, vectors = np.linalg.eigh(cov - np.diag(psi))
        loading = vectors[:, -1] * math.sqrt(max(float(values[-1]), 0.0))
        if loading.sum() < 0:
            loading = -loading
        new_psi = np.maximum(d - loading * loading, floor)
        if np.allclose(new_psi, psi, rtol=1e-6, atol=1e-12):
            break
        psi = new_psi
    return loading, psi


def activity_weights(sums: np.ndarray, cross: np.ndarray, n_users: int,
                     activity: np.ndarray) -> tuple[np.ndarray, float]:
    """The activity score's weights from the moments ``kernels.insights.early_moments``
    made: ``(weight per key, weight of a day active)`` (see the module doc). Keys that
    are not ``activity`` weigh 0."""
    n_keys = activity.size
    plain = activity.astype(np.float64)
    if n_users < 2:
        return plain, 0.0
    mean = sums / n_users
    cov = (cross - n_users * np.outer(mean, mean)) / (n_users - 1)
    var = np.diag(cov)
    used = np.flatnonzero((var > 1e-12) & np.append(activity.astype(bool), True))
    if used.size < 3:
        return plain, 0.0
    is_count = used < n_keys
    floor = np.maximum(MIN_UNIQUE_SHARE * var[used], np.where(is_count, mean[used], 0.0))
    loading, psi = factor_loadings(cov[np.ix_(used, used)], floor)
    w = np.maximum(loading, 0.0) / psi
    scored_mean = float(w @ mean[used])
    if not scored_mean > 0.0:
        return plain, 0.0
    w *= float(sums[:n_keys] @ plain) / n_users / scored_mean
    weights = np.zeros(n_keys)
    weights[used[is_count]] = w[is_count]
    day_weight = float(w[~is_count][0]) if (~is_count).any() else 0.0
    return weights, day_weight
