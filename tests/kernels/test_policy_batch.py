"""DecideBatch's policy entry: one kernel call over a chunk of contexts, each row bit for
bit what the single call (Decide's ``decide_trusted``) gives for that context, seed and
guardrail mask, in every mode, split over threads or not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nudge.kernels import policy
from nudge.kernels.action_space import build_action_space
from nudge.kernels.learner import initial_snapshot, update_posteriors
from nudge.kernels.policy import PolicyParams, decide_batch_trusted, decide_trusted

D = 6


def _ro(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


# A campaign's shape (5 dimensions, 2 pairs: the kernels' written-out width and
# neighbourhood), then shapes that take their general loops.
CAMPAIGN_SHAPE = ((3, 2, 3, 2, 2), ((1, 2), (0, 4)))
SMALL = ((4, 3, 2), ((0, 1),))
SIX_DIMS = ((5, 2, 3, 2, 2, 2), ())


@pytest.mark.parametrize(("mode", "local_dims"), [
    (policy.MODE_SQUARECB, 0), (policy.MODE_SQUARECB, 5), (policy.MODE_THOMPSON, 0)])
@pytest.mark.parametrize("threads", [1, 2])
def test_each_row_is_the_single_decision(mode: str, local_dims: int, threads: int) -> None:
    _check_rows(mode, local_dims, threads, CAMPAIGN_SHAPE, 7 + local_dims + threads)


@pytest.mark.parametrize(("shape", "local_dims"), [
    (SMALL, 0), (SMALL, 2), (SMALL, 3), (SIX_DIMS, 0), (SIX_DIMS, 5), (SIX_DIMS, 6)])
def test_squarecb_rows_of_other_shapes_are_the_single_decision(
        shape: tuple[tuple[int, ...], tuple[tuple[int, int], ...]], local_dims: int) -> None:
    _check_rows(policy.MODE_SQUARECB, local_dims, 1, shape, 100 + local_dims + len(shape[0]))


def test_squarecb_rows_where_a_guardrail_leaves_only_the_nothing_arm() -> None:
    """Local SquareCB with no multi-component combination allowed (no greedy one: the
    whole allowed set is the neighbourhood), beside rows that have one, in one group."""
    _check_rows(policy.MODE_SQUARECB, 5, 1, CAMPAIGN_SHAPE, 11, keep=0.35)


@pytest.mark.parametrize(("local_dims", "threads"), [(0, 1), (5, 2)])
def test_optimistic_squarecb_rows_are_the_single_decision(local_dims: int,
                                                          threads: int) -> None:
    """``optimism`` > 0 takes its own batch entry (upper confidence bounds need the
    covariance factors): each row is still the single decision."""
    _check_rows(policy.MODE_SQUARECB, local_dims, threads, CAMPAIGN_SHAPE, 40 + local_dims,
                optimism=1.0)


def _check_rows(mode: str, local_dims: int, threads: int,
                shape: tuple[tuple[int, ...], tuple[tuple[int, int], ...]], seed: int,
                keep: float = 0.9, optimism: float = 0.0) -> None:
    rng = np.random.default_rng(seed)
    space = build_action_space(shape[0], pairs=shape[1])
    snap = initial_snapshot(space.n_components, D)
    xs = rng.normal(size=(300, D))
    xs[:, 0] = 1.0
    snap = update_posteriors(snap, space.combo_components,
                             rng.integers(0, space.n_combos, 300), xs, rng.random(300))
    params = PolicyParams(mode=mode, local_dims=local_dims, mc_samples=16, mc_max_samples=16,
                          gamma_scale=float(rng.uniform(1.0, 50.0)), optimism=optimism)
    n = 150
    contexts = rng.normal(size=(n, D))
    contexts[:, 0] = 1.0
    seeds = rng.integers(-(2**63), 2**63 - 1, n, dtype=np.int64)
    masks = (rng.random((n, space.n_components)) < keep).astype(np.uint8)
    masks[:, space.n_components - 1] = 1  # the nothing arm: always something allowed
    active = (rng.random(n) < 0.8).astype(np.uint8)
    top_k = int(rng.integers(1, 6))
    got = decide_batch_trusted(snap, space, _ro(contexts), _ro(seeds), _ro(masks),
                               _ro(active), top_k, params, threads)
    for i in np.flatnonzero(active):
        want = decide_trusted(snap, space, contexts[i].copy(), int(seeds[i]), masks[i].copy(),
                              top_k, params)
        k = int(got.filled[i])
        assert got.top_k[i, :k].tolist() == want.top_k.tolist()
        assert got.scores[i, 0, :k].tobytes() == want.scores.tobytes()
        assert got.scores[i, 1, :k].tobytes() == want.mean_scores.tobytes()
        assert got.n_allowed[i] == want.n_allowed
        p = float(got.propensity[i])
        assert p == want.propensity or (math.isnan(p) and math.isnan(want.propensity))
        assert got.propensity_samples[i] == want.propensity_samples


def test_an_active_row_with_nothing_allowed_is_refused() -> None:
    space = build_action_space((2, 2))
    snap = initial_snapshot(space.n_components, D)
    masks = np.ones((2, space.n_components), dtype=np.uint8)
    masks[1] = 0
    contexts = np.ones((2, D))
    with pytest.raises(ValueError, match="no combination is allowed"):
        decide_batch_trusted(snap, space, _ro(contexts), _ro(np.arange(2)), _ro(masks),
                             _ro(np.ones(2, np.uint8)), 1, PolicyParams())
    # The same row inactive (a guardrail decided it) is skipped.
    got = decide_batch_trusted(snap, space, _ro(contexts), _ro(np.arange(2)), _ro(masks),
                               _ro(np.array([1, 0], np.uint8)), 1, PolicyParams())
    assert got.n_allowed[0] > 0
