"""Policy kernels against slow, obvious NumPy references on fresh random inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from policy_entries import (
    squarecb_probabilities,
    standard_normals,
    thompson_from_draws,
    thompson_win_counts,
)

from nudge.kernels import policy
from nudge.kernels.action_space import ActionSpace, build_action_space
from nudge.kernels.learner import initial_snapshot, update_posteriors
from nudge.kernels.policy import MAX_TOP_K, PolicyParams, decide, thompson_propensity
from nudge.kernels.rng import as_seed, rng_state, uniform
from nudge.kernels.snapshot import PolicySnapshot

D = 6


def _trained(space: ActionSpace, rng: np.random.Generator, n: int = 300) -> PolicySnapshot:
    snap = initial_snapshot(space.n_components, D)
    xs = rng.normal(size=(n, D))
    xs[:, 0] = 1.0
    chosen = rng.integers(0, space.n_combos, n)
    return update_posteriors(snap, space.combo_components, chosen, xs, rng.random(n))


def _context(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=D)
    x[0] = 1.0
    return x


def _reference_component_scores(
    snap: PolicySnapshot, space: ActionSpace, x: np.ndarray, z: np.ndarray, v2: float
) -> tuple[np.ndarray, np.ndarray]:
    """(sampled, mean) weighted component scores, the slow way."""
    mean = np.empty(snap.n_components)
    sd = np.empty(snap.n_components)
    for c in range(snap.n_components):
        f = snap.cov_factor(c)
        cov = f @ f.T
        mean[c] = snap.mu[c] @ x
        sd[c] = math.sqrt(v2 * (x @ cov @ x))
    w = space.component_weight
    return w * (mean + sd * z), w * mean


def _reference_combo_scores(
    space: ActionSpace, comp: np.ndarray, combo_mask: np.ndarray, comp_mask: np.ndarray
) -> np.ndarray:
    """Score per combination, -inf where masked."""
    out = np.full(space.n_combos, -np.inf)
    for i, row in enumerate(space.combo_components):
        ids = row[row >= 0]
        if combo_mask[i] and comp_mask[ids].all():
            out[i] = comp[ids].sum()
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240611)


@pytest.fixture
def space() -> ActionSpace:
    return build_action_space((3, 4, 2), pairs=((1, 2),))


def test_thompson_matches_reference(rng: np.random.Generator, space: ActionSpace) -> None:
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=0.3)
    for trial in range(20):
        snap = _trained(space, rng)
        x = _context(rng)
        seed = int(rng.integers(0, 2**63))
        combo_mask = (rng.random(space.n_combos) < 0.8).astype(np.uint8)
        comp_mask = (rng.random(space.n_components) < 0.9).astype(np.uint8)
        z = standard_normals(seed, space.n_components)
        sampled, mean = _reference_component_scores(snap, space, x, z, params.noise_variance)
        ref = _reference_combo_scores(space, sampled, combo_mask, comp_mask)
        ref_mean = _reference_combo_scores(space, mean, combo_mask, comp_mask)
        n_allowed = int(np.isfinite(ref).sum())
        if n_allowed == 0:
            with pytest.raises(ValueError, match="no combination is allowed"):
                decide(snap, space, x, seed, combo_mask=combo_mask, component_mask=comp_mask)
            continue
        got = decide(snap, space, x, seed, combo_mask=combo_mask, component_mask=comp_mask,
                     top_k=4, params=params, propensity=False)
        order = np.argsort(-ref, kind="stable")[: min(4, n_allowed)]
        assert got.choice == order[0], trial
        assert got.top_k.tolist() == order.tolist()
        assert np.allclose(got.scores, ref[order], rtol=1e-12, atol=1e-12)
        assert np.allclose(got.mean_scores, ref_mean[order], rtol=1e-12, atol=1e-12)
        assert got.n_allowed == n_allowed
        # The explicit-draws entry point is the same computation.
        again = thompson_from_draws(snap, space, x, z, combo_mask=combo_mask,
                                    component_mask=comp_mask, top_k=4, params=params)
        assert again.top_k.tolist() == got.top_k.tolist()


def test_masked_combinations_never_chosen(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    # explore hard so every allowed combo can win
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=5.0)
    for seed in range(300):
        x = _context(rng)
        combo_mask = rng.random(space.n_combos) < 0.5
        comp_mask = rng.random(space.n_components) < 0.8
        allowed = _reference_combo_scores(space, np.zeros(space.n_components), combo_mask,
                                          comp_mask) == 0.0
        if not allowed.any():
            continue
        for mode in (policy.MODE_THOMPSON, policy.MODE_SQUARECB):
            got = decide(snap, space, x, seed, combo_mask=combo_mask, component_mask=comp_mask,
                         top_k=5, params=PolicyParams(mode=mode, noise_variance=5.0,
                                                      mc_samples=8, mc_max_samples=8))
            assert allowed[got.top_k].all()
            assert len(set(got.top_k.tolist())) == len(got.top_k)
            assert len(got.top_k) == min(5, allowed.sum())
    del params


def test_top_k_descending_choice_first(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    for seed in range(50):
        got = decide(snap, space, _context(rng), seed, top_k=6, propensity=False,
                     params=PolicyParams(mode=policy.MODE_THOMPSON))
        assert got.top_k[0] == got.choice
        assert np.all(np.diff(got.scores) <= 0)
    sq = PolicyParams(mode=policy.MODE_SQUARECB, gamma_scale=0.5)
    for seed in range(50):
        got = decide(snap, space, _context(rng), seed, top_k=6, params=sq)
        assert got.top_k[0] == got.choice
        assert np.all(np.diff(got.mean_scores[1:]) <= 0)  # alternatives by mean score


def test_same_seed_same_choice(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=2.0)
    a = decide(snap, space, x, 12345, params=params)
    b = decide(snap, space, x, 12345, params=params)
    assert a.top_k.tolist() == b.top_k.tolist()
    assert a.propensity == b.propensity
    choices = {decide(snap, space, x, s, params=params, propensity=False).choice
               for s in range(40)}
    assert len(choices) > 1  # different seeds explore


def test_mc_win_counts_match_brute_force(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    comp_mask = np.ones(space.n_components, dtype=np.uint8)
    comp_mask[4] = 0
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=0.5,
                          mc_samples=64, mc_max_samples=64)
    seed = 99
    wins, draws = thompson_win_counts(snap, space, x, seed, component_mask=comp_mask,
                                      params=params)
    assert draws == 64
    z = standard_normals(policy._mc_seed(seed), draws * space.n_components)
    z = z.reshape(draws, space.n_components)
    expected = np.zeros(space.n_combos, dtype=np.int64)
    for r in range(draws):
        sampled, _ = _reference_component_scores(snap, space, x, z[r], params.noise_variance)
        scores = _reference_combo_scores(space, sampled, space.combo_mask, comp_mask)
        expected[np.argmax(scores)] += 1
    assert wins.tolist() == expected.tolist()


def test_mc_propensities_sum_to_one_over_allowed(
    rng: np.random.Generator, space: ActionSpace
) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    combo_mask = rng.random(space.n_combos) < 0.6
    combo_mask[0] = True
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=1.0,
                          mc_samples=500, mc_max_samples=500)
    wins, draws = thompson_win_counts(snap, space, x, 7, combo_mask=combo_mask, params=params)
    assert wins.sum() == draws == 500
    assert (wins[~combo_mask] == 0).all()
    got = decide(snap, space, x, 7, combo_mask=combo_mask, params=params)
    assert got.propensity_samples == 501  # the decision's own draw counts
    assert got.propensity == (wins[got.choice] + 1) / 501
    prop, n = thompson_propensity(snap, space, x, 7, got.choice, combo_mask=combo_mask,
                                  params=params)
    assert (prop, n) == (got.propensity, got.propensity_samples)


def test_mc_early_stop_and_rounds(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=1.0,
                          mc_samples=32, mc_max_samples=1024,
                          mc_min_wins=5)
    got = decide(snap, space, x, 3, params=params)
    draws = got.propensity_samples - 1  # the decision's own draw counts
    assert draws % 32 == 0
    assert draws == 1024 or got.propensity * got.propensity_samples >= 6


def _two_arm(mean: tuple[float, float], var: tuple[float, float]) -> tuple:
    """Two combinations of one component each; context x = [1]."""
    space = ActionSpace(combo_components=np.array([[0], [1]], dtype=np.int32),
                        combo_mask=np.ones(2, dtype=np.uint8),
                        component_weight=np.ones(2), n_components=2)
    snap = PolicySnapshot(mean_t=np.array([mean]), factor_t=np.sqrt(np.array([var])),
                          precision=np.ones((2, 1, 1)), b=np.zeros((2, 1)), n_eff=np.zeros(2),
                          prior_precision=1.0)
    return space, snap


def test_mc_propensity_matches_analytic_two_arms() -> None:
    space, snap = _two_arm((0.3, 0.1), (0.04, 0.09))
    x = np.array([1.0])
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=1.0,
                          mc_samples=20000, mc_max_samples=20000)
    wins, draws = thompson_win_counts(snap, space, x, 5, params=params)
    p0 = 0.5 * (1.0 + math.erf((0.3 - 0.1) / math.sqrt(0.04 + 0.09) / math.sqrt(2.0)))
    assert wins.sum() == draws
    assert abs(wins[0] / draws - p0) < 4.0 * math.sqrt(p0 * (1 - p0) / draws)
    # And the decisions themselves are drawn with that probability.
    picks = [decide(snap, space, x, s, params=params, propensity=False).choice
             for s in range(4000)]
    assert abs(picks.count(0) / 4000 - p0) < 4.0 * math.sqrt(p0 * (1 - p0) / 4000)


def test_squarecb_probabilities(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    for _ in range(10):
        x = _context(rng)
        combo_mask = rng.random(space.n_combos) < 0.7
        combo_mask[-1] = True
        gamma_scale = float(rng.uniform(0.1, 50.0))
        params = PolicyParams(mode=policy.MODE_SQUARECB, gamma_scale=gamma_scale)
        prob, mean = squarecb_probabilities(snap, space, x, combo_mask=combo_mask,
                                            params=params)
        _, comp_mean = _reference_component_scores(snap, space, x,
                                                   np.zeros(space.n_components), 0.0)
        ref_mean = _reference_combo_scores(space, comp_mean, combo_mask,
                                           np.ones(space.n_components, bool))
        assert np.allclose(mean[combo_mask], ref_mean[combo_mask], atol=1e-12)
        k = combo_mask.sum()
        best = int(np.argmax(ref_mean))
        gamma = gamma_scale * k
        ref = np.where(combo_mask, 1.0 / (k + gamma * (ref_mean[best] - ref_mean)), 0.0)
        ref[best] = 0.0
        ref[best] = 1.0 - ref.sum()
        assert np.allclose(prob, ref, atol=1e-12)
        assert prob.sum() == pytest.approx(1.0, abs=1e-12)
        assert (prob[~combo_mask] == 0).all()


def test_squarecb_samples_its_distribution(rng: np.random.Generator) -> None:
    space = build_action_space((2, 2), include_nothing=True)
    snap = _trained(space, rng)
    x = _context(rng)
    params = PolicyParams(mode=policy.MODE_SQUARECB, gamma_scale=2.0)
    prob, _ = squarecb_probabilities(snap, space, x, params=params)
    n = 6000
    counts = np.zeros(space.n_combos)
    for s in range(n):
        got = decide(snap, space, x, s, params=params)
        assert got.propensity == pytest.approx(prob[got.choice])
        counts[got.choice] += 1
    assert np.all(np.abs(counts / n - prob) < 4.0 * np.sqrt(prob * (1 - prob) / n) + 1e-9)


def test_read_only_inputs_accepted_and_unchanged(
    rng: np.random.Generator, space: ActionSpace
) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    comp_mask = np.ones(space.n_components, dtype=bool)
    combo_mask = np.ones(space.n_combos, dtype=np.uint8)
    before = [a.copy() for a in (snap.mean_t, snap.factor_t, x, comp_mask, combo_mask)]
    for a in (x, comp_mask, combo_mask):
        a.flags.writeable = False
    for mode in (policy.MODE_THOMPSON, policy.MODE_SQUARECB):
        decide(snap, space, x, 1, component_mask=comp_mask, combo_mask=combo_mask,
               params=PolicyParams(mode=mode))
    after = (snap.mean_t, snap.factor_t, x, comp_mask, combo_mask)
    for b, a in zip(before, after, strict=True):
        assert np.array_equal(a, b)
    assert not snap.mean_t.flags.writeable and not space.combo_components.flags.writeable


def test_validation_errors(rng: np.random.Generator, space: ActionSpace) -> None:
    snap = _trained(space, rng)
    x = _context(rng)
    with pytest.raises(ValueError, match="context: must be float64 of shape"):
        decide(snap, space, x[:-1], 1)
    bad = x.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="context: must be finite"):
        decide(snap, space, bad, 1)
    with pytest.raises(ValueError, match="component_mask: must be bool or uint8"):
        decide(snap, space, x, 1, component_mask=np.ones(3))
    with pytest.raises(ValueError, match="no combination is allowed"):
        decide(snap, space, x, 1, combo_mask=np.zeros(space.n_combos, bool))
    with pytest.raises(ValueError, match="top_k"):
        decide(snap, space, x, 1, top_k=0)
    with pytest.raises(ValueError, match="seed"):
        decide(snap, space, x, 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="snapshot: has"):
        decide(initial_snapshot(3, D), space, x, 1)
    with pytest.raises(ValueError, match="top_k"):
        decide(snap, space, x, 1, top_k=MAX_TOP_K + 1)
    with pytest.raises(ValueError, match="mode"):
        PolicyParams(mode="greedy")


def test_warm_up_runs() -> None:
    policy.warm_up()


def _exact_single_component_propensities(mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """P(arm a has the largest of independent N(mean, sd²) scores), by quadrature:
    ∫ φ_a(s) Π_{b≠a} Φ_b(s) ds on a fine grid (exact to ~1e-9 here)."""
    grid = np.linspace((mean - 9 * sd).min(), (mean + 9 * sd).max(), 200_001)
    z = (grid[None, :] - mean[:, None]) / sd[:, None]
    pdf = np.exp(-0.5 * z * z) / (sd[:, None] * math.sqrt(2 * math.pi))
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    out = np.empty(len(mean))
    for a in range(len(mean)):
        others = np.prod(np.delete(cdf, a, axis=0), axis=0)
        out[a] = np.trapezoid(pdf[a] * others, grid)
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[float])(x)


def test_own_draw_propensity_bias_matches_its_formula() -> None:
    """The logged Thompson propensity (W + 1)/(M + 1) against the exact propensity of a
    four-arm space: its mean given the chosen arm is p + (1 − p)/(M + 1) (bias ≤ 1/(M + 1)),
    and it is never 0, even for an arm chosen about 1 time in 200."""
    mean = np.array([0.30, 0.10, 0.0, -0.30])
    sd = np.array([0.2, 0.3, 0.25, 0.15])
    space = ActionSpace(combo_components=np.arange(4, dtype=np.int32)[:, None],
                        combo_mask=np.ones(4, dtype=np.uint8), component_weight=np.ones(4),
                        n_components=4)
    snap = PolicySnapshot(mean_t=mean[None, :], factor_t=sd[None, :],
                          precision=np.ones((4, 1, 1)), b=np.zeros((4, 1)),
                          n_eff=np.zeros(4), prior_precision=1.0)
    exact = _exact_single_component_propensities(mean, sd)
    assert abs(exact.sum() - 1.0) < 1e-6 and exact.min() < 0.01
    m = 16
    params = PolicyParams(mode=policy.MODE_THOMPSON, noise_variance=1.0,
                          mc_samples=m,
                          mc_max_samples=m)
    x = np.array([1.0])
    got = [decide(snap, space, x, s, params=params) for s in range(12_000)]
    choice = np.array([g.choice for g in got])
    prop = np.array([g.propensity for g in got])
    assert prop.min() >= 1.0 / (m + 1) and prop.max() <= 1.0
    for a in range(4):
        mine = prop[choice == a]
        if len(mine) < 30:
            continue
        expected = exact[a] + (1.0 - exact[a]) / (m + 1)  # E[(1 + Bin(M, p)) / (M + 1)]
        se = math.sqrt(exact[a] * (1.0 - exact[a]) * m) / (m + 1) / math.sqrt(len(mine))
        assert abs(mine.mean() - expected) < 5 * se + 1e-9, (a, mine.mean(), expected)
        assert 0 <= mine.mean() - exact[a] <= 1.0 / (m + 1) + 5 * se
    # Without the own draw, the rarest chosen arm would have logged 0 in most of its rows.
    rare = int(np.argmin(exact))
    assert (np.round(prop[choice == rare] * (m + 1)) == 1).mean() > 0.5


@pytest.mark.parametrize(("mode", "local_dims"), [
    (policy.MODE_SQUARECB, 0), (policy.MODE_SQUARECB, 3), (policy.MODE_THOMPSON, 0)])
def test_every_logged_propensity_is_in_0_1(mode: str, local_dims: int,
                                           rng: np.random.Generator) -> None:
    """Many decisions of a confident, learned model (where a plain Monte Carlo share of
    256 re-draws was 0 for rarely chosen combinations): every propensity lies in (0, 1]."""
    space = build_action_space((4, 3, 3), pairs=((1, 2),))
    snap = initial_snapshot(space.n_components, D)
    xs = rng.normal(size=(4000, D))
    xs[:, 0] = 1.0
    chosen = rng.integers(0, space.n_combos, 4000)
    truth = rng.normal(0.0, 0.3, size=space.n_combos)
    snap = update_posteriors(snap, space.combo_components, chosen, xs,
                             truth[chosen] + rng.normal(0.0, 0.1, 4000))
    params = PolicyParams(mode=mode, noise_variance=0.05, gamma_scale=50.0, mc_samples=64,
                          mc_max_samples=64, local_dims=local_dims)
    props = np.array([decide(snap, space, _context(rng), s, params=params).propensity
                      for s in range(3000)])
    assert np.isfinite(props).all()
    assert (props > 0).all() and (props <= 1).all()


def _reference_local_probabilities(
    space: ActionSpace, mean: np.ndarray, gamma_scale: float, explore_all: float
) -> np.ndarray:
    """Local SquareCB, the slow way: the greedy combination's one-dimension neighbours and
    the nothing arm by inverse gap, ε spread over every allowed combination."""
    allowed = np.isfinite(mean)
    dims = [i for i in range(space.n_combos) if i != space.nothing_combo]
    g = max((i for i in dims if allowed[i]), key=lambda i: (mean[i], -i))
    values = {i: np.array(space.combo_values(i)) for i in dims}
    local = [i for i in range(space.n_combos) if allowed[i] and (
        i == space.nothing_combo or (values[i] != values[g]).sum() <= 1)]
    best = max(local, key=lambda i: (mean[i], -i))
    k = len(local)
    q = np.zeros(space.n_combos)
    for i in local:
        if i != best:
            q[i] = 1.0 / (k + gamma_scale * k * (mean[best] - mean[i]))
    q[best] = 1.0 - q.sum()
    eps = explore_all if k < allowed.sum() else 0.0
    return np.where(allowed, eps / allowed.sum() + (1.0 - eps) * q, 0.0)


def test_local_squarecb_matches_reference(rng: np.random.Generator) -> None:
    space = build_action_space((3, 4, 2, 3), pairs=((1, 2),))
    snap = _trained(space, rng)
    params = PolicyParams(mode=policy.MODE_SQUARECB, gamma_scale=20.0, local_dims=4,
                          explore_all=0.1)
    for trial in range(30):
        x = _context(rng)
        combo_mask = rng.random(space.n_combos) < 0.8
        combo_mask[space.nothing_combo] = trial % 3 != 0
        if combo_mask.sum() < 2:
            continue
        prob, mean = squarecb_probabilities(snap, space, x, combo_mask=combo_mask,
                                            params=params)
        expected = _reference_local_probabilities(space, mean, 20.0, 0.1)
        assert np.allclose(prob, expected, atol=1e-12), trial
        assert abs(prob.sum() - 1.0) < 1e-12
        assert (prob[combo_mask] >= 0.1 / combo_mask.sum() - 1e-15).all()  # full support
        got = decide(snap, space, x, trial, combo_mask=combo_mask, params=params)
        assert got.propensity == pytest.approx(prob[got.choice])
        assert 0 < got.propensity <= 1


@pytest.mark.parametrize("local_dims", [0, 4])
def test_optimistic_squarecb_is_squarecb_on_upper_bounds(local_dims: int,
                                                         rng: np.random.Generator) -> None:
    """With ``optimism`` β, SquareCB's distribution is its usual one over the scores
    ``Σ_c w_c·(μ_c·x + β·sd_c)`` (sd_c the Thompson draw's standard deviation), computed the
    slow way; the logged propensity is that distribution's probability of the choice, and
    the ranking is by those scores."""
    space = build_action_space((3, 4, 2, 3), pairs=((1, 2),))
    snap = _trained(space, rng)
    beta, v2, gamma_scale, eps = 1.5, 0.3, 20.0, 0.1
    params = PolicyParams(mode=policy.MODE_SQUARECB, gamma_scale=gamma_scale,
                          local_dims=local_dims, explore_all=eps, noise_variance=v2,
                          optimism=beta)
    everything = np.ones(space.n_components, bool)
    for seed in range(40):
        x = _context(rng)
        upper, _ = _reference_component_scores(snap, space, x,
                                               np.full(space.n_components, beta), v2)
        scores = _reference_combo_scores(space, upper, space.combo_mask.astype(bool),
                                         everything)
        if local_dims:
            prob = _reference_local_probabilities(space, scores, gamma_scale, eps)
        else:
            k = space.n_combos
            best = int(np.argmax(scores))
            prob = 1.0 / (k + gamma_scale * k * (scores[best] - scores))
            prob[best] = 0.0
            prob[best] = 1.0 - prob.sum()
        got = decide(snap, space, x, seed, top_k=4, params=params)
        assert got.propensity == pytest.approx(prob[got.choice], rel=1e-9)
        assert 0.0 < got.propensity <= 1.0
        assert np.allclose(got.mean_scores, scores[got.top_k], atol=1e-12)
        others = got.mean_scores[1:]
        assert (np.diff(others) <= 1e-12).all()  # the others, best optimistic score first
        trusted = policy.decide_trusted(snap, space, x, seed,
                                        np.ones(space.n_components, np.uint8), 4, params)
        assert trusted.choice == got.choice and trusted.propensity == got.propensity


def test_optimism_explores_what_is_uncertain(rng: np.random.Generator) -> None:
    """Two arms with the same mean: the one the model has seen less gets the higher score
    (the bonus is its posterior standard deviation), so SquareCB's greedy pick is it."""
    space = build_action_space((2,), include_nothing=False)
    snap = initial_snapshot(space.n_components, D)
    n = 400
    xs = np.zeros((n, D))
    xs[:, 0] = 1.0
    chosen = np.zeros(n, dtype=np.int64)  # arm 0 seen 400 times at reward 0 …
    snap = update_posteriors(snap, space.combo_components, chosen, xs, np.zeros(n))
    x = np.zeros(D)
    x[0] = 1.0
    mean_only = decide(snap, space, x, 1, params=PolicyParams(mode=policy.MODE_SQUARECB))
    assert mean_only.mean_scores.tolist() == [0.0, 0.0]  # … so both means are 0
    optimistic = decide(snap, space, x, 1, params=PolicyParams(mode=policy.MODE_SQUARECB,
                                                                 optimism=1.0))
    assert optimistic.top_k[0] == 1 or optimistic.top_k[1] == 1
    assert optimistic.mean_scores[list(optimistic.top_k).index(1)] > \
        optimistic.mean_scores[list(optimistic.top_k).index(0)]


@pytest.mark.parametrize(("mode", "local_dims"), [
    (policy.MODE_SQUARECB, 0), (policy.MODE_SQUARECB, 3), (policy.MODE_THOMPSON, 0)])
def test_decide_trusted_is_decide(mode: str, local_dims: int,
                                  rng: np.random.Generator) -> None:
    """Decide's entry (the GIL-keeping compilations of the same kernels, no checks) gives
    exactly what the checked :func:`decide` gives, propensity and ranking included."""
    space = build_action_space((4, 3, 3), pairs=((1, 2),))
    snap = _trained(space, rng)
    params = PolicyParams(mode=mode, local_dims=local_dims, mc_samples=16, mc_max_samples=16)
    for seed in range(200):
        x = _context(rng)
        mask = (rng.random(space.n_components) < 0.9).astype(np.uint8)
        top_k = int(rng.integers(1, 6))
        try:
            want = decide(snap, space, x, seed, component_mask=mask, top_k=top_k,
                          params=params)
        except ValueError:
            continue  # everything masked: decide_trusted's caller never gets here
        got = policy.decide_trusted(snap, space, x, seed, mask, top_k, params)
        assert got.choice == want.choice
        assert got.top_k.tolist() == want.top_k.tolist()
        assert got.scores.tolist() == want.scores.tolist()
        assert got.mean_scores.tolist() == want.mean_scores.tolist()
        assert got.propensity == want.propensity or (
            math.isnan(got.propensity) and math.isnan(want.propensity))
        assert got.propensity_samples == want.propensity_samples


# A small space, and a campaign's shape (5 dimensions, 2 pair cells: the kernel's written-out
# loops), with local SquareCB over all their dimensions or none.
_STEP_SPACES = {"small": ((4, 3, 3), ((1, 2),)), "campaign": ((3, 2, 3, 2, 2), ((1, 2), (0, 4)))}


@pytest.mark.parametrize(("shape", "local_dims"), [
    ("small", 0), ("small", 3), ("campaign", 0), ("campaign", 5)])
@pytest.mark.parametrize("trained", [True, False])  # untrained: every mean ties
def test_squarecb_step_matches_its_distribution(shape: str, local_dims: int, trained: bool,
                                                rng: np.random.Generator) -> None:
    """The SquareCB kernel (scores, probabilities, draw and ranking fused into few passes)
    against the slow way from its distribution: the choice by inverse CDF over the
    cumulative probabilities in index order with the seed's uniform, its probability as the
    propensity, then the best others by (mean desc, index asc), bit for bit."""
    dims, pairs = _STEP_SPACES[shape]
    space = build_action_space(dims, pairs=pairs)
    snap = _trained(space, rng) if trained else initial_snapshot(space.n_components, D)
    checked = 0
    for seed in range(150):
        x = _context(rng)
        params = PolicyParams(mode=policy.MODE_SQUARECB, local_dims=local_dims,
                              gamma_scale=float(rng.uniform(0.1, 50.0)),
                              explore_all=float(rng.uniform(0.0, 0.2)))
        mask = (rng.random(space.n_components) < 0.85).astype(np.uint8)
        combo_mask = rng.random(space.n_combos) < 0.8
        combo_mask[-1] = True
        top_k = int(rng.integers(1, 8))
        try:
            prob, mean = squarecb_probabilities(snap, space, x, component_mask=mask,
                                                combo_mask=combo_mask, params=params)
        except ValueError:
            continue  # the masks left nothing allowed (decide refuses it too)
        checked += 1
        got = decide(snap, space, x, seed, component_mask=mask, combo_mask=combo_mask,
                     top_k=top_k, params=params)
        u = uniform(rng_state(as_seed(seed)))
        allowed = np.flatnonzero(np.isfinite(mean))
        cum = np.cumsum(prob)
        hits = allowed[u < cum[allowed]]
        best = int(allowed[np.argmax(mean[allowed])])
        choice = int(hits[0]) if hits.size else best
        others = sorted((i for i in allowed.tolist() if i != choice),
                        key=lambda i: (-mean[i], i))[: top_k - 1]
        assert got.choice == choice
        assert got.top_k.tolist() == [choice, *others]
        assert got.propensity == prob[choice]
        assert got.scores.tolist() == prob[[choice, *others]].tolist()
        assert got.mean_scores.tolist() == mean[[choice, *others]].tolist()
        assert got.n_allowed == allowed.size
    assert checked >= 50
