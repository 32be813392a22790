"""Score contributions: what each component and feature added to a combination's mean score.

A combination's mean score is ``Σ_c Σ_j w_c·μ_c[j]·x[j]`` over its components ``c`` and the
context's features ``j``; each term says how much one feature pushed one component.
:func:`_combo_terms` is the one place those terms are computed: Decide's FEATURE reasons
(:func:`top_feature_terms_trusted`, the largest few, inside every request) and the audit
view (:func:`explain`, every component and its top features) both read them from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.action_space import ActionSpace, build_action_space
from nudge.kernels.jit import float_vector
from nudge.kernels.learner import initial_snapshot
from nudge.kernels.policy import insert_ranked
from nudge.kernels.snapshot import PolicySnapshot

# --------------------------------------------------------------------------- kernels


@njit(jit.i8(jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.i4_1d_ro, jit.f8_2d), **jit.NOGIL)
def _combo_terms(mean_t, x, weight, row, out):
    """``out[r, j] = (μ_c[j]·x[j])·w_c`` for the ``r``-th component ``c`` of one combination
    (``row``, -1 padded) and every feature ``j``. Returns the number of components."""
    d = mean_t.shape[0]
    k = 0
    while k < row.shape[0] and row[k] >= 0:
        c = row[k]
        wc = weight[c]
        for j in range(d):
            out[k, j] = (mean_t[j, c] * x[j]) * wc
        k += 1
    return k


@njit(
    jit.i8(jit.f8_2d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.i4_1d_ro, jit.i8_1d, jit.i8_1d, jit.f8_1d),
    **jit.GIL,
)
def _top_feature_terms(mean_t, x, weight, row, out_component, out_feature, out_score):
    """The ``len(out_score)`` largest terms of :func:`_combo_terms` by absolute value,
    largest first (ties: earlier component in the row, then lower feature). Returns how many
    were filled (fewer only when the combination has fewer terms).

    Keeps the GIL: it runs for a few microseconds inside every Decide, and releasing it
    while another thread runs Python (the decision flusher, grpc's poller) hands that thread
    the GIL until its switch interval ends (measured: 3,000 calls beside a busy thread, mean
    425 µs released against 40 µs kept; median 29 against 31)."""
    d = mean_t.shape[0]
    terms = np.empty((row.shape[0], d))
    k = _combo_terms(mean_t, x, weight, row, terms)
    size = np.empty(out_score.shape[0])
    flat = np.empty(out_score.shape[0], dtype=np.int64)  # r * d + j
    filled = 0
    for r in range(k):
        for j in range(d):
            filled = insert_ranked(size, flat, filled, abs(terms[r, j]), r * d + j)
    for t in range(filled):
        r = flat[t] // d
        j = flat[t] - r * d
        out_component[t] = row[r]
        out_feature[t] = j
        out_score[t] = terms[r, j]
    return filled


# --------------------------------------------------------------------------- public API


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


def score_contributions(
    snapshot: PolicySnapshot, space: ActionSpace, context: np.ndarray, combo: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(components[k], terms[k, d])``: the components of ``combo`` in the combination's
    order and each one's terms ``w_c · μ_c[j] · x[j]`` (a row sums to the component's
    weighted mean score, the whole matrix to the combination's)."""
    x = float_vector(context, "context", snapshot.n_features)
    _check_combo(space, combo)
    row = space.combo_components[combo]
    terms = np.empty((row.shape[0], snapshot.n_features))
    k = _combo_terms(snapshot.mean_t, x, space.component_weight, row, terms)
    return row[:k].astype(np.int64), terms[:k]


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
    comps, per_feature = score_contributions(snapshot, space, context, combo)
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
    x = float_vector(context, "context", snapshot.n_features)
    _check_combo(space, combo)
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


def _check_combo(space: ActionSpace, combo: int) -> None:
    if not 0 <= combo < space.n_combos:
        raise ValueError(f"combo: must be in [0, {space.n_combos}), got {combo}")


def warm_up() -> None:
    """Call the kernel Decide uses once on tiny inputs (load from cache before SERVING)."""
    space = build_action_space((2, 2), pairs=((0, 1),))
    snap = initial_snapshot(space.n_components, 2)
    top_feature_terms(snap, space, np.array([1.0, 0.5]), 0, 2)
