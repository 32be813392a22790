"""Score contributions against slow NumPy references: the terms themselves, the top few
(the FEATURE reasons of every Decide) and the per-component explanation."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import contributions
from nudge.kernels.action_space import build_action_space
from nudge.kernels.contributions import explain, score_contributions, top_feature_terms
from nudge.kernels.learner import initial_snapshot, update_posteriors
from nudge.kernels.policy import decide

D = 5


def _reference(mean_t: np.ndarray, weight: np.ndarray, row: np.ndarray, x: np.ndarray,
               top: int) -> list[tuple[int, int, float]]:
    """Every (component, feature, (μ·x)·w) of the combination, largest |term| first, ties
    in the combination's order then feature order (a stable sort)."""
    terms = [(int(c), j, (mean_t[j, c] * x[j]) * weight[c]) for c in row[row >= 0]
             for j in range(mean_t.shape[0])]
    order = sorted(range(len(terms)), key=lambda i: -abs(terms[i][2]))
    return [terms[i] for i in order[:top]]


@pytest.mark.parametrize("ties", [False, True])
def test_matches_reference(ties: bool) -> None:
    rng = np.random.default_rng(7)
    space = build_action_space((3, 4, 2), pairs=((1, 2),))
    snap = initial_snapshot(space.n_components, D)
    for trial in range(200):
        n = 40
        xs = rng.normal(size=(n, D))
        xs[:, 0] = 1.0
        chosen = rng.integers(0, space.n_combos, n)
        trained = update_posteriors(snap, space.combo_components, chosen, xs, rng.random(n))
        x = rng.integers(-1, 2, size=D).astype(float) if ties else rng.normal(size=D)
        x[0] = 1.0
        if ties:  # one shared update: every component of the combination ties
            trained = update_posteriors(snap, space.combo_components, chosen[:1], xs[:1],
                                        np.ones(1))
        combo = int(rng.integers(0, space.n_combos))
        top = int(rng.integers(1, 8))
        components, features, terms = top_feature_terms(trained, space, x, combo, top)
        got = list(zip(components.tolist(), features.tolist(), terms.tolist(), strict=True))
        row = space.combo_components[combo]
        assert got == _reference(trained.mean_t, space.component_weight, row, x, top), trial


def test_validation() -> None:
    space = build_action_space((2, 2))
    snap = initial_snapshot(space.n_components, D)
    x = np.ones(D)
    with pytest.raises(ValueError, match="combo"):
        top_feature_terms(snap, space, x, space.n_combos)
    with pytest.raises(ValueError, match="top"):
        top_feature_terms(snap, space, x, 0, 0)
    with pytest.raises(ValueError, match="context"):
        top_feature_terms(snap, space, x[:-1], 0)


def test_score_contributions_match_reference() -> None:
    rng = np.random.default_rng(11)
    space = build_action_space((3, 4, 2), pairs=((0, 2),))
    snap = initial_snapshot(space.n_components, D)
    for _ in range(50):
        xs = rng.normal(size=(30, D))
        chosen = rng.integers(0, space.n_combos, 30)
        trained = update_posteriors(snap, space.combo_components, chosen, xs, rng.random(30))
        x = rng.normal(size=D)
        combo = int(rng.integers(0, space.n_combos))
        components, terms = score_contributions(trained, space, x, combo)
        row = space.combo_components[combo]
        assert components.tolist() == row[row >= 0].tolist()
        for c, got in zip(components, terms, strict=True):
            assert np.array_equal(got, (trained.mu[c] * x) * space.component_weight[c])


def test_explain_contributions() -> None:
    rng = np.random.default_rng(20240611)
    space = build_action_space((3, 4, 2), pairs=((1, 2),))
    d = 6
    xs = rng.normal(size=(300, d))
    xs[:, 0] = 1.0
    snap = update_posteriors(initial_snapshot(space.n_components, d), space.combo_components,
                             rng.integers(0, space.n_combos, 300), xs, rng.random(300))
    x = rng.normal(size=d)
    x[0] = 1.0
    got = decide(snap, space, x, 3, propensity=False)
    exp = explain(snap, space, x, got.choice, top_components=2, top_features=3)
    assert exp.mean_score == pytest.approx(got.mean_scores[0])
    assert exp.component_scores.sum() == pytest.approx(got.mean_scores[0])
    assert np.all(np.diff(np.abs(exp.component_scores)) <= 0)
    row = space.combo_components[got.choice]
    assert sorted(exp.components.tolist()) == sorted(row[row >= 0].tolist())
    assert len(exp.feature) == 6
    for c, j, v in zip(exp.feature_component, exp.feature, exp.feature_score, strict=True):
        assert v == pytest.approx(space.component_weight[c] * snap.mu[c, j] * x[j])


def test_explain_validation() -> None:
    space = build_action_space((2, 2))
    snap = initial_snapshot(space.n_components, D)
    with pytest.raises(ValueError, match="combo"):
        explain(snap, space, np.ones(D), -1)
    with pytest.raises(ValueError, match="context"):
        score_contributions(snap, space, np.ones(D + 1), 0)


def test_warm_up_runs() -> None:
    contributions.warm_up()
