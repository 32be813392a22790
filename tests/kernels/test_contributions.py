"""top_feature_terms (the FEATURE reasons of every Decide) against a slow NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels.learner import initial_snapshot, update_posteriors
from nudge.kernels.policy import build_action_space, top_feature_terms

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
