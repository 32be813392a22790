"""Test-only entries into the policy kernels: what decide does, one step at a time.

They live here, not in ``nudge.kernels.policy``, so the server neither ships nor warms
them; each checks its inputs with the policy's own request checks.
"""

from __future__ import annotations

import numpy as np

from nudge.kernels import policy
from nudge.kernels.action_space import ActionSpace
from nudge.kernels.jit import float_vector
from nudge.kernels.policy import PolicyChoice, PolicyParams
from nudge.kernels.rng import as_seed, fill_normals, rng_state
from nudge.kernels.snapshot import PolicySnapshot


def standard_normals(seed: int, n: int) -> np.ndarray:
    """The standard normals the kernels draw from ``seed``."""
    out = np.empty(int(n))
    fill_normals(rng_state(as_seed(seed)), out)
    return out


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
    """Win counts of every combination over the Monte Carlo draws (they sum to the number
    of draws, over allowed combinations only) and the number of draws. ``choice = -1``
    disables early stopping."""
    return policy._checked_win_counts(snapshot, space, context, seed, choice, component_mask,
                                      combo_mask, params)


def squarecb_probabilities(
    snapshot: PolicySnapshot,
    space: ActionSpace,
    context: np.ndarray,
    *,
    component_mask: np.ndarray | None = None,
    combo_mask: np.ndarray | None = None,
    params: PolicyParams | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """SquareCB's full distribution ``(probabilities, mean_scores)`` over combinations
    (masked: probability 0, mean score -inf)."""
    x, cmask, kmask, _ = policy._request(snapshot, space, context, 0, component_mask,
                                         combo_mask)
    kparams = (params or PolicyParams()).as_array()
    mean, prob = np.empty(space.n_combos), np.empty(space.n_combos)
    best = policy._squarecb_probabilities(snapshot.mean_t, x, space.component_weight,
                                          space.kernel_components, cmask, kmask, kparams,
                                          mean, prob)
    _check_allowed(best >= 0)
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
    """A Thompson decision from explicit standard-normal ``draws[C]`` (what decide does
    after drawing ``standard_normals(seed, C)``); no propensity."""
    params = params or PolicyParams()
    x, cmask, kmask, _ = policy._request(snapshot, space, context, 0, component_mask,
                                         combo_mask)
    z = float_vector(draws, "draws", space.n_components)
    out_index = np.empty(top_k, dtype=np.int64)
    out_score = np.empty((2, top_k))
    n_allowed = policy._thompson_from_draws(snapshot.mean_t, snapshot.factor_t, x,
                                            space.component_weight, space.kernel_components,
                                            cmask, kmask, params.as_array(), z, out_index,
                                            out_score)
    _check_allowed(n_allowed > 0)
    filled = min(n_allowed, top_k)
    return PolicyChoice(choice=int(out_index[0]), top_k=out_index[:filled],
                        scores=out_score[0, :filled], mean_scores=out_score[1, :filled],
                        propensity=float("nan"), propensity_samples=0,
                        n_allowed=int(n_allowed), seed=0)


def _check_allowed(any_allowed: bool) -> None:
    if not any_allowed:
        raise ValueError("combo_mask, component_mask: no combination is allowed")
