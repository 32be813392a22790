"""Posterior updates for the decision policy: one Bayesian regression per component.

Every component ``c`` (a dimension value, a pairwise cell, or the "send nothing" arm) keeps a
Gaussian posterior over its weights on the context ``x`` (``d`` features, ``x[0] == 1`` is
the bias), independent of the other components'. With the logistic link (the default) a
combination's components share each outcome's credit through one joint step (below,
"Credit"). With the identity link each component regresses the *raw* reward on its own:
training each on the reward minus the other components' predictions overshot and diverged
(DESIGN.md), so every component of the chosen combination is updated with the same
``(x, reward)``.

The identity link's exact update, per observation of component ``c`` (λ = ``forgetting``,
α = prior precision)::

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

Priors are per component (``PolicySnapshot.prior[C, d]``, diagonal): ``A_c`` is always
the data's precision plus ``diag(prior_c)``, which forgetting preserves. A group of
components can have its prior learned from its own posteriors after every batch
(``LearnerParams.prior_groups``, :func:`learn_group_prior`): moving a component to a new
prior adds the difference to ``A_c`` and keeps ``b_c``, exactly the posterior that prior
would have given on the same data.

Credit (the logistic link, ``LearnerParams.credit``). One outcome of a combination whose
components ``c`` have block posteriors ``N(μ_c, Σ_c)`` informs only their weighted sum, the
logit ``η = Σ_c w_c·θ_cᵀx``. With ``q_c = xᵀΣ_c x``, ``v_c = w_c²·q_c``, ``v = Σ_c v_c`` and
curvature ``h = p(1 − p)``, the exact joint Kalman (Laplace) step from the block-diagonal
prior moves every mean by ``w_c·Σ_c x·(r − p) / (1 + h·v)`` — the summed logit by
``v·(r − p) / (1 + h·v)``, one Newton step on the sum, the residual split by the blocks'
variances — and shrinks the joint covariance by ``h·Σz zᵀΣ / (1 + h·v)``: the variance of
``u_c = w_c·θ_cᵀx`` by ``h·v_c² / (1 + h·v)`` and the covariance of ``u_c`` and ``u_c'``
by ``h·v_c·v_c' / (1 + h·v)``. Keeping the posterior block-diagonal (a joint covariance
over C·d weights is C times the state and about C²/k times the work per outcome) drops
the cross terms, and the choice is what each block keeps of them. Whatever it keeps, it
is a shrink of the block's variance along its own ``Σ_c x`` by a share ``ρ_c`` of ``v_c``
(``ρ_c = h·m_c / (1 + h·v)`` for the first three below):
``Σ_c ← Σ_c − (ρ_c / q_c)·Σ_c x xᵀΣ_c``, which is ``A_c ← A_c + ρ_c / (q_c·(1 − ρ_c))·x xᵀ``
on the precision (Sherman–Morrison). The means' step is the exact one in every case.

- ``"marginal"`` (shipped): ``m_c = v_c``, each block's exact marginal, no cross term
  kept. Then the summed logit's variance shrinks by only ``h·Σ_c v_c² / (1 + h·v)`` instead
  of ``h·v² / (1 + h·v)``: a combination seen n times with k equal blocks keeps about k
  times the variance the joint posterior gives its logit, so its later steps are about k
  times too large (a Robbins–Monro gain of k / n: the estimate's variance is about
  k² / (2k − 1) times the efficient one, 3.8× at k = 7).
- ``"sum"``: ``m_c = v``, every block shrinks by the factor ``1 / (1 + h·v)`` by which the
  joint posterior shrinks the observed combination's logit, so that logit's variance after
  the step is exactly the joint posterior's (each cross term credited to both its blocks,
  half each). Blocks whose variance is small shrink by the same share as the uncertain
  ones, which the joint posterior does not do.
- ``"harmonic"``: each cross term split between its two blocks in proportion to their
  variances, ``m_c = v_c + Σ_{c'≠c} 2·v_c·v_c' / (v_c + v_c')`` (capped at ``v``, which
  keeps ``ρ_c < 1``): equal blocks get ``"sum"``'s share, and a block already known (small
  ``v_c``) next to an uncertain one keeps close to its marginal — the uncertain block
  is the one the outcome informs.
- ``"split"``: the outcome's information ``h`` on the sum split among the blocks by their
  variances, ``h·v_c / v`` on ``u_c``, so ``ρ_c = i_c·v_c / (1 + i_c·v_c)`` with
  ``i_c = h·v_c / v``: the information counted over the blocks is the outcome's, once
  (``"marginal"`` counts up to k times ``h``), and each block shrinks less than its
  marginal.

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
L_CREDIT = 1  # CREDITS[params.credit]; the identity link ignores it
N_LEARNER_PARAMS = 2  # the prior precisions are the snapshot's ``prior[C, d]``

# How one outcome's information is shared among the combination's components' posteriors
# (logistic link; module docstring, "Credit").
CREDIT_MARGINAL = 0
CREDIT_SUM = 1
CREDIT_HARMONIC = 2
CREDIT_SPLIT = 3
CREDITS = {"marginal": CREDIT_MARGINAL, "sum": CREDIT_SUM, "harmonic": CREDIT_HARMONIC,
           "split": CREDIT_SPLIT}
DEFAULT_CREDIT = "marginal"

LINK_IDENTITY = "identity"
LINK_LOGISTIC = "logistic"
DEFAULT_LINK = LINK_LOGISTIC

# Shipped defaults (a campaign's [exploration] table defaults to these).
# Forgetting is a prior on how fast the world moves: λ per observation of a component keeps
# an effective memory of 1 / (1 − λ) of its observations (10,000 here). A longer memory was
# tried (2026-12-03, README "Does it learn?"): 0.99997 (about 33,000) lifted decisions
# 5,000-10,000 on the world family in process (+0.034 +- 0.011 on the tuning seeds, +0.015 +-
# 0.010 held out) but not the last fifth, cost the drifting world -0.044 (it relearns a shift
# more slowly), and through the server moved nothing beyond run-to-run noise: not shipped. A
# campaign whose world is known to be steady can set it in its [exploration] table.
DEFAULT_FORGETTING = 0.9999
# The bias's prior precision, in component units. With the logistic link every component's
# bias must reach the base rate's logit (about -3.5 at 3%) on its own, 3.5 prior sds away at 1;
# while it is that far off, each outcome's credit goes mostly to the slopes (31 features at
# precision 2 hold 15.5 of the 16.5 units of prior variance along x) instead of the bias. A
# wider bias prior (0.3) was measured (2026-12-03, README "Does it learn?"): on the world
# family's tuning seeds decisions 5,000-10,000 +0.066 +- 0.016, but on 36 held-out runs only
# +0.015 +- 0.013 with the last fifth -0.020 +- 0.009 (the dense world +0.053 early, the types
# world -0.047): not shipped. A campaign of many continuous numbers can set it.
DEFAULT_PRIOR_PRECISION = 1.0
# The slopes' prior precision, in component units (a combination's logit is the mean of its k
# components' scores, so a component's slope is k times its share of the logit). Why 2 and
# not 3: on the world family the two are indistinguishable (tuning seeds 0, 3, 4 in process,
# 18 runs each: last fifth 0.687 vs 0.693, decisions 5,000-10,000 0.477 vs 0.491, the
# standard error of such a mean is about 0.012), while bench/policy_sim.py's world, whose
# user types move each component's logit by several prior standard deviations, is not:
# 0.932 / 0.900 of the oracle on seeds 0 / 1 at 2, 0.836 / 0.819 at 3 (its budget is 0.85).
# It is where the dimension values' slopes start and stay; the pair cells' prior starts here
# and is then learned (DEFAULT_LEARNED_PRIOR). Learning the dimension values' prior too was
# tried and is not used: README "Does it learn?".
DEFAULT_SLOPE_PRECISION = 2.0
# The shared intercept is off by default: through the server on seeds 1-2 it sped up the
# first 2,000 decisions of the dense worlds but cost the types world (README "Does it
# learn?"); OFFSET_PRIOR_VARIANCE is the value measured.
DEFAULT_INTERCEPT_VARIANCE = 0.0
# Whose slope priors are learned (a campaign's ``learned_prior``; logistic link only): no
# one's, or each pair's cells (one prior per feature per pair, :func:`learn_group_prior`).
LEARNED_PRIOR_NONE = "none"
LEARNED_PRIOR_CELLS = "cells"
# Why cells: on the world family (tuning seeds 0, 3, 4 in process, 18 runs) the last fifth
# went 0.687 -> 0.716 (paired +0.029, standard error 0.009, 14 of 18 runs better), decisions
# 5,000-10,000 0.477 -> 0.467 (-0.009 +- 0.015); bench/policy_sim.py 0.932 / 0.900 ->
# 0.932 / 0.858 on seeds 0 / 1 (budget 0.85). README "Does it learn?".
DEFAULT_LEARNED_PRIOR = LEARNED_PRIOR_CELLS

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
        jit.i4_2d_ro, jit.i8_1d_ro, jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_2d_ro,
    ),
    **jit.NOGIL,
)
def _update_kernel(precision, b, mean_t, factor_t, n_eff, combo_components, chosen, xs, rewards,
                   params, prior):
    """Apply a batch of rewards to the state arrays in place (``prior[C, d]`` each
    component's diagonal prior precision). Returns the number of components touched, or
    -1 - c if component c lost positive definiteness (cannot happen with a positive prior
    unless the state was corrupted)."""
    lam = params[L_FORGETTING]
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
                a[i, i] += (1.0 - lam) * prior[c, i]
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



@njit(jit.f8(jit.i8, jit.i8, jit.f8, jit.f8, jit.f8_1d, jit.i8, jit.f8), **jit.NOGIL)
def _credit_rho(credit, j, s_o, v, vs, n_row, h):
    """``ρ``, the share by which block ``j``'s variance along its own ``Σ_c x`` shrinks
    (``-1``: the shared intercept, variance ``s_o``) for one outcome of curvature ``h``
    whose combination's logit has predictive variance ``v``, its blocks' variances
    ``vs[:n_row]`` (module docstring, "Credit")."""
    vc = s_o if j < 0 else vs[j]
    if credit == CREDIT_MARGINAL:
        return h * vc / (1.0 + h * v)
    if credit == CREDIT_SUM:
        return h * v / (1.0 + h * v)
    if credit == CREDIT_SPLIT:  # information h·v_c / v on u_c
        info = h * vc / v if v > 0.0 else 0.0
        return info * vc / (1.0 + info * vc)
    m = vc  # CREDIT_HARMONIC: its own term, plus each cross term split by the variances
    if j >= 0 and s_o > 0.0:
        m += 2.0 * vc * s_o / (vc + s_o)
    for i in range(n_row):
        if i != j and vc + vs[i] > 0.0:
            m += 2.0 * vc * vs[i] / (vc + vs[i])
    return h * min(m, v) / (1.0 + h * v)

@njit(
    jit.i8(
        jit.f8_3d, jit.f8_2d, jit.f8_2d, jit.f8_2d, jit.f8_1d,
        jit.f8_1d, jit.i4_2d_ro, jit.f8_1d_ro, jit.i8_1d_ro, jit.f8_2d_ro, jit.f8_1d_ro,
        jit.f8_1d_ro, jit.f8_2d_ro,
    ),
    **jit.NOGIL,
)
def _update_logistic_kernel(precision, b, mean_t, factor_t, n_eff, offset, combo_components,
                            weight, chosen, xs, rewards, params, prior):
    """The logistic link, in place: the combination's logit is ``η = Σ_c w_c·μ_c·x`` and
    ``P(reward) = σ(η)`` (``rewards`` in [0, 1]). Each outcome is one extended-Kalman step
    on the joint logit with the components' covariances kept block-diagonal: with
    ``p = σ(η)``, ``h = p(1 − p)`` and the logit's predictive variance
    ``v = Σ_c w_c²·xᵀΣ_c x``, every component of the combination moves by
    ``Σ_c x·w_c·(r − p) / (1 + h·v)``, so the components share the residual in proportion
    to their uncertainty (no overshoot: the shared step is one Newton step on the sum).
    Covariances are downdated within the batch (Sherman–Morrison on a working copy);
    precisions accumulate ``h_c·w_c²·x xᵀ`` (the block's own curvature,
    ``h_c = h / (1 + h·(v − w_c²·xᵀΣ_c x))``), forget once per batch
    (``A ← λⁿ·A + (1 − λⁿ)·diag(prior)`` for n observations), are re-factored at the end
    of the batch as in :func:`_update_kernel`, and ``b_c = A_c μ_c`` is stored so the
    natural parameters stay the state.

    ``offset = [o, s²]``: one shared intercept in every arm's logit (``η = o + Σ…``), with
    its variance, updated in the same step. It takes the base rate: starting every arm at
    logit 0 (a 50% rate) and letting each learn the base rate on its own made every arm
    tried less look better than the ones tried, so the first thousands of decisions went to
    spreading trials. The policy never reads it (every arm has it: rankings do not change).
    Returns the number of components touched, or ``-1 - c`` if component c lost positive
    definiteness."""
    lam = params[L_FORGETTING]
    credit = int(params[L_CREDIT])
    n_comp, d = b.shape
    k = combo_components.shape[1]
    touched = np.zeros(n_comp, dtype=np.uint8)
    sigma = np.zeros((n_comp, d, d))
    sx = np.zeros((k, d))
    qs = np.zeros(k)
    vs = np.zeros(k)
    seen = np.zeros(n_comp, dtype=np.int64)
    for t in range(xs.shape[0]):
        x = xs[t]
        row = combo_components[chosen[t]]
        offset[1] /= lam
        eta = offset[0]
        v = offset[1]
        n_row = 0
        for j in range(k):
            c = row[j]
            if c < 0:
                break
            n_row += 1
            if touched[c] == 0:  # Σ_c = F_c F_cᵀ from the published factor, once per batch
                touched[c] = 1
                sg = sigma[c]
                p = 0
                for jj in range(d):
                    for i in range(jj, d):
                        sg[jj, i] = factor_t[p, c]
                        p += 1
                fu = sg.copy()  # upper-triangular F_c
                for i in range(d):
                    for m in range(d):
                        acc = 0.0
                        for q in range(max(i, m), d):
                            acc += fu[i, q] * fu[m, q]
                        sg[i, m] = acc
            sg = sigma[c]
            for i in range(d):  # Σx as a sum of rows (Σ symmetric): no reduction to vectorise
                sx[j, i] = 0.0
            sxj = sx[j]
            for m in range(d):
                xm = x[m]
                srow = sg[m]
                for i in range(d):
                    sxj[i] += srow[i] * xm
            mu_x = 0.0
            q = 0.0
            for i in range(d):
                q += sx[j, i] * x[i]
                mu_x += mean_t[i, c] * x[i]
            qs[j] = q
            vs[j] = weight[c] * weight[c] * q
            eta += weight[c] * mu_x
            v += weight[c] * weight[c] * q
        if eta > 30.0:
            eta = 30.0
        elif eta < -30.0:
            eta = -30.0
        p_hat = 1.0 / (1.0 + np.exp(-eta))
        h = p_hat * (1.0 - p_hat)
        if h < 1e-6:
            h = 1e-6
        g = rewards[t] - p_hat
        denom = 1.0 + h * v
        s_o = offset[1]
        offset[0] += s_o * g / denom
        if credit == CREDIT_MARGINAL:
            offset[1] = s_o - h * s_o * s_o / denom
        else:
            offset[1] = s_o - s_o * _credit_rho(credit, -1, s_o, v, vs, n_row, h)
        for j in range(n_row):
            c = row[j]
            wc = weight[c]
            step = wc * g / denom
            if credit == CREDIT_MARGINAL:  # (ρ = h·w_c²·q_c / (1 + h·v), written out)
                down = h * wc * wc / denom
                hc = h * wc * wc / (1.0 + h * (v - wc * wc * qs[j]))
            else:  # ρ: the share by which the block's variance along its own Σ_c x shrinks
                rho = _credit_rho(credit, j, s_o, v, vs, n_row, h)
                down = rho / qs[j]
                hc = rho / (qs[j] * (1.0 - rho))
            sg = sigma[c]
            sxj = sx[j]
            for i in range(d):
                mean_t[i, c] += step * sxj[i]
                si = down * sxj[i]
                srow = sg[i]
                for m in range(d):
                    srow[m] -= si * sxj[m]
            a = precision[c]
            for i in range(d):  # the lower triangle (what the factorisation reads)
                hx = hc * x[i]
                arow = a[i]
                for m in range(i + 1):
                    arow[m] += hx * x[m]
            seen[c] += 1
            n_eff[c] = lam * n_eff[c] + 1.0
    work = np.zeros((d, d))
    f = np.zeros((d, d))
    n_touched = 0
    for c in range(n_comp):
        if touched[c] == 0:
            continue
        n_touched += 1
        # Forgetting for the batch's n observations of c at once (the batch's own
        # curvature decays with the rest; at λ^n ≈ 1 the difference is negligible).
        decay = lam ** seen[c]
        a = precision[c]
        for i in range(d):
            for m in range(i + 1):
                a[i, m] *= decay
                a[m, i] = a[i, m]
            a[i, i] += (1.0 - decay) * prior[c, i]
        if not _inverse_factor(a, f, work):
            return -1 - c
        p = 0
        for j in range(d):
            for i in range(j, d):
                factor_t[p, c] = f[j, i]
                p += 1
        for i in range(d):
            acc = 0.0
            for j in range(d):
                acc += a[i, j] * mean_t[j, c]
            b[c, i] = acc
    return n_touched


@njit(jit.void(jit.f8_2d_ro, jit.f8_2d_ro, jit.i8, jit.i8, jit.f8_1d), **jit.NOGIL)
def _group_moments(mean_t, factor_t, start, stop, out):
    """``out[j] = Σ_c (μ_cj² + Σ_c,jj)`` over components ``start <= c < stop``: each
    feature's posterior second moment summed over a group (``Σ_c = F_c F_cᵀ``, so
    ``Σ_c,jj`` is the squared norm of row ``j`` of the packed upper-triangular ``F_c``)."""
    d = mean_t.shape[0]
    for j in range(d):
        out[j] = 0.0
    p = 0
    for j in range(d):
        for _i in range(j, d):
            for c in range(start, stop):
                out[j] += factor_t[p, c] * factor_t[p, c]
            p += 1
        for c in range(start, stop):
            out[j] += mean_t[j, c] * mean_t[j, c]


@njit(jit.i8(jit.f8_3d, jit.f8_2d, jit.f8_2d, jit.f8_2d, jit.f8_2d, jit.i8, jit.i8,
             jit.f8_1d_ro), **jit.NOGIL)
def _reprior_kernel(precision, b, mean_t, factor_t, prior, start, stop, new):
    """Move components ``start <= c < stop`` to the diagonal prior precision ``new[d]``, in
    place: ``A_c += diag(new − prior_c)`` (``A_c`` is the data's precision plus the prior
    it was built with, an invariant forgetting keeps), re-factor, ``μ_c = A_c⁻¹ b_c`` (the
    precision-weighted mean ``b_c`` is the data's: a zero-mean prior adds nothing to it).
    Returns 0, or ``-1 - c`` if component c lost positive definiteness."""
    d = mean_t.shape[0]
    work = np.zeros((d, d))
    f = np.zeros((d, d))
    tmp = np.empty(d)
    for c in range(start, stop):
        a = precision[c]
        for i in range(d):
            a[i, i] += new[i] - prior[c, i]
            prior[c, i] = new[i]
        if not _inverse_factor(a, f, work):
            return -1 - c
        p = 0
        for j in range(d):
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
    return 0


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class LearnerParams:
    """Learner configuration. ``forgetting`` is λ per observation of a component.

    ``link``: ``"identity"`` regresses each component on the raw reward independently;
    ``"logistic"`` fits the combination's summed score as a logit of the reward rescaled
    from ``reward_range`` to [0, 1] (clipped), one shared-credit Kalman step per outcome
    (:func:`_update_logistic_kernel`)."""

    forgetting: float = DEFAULT_FORGETTING
    link: str = LINK_IDENTITY
    reward_range: tuple[float, float] = (0.0, 1.0)
    # Component ranges [start, stop) whose slopes' prior precisions are learned, per feature,
    # from the group's posteriors after every batch (:func:`learn_group_prior`; logistic
    # link only). Empty: the prior stays where it started.
    prior_groups: tuple[tuple[int, int], ...] = ()
    # How one outcome's information is shared among the chosen combination's components
    # (logistic link; module docstring, "Credit"): "marginal", "sum", "harmonic" or
    # "split".
    credit: str = DEFAULT_CREDIT

    def __post_init__(self) -> None:
        if not (0.0 < self.forgetting <= 1.0):
            raise ValueError(
                f"forgetting: must be in (0, 1] (1 = never forget), got {self.forgetting!r}"
            )
        if self.link not in (LINK_IDENTITY, LINK_LOGISTIC):
            raise ValueError(f"link: must be {LINK_IDENTITY!r} or {LINK_LOGISTIC!r}, "
                             f"got {self.link!r}")
        low, high = self.reward_range
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"reward_range: needs finite low < high, got {self.reward_range}")
        if self.credit not in CREDITS:
            raise ValueError(f"credit: must be one of {list(CREDITS)}, got {self.credit!r}")
        if self.prior_groups and self.link != LINK_LOGISTIC:
            raise ValueError("prior_groups: a learned prior needs the logistic link (the "
                             "identity link's covariance is scaled by the noise variance)")
        for start, stop in self.prior_groups:
            if not 0 <= start < stop:
                raise ValueError(f"prior_groups: need 0 <= start < stop, got ({start}, {stop})")


def initial_snapshot(
    n_components: int, n_features: int, prior_precision: float = DEFAULT_PRIOR_PRECISION,
    slope_precision: float | None = None,
    intercept_variance: float = DEFAULT_INTERCEPT_VARIANCE,
) -> PolicySnapshot:
    """The prior for every component: mean 0, precision ``diag(α, β, …, β)`` — α on the
    bias (``prior_precision``), β on every other feature (``slope_precision``, default α);
    the logistic link's shared intercept at 0 with variance ``intercept_variance`` (0: no
    shared intercept, the intercept never moves)."""
    if n_components < 1 or n_features < 1:
        raise ValueError(
            f"n_components, n_features: must be >= 1, got {n_components}, {n_features}"
        )
    if not (np.isfinite(prior_precision) and prior_precision > 0.0):
        raise ValueError(f"prior_precision: must be finite and > 0, got {prior_precision!r}")
    slope = prior_precision if slope_precision is None else slope_precision
    if not (np.isfinite(slope) and slope > 0.0):
        raise ValueError(f"slope_precision: must be finite and > 0, got {slope_precision!r}")
    alpha = np.full(n_features, float(slope))
    alpha[0] = prior_precision
    packed = np.diag(1.0 / np.sqrt(alpha))[np.triu_indices(n_features)]
    return PolicySnapshot(
        mean_t=np.zeros((n_features, n_components)),
        factor_t=np.repeat(packed[:, None], n_components, axis=1),
        precision=np.broadcast_to(np.diag(alpha),
                                  (n_components, n_features, n_features)).copy(),
        b=np.zeros((n_components, n_features)),
        n_eff=np.zeros(n_components),
        prior_precision=float(prior_precision),
        slope_precision=float(slope),
        offset_var=float(intercept_variance),
    )


def update_posteriors(
    snapshot: PolicySnapshot,
    combo_components: np.ndarray,
    chosen: np.ndarray,
    contexts: np.ndarray,
    rewards: np.ndarray,
    params: LearnerParams | None = None,
    weight: np.ndarray | None = None,
) -> PolicySnapshot:
    """Learn from a batch of outcomes; returns a new snapshot, ``snapshot`` is untouched.

    ``combo_components`` is the campaign's int32 ``[n_combos, k]`` component ids (the same
    array the policy scores with, -1 padded); ``chosen[n]`` the combination each decision
    chose (the "send nothing" combination updates the nothing component); ``contexts[n, d]``
    the context each decision saw; ``rewards[n]`` the raw rewards. Rows are applied in
    order, so with forgetting the last row weighs most. The logistic link also needs the
    space's ``component_weight`` (``weight[C]``), with which the policy sums the scores.
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
    kparams = np.array([params.forgetting, float(CREDITS[params.credit])])
    prior = snapshot.prior
    assert prior is not None  # filled in by PolicySnapshot
    if params.link == LINK_LOGISTIC:
        if weight is None:
            raise ValueError("weight: the logistic link needs the space's component_weight")
        wts = typed_array(weight, "weight", np.float64, 1)
        if wts.shape != (n_comp,):
            raise ValueError(f"weight: shape must be ({n_comp},), got {wts.shape}")
        low, high = params.reward_range
        y = np.clip((r - low) / (high - low), 0.0, 1.0)
        offset = np.array([snapshot.offset, snapshot.offset_var])
        status = _update_logistic_kernel(state[0], state[1], state[2], state[3], state[4],
                                         offset, combos, wts, chosen_a, xs, y, kparams, prior)
    else:
        offset = np.array([snapshot.offset, snapshot.offset_var])
        status = _update_kernel(state[0], state[1], state[2], state[3], state[4], combos,
                                chosen_a, xs, r, kparams, prior)
    if status < 0:  # only reachable if the state was corrupted outside this module
        raise ValueError(f"snapshot: precision of component {-1 - status} is not positive "
                         "definite")
    precision, b, mean_t, factor_t, n_eff = state
    prior = prior.copy()
    for start, stop in params.prior_groups:
        if stop > n_comp:
            raise ValueError(f"prior_groups: ({start}, {stop}) is past the {n_comp} components")
        new = learn_group_prior(mean_t, factor_t, prior, start, stop)
        if new is not None and _reprior_kernel(precision, b, mean_t, factor_t, prior, start,
                                               stop, new) < 0:
            raise ValueError("snapshot: a component lost positive definiteness")
    return PolicySnapshot(mean_t=mean_t, factor_t=factor_t, precision=precision, b=b, n_eff=n_eff,
                          prior_precision=snapshot.prior_precision,
                          slope_precision=snapshot.slope_precision,
                          offset=float(offset[0]), offset_var=float(offset[1]),
                          version=snapshot.version + 1, prior=prior)


def pair_cell_groups(dim_sizes: tuple[int, ...],
                     pairs: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Each pair's cells as a component range ``[start, stop)`` in the standard layout
    (``nudge.kernels.action_space.build_action_space``: the dimension values, then each
    pair's cells): the groups ``learned_prior = "cells"`` learns a prior for."""
    groups, start = [], sum(dim_sizes)
    for a, b in pairs:
        groups.append((start, start + dim_sizes[a] * dim_sizes[b]))
        start += dim_sizes[a] * dim_sizes[b]
    return tuple(groups)


# A learned prior moves only when some feature's precision changes by more than this share:
# each move re-factors every component of the group.
PRIOR_TOLERANCE = 0.01
# … and stays within these bounds (a feature no cell uses would otherwise head for infinity).
PRIOR_BOUNDS = (1e-3, 1e6)


def learn_group_prior(
    mean_t: np.ndarray, factor_t: np.ndarray, prior: np.ndarray, start: int, stop: int
) -> np.ndarray | None:
    """The group's new prior precisions (one per feature, the bias kept), or None if none
    moved by more than ``PRIOR_TOLERANCE``.

    Why: the components of a group (the cells of one pair of dimensions) are exchangeable
    draws of one effect, ``θ_cj ~ N(0, 1/τ_j)``; how far their slopes spread on feature j
    is evidence for τ_j, which one component's few observations cannot give. The EM step
    of that hierarchical model (empirical Bayes, automatic relevance determination) is
    ``τ_j = n / Σ_c E[θ_cj²] = n / Σ_c (μ_cj² + Σ_c,jj)`` over the group's ``n``
    posteriors; components not yet observed sit at the prior and pull τ_j toward its
    current value, so the estimate moves only as the group gathers data. Features no cell
    depends on (in most worlds, every one: the cells carry constant interactions) shrink
    toward 0 and stop costing exploration and noise; a feature the cells do depend on keeps
    a weak prior.
    """
    sums = np.empty(mean_t.shape[0])
    _group_moments(mean_t, factor_t, start, stop, sums)
    old = prior[start]
    new = old.copy()
    new[1:] = np.clip((stop - start) / np.maximum(sums[1:], 1e-12), *PRIOR_BOUNDS)
    if np.max(np.abs(new / old - 1.0)) <= PRIOR_TOLERANCE:
        return None
    return new


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING)."""
    snap = initial_snapshot(2, 2)
    combos = np.array([[0, 1], [1, -1]], dtype=np.int32)
    for params in (LearnerParams(link=LINK_IDENTITY),
                   LearnerParams(link=LINK_LOGISTIC, prior_groups=((0, 2),))):
        update_posteriors(snap, combos, np.array([0, 1]), np.ones((2, 2)), np.array([1.0, 0.0]),
                          params, weight=np.array([0.5, 1.0]))
