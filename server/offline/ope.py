"""Offline policy evaluation: what would a *new* policy have earned on the decisions we logged?

Every ``Decide`` logs the exact probability (propensity) with which the served policy chose
its action. That is what makes the estimators here possible: reweighting each logged reward by
how much more (or less) often the evaluated policy would have taken the same action gives an
unbiased estimate of the evaluated policy's value without ever serving it. These estimators are
the gate a candidate policy passes before it goes live (DESIGN.md, "Decisions").

Three estimators, all on plain 1-D NumPy arrays (one entry per logged decision):

* :func:`ips` — inverse propensity scoring. Unbiased when the logging propensities are right
  and the target only takes actions the logger could take; its variance grows with the
  importance weights.
* :func:`snips` — self-normalised IPS: divides by the sum of the weights instead of ``n``.
  Slightly biased (vanishing as ``n`` grows) but far less variable when weights are large, and
  immune to a constant factor error in the propensities.
* :func:`dr` — doubly robust: a reward model's prediction for the target policy, corrected by
  an importance-weighted residual on the logged action. Unbiased if *either* the propensities
  or the reward model are right, and the better the model the smaller the variance.

Each returns an :class:`Estimate` with a normal-approximation confidence interval:

* IPS and DR average per-decision terms ``t_i``; the standard error is
  ``std(t, ddof=1) / sqrt(n)``.
* SNIPS is a ratio of two means, so its standard error comes from the delta method:
  ``se**2 = sum(w_i**2 * (r_i - V)**2) / sum(w)**2 * n / (n - 1)`` (the ``n / (n - 1)`` makes it
  match the ``ddof=1`` used for IPS/DR). It is deterministic — no bootstrap and no seed.

With heavy importance weights (a target far from the logging policy, a few rare logged
actions carrying most of the estimate) the terms are right-skewed and the normal interval
under-covers: most samples miss the rare large terms, so the estimate and its standard error
both come out low. ``interval="bernstein"`` gives an empirical-Bernstein interval instead
(Maurer & Pontil 2009, Theorem 4, each side at level ``(1 - confidence) / 2``): for terms in a
range of width ``b``, the half-width is ``sqrt(2 var ln(4/a) / n) + 7 b ln(4/a) / (3 (n - 1))``
with ``a = 1 - confidence``. It holds for any distribution of the terms within that range, so it
is sound however skewed they are, at the price of width. ``b`` comes from the rewards' range
(``reward_range``, default the observed one) and the largest importance weight observed (the
logged propensities bound the weights only loosely). SNIPS divides two such intervals (the
numerator's and the weights' mean, each at half the error level).

Optional weight clipping (``max_weight``) caps each importance weight ``w = target / logged``;
it trades a (downward, for non-negative rewards) bias for lower variance. Obp's estimators do
not clip, so the agreement check (:mod:`nudge.bench.ope_obp_check`) runs unclipped.

Logs in *action-distribution* form (obp's ``action_dist[n, n_actions, n_positions]``) are
reduced to the 1-D inputs with :func:`target_propensity_from_action_dist` and
:func:`reward_model_from_action_dist`.

Everything is vectorised NumPy: a million logged decisions take milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

__all__ = [
    "INTERVALS",
    "Estimate",
    "dr",
    "effective_sample_size",
    "importance_weights",
    "ips",
    "reward_model_from_action_dist",
    "snips",
    "target_propensity_from_action_dist",
]

# Action distributions built by counting (Monte Carlo) or softmax sum to 1 up to rounding.
_SUM_TOLERANCE = 1e-6
INTERVALS = ("normal", "bernstein")


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with a two-sided confidence interval.

    ``effective_sample_size`` is Kish's ``(sum w)**2 / sum(w**2)`` over the (clipped) importance
    weights: roughly how many logged decisions the estimate really rests on. A value far below
    ``n`` means the target policy strays from the logging policy and the interval deserves
    suspicion even when it looks narrow.
    """

    value: float
    stderr: float
    ci_low: float
    ci_high: float
    n: int
    effective_sample_size: float
    # How the interval was made: "normal" (the normal approximation, as obp does) or
    # "bernstein" (empirical Bernstein: sound for heavy weights, wider).
    interval: str = "normal"

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Validation: bad inputs must fail loudly with the argument and the rule, never yield a number.
# ---------------------------------------------------------------------------------------------


def _as_1d(name: str, values: object, n: int | None) -> np.ndarray:
    """``values`` as a finite float64 vector of length ``n`` (or any non-empty length)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-dimensional, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have the same length as rewards ({n}), got {arr.shape[0]}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name} must be finite (no NaN or infinity): {int(bad.sum())} bad value(s), "
            f"first at index {i} ({arr[i]})"
        )
    return arr


def _check_logged_propensity(p: np.ndarray) -> None:
    """Logged propensities must lie in (0, 1]; 0 gets its own message because it is a log bug.

    A logged action with probability 0 could not have been taken: the log is wrong (or the
    propensity was rounded to 0), and dividing by it would give an infinite weight.
    """
    zero = p == 0.0
    if zero.any():
        i = int(np.flatnonzero(zero)[0])
        raise ValueError(
            f"logged_propensity must be in (0, 1] but is 0 in {int(zero.sum())} row(s), first at "
            f"index {i}: the logging policy cannot have chosen an action it gave probability 0 — "
            "the log is corrupt or its propensities were rounded; fix or drop those rows"
        )
    bad = (p < 0.0) | (p > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"logged_propensity must be in (0, 1]: {int(bad.sum())} value(s) outside, first at "
            f"index {i} ({p[i]})"
        )


def _check_target_propensity(p: np.ndarray) -> None:
    """Target propensities lie in [0, 1]: 0 is legal (the target never takes that action)."""
    bad = (p < 0.0) | (p > 1.0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"target_propensity must be in [0, 1]: {int(bad.sum())} value(s) outside, first at "
            f"index {i} ({p[i]})"
        )


def _check_max_weight(max_weight: float | None) -> None:
    if max_weight is not None and not (np.isfinite(max_weight) and max_weight > 0):
        raise ValueError(f"max_weight must be a finite number > 0 or None, got {max_weight}")


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _validated(
    rewards: object,
    logged_propensity: object,
    target_propensity: object,
    max_weight: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Checked rewards and (clipped) importance weights."""
    r = _as_1d("rewards", rewards, None)
    n = r.shape[0]
    if n < 2:
        raise ValueError(
            f"rewards must have at least 2 entries (a confidence interval needs a variance), "
            f"got {n}"
        )
    pl = _as_1d("logged_propensity", logged_propensity, n)
    pt = _as_1d("target_propensity", target_propensity, n)
    _check_logged_propensity(pl)
    _check_target_propensity(pt)
    _check_max_weight(max_weight)
    w = pt / pl
    if max_weight is not None:
        np.minimum(w, max_weight, out=w)
    return r, w


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def importance_weights(
    logged_propensity: object, target_propensity: object, max_weight: float | None = None
) -> np.ndarray:
    """``min(target / logged, max_weight)`` per logged decision, after validation."""
    pl = _as_1d("logged_propensity", logged_propensity, None)
    pt = _as_1d("target_propensity", target_propensity, pl.shape[0])
    _check_logged_propensity(pl)
    _check_target_propensity(pt)
    _check_max_weight(max_weight)
    w = pt / pl
    if max_weight is not None:
        np.minimum(w, max_weight, out=w)
    return w


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size ``(sum w)**2 / sum(w**2)``; 0 when every weight is 0."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.dot(w, w))
    return float(w.sum()) ** 2 / sq if sq > 0.0 else 0.0


def _check_interval(interval: str) -> None:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")


def _reward_span(r: np.ndarray, reward_range: tuple[float, float] | None) -> tuple[float, float]:
    """The rewards' range, including 0 (a weight of 0 makes any term 0)."""
    lo, hi = (float(r.min()), float(r.max())) if reward_range is None else reward_range
    if not lo <= hi:
        raise ValueError(f"reward_range must be (low, high) with low <= high, got {reward_range}")
    if reward_range is not None and (r.min() < lo or r.max() > hi):
        raise ValueError(f"rewards must lie inside reward_range {reward_range}")
    return min(lo, 0.0), max(hi, 0.0)


def _bernstein_half(terms: np.ndarray, width: float, error: float) -> float:
    """Empirical-Bernstein half-width of the mean of ``terms`` (in a range of ``width``) for a
    two-sided interval with total error probability ``error``."""
    n = terms.shape[0]
    log_term = math.log(4.0 / error)
    var = float(terms.var(ddof=1))
    return math.sqrt(2.0 * var * log_term / n) + 7.0 * width * log_term / (3.0 * (n - 1))


def _mean_estimate(terms: np.ndarray, weights: np.ndarray, confidence: float,
                   interval: str = "normal", width: float = 0.0,
                   bounds: tuple[float, float] = (-math.inf, math.inf)) -> Estimate:
    """An estimate that is the mean of independent per-decision ``terms`` (in a range of
    ``width``, used by the Bernstein interval, which is also kept within the rewards'
    ``bounds``: a policy's value lies within them)."""
    n = terms.shape[0]
    value = float(terms.mean())
    stderr = float(terms.std(ddof=1)) / np.sqrt(n)
    if interval == "bernstein":
        _z(confidence)  # validates it
        half = _bernstein_half(terms, width, 1.0 - confidence)
        low, high = max(value - half, bounds[0]), min(value + half, bounds[1])
    else:
        half = _z(confidence) * stderr
        low, high = value - half, value + half
    return Estimate(value, stderr, low, high, n, effective_sample_size(weights), interval)


# ---------------------------------------------------------------------------------------------
# Estimators
# ---------------------------------------------------------------------------------------------


def ips(
    rewards: object,
    logged_propensity: object,
    target_propensity: object,
    *,
    max_weight: float | None = None,
    confidence: float = 0.95,
    interval: str = "normal",
    reward_range: tuple[float, float] | None = None,
) -> Estimate:
    """Inverse propensity scoring: ``mean(w * r)`` with ``w = target / logged``.

    Unbiased (unclipped) whenever the target policy only takes actions the logging policy could
    take; the interval is the normal approximation on the per-decision terms ``w * r``, or the
    empirical-Bernstein one (``interval="bernstein"``, see the module docstring).
    """
    _check_interval(interval)
    r, w = _validated(rewards, logged_propensity, target_propensity, max_weight)
    lo, hi = _reward_span(r, reward_range)
    return _mean_estimate(w * r, w, confidence, interval, float(w.max()) * (hi - lo), (lo, hi))


def snips(
    rewards: object,
    logged_propensity: object,
    target_propensity: object,
    *,
    max_weight: float | None = None,
    confidence: float = 0.95,
    interval: str = "normal",
    reward_range: tuple[float, float] | None = None,
) -> Estimate:
    """Self-normalised IPS: ``sum(w * r) / sum(w)``, interval from the delta method.

    The normalised weights ``w / sum(w)`` sum to 1, so the estimate is a weighted mean of
    logged rewards and always stays within their range — the reason to prefer it over IPS when
    weights are large. Raises ``ValueError`` when every weight is 0 (the target never takes any
    logged action: there is no overlap and nothing to estimate from).
    """
    _check_interval(interval)
    r, w = _validated(rewards, logged_propensity, target_propensity, max_weight)
    n = r.shape[0]
    total = float(w.sum())
    if total <= 0.0:
        raise ValueError(
            "target_propensity is 0 for every logged action: SNIPS is undefined (the target "
            "policy never takes an action the log contains)"
        )
    value = float(np.dot(w, r)) / total
    resid = w * (r - value)
    stderr = float(np.sqrt(np.dot(resid, resid) * n / (n - 1))) / total
    half = _z(confidence) * stderr
    low, high = value - half, value + half
    if interval == "bernstein":
        # mean(w r) / mean(w), each mean within its own interval (half the error each).
        lo, hi = _reward_span(r, reward_range)
        error = (1.0 - confidence) / 2.0
        w_max = float(w.max())
        top = float(np.dot(w, r)) / n
        top_half = _bernstein_half(w * r, w_max * (hi - lo), error)
        bottom = total / n
        bottom_half = _bernstein_half(w, w_max, error)
        bottom_low, bottom_high = bottom - bottom_half, bottom + bottom_half
        ratios = [(top + s * top_half) / d for s in (-1.0, 1.0)
                  for d in (bottom_low, bottom_high) if d > 0.0]
        # A weights' mean that may be 0: the ratio is unbounded; the rewards still bound it.
        low = max(min(ratios), lo) if bottom_low > 0.0 else lo
        high = min(max(ratios), hi) if bottom_low > 0.0 else hi
    return Estimate(value, stderr, low, high, n, effective_sample_size(w), interval)


def dr(
    rewards: object,
    logged_propensity: object,
    target_propensity: object,
    reward_model_logged: object,
    reward_model_target: object,
    *,
    max_weight: float | None = None,
    confidence: float = 0.95,
    interval: str = "normal",
    reward_range: tuple[float, float] | None = None,
) -> Estimate:
    """Doubly robust: ``mean(q_target + w * (r - q_logged))``.

    ``reward_model_logged[i]`` is the model's predicted reward of the logged action;
    ``reward_model_target[i]`` is ``sum_a target(a | x_i) * q(x_i, a)``, the model's expected
    reward under the target policy. With a perfect model the importance term is exactly 0 and
    only the (usually small) spread of ``q_target`` is left in the interval.
    """
    _check_interval(interval)
    r, w = _validated(rewards, logged_propensity, target_propensity, max_weight)
    n = r.shape[0]
    q_logged = _as_1d("reward_model_logged", reward_model_logged, n)
    q_target = _as_1d("reward_model_target", reward_model_target, n)
    # The model's predictions count in the range too (a model is not bound to the rewards').
    qs = np.concatenate([q_logged, q_target])
    r_lo, r_hi = _reward_span(r, reward_range)
    lo, hi = min(r_lo, float(qs.min())), max(r_hi, float(qs.max()))
    width = (hi - lo) * (1.0 + 2.0 * float(w.max()))
    return _mean_estimate(q_target + w * (r - q_logged), w, confidence, interval, width,
                          (r_lo, r_hi))


# ---------------------------------------------------------------------------------------------
# Action-distribution form (obp's layout)
# ---------------------------------------------------------------------------------------------


def _as_3d(name: str, values: object) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n, n_actions) or (n, n_actions, n_positions), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return arr


def _indices(
    name: str, values: object | None, n: int, upper: int, *, required_if_above_one: bool = False
) -> np.ndarray:
    """Integer indices in [0, upper); ``None`` means all zeros (only one choice exists)."""
    if values is None:
        if required_if_above_one and upper > 1:
            raise ValueError(f"{name} is required when there are {upper} positions")
        return np.zeros(n, dtype=np.intp)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must be 1-dimensional with length {n}, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= upper)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be in [0, {upper}), got {arr[i]} at index {i}")
    return arr.astype(np.intp, copy=False)


def target_propensity_from_action_dist(
    action_dist: object, actions: object, positions: object | None = None
) -> np.ndarray:
    """``action_dist[i, actions[i], positions[i]]``: the target's probability of each logged action.

    ``action_dist`` is ``(n, n_actions)`` or ``(n, n_actions, n_positions)`` as obp builds it
    (each ``[i, :, k]`` a distribution over actions); ``positions`` may be omitted only when
    there is a single position. Checks that each distribution sums to 1, because a policy that
    silently leaks probability mass would bias every estimate downward.
    """
    dist = _as_3d("action_dist", action_dist)
    n, n_actions, n_positions = dist.shape
    if ((dist < 0.0) | (dist > 1.0)).any():
        raise ValueError("action_dist must be in [0, 1]")
    sums = dist.sum(axis=1)
    if not np.allclose(sums, 1.0, rtol=0.0, atol=_SUM_TOLERANCE):
        row, pos = np.unravel_index(int(np.argmax(np.abs(sums - 1.0))), sums.shape)
        raise ValueError(f"action_dist must sum to 1 over actions: row {row}, position {pos} "
                         f"sums to {sums[row, pos]}")
    a = _indices("actions", actions, n, n_actions)
    k = _indices("positions", positions, n, n_positions, required_if_above_one=True)
    return dist[np.arange(n), a, k]


def reward_model_from_action_dist(
    action_dist: object,
    estimated_rewards: object,
    actions: object,
    positions: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(reward_model_logged, reward_model_target)`` for :func:`dr` from obp-style arrays.

    ``estimated_rewards`` has ``action_dist``'s shape and holds ``q(x_i, a, k)``. Returns
    ``q(x_i, actions[i], positions[i])`` and ``sum_a action_dist[i, a, k] * q(x_i, a, k)`` at the
    logged position ``k = positions[i]`` — exactly what obp's ``DoublyRobust`` uses.
    """
    dist = _as_3d("action_dist", action_dist)
    q = _as_3d("estimated_rewards", estimated_rewards)
    if q.shape != dist.shape:
        raise ValueError(
            f"estimated_rewards must have action_dist's shape {dist.shape}, got {q.shape}"
        )
    n, n_actions, n_positions = dist.shape
    a = _indices("actions", actions, n, n_actions)
    k = _indices("positions", positions, n, n_positions, required_if_above_one=True)
    rows = np.arange(n)
    q_at_position = q[rows, :, k]
    pi_at_position = dist[rows, :, k]
    q_target = np.einsum("ij,ij->i", q_at_position, pi_at_position)
    return q[rows, a, k], q_target
