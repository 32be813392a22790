"""The policy's model as deciders read it: one consistent, read-only version of every
component's posterior.

The learner (``nudge.kernels.learner``) never writes into the arrays being read: it returns
a *new* snapshot (``version + 1``) and the server publishes it by swapping one reference
(atomic in CPython), so a decision never sees a half-applied update. Arrays are validated
once, when a snapshot is built; per request only the context and masks are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nudge.kernels.jit import frozen_array

# Prior variance of the logistic link's shared intercept (logit units: wide enough for any
# base rate from 0.1% to 99.9% within about three standard deviations).
OFFSET_PRIOR_VARIANCE = 4.0


@dataclass(frozen=True)
class PolicySnapshot:
    """One consistent, read-only version of every component's posterior.

    All float64, C-contiguous, read-only (C components, d features, P = d(d+1)/2):

    - ``mean_t[d, C]``: posterior means μ_c, feature-major, so the policy computes all
      ``μ_c·x`` in one vectorised pass;
    - ``factor_t[P, C]``: for each component the upper-triangular ``F_c`` with
      ``A_c⁻¹ = F_c F_cᵀ`` (the covariance up to the noise variance v²), packed row by row
      (``(j, i)`` for ``j <= i``), component innermost. A sampled score's variance is
      ``v²·|F_cᵀx|²``: products, no triangular solves;
    - ``precision[C, d, d]`` = A_c, ``b[C, d]``, ``n_eff[C]`` effective observation counts
      (the learner's state; the policy reads only ``mean_t`` and ``factor_t``);
    - ``prior[C, d]``: each component's diagonal prior precision, the one ``A_c`` holds
      (``A_c = data + diag(prior_c)``; forgetting pulls toward it). Left out (None) it is
      ``prior_precision`` on the bias and ``slope_precision`` elsewhere for every
      component; the learner may learn it per group of components
      (``nudge.kernels.learner.learn_group_prior``).
    """

    mean_t: np.ndarray
    factor_t: np.ndarray
    precision: np.ndarray
    b: np.ndarray
    n_eff: np.ndarray
    prior_precision: float
    version: int = 0
    # Prior precision of every feature but the bias (None: ``prior_precision``).
    slope_precision: float | None = None
    # The logistic link's shared intercept and its variance (the policy never reads them:
    # every arm has the same; see ``nudge.kernels.learner._update_logistic_kernel``).
    offset: float = 0.0
    offset_var: float = 0.0
    prior: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.slope_precision is None:
            object.__setattr__(self, "slope_precision", self.prior_precision)
        for name in ("prior_precision", "slope_precision"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0.0):
                raise ValueError(f"{name}: must be finite and > 0, got {value!r}")
        if not (np.isfinite(self.offset_var) and self.offset_var >= 0.0):
            raise ValueError(f"offset_var: must be finite and >= 0 (0: no shared intercept), "
                             f"got {self.offset_var!r}")
        if not np.isfinite(self.offset):
            raise ValueError(f"offset: must be finite, got {self.offset!r}")
        mean_t = frozen_array(self.mean_t, "mean_t", np.float64, 2)
        d, n_comp = mean_t.shape
        if n_comp < 1 or d < 1:
            raise ValueError(f"mean_t: needs at least one feature and one component, "
                             f"got {mean_t.shape}")
        shapes = {"factor_t": (d * (d + 1) // 2, n_comp), "precision": (n_comp, d, d),
                  "b": (n_comp, d), "n_eff": (n_comp,)}
        object.__setattr__(self, "mean_t", mean_t)
        for name, shape in shapes.items():
            arr = frozen_array(getattr(self, name), name, np.float64, len(shape))
            if arr.shape != shape:
                raise ValueError(f"{name}: shape must be {shape} to match mean_t "
                                 f"{mean_t.shape}, got {arr.shape}")
            object.__setattr__(self, name, arr)
        if self.prior is None:
            uniform = np.full((n_comp, d), float(self.slope_precision))  # type: ignore[arg-type]
            uniform[:, 0] = self.prior_precision
            object.__setattr__(self, "prior", uniform)
        prior = frozen_array(self.prior, "prior", np.float64, 2)
        if prior.shape != (n_comp, d):
            raise ValueError(f"prior: shape must be {(n_comp, d)} to match mean_t "
                             f"{mean_t.shape}, got {prior.shape}")
        if not (np.isfinite(prior).all() and (prior > 0.0).all()):
            raise ValueError("prior: every prior precision must be finite and > 0")
        object.__setattr__(self, "prior", prior)

    @property
    def n_components(self) -> int:
        return int(self.mean_t.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.mean_t.shape[0])

    @property
    def mu(self) -> np.ndarray:
        """Posterior means ``[C, d]`` (a view)."""
        return self.mean_t.T

    def cov_factor(self, component: int) -> np.ndarray:
        """``F_c`` unpacked to ``[d, d]`` (upper-triangular, ``A_c⁻¹ = F_c F_cᵀ``)."""
        d = self.n_features
        out = np.zeros((d, d))
        out[np.triu_indices(d)] = self.factor_t[:, component]
        return out
