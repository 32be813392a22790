"""The decision policy: score every allowed combination, explore, choose, rank, log propensity.

Action space. A campaign's combinations are rows of an int32 matrix
``combo_components[n_combos, k]`` of *component* ids, -1 padded at the end of a row. A
component is one dimension value (message 3, channel "sms", …), one pairwise cell
(channel × send time, message × offer) or the "send nothing" arm, which is a combination of
its own (one component, the rest padding). The kernels never know what a component means, so
they are generic over dimensions and pairs; :func:`build_action_space` builds the standard
layout.

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
(unscaled γ stays near uniform with thousands of actions).

Masks. ``combo_mask[n_combos]`` (uint8 or bool, 1 = allowed) is what the campaign allows;
``component_mask[C]`` is the per-request guardrail: a combination is allowed only if every
one of its components is (no consent for SMS → mask the SMS component; quiet hours → mask
the slot).

Randomness is a 64-bit ``seed`` per call (xoshiro256** seeded by splitmix64, no global
state, so threads calling the nogil kernels never share a generator): the same inputs and
seed give the same choice, and logging the seed makes a decision replayable.

Model. Deciders read one :class:`~nudge.kernels.learner.PolicySnapshot` (read-only arrays,
validated once when built); the learner publishes a new snapshot instead of writing into the
one being read, so a decision never sees a half-applied update. Per request only the context
and masks are validated.

A Monte Carlo propensity of 0 means "below 1/draws": the chosen combination won none of the
re-draws (rare choices under a confident posterior). Raise ``mc_max_samples`` with
``mc_min_wins`` to resolve such choices, or clip in off-policy evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numba import njit, types

from nudge.kernels.learner import PolicySnapshot

MODE_THOMPSON = "thompson"
MODE_SQUARECB = "squarecb"

# Layout of the policy parameter array handed to kernels.
P_NOISE_VARIANCE = 0  # v²: scales the posterior covariance (exploration strength)
P_GAMMA_SCALE = 1  # SquareCB: γ = gamma_scale * n_allowed
N_POLICY_PARAMS = 2

# Layout of the Monte Carlo parameter array.
MC_ROUND = 0  # draws per round
MC_MAX_DRAWS = 1  # stop after this many draws …
MC_MIN_WINS = 2  # … or as soon as the chosen combination has won this often
N_MC_PARAMS = 3

MAX_TOP_K = 64

_f64_1 = types.Array(types.float64, 1, "C")
_f64_2 = types.Array(types.float64, 2, "C")
_i64_1 = types.Array(types.int64, 1, "C")
_f64_1_ro = types.Array(types.float64, 1, "C", readonly=True)
_f64_2_ro = types.Array(types.float64, 2, "C", readonly=True)
_u32_2_ro = types.Array(types.uint32, 2, "C", readonly=True)
_i32_1_ro = types.Array(types.int32, 1, "C", readonly=True)
_u8_1_ro = types.Array(types.uint8, 1, "C", readonly=True)
_u64_1 = types.Array(types.uint64, 1, "C")

_KERNEL = {"cache": True, "nogil": True}

# --------------------------------------------------------------------------- RNG

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(_u64_1(types.int64), **_KERNEL)
def _rng_state(seed):
    """xoshiro256** state from a 64-bit seed via splitmix64."""
    state = np.empty(4, dtype=np.uint64)
    z = np.uint64(seed)
    for i in range(4):
        z = z + _GOLDEN
        y = z
        y = (y ^ (y >> np.uint64(30))) * _MIX1
        y = (y ^ (y >> np.uint64(27))) * _MIX2
        state[i] = y ^ (y >> np.uint64(31))
    return state


@njit(types.uint64(_u64_1), **_KERNEL)
def _next_u64(s):
    s1 = s[1]
    r = s1 * np.uint64(5)
    r = ((r << np.uint64(7)) | (r >> np.uint64(57))) * np.uint64(9)
    t = s1 << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s1
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = (s[3] << np.uint64(45)) | (s[3] >> np.uint64(19))
    return r


@njit(types.float64(_u64_1), **_KERNEL)
def _uniform(s):
    """Uniform on [0, 1) with 53 random bits."""
    return float(_next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(types.void(_u64_1, _f64_1), **_KERNEL)
def _fill_normals(s, out):
    """Standard normals by the Marsaglia polar method, in pairs."""
    n = out.shape[0]
    i = 0
    while i < n:
        u = 2.0 * _uniform(s) - 1.0
        v = 2.0 * _uniform(s) - 1.0
        q = u * u + v * v
        if q >= 1.0 or q == 0.0:
            continue
        f = np.sqrt(-2.0 * np.log(q) / q)
        out[i] = u * f
        if i + 1 < n:
            out[i + 1] = v * f
        i += 2


@njit(_f64_1(types.int64, types.int64), **_KERNEL)
def _standard_normals(seed, n):
    out = np.empty(n)
    _fill_normals(_rng_state(seed), out)
    return out


# --------------------------------------------------------------------------- kernels


@njit(types.void(_f64_2_ro, _f64_1_ro, _f64_1), **_KERNEL)
def _component_means(mean_t, x, out_mean):
    """``out_mean[c] = μ_c·x`` for every component (``mean_t`` is feature-major)."""
    d, n_comp = mean_t.shape
    for c in range(n_comp):
        out_mean[c] = 0.0
    for j in range(d):
        xj = x[j]
        for c in range(n_comp):
            out_mean[c] += mean_t[j, c] * xj


@njit(types.void(_f64_2_ro, _f64_2_ro, _f64_1_ro, _f64_1, _f64_1), **_KERNEL)
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


@njit(types.void(_f64_1_ro, _u8_1_ro, _f64_1), **_KERNEL)
def _padded_scores(comp_score, component_mask, out):
    """``out[:C]`` = component scores with -inf where the request masks the component,
    ``out[C]`` = 0.0 (the slot padding ids point at): summing a combination's entries then
    needs no branch per component, and a masked combination sums to -inf."""
    n_comp = comp_score.shape[0]
    for c in range(n_comp):
        out[c] = comp_score[c] if component_mask[c] != 0 else -np.inf
    out[n_comp] = 0.0


@njit(types.float64(_f64_1_ro, _u32_2_ro, types.int64), **_KERNEL)
def _combo_score(padded, combos, i):
    total = 0.0
    for j in range(combos.shape[1]):
        total += padded[combos[i, j]]
    return total


@njit(types.int64(_f64_1_ro, _u32_2_ro, _u8_1_ro, _i64_1, _f64_1), **_KERNEL)
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
        if filled == top and not total > out_score[top - 1]:
            continue
        pos = filled if filled < top else top - 1
        while pos > 0 and total > out_score[pos - 1]:
            out_score[pos] = out_score[pos - 1]
            out_index[pos] = out_index[pos - 1]
            pos -= 1
        out_score[pos] = total
        out_index[pos] = i
        if filled < top:
            filled += 1
    return n_allowed


@njit(
    types.int64(
        _f64_2_ro, _f64_2_ro, _f64_1_ro, _f64_1_ro, _u32_2_ro, _u8_1_ro, _u8_1_ro,
        _f64_1_ro, _f64_1_ro, _i64_1, _f64_2,
    ),
    **_KERNEL,
)
def _thompson_from_draws(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, z, out_index,
    out_score,
):
    """Thompson step given the standard-normal draws ``z[C]``: fills ``out_index`` with the
    choice and alternatives, ``out_score[0]`` their sampled and ``out_score[1]`` their mean
    scores. Returns the number of allowed combinations (0 = nothing allowed)."""
    n_comp = mean_t.shape[1]
    mean = np.empty(n_comp)
    quad = np.empty(n_comp)
    _component_moments(mean_t, factor_t, x, mean, quad)
    v2 = params[P_NOISE_VARIANCE]
    sampled = np.empty(n_comp)
    for c in range(n_comp):
        mean[c] *= weight[c]
        sampled[c] = mean[c] + weight[c] * np.sqrt(v2 * quad[c]) * z[c]
    padded = np.empty(n_comp + 1)
    _padded_scores(sampled, component_mask, padded)
    top_score = np.empty(out_index.shape[0])
    n_allowed = _top_k_combos(padded, combos, combo_mask, out_index, top_score)
    _padded_scores(mean, component_mask, padded)
    for t in range(min(n_allowed, out_index.shape[0])):
        out_score[0, t] = top_score[t]
        out_score[1, t] = _combo_score(padded, combos, out_index[t])
    return n_allowed


@njit(
    types.int64(
        _f64_2_ro, _f64_2_ro, _f64_1_ro, _f64_1_ro, _u32_2_ro, _u8_1_ro, _u8_1_ro,
        _f64_1_ro, types.int64, _i64_1, _f64_2,
    ),
    **_KERNEL,
)
def _thompson_kernel(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index,
    out_score,
):
    """Thompson step drawing its normals from ``seed`` (see :func:`_thompson_from_draws`)."""
    z = np.empty(mean_t.shape[1])
    _fill_normals(_rng_state(seed), z)
    return _thompson_from_draws(
        mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, z, out_index,
        out_score,
    )


@njit(
    types.int64(
        _f64_2_ro, _f64_2_ro, _f64_1_ro, _f64_1_ro, _u32_2_ro, _u8_1_ro, _u8_1_ro,
        _f64_1_ro, types.int64, types.int64, _f64_1_ro, _i64_1,
    ),
    **_KERNEL,
)
def _thompson_win_counts(
    mean_t, factor_t, x, weight, combos, combo_mask, component_mask, params, seed, chosen, mc,
    out_wins,
):
    """Re-draw the Thompson scores and count argmax winners into ``out_wins[n_combos]``
    (zeroed here). Draws come in rounds of ``mc[MC_ROUND]`` until ``mc[MC_MAX_DRAWS]`` draws,
    or until ``chosen`` (if >= 0) has won ``mc[MC_MIN_WINS]`` times. Returns the number of
    draws (0 = nothing allowed).

    Exact pruning: in a round whose draws all satisfy ``|z| <= Z``, combination ``i`` scores
    within ``m_i ± Z·S_i`` (``S_i`` = sum of its components' |w|·sd), so only combinations
    whose upper bound reaches the best lower bound can win; the others are skipped. The
    winners are the same as scoring every combination (ties: lower index, as in decide).
    """
    n_comp = mean_t.shape[1]
    n = combos.shape[0]
    for i in range(n):
        out_wins[i] = 0
    mean = np.empty(n_comp)
    quad = np.empty(n_comp)
    _component_moments(mean_t, factor_t, x, mean, quad)
    v2 = params[P_NOISE_VARIANCE]
    sd = np.empty(n_comp)
    for c in range(n_comp):
        mean[c] *= weight[c]
        sd[c] = weight[c] * np.sqrt(v2 * quad[c])
    padded_mean = np.empty(n_comp + 1)
    _padded_scores(mean, component_mask, padded_mean)
    spread = np.empty(n_comp + 1)
    for c in range(n_comp):
        spread[c] = abs(sd[c])
    spread[n_comp] = 0.0
    allowed = np.empty(n, dtype=np.int64)
    m_allowed = np.empty(n)
    s_allowed = np.empty(n)
    n_allowed = 0
    for i in range(n):
        if combo_mask[i] == 0:
            continue
        total = _combo_score(padded_mean, combos, i)
        if total == -np.inf:
            continue
        allowed[n_allowed] = i
        m_allowed[n_allowed] = total
        s_allowed[n_allowed] = _combo_score(spread, combos, i)
        n_allowed += 1
    if n_allowed == 0:
        return 0
    per_round = max(int(mc[MC_ROUND]), 1)
    max_draws = max(int(mc[MC_MAX_DRAWS]), per_round)
    min_wins = int(mc[MC_MIN_WINS])
    rng = _rng_state(seed)
    z = np.empty(per_round * n_comp)
    cand = np.empty(n_allowed, dtype=np.int64)
    sampled = np.empty(n_comp + 1)
    sampled[n_comp] = 0.0
    draws = 0
    while draws < max_draws:
        this_round = min(per_round, max_draws - draws)
        zr = z[: this_round * n_comp]
        _fill_normals(rng, zr)
        zmax = 0.0
        for t in range(zr.shape[0]):
            if abs(zr[t]) > zmax:
                zmax = abs(zr[t])
        floor = -np.inf
        for a in range(n_allowed):
            lo = m_allowed[a] - zmax * s_allowed[a]
            if lo > floor:
                floor = lo
        n_cand = 0
        for a in range(n_allowed):
            if m_allowed[a] + zmax * s_allowed[a] >= floor:
                cand[n_cand] = allowed[a]
                n_cand += 1
        for r in range(this_round):
            base = r * n_comp
            for c in range(n_comp):  # masked components never matter: no candidate has one
                sampled[c] = mean[c] + sd[c] * zr[base + c]
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


@njit(
    types.int64(
        _f64_2_ro, _f64_1_ro, _f64_1_ro, _u32_2_ro, _u8_1_ro, _u8_1_ro, _f64_1_ro, _f64_1,
        _f64_1,
    ),
    **_KERNEL,
)
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


@njit(
    types.int64(
        _f64_2_ro, _f64_1_ro, _f64_1_ro, _u32_2_ro, _u8_1_ro, _u8_1_ro, _f64_1_ro,
        types.int64, _i64_1, _f64_2,
    ),
    **_KERNEL,
)
def _squarecb_kernel(
    mean_t, x, weight, combos, combo_mask, component_mask, params, seed, out_index, out_score
):
    """SquareCB step: ``out_index[0]`` the sampled choice, then the best other combinations
    by mean score; ``out_score[0]`` their probabilities, ``out_score[1]`` their mean scores.
    Returns the number of allowed combinations."""
    n = combos.shape[0]
    mean = np.empty(n)
    prob = np.empty(n)
    best = _squarecb_probabilities(
        mean_t, x, weight, combos, combo_mask, component_mask, params, mean, prob
    )
    if best < 0:
        return 0
    u = _uniform(_rng_state(seed))
    choice = -1
    acc = 0.0
    n_allowed = 0
    for i in range(n):  # inverse CDF over the allowed combinations, in index order
        if mean[i] == -np.inf:
            continue
        n_allowed += 1
        acc += prob[i]
        if choice < 0 and u < acc:
            choice = i
    if choice < 0:  # u landed in the rounding gap above the last cumulative sum
        choice = best
    top = out_index.shape[0]
    out_index[0] = choice
    out_score[0, 0] = prob[choice]
    out_score[1, 0] = mean[choice]
    filled = 1
    for i in range(n):  # the best others by mean score, descending, lower index first
        if i == choice or mean[i] == -np.inf:
            continue
        s = mean[i]
        if filled == top and not s > out_score[1, top - 1]:
            continue
        pos = filled if filled < top else top - 1
        while pos > 1 and s > out_score[1, pos - 1]:
            out_index[pos] = out_index[pos - 1]
            out_score[1, pos] = out_score[1, pos - 1]
            pos -= 1
        out_index[pos] = i
        out_score[1, pos] = s
        if filled < top:
            filled += 1
    for t in range(1, filled):
        out_score[0, t] = prob[out_index[t]]
    return n_allowed


@njit(
    types.int64(_f64_2_ro, _f64_1_ro, _f64_1_ro, _i32_1_ro, _i64_1, _i64_1, _f64_1),
    **_KERNEL,
)
def _top_feature_terms(mean_t, x, weight, row, out_component, out_feature, out_score):
    """The ``len(out_score)`` largest terms ``(μ_c[j]·x[j])·w_c`` by absolute value over the
    components ``c`` of one combination (``row``, -1 padded) and features ``j``, largest
    first (ties: earlier component in the row, then lower feature). Returns how many were
    filled (fewer only when the combination has fewer terms)."""
    d = mean_t.shape[0]
    top = out_score.shape[0]
    best = np.empty(top)
    filled = 0
    for r in range(row.shape[0]):
        c = row[r]
        if c < 0:
            break
        wc = weight[c]
        for j in range(d):
            term = (mean_t[j, c] * x[j]) * wc
            size = abs(term)
            if filled == top and not size > best[top - 1]:
                continue
            pos = filled if filled < top else top - 1
            while pos > 0 and size > best[pos - 1]:
                best[pos] = best[pos - 1]
                out_component[pos] = out_component[pos - 1]
                out_feature[pos] = out_feature[pos - 1]
                out_score[pos] = out_score[pos - 1]
                pos -= 1
            best[pos] = size
            out_component[pos] = c
            out_feature[pos] = j
            out_score[pos] = term
            if filled < top:
                filled += 1
    return filled


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class PolicyParams:
    """Policy configuration (all passed to kernels as arguments).

    ``noise_variance`` v² scales every posterior variance: 0 is greedy on the mean, larger
    explores more. ``gamma_scale``: SquareCB's γ is ``gamma_scale * n_allowed``. Monte Carlo
    propensity: rounds of ``mc_samples`` draws, up to ``mc_max_samples``, stopping once the
    chosen combination has won ``mc_min_wins`` times.
    """

    mode: str = MODE_THOMPSON
    noise_variance: float = 0.05
    gamma_scale: float = 1000.0
    mc_samples: int = 256
    mc_max_samples: int = 256
    mc_min_wins: int = 0

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
        object.__setattr__(self, "_array", _readonly(np.array([self.noise_variance,
                                                               self.gamma_scale])))
        object.__setattr__(self, "_mc_array", _readonly(np.array(
            [self.mc_samples, self.mc_max_samples, self.mc_min_wins], dtype=np.float64)))

    def as_array(self) -> np.ndarray:
        """``[noise_variance, gamma_scale]`` (indices ``P_*``), as the kernels take it."""
        return self._array  # type: ignore[attr-defined]

    def mc_array(self) -> np.ndarray:
        """``[mc_samples, mc_max_samples, mc_min_wins]`` (indices ``MC_*``)."""
        return self._mc_array  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ActionSpace:
    """A campaign's combinations, as arrays the kernels read (validated once, read-only).

    ``combo_components`` int32 ``[n_combos, k]`` component ids, -1 padded at row ends;
    ``combo_mask`` uint8 ``[n_combos]`` (1 = the campaign allows it); ``component_weight``
    float64 ``[n_components]``; ``kernel_components`` (derived) the same ids as uint32 with
    padding set to ``n_components``, which is what the policy kernels read.
    ``dim_sizes``/``pairs`` describe the standard layout built by
    :func:`build_action_space` (empty for a hand-built space); ``nothing_combo`` is the
    "send nothing" combination's index or -1.
    """

    combo_components: np.ndarray
    combo_mask: np.ndarray
    component_weight: np.ndarray
    n_components: int
    nothing_combo: int = -1
    dim_sizes: tuple[int, ...] = ()
    pairs: tuple[tuple[int, int], ...] = ()
    kernel_components: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        combos = np.asarray(self.combo_components)
        if combos.dtype != np.int32 or combos.ndim != 2 or combos.shape[0] < 1:
            raise ValueError("combo_components: must be a non-empty 2-D int32 array, got "
                             f"{combos.dtype} {combos.shape}")
        if self.n_components < 1:
            raise ValueError(f"n_components: must be >= 1, got {self.n_components}")
        if combos.min() < -1 or combos.max() >= self.n_components:
            raise ValueError(
                f"combo_components: ids must be -1 (padding) or in [0, {self.n_components})"
            )
        pad = combos < 0
        if (pad[:, :-1] & ~pad[:, 1:]).any():
            raise ValueError("combo_components: -1 padding must come after a row's components")
        if pad[:, 0].any():
            raise ValueError("combo_components: every combination needs at least one component")
        object.__setattr__(self, "combo_components", _readonly(combos))
        # What the policy kernels read: unsigned ids, padding pointing at slot C (a 0.0).
        ids = np.where(pad, self.n_components, combos).astype(np.uint32)
        object.__setattr__(self, "kernel_components", _readonly(ids))
        mask = _mask(self.combo_mask, "combo_mask", combos.shape[0])
        if not mask.any():
            raise ValueError("combo_mask: the campaign must allow at least one combination")
        object.__setattr__(self, "combo_mask", _readonly(mask))
        w = np.asarray(self.component_weight)
        if w.dtype != np.float64 or w.shape != (self.n_components,) or not np.isfinite(w).all():
            raise ValueError(f"component_weight: must be finite float64 of shape "
                             f"({self.n_components},), got {w.dtype} {w.shape}")
        object.__setattr__(self, "component_weight", _readonly(w))
        if not -1 <= self.nothing_combo < combos.shape[0]:
            raise ValueError(f"nothing_combo: must be -1 or a combination index, "
                             f"got {self.nothing_combo}")

    @property
    def n_combos(self) -> int:
        return int(self.combo_components.shape[0])

    def combo_values(self, combo: int) -> tuple[int, ...] | None:
        """Each dimension's value index for a standard-layout combination; None = nothing."""
        if combo == self.nothing_combo:
            return None
        return tuple(int(v) for v in np.unravel_index(combo, self.dim_sizes))

    def combo_index(self, values: Sequence[int]) -> int:
        """Inverse of :meth:`combo_values`."""
        return int(np.ravel_multi_index(tuple(values), self.dim_sizes))

    def component_of(self, dim: int, value: int) -> int:
        """Component id of one dimension value (standard layout)."""
        if not (0 <= dim < len(self.dim_sizes) and 0 <= value < self.dim_sizes[dim]):
            raise ValueError(f"dim, value: out of range for dim_sizes {self.dim_sizes}")
        return int(sum(self.dim_sizes[:dim]) + value)

    def components_of_dim(self, dim: int) -> np.ndarray:
        """Component ids of every value of one dimension (for guardrail component masks)."""
        start = self.component_of(dim, 0)
        return np.arange(start, start + self.dim_sizes[dim])


def build_action_space(
    dim_sizes: Sequence[int],
    pairs: Sequence[tuple[int, int]] = (),
    include_nothing: bool = True,
    allowed: np.ndarray | None = None,
) -> ActionSpace:
    """The standard layout: every combination of the dimensions (C order, so
    ``combo = np.ravel_multi_index(values, dim_sizes)``) plus, last, "send nothing".

    Components: each dimension's values (dimension 0 first), then each pair's cells
    (``pair_offset + v_a * dim_sizes[b] + v_b``), then the nothing arm. Weights: ``1/k`` for
    the ``k`` components of a combination, 1 for nothing. ``allowed`` (bool or uint8 over the
    dimension combinations, C order) excludes combinations; nothing is always allowed.
    """
    sizes = tuple(int(s) for s in dim_sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"dim_sizes: needs at least one dimension, each >= 1, got {sizes}")
    pair_list = tuple((int(a), int(b)) for a, b in pairs)
    for a, b in pair_list:
        if not (0 <= a < len(sizes) and 0 <= b < len(sizes) and a != b):
            raise ValueError(f"pairs: ({a}, {b}) must name two different dimensions")
    dim_offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    n_comp = int(sum(sizes))
    pair_offsets = []
    for a, b in pair_list:
        pair_offsets.append(n_comp)
        n_comp += sizes[a] * sizes[b]
    values = np.indices(sizes).reshape(len(sizes), -1).T  # [n, n_dims], C order
    n_dim_combos = values.shape[0]
    k = len(sizes) + len(pair_list)
    cols = [values[:, j] + dim_offsets[j] for j in range(len(sizes))]
    for (a, b), off in zip(pair_list, pair_offsets, strict=True):
        cols.append(off + values[:, a] * sizes[b] + values[:, b])
    combos = np.stack(cols, axis=1).astype(np.int32)
    weight = np.full(n_comp + (1 if include_nothing else 0), 1.0 / k)
    mask = np.ones(n_dim_combos, dtype=np.uint8)
    if allowed is not None:
        mask = _mask(allowed, "allowed", n_dim_combos).copy()
    nothing_combo = -1
    if include_nothing:
        nothing = np.full((1, k), -1, dtype=np.int32)
        nothing[0, 0] = n_comp
        weight[n_comp] = 1.0
        combos = np.concatenate([combos, nothing])
        mask = np.concatenate([mask, np.ones(1, dtype=np.uint8)])
        nothing_combo = n_dim_combos
        n_comp += 1
    return ActionSpace(combo_components=combos, combo_mask=mask, component_weight=weight,
                       n_components=n_comp, nothing_combo=nothing_combo, dim_sizes=sizes,
                       pairs=pair_list)


@dataclass(frozen=True)
class PolicyChoice:
    """One decision. ``top_k[0] == choice``; ``scores`` are the ranking scores of ``top_k``
    (Thompson: sampled; SquareCB: probabilities), ``mean_scores`` their posterior-mean
    scores. ``propensity`` is the probability the policy had of choosing ``choice``: exact for
    SquareCB, a Monte Carlo estimate from ``propensity_samples`` draws for Thompson
    (``nan`` and 0 when not estimated). ``n_allowed`` counts the allowed combinations."""

    choice: int
    top_k: np.ndarray
    scores: np.ndarray
    mean_scores: np.ndarray
    propensity: float
    propensity_samples: int
    n_allowed: int
    seed: int


@dataclass(frozen=True)
class Explanation:
    """Why a combination scored as it did. ``components``/``component_scores``: every
    component of the combination with its weighted mean score, largest |score| first (they
    sum to the combination's mean score). ``feature_component``/``feature``/``feature_score``:
    for the top components, the features that pushed them, ``w_c · μ_c[j] · x[j]``, largest
    |value| first."""

    combo: int
    mean_score: float
    components: np.ndarray
    component_scores: np.ndarray
    feature_component: np.ndarray
    feature: np.ndarray
    feature_score: np.ndarray


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
    ``[C]``, ``1 <= top_k <= MAX_TOP_K``. Anything else is undefined."""
    return _decide(snapshot, space, context, space.combo_mask, component_mask, seed, top_k,
                   params, True)


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
) -> PolicyChoice:
    out_index = np.empty(top_k, dtype=np.int64)
    out_score = np.empty((2, top_k))
    kparams = params.as_array()
    if params.mode == MODE_THOMPSON:
        n_allowed = _thompson_kernel(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                                     space.kernel_components, cmask, kmask, kparams, seed,
                                     out_index, out_score)
    else:
        n_allowed = _squarecb_kernel(snapshot.mean_t, x, space.component_weight,
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
        wins, samples = _win_counts(snapshot, space, x, cmask, kmask, kparams,
                                    _mc_seed(seed), choice, params)
        prop = wins[choice] / samples
    return PolicyChoice(choice=choice, top_k=out_index[:filled], scores=out_score[0, :filled],
                        mean_scores=out_score[1, :filled], propensity=prop,
                        propensity_samples=samples, n_allowed=int(n_allowed), seed=seed)


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
    """Monte Carlo propensity of ``choice`` under Thompson sampling: ``(wins / draws,
    draws)``, re-drawing from a stream derived from the decision's ``seed``."""
    wins, draws = thompson_win_counts(snapshot, space, context, seed, choice,
                                      component_mask=component_mask, combo_mask=combo_mask,
                                      params=params)
    return wins[choice] / draws, draws


def thompson_win_counts(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    seed: int,
    choice: int = -1,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    params: PolicyParams | None = None,
) -> tuple[np.ndarray, int]:
    """Debug/test entry: win counts of every combination over the Monte Carlo draws (they
    sum to the number of draws, over allowed combinations only) and the number of draws.
    ``choice = -1`` disables early stopping."""
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


def squarecb_probabilities(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    params: PolicyParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Debug/test entry: SquareCB's full distribution ``(probabilities, mean_scores)`` over
    combinations (masked: probability 0, mean score -inf)."""
    params = params or PolicyParams()
    x, cmask, kmask, _ = _request(snapshot, space, context, 0, component_mask, combo_mask)
    mean = np.empty(space.n_combos)
    prob = np.empty(space.n_combos)
    best = _squarecb_probabilities(snapshot.mean_t, x, space.component_weight,
                                   space.kernel_components, cmask, kmask, params.as_array(),
                                   mean, prob)
    if best < 0:
        raise ValueError("combo_mask, component_mask: no combination is allowed")
    return prob, mean


def thompson_from_draws(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    draws: np.ndarray,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    top_k: int = 3,
    params: PolicyParams | None = None,
) -> PolicyChoice:
    """Test entry: a Thompson decision from explicit standard-normal ``draws[C]`` (what
    :func:`decide` does after drawing ``standard_normals(seed, C)``); no propensity."""
    params = params or PolicyParams()
    x, cmask, kmask, _ = _request(snapshot, space, context, 0, component_mask, combo_mask)
    z = _vector(draws, "draws", space.n_components)
    out_index = np.empty(top_k, dtype=np.int64)
    out_score = np.empty((2, top_k))
    n_allowed = _thompson_from_draws(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                                     space.kernel_components, cmask, kmask, params.as_array(),
                                     z, out_index, out_score)
    if n_allowed == 0:
        raise ValueError("combo_mask, component_mask: no combination is allowed")
    filled = min(n_allowed, top_k)
    return PolicyChoice(choice=int(out_index[0]), top_k=out_index[:filled],
                        scores=out_score[0, :filled], mean_scores=out_score[1, :filled],
                        propensity=float("nan"), propensity_samples=0,
                        n_allowed=int(n_allowed), seed=0)


def standard_normals(seed: int, n: int) -> np.ndarray:
    """The standard normals the kernels draw from ``seed`` (for tests and replay)."""
    return _standard_normals(_seed(seed), int(n))


def explain(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    combo: int,
    *,
    top_components: int = 3,
    top_features: int = 3,
) -> Explanation:
    """Per-component mean contributions of ``combo`` and, for its ``top_components`` largest
    ones, the ``top_features`` features that pushed each (``w_c · μ_c[j] · x[j]``)."""
    x = _vector(context, "context", snapshot.n_features)
    if not 0 <= combo < space.n_combos:
        raise ValueError(f"combo: must be in [0, {space.n_combos}), got {combo}")
    row = space.combo_components[combo]
    comps = row[row >= 0].astype(np.int64)
    w = space.component_weight[comps]
    per_feature = (snapshot.mu[comps] * x) * w[:, None]  # [k, d]
    scores = per_feature.sum(axis=1)
    order = np.argsort(-np.abs(scores), kind="stable")
    comps, scores, per_feature = comps[order], scores[order], per_feature[order]
    fc, ff, fs = [], [], []
    for i in range(min(top_components, len(comps))):
        idx = np.argsort(-np.abs(per_feature[i]), kind="stable")[:top_features]
        fc.extend([comps[i]] * len(idx))
        ff.extend(idx.tolist())
        fs.extend(per_feature[i, idx].tolist())
    return Explanation(combo=int(combo), mean_score=float(scores.sum()), components=comps,
                       component_scores=scores, feature_component=np.array(fc, dtype=np.int64),
                       feature=np.array(ff, dtype=np.int64), feature_score=np.array(fs))


def top_feature_terms(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    combo: int,
    top: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``top`` terms ``w_c · μ_c[j] · x[j]`` of ``combo``'s components with the largest
    absolute value, largest first: ``(component, feature, term)`` arrays (ties: earlier
    component of the combination, then lower feature). What pushed a choice, in one pass."""
    x = _vector(context, "context", snapshot.n_features)
    if not 0 <= combo < space.n_combos:
        raise ValueError(f"combo: must be in [0, {space.n_combos}), got {combo}")
    if top < 1:
        raise ValueError(f"top: must be >= 1, got {top}")
    return top_feature_terms_trusted(snapshot, space, x, combo, top)


def top_feature_terms_trusted(
    snapshot: PolicySnapshot, space: ActionSpace, context: np.ndarray, combo: int, top: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`top_feature_terms` without the checks, for callers that built the inputs
    themselves (Decide): ``context`` finite float64 C-contiguous ``[d]``, ``combo`` a valid
    index, ``top >= 1``. Anything else is undefined."""
    component = np.empty(top, dtype=np.int64)
    feature = np.empty(top, dtype=np.int64)
    term = np.empty(top)
    n = _top_feature_terms(snapshot.mean_t, context, space.component_weight,
                           space.combo_components[combo], component, feature, term)
    return component[:n], feature[:n], term[:n]


# --------------------------------------------------------------------------- helpers


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _mask(mask: object, name: str, n: int) -> np.ndarray:
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    if m.dtype != np.uint8 or m.shape != (n,):
        raise ValueError(f"{name}: must be bool or uint8 of shape ({n},), got {m.dtype} "
                         f"{m.shape}")
    return np.ascontiguousarray(m)


def _vector(v: object, name: str, n: int) -> np.ndarray:
    a = np.asarray(v)
    if a.dtype != np.float64 or a.shape != (n,):
        raise ValueError(f"{name}: must be float64 of shape ({n},), got {a.dtype} {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: must be finite (no NaN or inf)")
    return np.ascontiguousarray(a)


def _seed(seed: object) -> int:
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"seed: must be an integer, got {type(seed).__name__}")
    s = int(seed)
    if not -(2**63) <= s < 2**64:
        raise ValueError(f"seed: must fit in 64 bits, got {s}")
    return s - 2**64 if s >= 2**63 else s  # the kernels see the same 64 bits as int64


def _mc_seed(seed: int) -> int:
    """A separate stream for the Monte Carlo re-draws, derived from the decision's seed."""
    return int(np.int64(np.uint64(seed & (2**64 - 1)) ^ np.uint64(0x5DEECE66DA3B1F27)))


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
    x = _vector(context, "context", snapshot.n_features)
    cmask = space.combo_mask if combo_mask is None else _mask(combo_mask, "combo_mask",
                                                              space.n_combos)
    if component_mask is None:
        kmask = _ALL_ALLOWED.get(space.n_components)
        if kmask is None:
            kmask = _readonly(np.ones(space.n_components, dtype=np.uint8))
            _ALL_ALLOWED[space.n_components] = kmask
    else:
        kmask = _mask(component_mask, "component_mask", space.n_components)
    return x, cmask, kmask, _seed(seed)


_ALL_ALLOWED: dict[int, np.ndarray] = {}


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
) -> tuple[np.ndarray, int]:
    wins = np.empty(space.n_combos, dtype=np.int64)
    draws = _thompson_win_counts(snapshot.mean_t, snapshot.factor_t, x, space.component_weight,
                                 space.kernel_components, cmask, kmask, kparams, seed, choice,
                                 params.mc_array(), wins)
    return wins, int(draws)


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING)."""
    from nudge.kernels.learner import initial_snapshot

    space = build_action_space((2, 2), pairs=((0, 1),))
    snap = initial_snapshot(space.n_components, 2)
    x = np.array([1.0, 0.5])
    for mode in (MODE_THOMPSON, MODE_SQUARECB):
        decide(snap, space, x, 1, top_k=2, params=PolicyParams(mode=mode, mc_samples=4,
                                                                   mc_max_samples=4))
    thompson_from_draws(snap, space, x, np.zeros(space.n_components))
    squarecb_probabilities(snap, space, x)
    top_feature_terms(snap, space, x, 0, 2)
    standard_normals(1, 3)

