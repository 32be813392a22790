"""The decision policy: score every allowed combination, explore, choose, rank, log propensity.

Action space. Combinations are rows of component ids (see ``nudge.kernels.action_space``):
a component is one dimension value, one pairwise cell or the "send nothing" arm.

Scores. Component ``c`` is a Bayesian linear regression on the context ``x`` (see
``nudge.kernels.learner``) with mean ``μ_c·x`` and variance ``v²·xᵀΣ_c x = v²·|F_cᵀx|²``.
A combination's score is ``Σ_{c in combo} w_c·score_c``; ``component_weight`` ``w`` puts
combinations and the nothing arm on one scale (the standard layout uses ``1/k`` for the
``k`` components of a combination and 1 for "nothing", so a score reads as an expected
reward).

Thompson sampling draws one scalar per component, ``s_c ~ N(μ_c·x, v²·xᵀΣ_c x)`` (the same
distribution as sampling θ_c and taking θ_c·x, at a fraction of the cost), sums them per
combination, masks, and takes the argmax as the choice and the next best as alternatives.
Its propensity has no closed form: :func:`thompson_propensity` re-draws M times and counts
how often the chosen combination wins (win counts over the allowed set sum to the number of
draws by construction). SquareCB chooses from the mean scores with the analytic
inverse-gap-weighted probabilities, ``γ = gamma_scale · (number of allowed combinations)``
(unscaled γ stays near uniform with thousands of actions). With ``optimism`` β it chooses,
the same way, from upper confidence bounds: each component's score is raised by β of its
posterior standard deviations. Why: SquareCB's gaps read point estimates, and a point
estimate cannot tell an arm known to be poor from an arm never tried whose prior says "as
good as the base rate"; the bonus is what the model does not know, so it is largest for the
arms tried least and fades as ``1/√n`` with their data, leaving SquareCB on the means in
the limit. The probabilities are still a deterministic function of the scores, so the
logged propensity stays exact.

Masks. ``combo_mask[n_combos]`` (uint8 or bool, 1 = allowed) is what the campaign allows;
``component_mask[C]`` is the per-request guardrail: a combination is allowed only if every
one of its components is (no consent for SMS → mask the SMS component; quiet hours → mask
the slot).

Randomness is a 64-bit ``seed`` per call (``nudge.kernels.rng``: no global state, so threads
calling the nogil kernels never share a generator): the same inputs and seed give the same
choice, and logging the seed makes a decision replayable.

Model. Deciders read one :class:`~nudge.kernels.snapshot.PolicySnapshot` (read-only arrays,
validated once when built); the learner publishes a new snapshot instead of writing into the
one being read, so a decision never sees a half-applied update. Per request only the context
and masks are validated.

Thompson's propensity estimator counts the decision's own draw: that draw is a genuine
sample from the policy in which the chosen combination won, so with ``W`` wins in ``M``
independent re-draws the logged propensity is ``p̂ = (W + 1) / (M + 1)``. It lies in
``[1/(M+1), 1]`` — never 0, so no logged decision is lost to off-policy evaluation — and its
bias is ``E[p̂] − p = (1 − p) / (M + 1)``, at most ``1/(M + 1)`` (upwards: importance
weights err small, not infinite). tests/kernels/test_policy.py measures it against the
exact propensity of a small space computed by quadrature.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.action_space import ActionSpace, build_action_space
from nudge.kernels.jit import float_vector, mask_array, readonly
from nudge.kernels.learner import initial_snapshot
from nudge.kernels.rng import as_seed, fill_normals, rng_state, uniform
from nudge.kernels.snapshot import PolicySnapshot

MODE_THOMPSON = "thompson"
MODE_SQUARECB = "squarecb"

# Layout of the policy parameter array handed to kernels.
P_NOISE_VARIANCE = 0  # v²: scales the posterior covariance (exploration strength)
P_GAMMA_SCALE = 1  # SquareCB: γ = gamma_scale * n_allowed
P_EXPLORE_ALL = 2  # SquareCB, local: the share spread uniformly over every allowed combination
P_LOCAL_DIMS = 3  # SquareCB: explore the greedy combination's neighbours (0: everything)
P_OPTIMISM = 4  # SquareCB: scores are mean + this many posterior sds (0: the means)
N_POLICY_PARAMS = 5

# Layout of the Monte Carlo parameter array.
MC_ROUND = 0  # draws per round
MC_MAX_DRAWS = 1  # stop after this many draws …
MC_MIN_WINS = 2  # … or as soon as the chosen combination has won this often
N_MC_PARAMS = 3

# The most ranked combinations one decision returns (DecideRequest.top_k is capped here).
MAX_TOP_K = 16
# The Monte Carlo re-draws' seed is the decision's seed XOR this (as int64: ``_mc_seed``).
_MC_SEED_MIX = 0x5DEECE66DA3B1F27

# What every scoring kernel reads first: the snapshot's ``mean_t`` and ``factor_t``, the
# context, the space's ``component_weight`` and ``kernel_components``, the combo mask, the
# request's component mask and the policy parameters.
_SCORING = (jit.f8_2d_ro, jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.u4_2d_ro, jit.u1_1d_ro,
            jit.u1_1d_ro, jit.f8_1d_ro)
# The same without ``factor_t``: SquareCB reads only the means.
_MEAN_SCORING = _SCORING[:1] + _SCORING[2:]


# --------------------------------------------------------------------------- kernels


@njit(jit.void(jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d), **jit.NOGIL)
def _component_means(mean_t, x, out_mean):
    """``out_mean[c] = μ_c·x`` for every component (``mean_t`` is feature-major)."""
    d, n_comp = mean_t.shape
    for c in range(n_comp):
        out_mean[c] = 0.0
    for j in range(d):
        xj = x[j]
        for c in range(n_comp):
            out_mean[c] += mean_t[j, c] * xj


@njit(jit.void(jit.f8_2d_ro, jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d, jit.f8_1d), **jit.NOGIL)
def _component_moments(mean_t, factor_t, x, out_mean, out_quad):
    """``out_mean[c] = μ_c·x`` and ``out_quad[c] = xᵀΣ_c x = |F_cᵀx|²`` for every component.

    Component-innermost layouts make every inner loop a contiguous, independent-lane update
    over components, which LLVM vectorises without fastmath (no reductions to reassociate).
    """
    d, n_comp = mean_t.shape
    _component_means(mean_t, x, out_mean)
    for c in range(n_comp):
        out_quad[c] = 0.0
    y = np.zeros((d, n_comp))  # y[i, c] = (F_cᵀ x)_i = Σ_{j<=i} F_c[j, i] x_j
    p = 0
    for j in range(d):
        xj = x[j]
        for i in range(j, d):
            for c in range(n_comp):
                y[i, c] += factor_t[p, c] * xj
            p += 1
    for i in range(d):
        for c in range(n_comp):
            out_quad[c] += y[i, c] * y[i, c]


@njit(
    jit.void(jit.f8_2d_ro, jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_1d,
             jit.f8_1d),
    **jit.NOGIL,
)
def _weighted_moments(mean_t, factor_t, x, weight, params, out_mean, out_sd):
    """Each component's weighted score distribution: ``out_mean[c] = w_c·μ_c·x`` and
    ``out_sd[c] = w_c·sqrt(v²·xᵀΣ_c x)`` (a Thompson draw is ``out_mean + out_sd·z``)."""
    _component_moments(mean_t, factor_t, x, out_mean, out_sd)
    v2 = params[P_NOISE_VARIANCE]
    for c in range(mean_t.shape[1]):
        out_mean[c] *= weight[c]
        out_sd[c] = weight[c] * np.sqrt(v2 * out_sd[c])


@njit(jit.void(jit.f8_1d_ro, jit.u1_1d_ro, jit.f8_1d), **jit.NOGIL)
def _padded_scores(comp_score, component_mask, out):
    """``out[:C]`` = component scores with -inf where the request masks the component,
    ``out[C]`` = 0.0 (the slot padding ids point at): summing a combination's entries then
    needs no branch per component, and a masked combination sums to -inf."""
    n_comp = comp_score.shape[0]
    for c in range(n_comp):
        out[c] = comp_score[c] if component_mask[c] != 0 else -np.inf
    out[n_comp] = 0.0


@njit(jit.f8(jit.f8_1d_ro, jit.u4_2d_ro, jit.i8), **jit.NOGIL)
def _combo_score(padded, combos, i):
    total = 0.0
    for j in range(combos.shape[1]):
        total += padded[combos[i, j]]
    return total


@njit(jit.i8(jit.f8_1d, jit.i8_1d, jit.i8, jit.f8, jit.i8), **jit.NOGIL)
def insert_ranked(keys, items, filled, key, item):
    """Insert ``item`` with ``key`` into ``keys[:filled]`` (descending) and ``items`` if it
    ranks among the best ``len(keys)``; equal keys keep the earlier item first. Returns the
    new fill (a top-k scan by insertion, which kernels here and in
    ``nudge.kernels.contributions`` share)."""
    top = keys.shape[0]
    if filled == top and not key > keys[top - 1]:
        return filled
    pos = filled if filled < top else top - 1
    while pos > 0 and key > keys[pos - 1]:
        keys[pos] = keys[pos - 1]
        items[pos] = items[pos - 1]
        pos -= 1
    keys[pos] = key
    items[pos] = item
    return filled + 1 if filled < top else filled


@njit(jit.i8(jit.f8_1d_ro, jit.u4_2d_ro, jit.u1_1d_ro, jit.i8_1d, jit.f8_1d), **jit.NOGIL)
def _top_k_combos(padded, combos, combo_mask, out_index, out_score):
    """Score every combination as the sum of its components' (padded) scores and keep the
    ``len(out_index)`` best allowed ones, descending (ties: lower index first). Returns the
    number of allowed combinations; fills ``min(k, n_allowed)`` entries.

    Ids are unsigned so indexing skips Numba's negative-index wraparound (about 2× faster).
    """
    n, width = combos.shape
    top = out_index.shape[0]
    filled = 0
    n_allowed = 0
    for i in range(n):
        if combo_mask[i] == 0:
            continue
        total = 0.0
        for j in range(width):
            total += padded[combos[i, j]]
        if total == -np.inf:
            continue
        n_allowed += 1
        if filled < top or total > out_score[top - 1]:
            filled = insert_ranked(out_score, out_index, filled, total, i)
    return n_allowed


@njit(jit.i8(*_SCORING, jit.f8_1d_ro, jit.i8_1d, jit.f8_2d), **jit.NOGIL)
def _thompson_from_draws(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, z, out_index,
    out_score,
):
    """Thompson step given the standard-normal draws ``z[C]``: fills ``out_index`` with the
    choice and alternatives, ``out_score[0]`` their sampled and ``out_score[1]`` their mean
    scores. Returns the number of allowed combinations (0 = nothing allowed)."""
    n_comp = mean_t.shape[1]
    mean = np.empty(n_comp)
    sd = np.empty(n_comp)
    _weighted_moments(mean_t, factor_t, x, weight, params, mean, sd)
    sampled = np.empty(n_comp)
    for c in range(n_comp):
        sampled[c] = mean[c] + sd[c] * z[c]
    padded = np.empty(n_comp + 1)
    _padded_scores(sampled, component_mask, padded)
    top_score = np.empty(out_index.shape[0])
    n_allowed = _top_k_combos(padded, combos, combo_mask, out_index, top_score)
    _padded_scores(mean, component_mask, padded)
    for t in range(min(n_allowed, out_index.shape[0])):
        out_score[0, t] = top_score[t]
        out_score[1, t] = _combo_score(padded, combos, out_index[t])
    return n_allowed


@njit(jit.i8(*_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.NOGIL)
def _thompson_kernel(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index,
    out_score,
):
    """Thompson step drawing its normals from ``seed`` (see :func:`_thompson_from_draws`)."""
    z = np.empty(mean_t.shape[1])
    fill_normals(rng_state(seed), z)
    return _thompson_from_draws(
        mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, z, out_index,
        out_score,
    )


@njit(jit.i8(jit.f8_1d_ro, jit.f8_1d_ro, jit.u4_2d_ro, jit.u1_1d_ro, jit.i8_1d, jit.f8_1d,
             jit.f8_1d), **jit.NOGIL)
def _allowed_bounds(padded_mean, spread, combos, combo_mask, out_allowed, out_mean, out_spread):
    """The allowed combinations, their mean scores and score spreads (sum of their
    components' |w|·sd); returns how many."""
    n_allowed = 0
    for i in range(combos.shape[0]):
        if combo_mask[i] == 0:
            continue
        total = _combo_score(padded_mean, combos, i)
        if total == -np.inf:
            continue
        out_allowed[n_allowed] = i
        out_mean[n_allowed] = total
        out_spread[n_allowed] = _combo_score(spread, combos, i)
        n_allowed += 1
    return n_allowed


@njit(jit.i8(jit.f8_1d, jit.i8_1d, jit.f8_1d, jit.f8_1d, jit.i8, jit.i8_1d), **jit.NOGIL)
def _candidates(z, allowed, mean, spread, n_allowed, out_cand):
    """The combinations that can win any draw of this round: with every ``|z| <= Z``, those
    whose upper bound ``m + Z·S`` reaches the best lower bound. Returns how many."""
    zmax = 0.0
    for t in range(z.shape[0]):
        if abs(z[t]) > zmax:
            zmax = abs(z[t])
    floor = -np.inf
    for a in range(n_allowed):
        lo = mean[a] - zmax * spread[a]
        if lo > floor:
            floor = lo
    n_cand = 0
    for a in range(n_allowed):
        if mean[a] + zmax * spread[a] >= floor:
            out_cand[n_cand] = allowed[a]
            n_cand += 1
    return n_cand


@njit(jit.i8(jit.f8_1d, jit.u4_2d_ro, jit.i8_1d_ro, jit.i8_1d_ro, jit.u1_1d_ro, jit.u4_2d_ro,
             jit.i8), **jit.NOGIL)
def _grouped_argmax(sampled, cells, group_start, cell_combo, combo_mask, combos, nothing):
    """The best allowed combination for the component scores ``sampled`` (masked
    components -inf, ``sampled[C] = 0``) from the best cell of each group, or -1 when the
    campaign excludes that combination (the caller then scans). ``nothing`` (-1: none) is
    compared last, so it wins only if strictly better, as in a scan by index."""
    n_groups = group_start.shape[0] - 1
    total = 0.0
    flat = 0
    for g in range(n_groups):
        best = -np.inf
        pick = -1
        for cell in range(group_start[g], group_start[g + 1]):
            score = 0.0
            for j in range(cells.shape[1]):
                score += sampled[cells[cell, j]]
            if score > best:
                best = score
                pick = cell - group_start[g]
        if pick < 0:
            total = -np.inf
            break
        total += best
        flat = flat * (group_start[g + 1] - group_start[g]) + pick
    choice = -1
    if total > -np.inf:
        choice = cell_combo[flat]
        if combo_mask[choice] == 0:
            return -1
    if nothing >= 0 and combo_mask[nothing] != 0:
        s = _combo_score(sampled, combos, nothing)
        if s > -np.inf and (choice < 0 or s > total):
            choice = nothing
    return choice


@njit(jit.i8(*_SCORING, jit.i8, jit.i8, jit.f8_1d_ro, jit.u4_2d_ro, jit.i8_1d_ro, jit.i8_1d_ro,
             jit.i8, jit.i8_1d), **jit.NOGIL)
def _thompson_win_counts(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, chosen, mc,
    cells, group_start, cell_combo, nothing, out_wins,
):
    """Re-draw the Thompson scores and count argmax winners into ``out_wins[n_combos]``
    (zeroed here). Draws come in rounds of ``mc[MC_ROUND]`` until ``mc[MC_MAX_DRAWS]`` draws,
    or until ``chosen`` (if >= 0) has won ``mc[MC_MIN_WINS]`` times. Returns the number of
    draws (0 = nothing allowed).

    Exact pruning: in a round whose draws all satisfy ``|z| <= Z``, combination ``i`` scores
    within ``m_i ± Z·S_i`` (``S_i`` = sum of its components' |w|·sd), so only combinations
    whose upper bound reaches the best lower bound can win; the others are skipped. The
    winners are the same as scoring every combination (ties: lower index, as in decide).

    Grouped spaces (``group_start`` non-empty, see ``ActionSpace``): a draw's winner is the
    best cell of each group — a few dozen sums instead of thousands — and only a draw whose
    product-set best the campaign excludes falls back to scanning the candidates.
    """
    n_comp = mean_t.shape[1]
    n = combos.shape[0]
    for i in range(n):
        out_wins[i] = 0
    mean = np.empty(n_comp)
    sd = np.empty(n_comp)
    _weighted_moments(mean_t, factor_t, x, weight, params, mean, sd)
    padded_mean = np.empty(n_comp + 1)
    _padded_scores(mean, component_mask, padded_mean)
    spread = np.empty(n_comp + 1)
    for c in range(n_comp):
        spread[c] = abs(sd[c])
    spread[n_comp] = 0.0
    allowed = np.empty(n, dtype=np.int64)
    m_allowed = np.empty(n)
    s_allowed = np.empty(n)
    cand = np.empty(n, dtype=np.int64)
    grouped = group_start.shape[0] > 1
    # The allowed set and its bounds are needed only to scan (every draw of an ungrouped
    # space, a grouped draw whose best combination is excluded): built on first need.
    n_allowed = -1
    if not grouped:
        n_allowed = _allowed_bounds(padded_mean, spread, combos, combo_mask, allowed,
                                    m_allowed, s_allowed)
        if n_allowed == 0:
            return 0
    per_round = max(int(mc[MC_ROUND]), 1)
    max_draws = max(int(mc[MC_MAX_DRAWS]), per_round)
    min_wins = int(mc[MC_MIN_WINS])
    rng = rng_state(seed)
    z = np.empty(per_round * n_comp)
    sampled = np.empty(n_comp + 1)
    sampled[n_comp] = 0.0
    draws = 0
    while draws < max_draws:
        this_round = min(per_round, max_draws - draws)
        zr = z[: this_round * n_comp]
        fill_normals(rng, zr)
        n_cand = -1  # this round's candidates, built on first need
        for r in range(this_round):
            base = r * n_comp
            for c in range(n_comp):
                sampled[c] = (mean[c] + sd[c] * zr[base + c] if component_mask[c] != 0
                              else -np.inf)
            if grouped:
                best = _grouped_argmax(sampled, cells, group_start, cell_combo, combo_mask,
                                       combos, nothing)
                if best >= 0:
                    out_wins[best] += 1
                    continue
                if n_allowed < 0:
                    n_allowed = _allowed_bounds(padded_mean, spread, combos, combo_mask,
                                                allowed, m_allowed, s_allowed)
                if n_allowed == 0:
                    return 0
            if n_cand < 0:
                n_cand = _candidates(zr, allowed, m_allowed, s_allowed, n_allowed, cand)
            best = cand[0]
            best_score = _combo_score(sampled, combos, best)
            for a in range(1, n_cand):
                s = _combo_score(sampled, combos, cand[a])
                if s > best_score:
                    best_score = s
                    best = cand[a]
            out_wins[best] += 1
        draws += this_round
        if chosen >= 0 and out_wins[chosen] >= min_wins:
            break
    return draws


@njit(jit.b1(jit.u4_2d_ro, jit.i8, jit.i8, jit.i8, jit.i8), **jit.NOGIL)
def _in_neighbourhood(combos, pad, n_dims, g, i):
    """Whether combination ``i`` is in the neighbourhood of ``g``: a one-component
    combination (the nothing arm; ``pad`` marks padding), or one whose first ``n_dims``
    component ids (its dimension values) differ from ``g``'s in at most one place."""
    if g < 0 or combos.shape[1] < 2 or combos[i, 1] == pad:
        return True
    differ = 0
    for j in range(n_dims):
        if combos[i, j] != combos[g, j]:
            differ += 1
    return differ <= 1


@njit(jit.void(jit.u4_2d_ro, jit.i8, jit.i8, jit.f8_1d_ro, jit.i8, jit.i8, jit.f8_1d_ro,
               jit.f8_1d), **jit.NOGIL)
def _local_probabilities(combos, pad, n_dims, params, n_allowed, best, mean, out_prob):
    """Local SquareCB: inverse-gap weighting over the neighbourhood ``S`` of the greedy
    combination ``g`` (``g``, every allowed combination differing from it in one dimension,
    and the nothing arm) with ``γ = gamma_scale·|S|``, mixed with ``ε`` = explore_all spread
    over all ``K`` allowed combinations: ``p_a = ε/K + (1 − ε)·q_a``. Every allowed
    combination keeps at least ``ε/K``, so the log still covers any evaluated policy.
    ``g`` is the best multi-component combination; ``best`` (g or nothing) is S's best."""
    n = combos.shape[0]
    g = -1
    for i in range(n):
        if mean[i] == -np.inf or (combos.shape[1] > 1 and combos[i, 1] == pad):
            continue
        if g < 0 or mean[i] > mean[g]:
            g = i
    n_local = 0
    for i in range(n):
        out_prob[i] = 0.0
        if mean[i] != -np.inf and _in_neighbourhood(combos, pad, n_dims, g, i):
            out_prob[i] = 1.0  # membership; replaced by the probability below
            n_local += 1
    gamma = params[P_GAMMA_SCALE] * n_local
    eps = params[P_EXPLORE_ALL] if n_local < n_allowed else 0.0
    rest = 0.0
    for i in range(n):
        if out_prob[i] == 0.0 or i == best:
            continue
        q = 1.0 / (n_local + gamma * (mean[best] - mean[i]))
        out_prob[i] = q
        rest += q
    out_prob[best] = max(1.0 - rest, 0.0)
    floor = eps / n_allowed
    for i in range(n):
        if mean[i] != -np.inf:
            out_prob[i] = floor + (1.0 - eps) * out_prob[i]


@njit(jit.i8(*_MEAN_SCORING, jit.f8_1d, jit.f8_1d), **jit.NOGIL)
def _squarecb_probabilities(
    mean_t, x, weight, combos, combo_mask, component_mask, params, out_mean, out_prob
):
    """SquareCB distribution over combinations: ``out_mean`` mean scores (-inf if masked),
    ``out_prob`` probabilities (0 if masked). Returns the greedy combination (ties: lower
    index), -1 if none is allowed.

    With ``K`` allowed combinations, best mean ``ŷ*`` and ``γ = gamma_scale·K``:
    ``p_a = 1 / (K + γ·(ŷ* − ŷ_a))`` for ``a`` not the best, and the rest for the best.
    """
    n_comp = mean_t.shape[1]
    n = combos.shape[0]
    mean = np.empty(n_comp)
    _component_means(mean_t, x, mean)
    for c in range(n_comp):
        mean[c] *= weight[c]
    padded = np.empty(n_comp + 1)
    _padded_scores(mean, component_mask, padded)
    best = -1
    best_score = -np.inf
    n_allowed = 0
    for i in range(n):
        out_prob[i] = 0.0
        out_mean[i] = -np.inf
        if combo_mask[i] == 0:
            continue
        total = _combo_score(padded, combos, i)
        if total == -np.inf:
            continue
        out_mean[i] = total
        n_allowed += 1
        if best < 0 or total > best_score:
            best_score = total
            best = i
    if best < 0:
        return -1
    if params[P_LOCAL_DIMS] > 0:
        _local_probabilities(combos, n_comp, int(params[P_LOCAL_DIMS]), params, n_allowed,
                             best, out_mean, out_prob)
        return best
    gamma = params[P_GAMMA_SCALE] * n_allowed
    rest = 0.0
    for i in range(n):
        if out_mean[i] == -np.inf or i == best:
            continue
        p = 1.0 / (n_allowed + gamma * (best_score - out_mean[i]))
        out_prob[i] = p
        rest += p
    out_prob[best] = max(1.0 - rest, 0.0)
    return best


# A campaign's combinations have this many components (5 dimensions and 2 pair cells, the
# nothing arm padded to it) and local SquareCB compares this many dimensions: the kernel's
# inner loops are written out for them (any other shape takes the general loops).
_CAMPAIGN_WIDTH = 7
_CAMPAIGN_DIMS = 5


@njit(jit.i8(jit.f8_1d_ro, *_MEAN_SCORING[3:], jit.i8, jit.i8_1d, jit.f8_2d), **jit.NOGIL)
def _squarecb_choose(comp, combos, combo_mask, component_mask, params, seed, out_index,
                     out_score):
    """SquareCB's choice from the weighted component scores ``comp[C]`` (the body of
    :func:`_squarecb_kernel`)."""
    n_comp = comp.shape[0]
    n, width = combos.shape
    padded = np.empty(n_comp + 1)
    _padded_scores(comp, component_mask, padded)
    mean = np.empty(n)
    prob = np.empty(n)
    n_dims = int(params[P_LOCAL_DIMS])
    local = params[P_LOCAL_DIMS] > 0
    multi = width > 1
    best = -1
    best_score = -np.inf
    g = -1  # local: the best multi-component combination (ties: lower index)
    g_score = -np.inf
    n_allowed = 0
    for i in range(n):
        if combo_mask[i] == 0:
            mean[i] = -np.inf
            continue
        if width == _CAMPAIGN_WIDTH:  # _combo_score written out (same order of sums)
            total = 0.0 + padded[combos[i, 0]]
            total += padded[combos[i, 1]]
            total += padded[combos[i, 2]]
            total += padded[combos[i, 3]]
            total += padded[combos[i, 4]]
            total += padded[combos[i, 5]]
            total += padded[combos[i, 6]]
        else:
            total = _combo_score(padded, combos, i)
        mean[i] = total
        if total == -np.inf:
            continue
        n_allowed += 1
        if best < 0 or total > best_score:
            best_score = total
            best = i
        if local and not (multi and combos[i, 1] == n_comp) and (g < 0 or total > g_score):
            g = i
            g_score = total
    if best < 0:
        return 0
    if local:
        # _local_probabilities: the neighbourhood first (its size sets γ).
        written_out = n_dims == _CAMPAIGN_DIMS and multi and width >= _CAMPAIGN_DIMS and g >= 0
        g0 = g1 = g2 = g3 = g4 = np.uint32(0)
        if written_out:
            g0, g1, g2 = combos[g, 0], combos[g, 1], combos[g, 2]
            g3, g4 = combos[g, 3], combos[g, 4]
        n_local = 0
        for i in range(n):
            prob[i] = 0.0
            if mean[i] == -np.inf:
                continue
            if not written_out:
                member = _in_neighbourhood(combos, n_comp, n_dims, g, i)
            elif combos[i, 1] == n_comp:  # the nothing arm
                member = True
            else:
                member = ((combos[i, 0] != g0) + (combos[i, 1] != g1) + (combos[i, 2] != g2)
                          + (combos[i, 3] != g3) + (combos[i, 4] != g4)) <= 1
            if member:
                prob[i] = 1.0
                n_local += 1
        gamma = params[P_GAMMA_SCALE] * n_local
        eps = params[P_EXPLORE_ALL] if n_local < n_allowed else 0.0
        floor = eps / n_allowed
        rest = 0.0
        for i in range(n):
            if mean[i] == -np.inf or i == best:
                continue
            q = 0.0
            if prob[i] != 0.0:
                q = 1.0 / (n_local + gamma * (mean[best] - mean[i]))
                rest += q
            prob[i] = floor + (1.0 - eps) * q
        prob[best] = floor + (1.0 - eps) * max(1.0 - rest, 0.0)
    else:
        gamma = params[P_GAMMA_SCALE] * n_allowed
        rest = 0.0
        for i in range(n):
            if mean[i] == -np.inf:
                prob[i] = 0.0
                continue
            if i == best:
                continue
            p = 1.0 / (n_allowed + gamma * (best_score - mean[i]))
            prob[i] = p
            rest += p
        prob[best] = max(1.0 - rest, 0.0)
    u = uniform(rng_state(seed))
    top = out_index.shape[0]
    ranked_score = np.empty(top)
    ranked = np.empty(top, dtype=np.int64)
    filled = 0
    choice = -1
    acc = 0.0
    for i in range(n):  # inverse CDF over the allowed combinations, in index order
        if mean[i] == -np.inf:
            continue
        acc += prob[i]
        if choice < 0 and u < acc:
            choice = i
        if filled < top or mean[i] > ranked_score[top - 1]:
            filled = insert_ranked(ranked_score, ranked, filled, mean[i], i)
    if choice < 0:  # u landed in the rounding gap above the last cumulative sum
        choice = best
    out_index[0] = choice
    out_score[0, 0] = prob[choice]
    out_score[1, 0] = mean[choice]
    k = 1
    for r in range(filled):  # the best others by mean score, descending, lower index first
        if k == top:
            break
        i = ranked[r]
        if i == choice:
            continue
        out_index[k] = i
        out_score[0, k] = prob[i]
        out_score[1, k] = mean[i]
        k += 1
    return n_allowed


@njit(jit.i8(*_MEAN_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.NOGIL)
def _squarecb_kernel(
    mean_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index, out_score
):
    """SquareCB step: ``out_index[0]`` the sampled choice, then the best other combinations
    by mean score; ``out_score[0]`` their probabilities, ``out_score[1]`` their mean scores.
    Returns the number of allowed combinations.

    The distribution is :func:`_squarecb_probabilities`' — the same operations in the same
    order, so the same bits (tests/kernels/test_policy.py checks it against the slow way) —
    in fewer passes, because at 3,600 combinations each pass shows in every Decide: one
    scores the combinations and finds the best and the greedy multi-component one, (local
    only) one marks the neighbourhood, one turns gaps into probabilities, and one draws the
    choice by inverse CDF while ranking the best ``len(out_index)`` by mean (the choice is
    dropped from that ranking afterwards). A campaign's shape (``_CAMPAIGN_WIDTH``
    components, ``_CAMPAIGN_DIMS`` dimensions) has its sum and neighbourhood test written
    out: the general loops' unknown trip count cost about a third of the kernel (3,601
    combinations: 37.9 -> 27.6 µs p50, thread CPU, warm)."""
    comp = np.empty(mean_t.shape[1])
    _component_means(mean_t, x, comp)
    for c in range(mean_t.shape[1]):
        comp[c] *= weight[c]
    return _squarecb_choose(comp, combos, combo_mask, component_mask, params, seed, out_index,
                            out_score)


@njit(jit.i8(*_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.NOGIL)
def _squarecb_optimistic_kernel(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index,
    out_score
):
    """:func:`_squarecb_kernel` on optimistic scores: component ``c`` scores
    ``w_c·(μ_c·x + β·sqrt(v²·xᵀΣ_c x))`` (β = ``params[P_OPTIMISM]``, the Thompson draw's
    standard deviation β times), so a combination's score is its mean plus β times
    ``Σ_c w_c·sd_c`` — an upper bound on the standard deviation of its summed score, the
    components' posteriors being independent (``sqrt(Σ w_c² sd_c²) <= Σ w_c sd_c``).
    The probabilities are SquareCB's of these scores, so the logged propensity is exact."""
    comp = np.empty(mean_t.shape[1])
    sd = np.empty(mean_t.shape[1])
    _weighted_moments(mean_t, factor_t, x, weight, params, comp, sd)
    beta = params[P_OPTIMISM]
    for c in range(mean_t.shape[1]):
        comp[c] += beta * sd[c]
    return _squarecb_choose(comp, combos, combo_mask, component_mask, params, seed, out_index,
                            out_score)


@njit(jit.i8(*_MEAN_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.GIL)
def _squarecb_kernel_gil(
    mean_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index, out_score
):
    """:func:`_squarecb_kernel`, keeping the GIL (Decide's entry, see ``decide_trusted``)."""
    return _squarecb_kernel(mean_t, x, weight, combos, combo_mask, component_mask, params,
                            seed, out_index, out_score)


@njit(jit.i8(*_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.GIL)
def _squarecb_optimistic_kernel_gil(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index,
    out_score
):
    """:func:`_squarecb_optimistic_kernel`, keeping the GIL (as ``_squarecb_kernel_gil``)."""
    return _squarecb_optimistic_kernel(mean_t, factor_t, x, weight, combos, combo_mask,
                                       component_mask, params, seed, out_index, out_score)


@njit(jit.i8(*_SCORING, jit.i8, jit.i8_1d, jit.f8_2d), **jit.GIL)
def _thompson_kernel_gil(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index,
    out_score,
):
    """:func:`_thompson_kernel`, keeping the GIL (Decide's entry, see ``decide_trusted``)."""
    return _thompson_kernel(mean_t, factor_t, x, weight, combos, combo_mask, component_mask,
                            params, seed, out_index, out_score)


@njit(jit.i8(*_SCORING, jit.i8, jit.i8, jit.f8_1d_ro, jit.u4_2d_ro, jit.i8_1d_ro, jit.i8_1d_ro,
             jit.i8, jit.i8_1d), **jit.GIL)
def _thompson_win_counts_gil(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, chosen, mc,
    cells, group_start, cell_combo, nothing, out_wins,
):
    """:func:`_thompson_win_counts`, keeping the GIL (Decide's entry)."""
    return _thompson_win_counts(mean_t, factor_t, x, weight, combos, combo_mask,
                                component_mask, params, seed, chosen, mc, cells, group_start,
                                cell_combo, nothing, out_wins)


# Batch entries (DecideBatch): one call decides for a chunk of users, each row exactly as
# the single-user kernel decides it (Thompson's calls it; SquareCB's does its operations in
# its order, lane by lane: the same bits), with the GIL released for the whole chunk. Rows
# whose ``active`` is 0 (a guardrail decided) are skipped and their outputs left as they
# were.
_BATCH_ROWS = (jit.f8_2d_ro, jit.u1_2d_ro, jit.i8_1d_ro, jit.u1_1d_ro)
_BATCH_OUT = (jit.i8_2d, jit.f8_3d, jit.i8_1d)


@njit(jit.void(*_SCORING[:2], *_SCORING[3:6], jit.f8_1d_ro, *_BATCH_ROWS, *_BATCH_OUT),
      **jit.NOGIL)
def _squarecb_optimistic_batch(mean_t, factor_t, weight, combos, combo_mask, params, xs,
                               component_masks, seeds, active, out_index, out_score,
                               out_allowed):
    """:func:`_squarecb_optimistic_kernel` for every active row, one row at a time (the
    arguments and outputs of :func:`_squarecb_lanes`, plus ``factor_t``)."""
    for i in range(xs.shape[0]):
        if active[i]:
            out_allowed[i] = _squarecb_optimistic_kernel(
                mean_t, factor_t, xs[i], weight, combos, combo_mask, component_masks[i],
                params, seeds[i], out_index[i], out_score[i])


@njit(jit.void(*_SCORING[:2], *_SCORING[3:6], jit.f8_1d_ro, *_BATCH_ROWS, *_BATCH_OUT,
               jit.f8_1d_ro, jit.u4_2d_ro, jit.i8_1d_ro, jit.i8_1d_ro, jit.i8, jit.f8_1d,
               jit.i8_1d), **jit.NOGIL)
def _thompson_batch(mean_t, factor_t, weight, combos, combo_mask, params, xs, component_masks,
                    seeds, active, out_index, out_score, out_allowed, mc, cells, group_start,
                    cell_combo, nothing, out_propensity, out_samples):
    """:func:`_thompson_kernel` for every active row ``i`` (context ``xs[i]``, guardrail
    mask ``component_masks[i]``, seed ``seeds[i]`` into ``out_index[i]``, ``out_score[i]``
    and ``out_allowed[i]``, the kernel's return) and, when
    ``mc[MC_ROUND] > 0``, the own-draw Monte Carlo propensity of its choice from the
    decision's Monte Carlo stream (``_mc_seed``), as ``_decide`` computes it: NaN and 0
    samples otherwise."""
    wins = np.empty(combos.shape[0], dtype=np.int64)
    estimate = mc[MC_ROUND] > 0
    for i in range(xs.shape[0]):
        if not active[i]:
            continue
        n_allowed = _thompson_kernel(
            mean_t, factor_t, xs[i], weight, combos, combo_mask, component_masks[i], params,
            seeds[i], out_index[i], out_score[i])
        out_allowed[i] = n_allowed
        out_propensity[i] = np.nan
        out_samples[i] = 0
        if n_allowed == 0 or not estimate:
            continue
        choice = out_index[i, 0]
        draws = _thompson_win_counts(
            mean_t, factor_t, xs[i], weight, combos, combo_mask, component_masks[i], params,
            seeds[i] ^ _MC_SEED_MIX, choice, mc, cells, group_start, cell_combo, nothing, wins)
        out_propensity[i] = (wins[choice] + 1) / (draws + 1)
        out_samples[i] = draws + 1


# Users decided side by side by :func:`_squarecb_lanes`, one SIMD lane each. LLVM vectorises
# a lane loop 8 float64s wide, interleaved 4 times: a loop of 16 lanes ran in its scalar
# remainder (3,601 combinations, local: 18–20 µs a user at 16 lanes, 11–14 at 32 and at 64).
LANES = 32


@njit(jit.void(*_MEAN_SCORING[:1], *_MEAN_SCORING[2:5], jit.f8_1d_ro, *_BATCH_ROWS,
               *_BATCH_OUT), **jit.NOGIL_NUMPY_ERRORS)
def _squarecb_lanes(mean_t, weight, combos, combo_mask, params, xs, component_masks, seeds,
                    active, out_index, out_score, out_allowed):
    """:func:`_squarecb_kernel` for every active row ``i`` (context ``xs[i]``, guardrail mask
    ``component_masks[i]``, seed ``seeds[i]`` into ``out_index[i]``, ``out_score[i]`` and
    ``out_allowed[i]``, the kernel's return), ``LANES`` users at a time: every
    per-combination array is ``[combination, lane]``, so a combination's component ids
    are read once for ``LANES`` users and each step over the lanes is one vector
    instruction (a gather from the padded scores becomes a contiguous load).

    Each lane does its user's operations in :func:`_squarecb_kernel`'s order — the sums
    of a combination's components, the best by strict ``>`` in index order, the
    probabilities' ``rest`` and the inverse CDF's cumulative sum in index order — so each
    user gets the single kernel's bits (tests/kernels/test_policy_batch.py compares every
    row with ``decide_trusted``). Where the single kernel branches, a lane computes both
    sides and keeps its own: adding the ``+0.0`` a skipped combination contributes leaves a
    non-negative sum's bits unchanged, and a strict ``>`` against a best that starts at
    -inf is never true for a masked (-inf) combination. The numpy error model only drops
    the zero-divisor check: every divisor kept is >= 1 (``K + γ·gap``, ``K >= 1``).
    Rows whose ``active`` is 0 are skipped; a short last group repeats its last user in
    the spare lanes and writes nothing for them."""
    n_comp = mean_t.shape[1]
    n, width = combos.shape
    top = out_index.shape[1]
    n_dims = int(params[P_LOCAL_DIMS])
    local = params[P_LOCAL_DIMS] > 0
    multi = width > 1
    gamma_scale = params[P_GAMMA_SCALE]
    explore_all = params[P_EXPLORE_ALL]
    rows = np.flatnonzero(active)
    # A run-time width (not the constant): LLVM's loop vectoriser then keeps the lane loops
    # as loops and vectorises them (a constant 8 is unrolled first, and Numba leaves SLP
    # vectorisation off).
    lanes = min(LANES, rows.shape[0])
    comp = np.empty(n_comp)
    padded = np.empty((n_comp + 1, lanes))
    mean = np.empty((n, lanes))
    prob = np.empty((n, lanes))
    nothing = np.empty(n, dtype=np.bool_)  # one-component combinations (the nothing arm)
    for i in range(n):
        nothing[i] = multi and combos[i, 1] == n_comp
    members = np.empty((lanes, n), dtype=np.int64)  # local: each lane's neighbourhood
    member = np.empty(lanes, dtype=np.bool_)
    lane_row = np.empty(lanes, dtype=np.int64)
    best = np.empty(lanes, dtype=np.int64)
    best_score = np.empty(lanes)
    g = np.empty(lanes, dtype=np.int64)
    g_score = np.empty(lanes)
    n_allowed = np.empty(lanes, dtype=np.int64)
    n_local = np.empty(lanes, dtype=np.int64)
    gamma = np.empty(lanes)
    eps = np.empty(lanes)
    floor = np.empty(lanes)
    rest = np.empty(lanes)
    acc = np.empty(lanes)
    u = np.empty(lanes)
    choice = np.empty(lanes, dtype=np.int64)
    threshold = np.empty(lanes)
    ranked_score = np.empty((lanes, top))
    ranked = np.empty((lanes, top), dtype=np.int64)
    filled = np.empty(lanes, dtype=np.int64)
    gdims = np.empty((_CAMPAIGN_DIMS, lanes), dtype=np.uint32)
    for start in range(0, rows.shape[0], lanes):
        used = min(lanes, rows.shape[0] - start)
        for lane in range(lanes):
            r = rows[start + min(lane, used - 1)]
            lane_row[lane] = r
            _component_means(mean_t, xs[r], comp)
            for c in range(n_comp):
                comp[c] *= weight[c]
            kmask = component_masks[r]
            for c in range(n_comp):  # _padded_scores
                padded[c, lane] = comp[c] if kmask[c] != 0 else -np.inf
            padded[n_comp, lane] = 0.0
            best[lane] = -1
            best_score[lane] = -np.inf
            g[lane] = -1
            g_score[lane] = -np.inf
            n_allowed[lane] = 0
        # Scores; the best (and, local, the best multi-component) combination per lane.
        for i in range(n):
            if combo_mask[i] == 0:
                for lane in range(lanes):
                    mean[i, lane] = -np.inf
                continue
            if width == _CAMPAIGN_WIDTH:
                k0, k1, k2, k3 = combos[i, 0], combos[i, 1], combos[i, 2], combos[i, 3]
                k4, k5, k6 = combos[i, 4], combos[i, 5], combos[i, 6]
                for lane in range(lanes):
                    total = 0.0 + padded[k0, lane]
                    total += padded[k1, lane]
                    total += padded[k2, lane]
                    total += padded[k3, lane]
                    total += padded[k4, lane]
                    total += padded[k5, lane]
                    total += padded[k6, lane]
                    mean[i, lane] = total
            else:
                for lane in range(lanes):
                    mean[i, lane] = 0.0
                for j in range(width):
                    k = combos[i, j]
                    for lane in range(lanes):
                        mean[i, lane] += padded[k, lane]
            candidate = local and not nothing[i]
            for lane in range(lanes):  # selects, not branches: one vector step each
                total = mean[i, lane]
                n_allowed[lane] += 1 if total != -np.inf else 0
                better = total > best_score[lane]
                best_score[lane] = total if better else best_score[lane]
                best[lane] = i if better else best[lane]
                better = candidate and total > g_score[lane]
                g_score[lane] = total if better else g_score[lane]
                g[lane] = i if better else g[lane]
        if local:
            # The neighbourhood (its size sets γ), as _squarecb_kernel marks it.
            for lane in range(lanes):
                n_local[lane] = 0
                gl = g[lane]
                for d in range(_CAMPAIGN_DIMS):
                    gdims[d, lane] = combos[max(gl, 0), d] if width >= _CAMPAIGN_DIMS else 0
            written_out = n_dims == _CAMPAIGN_DIMS and multi and width >= _CAMPAIGN_DIMS
            for i in range(n):
                if written_out:
                    c0, c1, c2 = combos[i, 0], combos[i, 1], combos[i, 2]
                    c3, c4 = combos[i, 3], combos[i, 4]
                    arm = nothing[i]
                    hit = False
                    for lane in range(lanes):  # the flags in one vector pass ...
                        differ = ((c0 != gdims[0, lane]) + (c1 != gdims[1, lane])
                                  + (c2 != gdims[2, lane]) + (c3 != gdims[3, lane])
                                  + (c4 != gdims[4, lane]))
                        flag = (mean[i, lane] != -np.inf) & (arm | (g[lane] < 0)
                                                              | (differ <= 1))
                        member[lane] = flag
                        hit |= flag
                    if hit:  # ... the few members appended lane by lane
                        for lane in range(lanes):
                            if member[lane]:
                                members[lane, n_local[lane]] = i
                                n_local[lane] += 1
                else:
                    for lane in range(lanes):
                        if mean[i, lane] != -np.inf and _in_neighbourhood(
                                combos, n_comp, n_dims, g[lane], i):
                            members[lane, n_local[lane]] = i
                            n_local[lane] += 1
            for lane in range(lanes):
                gamma[lane] = gamma_scale * n_local[lane]
                eps[lane] = explore_all if n_local[lane] < n_allowed[lane] else 0.0
                floor[lane] = eps[lane] / max(n_allowed[lane], 1)
            # Allowed non-members: floor + (1 − ε)·0 = floor, the same bits.
            for i in range(n):
                for lane in range(lanes):
                    prob[i, lane] = floor[lane] if mean[i, lane] != -np.inf else 0.0
            for lane in range(lanes):
                if best[lane] < 0:
                    continue
                total_rest = 0.0
                b = best[lane]
                for m in range(n_local[lane]):
                    i = members[lane, m]
                    if i == b:
                        continue
                    q = 1.0 / (n_local[lane] + gamma[lane] * (mean[b, lane] - mean[i, lane]))
                    total_rest += q
                    prob[i, lane] = floor[lane] + (1.0 - eps[lane]) * q
                prob[b, lane] = floor[lane] + (1.0 - eps[lane]) * max(1.0 - total_rest, 0.0)
        else:
            for lane in range(lanes):
                gamma[lane] = gamma_scale * n_allowed[lane]
                rest[lane] = 0.0
            for i in range(n):
                for lane in range(lanes):
                    m = mean[i, lane]
                    p = 1.0 / (n_allowed[lane] + gamma[lane] * (best_score[lane] - m))
                    keep = m != -np.inf and i != best[lane]
                    p = p if keep else 0.0
                    prob[i, lane] = p
                    rest[lane] += p
            for lane in range(lanes):
                if best[lane] >= 0:
                    prob[best[lane], lane] = max(1.0 - rest[lane], 0.0)
        # The draw: inverse CDF over the allowed combinations in index order (a masked
        # one's probability is +0.0: the sum and the first index past u stay the same).
        for lane in range(lanes):
            u[lane] = uniform(rng_state(seeds[lane_row[lane]]))
            acc[lane] = 0.0
            choice[lane] = n
        for i in range(n):
            for lane in range(lanes):
                acc[lane] += prob[i, lane]
                first = (u[lane] < acc[lane]) & (choice[lane] == n)
                choice[lane] = i if first else choice[lane]
        # The best others by mean score: insert_ranked, entered only when a lane's score
        # beats its current last (-inf until ``top`` are ranked: "filled < top").
        for lane in range(lanes):
            filled[lane] = 0
            threshold[lane] = -np.inf
        for i in range(n):
            hit = False
            for lane in range(lanes):
                hit |= mean[i, lane] > threshold[lane]
            if not hit:
                continue
            for lane in range(lanes):
                if mean[i, lane] > threshold[lane]:
                    filled[lane] = insert_ranked(ranked_score[lane], ranked[lane],
                                                 filled[lane], mean[i, lane], i)
                    if filled[lane] == top:
                        threshold[lane] = ranked_score[lane, top - 1]
        for lane in range(used):
            r = lane_row[lane]
            out_allowed[r] = n_allowed[lane] if best[lane] >= 0 else 0
            if best[lane] < 0:
                continue
            c = choice[lane] if choice[lane] < n else best[lane]
            out_index[r, 0] = c
            out_score[r, 0, 0] = prob[c, lane]
            out_score[r, 1, 0] = mean[c, lane]
            k = 1
            for t in range(filled[lane]):
                if k == top:
                    break
                i = ranked[lane, t]
                if i == c:
                    continue
                out_index[r, k] = i
                out_score[r, 0, k] = prob[i, lane]
                out_score[r, 1, k] = mean[i, lane]
                k += 1


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class PolicyParams:
    """Policy configuration (all passed to kernels as arguments).

    ``noise_variance`` v² scales every posterior variance: 0 is greedy on the mean, larger
    explores more. ``gamma_scale``: SquareCB's γ is ``gamma_scale * n_allowed``. Monte Carlo
    propensity: rounds of ``mc_samples`` draws, up to ``mc_max_samples``, stopping once the
    chosen combination has won ``mc_min_wins`` times. ``local_dims`` > 0 makes SquareCB
    local (see ``_local_probabilities``: the greedy combination's one-dimension neighbours,
    ``local_dims`` the number of dimensions) with ``explore_all`` spread over everything.
    ``optimism`` β > 0 makes SquareCB score each combination by an upper confidence bound,
    its mean plus β times ``Σ_c w_c·sd_c`` (:func:`_squarecb_optimistic_kernel`), where
    ``sd_c`` is component c's posterior standard deviation at ``x`` as Thompson draws it.
    """

    mode: str = MODE_SQUARECB
    noise_variance: float = 0.05
    gamma_scale: float = 50.0
    local_dims: int = 0
    explore_all: float = 0.02
    mc_samples: int = 32
    mc_max_samples: int = 32
    mc_min_wins: int = 0
    optimism: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in (MODE_THOMPSON, MODE_SQUARECB):
            raise ValueError(
                f"mode: must be {MODE_THOMPSON!r} or {MODE_SQUARECB!r}, got {self.mode!r}"
            )
        if not (np.isfinite(self.noise_variance) and self.noise_variance >= 0.0):
            raise ValueError(f"noise_variance: must be finite and >= 0, "
                             f"got {self.noise_variance!r}")
        if not (np.isfinite(self.gamma_scale) and self.gamma_scale >= 0.0):
            raise ValueError(f"gamma_scale: must be finite and >= 0, got {self.gamma_scale!r}")
        if self.mc_samples < 0 or self.mc_max_samples < self.mc_samples:
            raise ValueError(
                "mc_samples, mc_max_samples: need 0 <= mc_samples <= mc_max_samples, got "
                f"{self.mc_samples}, {self.mc_max_samples}"
            )
        if self.mc_min_wins < 0:
            raise ValueError(f"mc_min_wins: must be >= 0, got {self.mc_min_wins}")
        # Built once: the kernels' parameter arrays (read-only, shared by every call).
        if not (np.isfinite(self.optimism) and self.optimism >= 0.0):
            raise ValueError(f"optimism: must be finite and >= 0, got {self.optimism!r}")
        if self.local_dims < 0:
            raise ValueError(f"local_dims: must be >= 0, got {self.local_dims}")
        if not 0.0 <= self.explore_all <= 1.0:
            raise ValueError(f"explore_all: must be in [0, 1], got {self.explore_all!r}")
        object.__setattr__(self, "_array", readonly(np.array(
            [self.noise_variance, self.gamma_scale, self.explore_all, float(self.local_dims),
             self.optimism])))
        object.__setattr__(self, "_mc_array", readonly(np.array(
            [self.mc_samples, self.mc_max_samples, self.mc_min_wins], dtype=np.float64)))

    def as_array(self) -> np.ndarray:
        """``[noise_variance, gamma_scale, explore_all, local_dims, optimism]`` (``P_*``)."""
        return self._array  # type: ignore[attr-defined]

    def mc_array(self) -> np.ndarray:
        """``[mc_samples, mc_max_samples, mc_min_wins]`` (indices ``MC_*``)."""
        return self._mc_array  # type: ignore[attr-defined]


@dataclass(frozen=True)
class PolicyChoice:
    """One decision. ``top_k[0] == choice``; ``scores`` are the ranking scores of ``top_k``
    (Thompson: sampled; SquareCB: probabilities), ``mean_scores`` their posterior-mean
    scores. ``propensity`` is the probability the policy had of choosing ``choice``, in
    (0, 1]: exact for SquareCB, for Thompson the own-draw Monte Carlo estimate over
    ``propensity_samples`` draws, the decision's own included (``nan`` and 0 when not
    estimated). ``n_allowed`` counts the allowed combinations."""

    choice: int
    top_k: np.ndarray
    scores: np.ndarray
    mean_scores: np.ndarray
    propensity: float
    propensity_samples: int
    n_allowed: int
    seed: int


# The shipped policy: what a campaign without an [exploration] table runs (its defaults are
# these), what README "Decisions" documents and what ``nudge bench quality`` measures.
DEFAULT_POLICY = PolicyParams()
# A campaign's SquareCB reads the means by default (``[exploration] optimism = 0``). With the
# shared intercept the bonus lifted decisions 5,000-10,000 on the world family's tuning
# seeds (β = 0.5: +0.055 +- 0.013) and kept bench/policy_sim.py's arms tried (β = 1: 0.898,
# the intercept alone 0.868), but the held-out seeds did not improve (the types world lost):
# README "Does it learn?", 2026-12-03 exploration round.
DEFAULT_OPTIMISM = 0.0


def decide(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    seed: int,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    top_k: int = 3,
    params: PolicyParams | None = None,
    propensity: bool = True,
) -> PolicyChoice:
    """Choose a combination for one context.

    ``context[d]`` float64 (``x[0] == 1``, see ``nudge.kernels.context``); ``seed`` any
    64-bit integer (log it: it replays the decision); ``component_mask[C]`` the request's
    guardrails (1 = allowed); ``combo_mask`` replaces the campaign's mask for this call.
    With ``propensity=False`` a Thompson decision skips the Monte Carlo estimate (call
    :func:`thompson_propensity` later with the same arguments).
    """
    params = params or PolicyParams()
    x, cmask, kmask, seed = _request(snapshot, space, context, seed, component_mask, combo_mask)
    if not 1 <= top_k <= MAX_TOP_K:
        raise ValueError(f"top_k: must be in [1, {MAX_TOP_K}], got {top_k}")
    return _decide(snapshot, space, x, cmask, kmask, seed, top_k, params, propensity)


def decide_trusted(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    seed: int,
    component_mask: np.ndarray,
    top_k: int,
    params: PolicyParams,
) -> PolicyChoice:
    """:func:`decide` (with its propensity, the campaign's combo mask) without the checks,
    for callers that built every input themselves — Decide, where each checked call shows
    in the latency: ``snapshot`` and ``space`` from one campaign, ``context`` finite float64
    C-contiguous ``[d]``, ``seed`` in int64 range, ``component_mask`` uint8 C-contiguous
    ``[C]``, ``1 <= top_k <= MAX_TOP_K``. Anything else is undefined.

    Its kernels keep the GIL (``jit.GIL`` entries of the same compiled code): a policy call
    of tens of microseconds that releases it while another thread runs Python (the decision
    flusher, grpc's poller, the learner) waits for that thread's switch interval to get it
    back, which lands on the reply; in process, Decide3600.squarecb's policy call took 50 µs
    of CPU but 94 µs of wall time with the GIL released (3,500 calls)."""
    return _decide(snapshot, space, context, space.combo_mask, component_mask, seed, top_k,
                   params, True, True)


def _decide(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    x: np.ndarray,
    cmask: np.ndarray,
    kmask: np.ndarray,
    seed: int,
    top_k: int,
    params: PolicyParams,
    propensity: bool,
    keep_gil: bool = False,
) -> PolicyChoice:
    out_index = np.empty(top_k, dtype=np.int64)
    out_score = np.empty((2, top_k))
    kparams = params.as_array()
    if params.mode == MODE_THOMPSON:
        thompson = _thompson_kernel_gil if keep_gil else _thompson_kernel
        n_allowed = thompson(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                                     space.kernel_components, cmask, kmask, kparams, seed,
                                     out_index, out_score)
    elif params.optimism > 0.0:
        optimistic = _squarecb_optimistic_kernel_gil if keep_gil else _squarecb_optimistic_kernel
        n_allowed = optimistic(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                               space.kernel_components, cmask, kmask, kparams, seed, out_index,
                               out_score)
    else:
        squarecb = _squarecb_kernel_gil if keep_gil else _squarecb_kernel
        n_allowed = squarecb(snapshot.mean_t, x, space.component_weight,
                                     space.kernel_components, cmask, kmask, kparams, seed,
                                     out_index, out_score)
    if n_allowed == 0:
        raise ValueError("combo_mask, component_mask: no combination is allowed (every "
                         "combination is masked by the campaign or the request's guardrails)")
    filled = min(n_allowed, top_k)
    choice = int(out_index[0])
    prop, samples = float("nan"), 0
    if params.mode == MODE_SQUARECB:
        prop, samples = float(out_score[0, 0]), 0
    elif propensity and params.mc_samples > 0:
        wins, draws = _win_counts(snapshot, space, x, cmask, kmask, kparams,
                                  _mc_seed(seed), choice, params, keep_gil)
        prop, samples = own_draw_propensity(int(wins[choice]), draws), draws + 1
    return PolicyChoice(choice=choice, top_k=out_index[:filled], scores=out_score[0, :filled],
                        mean_scores=out_score[1, :filled], propensity=prop,
                        propensity_samples=samples, n_allowed=int(n_allowed), seed=seed)


@dataclass(frozen=True)
class BatchChoices:
    """Decisions for a chunk of contexts (:func:`decide_batch_trusted`), row ``i`` what
    :func:`decide_trusted` returns for context ``i``: ``top_k[i, :filled[i]]`` (the choice
    first), ``scores[i, 0 / 1, :filled[i]]`` (ranking / mean scores), ``propensity[i]``,
    ``propensity_samples[i]``, ``n_allowed[i]``. Inactive rows are undefined."""

    top_k: np.ndarray
    scores: np.ndarray
    n_allowed: np.ndarray
    filled: np.ndarray
    propensity: np.ndarray
    propensity_samples: np.ndarray


def decide_batch_trusted(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    contexts: np.ndarray,
    seeds: np.ndarray,
    component_masks: np.ndarray,
    active: np.ndarray,
    top_k: int,
    params: PolicyParams,
    threads: int = 1,
) -> BatchChoices:
    """:func:`decide_trusted` for each active row of ``contexts[n, d]`` (read-only finite
    float64, C-contiguous) with ``seeds[n]`` (read-only int64), ``component_masks[n, C]``
    (read-only uint8) and ``active[n]`` (read-only uint8, 0: skip the row), in one kernel
    call that releases the GIL: DecideBatch's per-user policy call, whose Python around a
    ~25 µs kernel cost as much again. Each row is bit for bit what the single call gives
    (tests/kernels/test_policy_batch.py checks it on random inputs); SquareCB's batch
    kernel decides ``LANES`` users side by side, about 3× less CPU a user than its single
    kernel at 3,601 combinations (local: 38–42 → 11–14 µs, global: 25–27 → 9.5–11 at load
    ~6). ``threads`` > 1 splits the rows into that many contiguous parts decided side by
    side (rows are independent: the same bits). Raises ValueError when an active row has
    nothing allowed, as :func:`decide_trusted` does."""
    n = contexts.shape[0]
    out_index = np.zeros((n, top_k), dtype=np.int64)
    out_score = np.zeros((n, 2, top_k))
    n_allowed = np.zeros(n, dtype=np.int64)
    propensity = np.full(n, np.nan)
    samples = np.zeros(n, dtype=np.int64)
    kparams = params.as_array()
    thompson = params.mode == MODE_THOMPSON

    def rows(a: int, b: int) -> None:
        if thompson:
            _thompson_batch(snapshot.mean_t, snapshot.factor_t, space.component_weight,
                            space.kernel_components, space.combo_mask, kparams, contexts[a:b],
                            component_masks[a:b], seeds[a:b], active[a:b], out_index[a:b],
                            out_score[a:b], n_allowed[a:b], params.mc_array(),
                            space.cell_components, space.group_start, space.cell_combo,
                            space.nothing_combo, propensity[a:b], samples[a:b])
        elif params.optimism > 0.0:
            _squarecb_optimistic_batch(snapshot.mean_t, snapshot.factor_t,
                                       space.component_weight, space.kernel_components,
                                       space.combo_mask, kparams, contexts[a:b],
                                       component_masks[a:b], seeds[a:b], active[a:b],
                                       out_index[a:b], out_score[a:b], n_allowed[a:b])
        else:
            _squarecb_lanes(snapshot.mean_t, space.component_weight, space.kernel_components,
                            space.combo_mask, kparams, contexts[a:b], component_masks[a:b],
                            seeds[a:b], active[a:b], out_index[a:b], out_score[a:b],
                            n_allowed[a:b])

    parts = max(1, min(threads, n // MIN_ROWS_PER_THREAD))
    if parts == 1:
        rows(0, n)
    else:
        bounds = [n * p // parts for p in range(parts + 1)]
        others = [_pool(parts - 1).submit(rows, bounds[p], bounds[p + 1])
                  for p in range(1, parts)]
        rows(bounds[0], bounds[1])
        for other in others:
            other.result()
    if not thompson:
        propensity = out_score[:, 0, 0].copy()
    if (n_allowed[active.view(bool)] == 0).any():
        raise ValueError("combo_mask, component_mask: no combination is allowed (every "
                         "combination is masked by the campaign or the request's guardrails)")
    return BatchChoices(top_k=out_index, scores=out_score, n_allowed=n_allowed,
                        filled=np.minimum(n_allowed, top_k), propensity=propensity,
                        propensity_samples=samples)


# A part of a split batch has at least this many rows (a thread hand-off costs tens of µs).
MIN_ROWS_PER_THREAD = 32
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()
os.register_at_fork(after_in_child=_POOLS.clear)  # a forked child has none of the threads


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads for split batches (made on first use)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(workers)
        if pool is None:
            pool = _POOLS[workers] = ThreadPoolExecutor(workers, "nudge-policy-batch")
        return pool


def thompson_propensity(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    seed: int,
    choice: int,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    params: PolicyParams | None = None,
) -> tuple[float, int]:
    """The logged propensity of ``choice``, the combination the Thompson decision with this
    ``seed`` chose: ``((wins + 1) / (draws + 1), draws + 1)`` over re-draws from a stream
    derived from the seed, the decision's own draw counted (see the module docstring)."""
    wins, draws = _checked_win_counts(snapshot, space, context, seed, choice, component_mask,
                                      combo_mask, params)
    return own_draw_propensity(int(wins[choice]), draws), draws + 1


def own_draw_propensity(wins: int, draws: int) -> float:
    """``(wins + 1) / (draws + 1)``: the chosen combination's share of the re-draws with the
    decision's own (winning) draw counted; in ``[1/(draws + 1), 1]``, never 0."""
    return (wins + 1) / (draws + 1)


# --------------------------------------------------------------------------- helpers


_U64 = (1 << 64) - 1


def _mc_seed(seed: int) -> int:
    """A separate stream for the Monte Carlo re-draws, derived from the decision's seed."""
    mixed = (seed & _U64) ^ _MC_SEED_MIX  # as int64(uint64(seed) ^ constant), in ints
    return mixed - (1 << 64) if mixed >> 63 else mixed


def _request(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: object,
    seed: object,
    component_mask: object,
    combo_mask: object,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    if snapshot.n_components != space.n_components:
        raise ValueError(f"snapshot: has {snapshot.n_components} components, the action space "
                         f"{space.n_components}; build both from the same campaign")
    x = float_vector(context, "context", snapshot.n_features)
    cmask = space.combo_mask if combo_mask is None else mask_array(combo_mask, "combo_mask",
                                                                   space.n_combos)
    if component_mask is None:
        kmask = _ALL_ALLOWED.get(space.n_components)
        if kmask is None:
            kmask = readonly(np.ones(space.n_components, dtype=np.uint8))
            _ALL_ALLOWED[space.n_components] = kmask
    else:
        kmask = mask_array(component_mask, "component_mask", space.n_components)
    return x, cmask, kmask, as_seed(seed)


_ALL_ALLOWED: dict[int, np.ndarray] = {}


def _checked_win_counts(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: object,
    seed: object,
    choice: int,
    component_mask: object,
    combo_mask: object,
    params: PolicyParams | None,
) -> tuple[np.ndarray, int]:
    """Win counts of every combination over the Monte Carlo re-draws (they sum to the number
    of draws, over allowed combinations only) and the number of draws, after checking the
    inputs; ``choice = -1`` disables early stopping."""
    params = params or PolicyParams()
    x, cmask, kmask, seed = _request(snapshot, space, context, seed, component_mask, combo_mask)
    if not -1 <= choice < space.n_combos:
        raise ValueError(f"choice: must be a combination index, got {choice}")
    if params.mc_samples < 1:
        raise ValueError("params.mc_samples: must be >= 1 to estimate a propensity")
    wins, draws = _win_counts(snapshot, space, x, cmask, kmask, params.as_array(),
                              _mc_seed(seed), choice, params)
    if draws == 0:
        raise ValueError("combo_mask, component_mask: no combination is allowed")
    return wins, draws


def _win_counts(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    x: np.ndarray,
    cmask: np.ndarray,
    kmask: np.ndarray,
    kparams: np.ndarray,
    seed: int,
    choice: int,
    params: PolicyParams,
    keep_gil: bool = False,
) -> tuple[np.ndarray, int]:
    wins = np.empty(space.n_combos, dtype=np.int64)
    count = _thompson_win_counts_gil if keep_gil else _thompson_win_counts
    draws = count(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                  space.kernel_components, cmask, kmask, kparams, seed, choice,
                  params.mc_array(), space.cell_components, space.group_start,
                  space.cell_combo, space.nothing_combo, wins)
    return wins, int(draws)


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING): both modes of
    :func:`decide`, with a Monte Carlo propensity, and of :func:`decide_trusted` (the
    GIL-keeping entries) reach every kernel here."""
    space = build_action_space((2, 2), pairs=((0, 1),))
    snap = initial_snapshot(space.n_components, 2)
    x = np.array([1.0, 0.5])
    mask = np.ones(space.n_components, dtype=np.uint8)
    for mode in (MODE_THOMPSON, MODE_SQUARECB):
        params = PolicyParams(mode=mode, mc_samples=4, mc_max_samples=4)
        decide(snap, space, x, 1, top_k=2, params=params)
        decide_trusted(snap, space, x, 1, mask, 2, params)

