"""PolicySnapshot: validated once, read-only, consistent shapes."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels.learner import initial_snapshot
from nudge.kernels.snapshot import PolicySnapshot


def _arrays(d: int = 3, n_comp: int = 2) -> dict[str, np.ndarray]:
    snap = initial_snapshot(n_comp, d)
    return {name: getattr(snap, name).copy()
            for name in ("mean_t", "factor_t", "precision", "b", "n_eff")}


def test_arrays_become_read_only_views() -> None:
    arrays = _arrays()
    snap = PolicySnapshot(**arrays, prior_precision=1.0)
    assert all(not getattr(snap, name).flags.writeable for name in arrays)
    assert arrays["mean_t"].flags.writeable  # the caller's arrays are left alone
    assert (snap.n_components, snap.n_features) == (2, 3)
    assert np.array_equal(snap.cov_factor(1), np.eye(3))


def test_validation_errors() -> None:
    arrays = _arrays()
    with pytest.raises(ValueError, match="prior_precision"):
        PolicySnapshot(**arrays, prior_precision=0.0)
    with pytest.raises(ValueError, match="factor_t: shape must be"):
        PolicySnapshot(**(arrays | {"factor_t": arrays["factor_t"][:-1]}), prior_precision=1.0)
    bad = arrays["b"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="b: must be finite"):
        PolicySnapshot(**(arrays | {"b": bad}), prior_precision=1.0)
    with pytest.raises(ValueError, match="mean_t: dtype must be float64"):
        PolicySnapshot(**(arrays | {"mean_t": arrays["mean_t"].astype(np.float32)}),
                       prior_precision=1.0)


def test_prior_defaults_per_component_and_is_checked() -> None:
    arrays = _arrays()
    snap = PolicySnapshot(**arrays, prior_precision=0.5, slope_precision=3.0)
    assert np.array_equal(snap.prior, [[0.5, 3.0, 3.0], [0.5, 3.0, 3.0]])
    assert not snap.prior.flags.writeable
    with pytest.raises(ValueError, match="prior: shape must be"):
        PolicySnapshot(**arrays, prior_precision=1.0, prior=np.ones((3, 2)))
    with pytest.raises(ValueError, match="prior: every prior precision"):
        PolicySnapshot(**arrays, prior_precision=1.0, prior=np.zeros((2, 3)))

