"""Posterior updates for the decision policy: one Bayesian linear regression per component.

Every component ``c`` (a dimension value, a pairwise cell, or the "send nothing" arm) keeps an
independent Bayesian linear regression of the *raw* reward on the context ``x`` (``d``
features, ``x[0] == 1`` is the bias). Training each component on the reward minus the other
components' predictions overshot and diverged (DESIGN.md), so every component of the chosen
combination is updated with the same ``(x, reward)``.

Exact update, per observation of component ``c`` (λ = ``forgetting``, α = prior precision)::

    A_c ← λ·A_c + (1 − λ)·α·I + x xᵀ        (precision, up to the noise variance)
    b_c ← λ·b_c + r·x
    n_c ← λ·n_c + 1                          (effective number of observations)

and, once per batch for every component the batch touched::

    F_c = L_c⁻ᵀ  where A_c = L_c L_cᵀ   (Cholesky; then A_c⁻¹ = F_c F_cᵀ, F_c upper-triangular)
    μ_c = F_c (F_cᵀ b_c)               (= A_c⁻¹ b_c)

The prior is N(0, (v²/α)·I) and the noise variance v² only scales the covariance, so it lives
in the policy parameters, not here. Forgetting decays the data terms and pulls the precision
back toward the prior precision, so ``A_c ⪰ α·I`` always holds: directions the context stops
exciting return to the prior instead of winding up to infinite variance, and the posterior
tracks drift with an effective memory of about ``1 / (1 − λ)`` observations of that
component. Forgetting is per observation of the component, not per unit of time: a component
nobody chooses keeps what it knew.

Why not Sherman–Morrison: the ``(1 − λ)·α·I`` term makes each step a full-rank change, so a
rank-1 inverse update is exact only without it (and then unexcited directions wind up).
Accumulating ``A`` exactly and re-inverting each touched component once per batch costs about
d³/2 flops per touched component per batch; with rewards arriving in batches (they arrive late
anyway) that is far cheaper per reward than d³ per reward, and it cannot drift.

Snapshots: deciders read a :class:`PolicySnapshot` whose arrays are read-only. The learner
never writes into the arrays being read: :func:`update_posteriors` copies the state, updates
the copies and returns a *new* snapshot (``version + 1``); the server publishes it by swapping
one reference (atomic in CPython), so every decision sees one consistent model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.jit import typed_array
from nudge.kernels.snapshot import PolicySnapshot

# Layout of the learner parameter array handed to the kernel.
L_FORGETTING = 0
L_PRIOR_PRECISION = 1
N_LEARNER_PARAMS = 2

# Shipped defaults (a campaign's [exploration] table defaults to these).
DEFAULT_FORGETTING = 0.9999
DEFAULT_PRIOR_PRECISION = 1.0

# --------------------------------------------------------------------------- kernels


@njit(jit.b1(jit.f8_2d, jit.f8_2d, jit.f8_2d), **jit.NOGIL)
def _inverse_factor(a, out, work):
    """Upper-triangular ``out = F`` with ``a⁻¹ = F Fᵀ``, for symmetric positive definite
    ``a``; False if ``a`` is not SPD. Only the lower triangle of ``a`` is read.

    Cholesky ``a = L Lᵀ`` into ``work``; then ``a⁻¹ = L⁻ᵀ L⁻¹``, so ``F = L⁻ᵀ``: invert
    ``L`` in place and transpose it into ``out``.
    """
    d = a.shape[0]
    for j in range(d):
        s = a[j, j]
        for k in range(j):
            s -= work[j, k] * work[j, k]
        if not s > 0.0:
            return False
        ljj = np.sqrt(s)
        work[j, j] = ljj
        for i in range(j + 1, d):
            t = a[i, j]
            for k in range(j):
                t -= work[i, k] * work[j, k]
            work[i, j] = t / ljj
    for j in range(d):  # invert the lower-triangular factor in place, column by column
        work[j, j] = 1.0 / work[j, j]
        for i in range(j + 1, d):
            t = 0.0
            for k in range(j, i):
                t -= work[i, k] * work[k, j]
            work[i, j] = t / work[i, i]
    for i in range(d):
        for j in range(d):
            out[i, j] = work[j, i] if j >= i else 0.0
    return True


@njit(
    jit.i8(
        jit.f8_3d, jit.f8_2d, jit.f8_2d, jit.f8_2d, jit.f8_1d,
        jit.i4_2d_ro, jit.i8_1d_ro, jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro,
    ),
    **jit.NOGIL,
)
def _update_kernel(precision, b, mean_t, factor_t, n_eff, combo_components, chosen, xs, rewards,
                   params):
    """Apply a batch of rewards to the state arrays in place. Returns the number of
    components touched, or -1 - c if component c lost positive definiteness (cannot happen
    with α > 0 unless the state was corrupted)."""
    lam = params[L_FORGETTING]
    pull = (1.0 - lam) * params[L_PRIOR_PRECISION]
    n_comp, d = b.shape
    k = combo_components.shape[1]
    touched = np.zeros(n_comp, dtype=np.uint8)
    for t in range(xs.shape[0]):
        x = xs[t]
        r = rewards[t]
        row = combo_components[chosen[t]]
        for j in range(k):
            c = row[j]
            if c < 0:
                break
            touched[c] = 1
            a = precision[c]
            for i in range(d):
                xi = x[i]
                for m in range(d):
                    a[i, m] = lam * a[i, m] + xi * x[m]
                a[i, i] += pull
                b[c, i] = lam * b[c, i] + r * xi
            n_eff[c] = lam * n_eff[c] + 1.0
    work = np.zeros((d, d))
    f = np.zeros((d, d))
    tmp = np.empty(d)
    n_touched = 0
    for c in range(n_comp):
        if touched[c] == 0:
            continue
        n_touched += 1
        if not _inverse_factor(precision[c], f, work):
            return -1 - c
        p = 0
        for j in range(d):  # packed upper triangle, row by row
            for i in range(j, d):
                factor_t[p, c] = f[j, i]
                p += 1
        for i in range(d):  # mu = F (Fᵀ b)
            tmp[i] = 0.0
        for j in range(d):
            bj = b[c, j]
            for i in range(j, d):
                tmp[i] += f[j, i] * bj
        for i in range(d):
            acc = 0.0
            for j in range(i, d):
                acc += f[i, j] * tmp[j]
            mean_t[i, c] = acc
    return n_touched


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class LearnerParams:
    """Learner configuration. ``forgetting`` is λ per observation of a component."""

    forgetting: float = DEFAULT_FORGETTING

    def __post_init__(self) -> None:
        if not (0.0 < self.forgetting <= 1.0):
            raise ValueError(
                f"forgetting: must be in (0, 1] (1 = never forget), got {self.forgetting!r}"
            )


def initial_snapshot(
    n_components: int, n_features: int, prior_precision: float = DEFAULT_PRIOR_PRECISION
) -> PolicySnapshot:
    """The prior for every component: mean 0, precision α·I."""
    if n_components < 1 or n_features < 1:
        raise ValueError(
            f"n_components, n_features: must be >= 1, got {n_components}, {n_features}"
        )
    if not (np.isfinite(prior_precision) and prior_precision > 0.0):
        raise ValueError(f"prior_precision: must be finite and > 0, got {prior_precision!r}")
    eye = np.eye(n_features)
    packed = eye[np.triu_indices(n_features)] / np.sqrt(prior_precision)
    return PolicySnapshot(
        mean_t=np.zeros((n_features, n_components)),
        factor_t=np.repeat(packed[:, None], n_components, axis=1),
        precision=np.broadcast_to(eye * prior_precision,
                                  (n_components, n_features, n_features)).copy(),
        b=np.zeros((n_components, n_features)),
        n_eff=np.zeros(n_components),
        prior_precision=float(prior_precision),
    )


def update_posteriors(
    snapshot: PolicySnapshot,
    combo_components: np.ndarray,
    chosen: np.ndarray,
    contexts: np.ndarray,
    rewards: np.ndarray,
    params: LearnerParams | None = None,
) -> PolicySnapshot:
    """Learn from a batch of outcomes; returns a new snapshot, ``snapshot`` is untouched.

    ``combo_components`` is the campaign's int32 ``[n_combos, k]`` component ids (the same
    array the policy scores with, -1 padded); ``chosen[n]`` the combination each decision
    chose (the "send nothing" combination updates the nothing component); ``contexts[n, d]``
    the context each decision saw; ``rewards[n]`` the raw rewards. Rows are applied in
    order, so with forgetting the last row weighs most.
    """
    params = params or LearnerParams()
    n_comp, d = snapshot.n_components, snapshot.n_features
    combos = typed_array(combo_components, "combo_components", np.int32, 2)
    if combos.size and (combos.min() < -1 or combos.max() >= n_comp):
        raise ValueError(f"combo_components: ids must be -1 (padding) or in [0, {n_comp})")
    chosen_a = typed_array(chosen, "chosen", np.int64, 1, cast_int=True)
    xs = typed_array(contexts, "contexts", np.float64, 2)
    r = typed_array(rewards, "rewards", np.float64, 1)
    n = chosen_a.shape[0]
    if xs.shape != (n, d):
        raise ValueError(f"contexts: shape must be ({n}, {d}) (len(chosen), n_features), "
                         f"got {xs.shape}")
    if r.shape != (n,):
        raise ValueError(f"rewards: shape must be ({n},) to match chosen, got {r.shape}")
    if n and (chosen_a.min() < 0 or chosen_a.max() >= combos.shape[0]):
        raise ValueError(f"chosen: combination indices must be in [0, {combos.shape[0]})")
    if not (np.isfinite(xs).all() and np.isfinite(r).all()):
        raise ValueError("contexts, rewards: must be finite (no NaN or inf)")
    state = [a.copy() for a in (snapshot.precision, snapshot.b, snapshot.mean_t,
                                snapshot.factor_t, snapshot.n_eff)]
    kparams = np.array([params.forgetting, snapshot.prior_precision])
    status = _update_kernel(state[0], state[1], state[2], state[3], state[4], combos, chosen_a, xs,
                            r, kparams)
    if status < 0:  # only reachable if the state was corrupted outside this module
        raise ValueError(f"snapshot: precision of component {-1 - status} is not positive "
                         "definite")
    precision, b, mean_t, factor_t, n_eff = state
    return PolicySnapshot(mean_t=mean_t, factor_t=factor_t, precision=precision, b=b, n_eff=n_eff,
                          prior_precision=snapshot.prior_precision,
                          version=snapshot.version + 1)


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING)."""
    snap = initial_snapshot(2, 2)
    combos = np.array([[0, 1], [1, -1]], dtype=np.int32)
    update_posteriors(snap, combos, np.array([0, 1]), np.ones((2, 2)), np.array([1.0, 0.0]))
