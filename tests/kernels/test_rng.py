"""The kernels' generator: seeded, reproducible, and its normals look normal."""

from __future__ import annotations

import numpy as np
import pytest
from policy_entries import standard_normals

from nudge.kernels import rng
from nudge.kernels.rng import as_seed


def test_standard_normals_look_normal() -> None:
    z = standard_normals(2024, 200_001)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1.0) < 0.01
    assert np.array_equal(z[:10], standard_normals(2024, 10))
    assert standard_normals(2**64 - 1, 3).shape == (3,)


def test_uniforms_look_uniform_and_repeat() -> None:
    state = rng.rng_state(7)
    u = np.array([rng.uniform(state) for _ in range(20_000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    again = rng.rng_state(7)
    assert [rng.uniform(again) for _ in range(5)] == u[:5].tolist()


def test_seeds_are_64_bits() -> None:
    assert as_seed(2**64 - 1) == -1 and as_seed(5) == 5
    with pytest.raises(ValueError, match="seed: must be an integer"):
        as_seed(1.5)
    with pytest.raises(ValueError, match="seed: must fit in 64 bits"):
        as_seed(2**64)


def test_warm_up_runs() -> None:
    rng.warm_up()
