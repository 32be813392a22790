"""Counting kernels of the insights (which early behaviours go with retention, churn, value).

A user's insights summary is a list of entries ``(hour, key, count, amount)``: ``hour`` is
the event time in whole hours since the epoch, ``key`` an event type or an abandoned flow
step (the store's insights key registry), ``count`` how many events, ``amount`` the sum
of their ``amount`` property. The entries of many users arrive concatenated, user ``u``
owning ``[offsets[u], offsets[u + 1])``, in no particular order (out-of-order events are
appended as they come). Days are counted in whole 24-hour periods from the user's first
entry: day 0 is the first 24 hours.

Three kernels:

- ``user_outcomes``: per user, the first hour, whether the user was active in a window of
  days (any activity key, or only some keys), and a value (the amount summed over some keys
  in a window of days).
- ``early_moments``: the sums and cross-products of every user's early counts per
  activity key and days active, from which ``server/offline/insights_activity.py`` weighs
  the activity score (one pass, no per-user matrix: at a million users that matrix would
  be hundreds of megabytes).
- ``threshold_tables``: the counting behind every driver: for each candidate key ``c``,
  threshold ``k`` and activity stratum ``h``, how many users reached ``k`` events of ``c``
  in the early window and how many of those had the outcome; plus the stratum sizes. The
  stratum of a user is the bin of their early activity score (a weighted sum of their
  early counts per key and days active, the candidate's own events included: the score is
  an estimate of how active the user is, and the candidate's events are part of that
  evidence; the docstring of ``server/offline/insights.py`` says why), so a candidate is
  compared against users who were about as active; that is what lets an estimator tell a
  behaviour that adds retention from one that merely marks an active user.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types

from nudge.kernels import jit

u4_1d_ro = jit.array(types.uint32, 1, readonly=True)
u2_1d_ro = jit.array(types.uint16, 1, readonly=True)
i1_1d = jit.array(types.int8, 1)
i1_1d_ro = jit.array(types.int8, 1, readonly=True)
i8_3d = jit.array(jit.i8, 3)
i8_2d = jit.array(jit.i8, 2)

HOURS_PER_DAY = 24


@njit(
    types.Tuple((jit.i8_1d, i1_1d, jit.f8_1d))(
        jit.i8_1d_ro, u4_1d_ro, u2_1d_ro, u2_1d_ro, jit.f8_1d_ro,
        jit.u1_1d_ro, jit.u1_1d_ro, jit.i8, jit.i8, jit.u1_1d_ro, jit.i8,
    ),
    **jit.NOGIL,
)
def _user_outcomes(offsets, hours, keys, counts, amounts, activity, retained_keys,
                   retained_from, retained_to, value_keys, value_to):  # pragma: no cover
    n = offsets.size - 1
    first = np.empty(n, np.int64)
    retained = np.zeros(n, np.int8)
    value = np.zeros(n, np.float64)
    for u in range(n):
        lo, hi = offsets[u], offsets[u + 1]
        f = np.int64(-1)
        for i in range(lo, hi):
            if activity[keys[i]] and (f < 0 or hours[i] < f):
                f = np.int64(hours[i])
        first[u] = f
        if f < 0:
            continue
        for i in range(lo, hi):
            day = (np.int64(hours[i]) - f) // HOURS_PER_DAY
            k = keys[i]
            if retained_from <= day < retained_to and retained_keys[k] and counts[i] > 0:
                retained[u] = 1
            if day < value_to and value_keys[k]:
                value[u] += amounts[i]
    return first, retained, value


def user_outcomes(
    offsets: np.ndarray, hours: np.ndarray, keys: np.ndarray, counts: np.ndarray,
    amounts: np.ndarray, activity: np.ndarray, retained_keys: np.ndarray,
    retained_days: tuple[int, int], value_keys: np.ndarray, value_days: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user: first hour (-1: no activity entry), retained (int8: an entry of a
    ``retained_keys`` key on a day in ``[retained_days)``), value (sum of ``amount`` over
    ``value_keys`` entries on days before ``value_days``). ``activity`` marks the keys that
    are events of the user (not the extra abandoned-flow entries): only they set day 0."""
    offsets, hours, keys, counts, amounts = _entries(offsets, hours, keys, counts, amounts)
    n_keys = activity.shape[0]
    _check_keys(keys, n_keys)
    return _user_outcomes(
        offsets, hours, keys, counts, amounts, jit.readonly(jit.mask_array(activity, "activity",
                                                                          n_keys)),
        jit.readonly(jit.mask_array(retained_keys, "retained_keys", n_keys)),
        int(retained_days[0]), int(retained_days[1]),
        jit.readonly(jit.mask_array(value_keys, "value_keys", n_keys)), int(value_days),
    )


@njit(
    types.Tuple((jit.f8_1d, jit.f8_2d, jit.i8))(
        jit.i8_1d_ro, u4_1d_ro, u2_1d_ro, u2_1d_ro, jit.i8_1d_ro, jit.u1_1d_ro,
        jit.i8_1d_ro, jit.i8,
    ),
    **jit.NOGIL,
)
def _early_moments(offsets, hours, keys, counts, first, activity, selected,
                   early_days):  # pragma: no cover
    n_keys = activity.size
    m = n_keys + 1  # the last column: days active
    sums = np.zeros(m, np.float64)
    cross = np.zeros((m, m), np.float64)
    key_count = np.zeros(n_keys, np.int64)
    day_total = np.zeros(early_days, np.int64)
    touched = np.empty(n_keys + 1, np.int64)
    n_users = np.int64(0)
    for s in range(selected.size):
        u = selected[s]
        f = first[u]
        if f < 0:
            continue
        n_users += 1
        n_touched = 0
        for i in range(offsets[u], offsets[u + 1]):
            day = (np.int64(hours[i]) - f) // HOURS_PER_DAY
            k = np.int64(keys[i])
            c = np.int64(counts[i])
            if day < 0 or day >= early_days or not activity[k] or c == 0:
                continue
            if key_count[k] == 0:
                touched[n_touched] = k
                n_touched += 1
            key_count[k] += c
            day_total[day] += c
        days = np.int64(0)
        for d in range(early_days):
            if day_total[d] > 0:
                days += 1
            day_total[d] = 0
        n_days = np.float64(days)
        # Only the keys the user touched (and days) are non-zero: sums and cross-products
        # over them, the days column last.
        for a in range(n_touched):
            ka = touched[a]
            xa = np.float64(key_count[ka])
            sums[ka] += xa
            cross[ka, n_keys] += xa * n_days
            for b in range(n_touched):
                kb = touched[b]
                cross[ka, kb] += xa * np.float64(key_count[kb])
        sums[n_keys] += n_days
        cross[n_keys, n_keys] += n_days * n_days
        for a in range(n_touched):
            key_count[touched[a]] = 0
    for a in range(n_keys):
        cross[n_keys, a] = cross[a, n_keys]
    return sums, cross, n_users


def early_moments(
    offsets: np.ndarray, hours: np.ndarray, keys: np.ndarray, counts: np.ndarray,
    first: np.ndarray, activity: np.ndarray, selected: np.ndarray, early_days: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """First and second moments of the selected users' early activity, for the activity
    score's weights: per user the vector ``x`` = (events of each activity key in the first
    ``early_days`` days, days active among them); returns ``(Σ x, Σ x xᵀ, users)`` over
    the selected users with a first hour (the last index is days active)."""
    if early_days < 1:
        raise ValueError(f"early_days: must be >= 1, got {early_days}")
    offsets, hours, keys, counts, _ = _entries(offsets, hours, keys, counts, None)
    n_users = offsets.size - 1
    n_keys = activity.shape[0]
    _check_keys(keys, n_keys)
    first = _per_user(first, "first", np.int64, n_users)
    selected = _selected(selected, n_users)
    sums, cross, n = _early_moments(
        offsets, hours, keys, counts, jit.readonly(first),
        jit.readonly(jit.mask_array(activity, "activity", n_keys)), jit.readonly(selected),
        int(early_days))
    return sums, cross, int(n)


@njit(
    types.Tuple((i8_3d, i8_3d, jit.i8_1d, jit.i8_1d))(
        jit.i8_1d_ro, u4_1d_ro, u2_1d_ro, u2_1d_ro, jit.i8_1d_ro, i1_1d_ro,
        jit.i8_1d_ro, jit.u1_1d_ro, jit.f8_1d_ro, jit.f8, jit.i8_1d_ro, jit.i8, jit.i8,
        jit.i8_1d_ro,
    ),
    **jit.NOGIL,
)
def _threshold_tables(offsets, hours, keys, counts, first, outcome, candidate, activity,
                      weights, day_weight, selected, early_days, max_k,
                      count_edges):  # pragma: no cover
    n_keys = candidate.size
    n_cand = 0
    for k in range(n_keys):
        if candidate[k] >= 0:
            n_cand = max(n_cand, candidate[k] + 1)
    n_strata = count_edges.size + 1
    reached = np.zeros((n_cand, max_k, n_strata), np.int64)
    reached_pos = np.zeros((n_cand, max_k, n_strata), np.int64)
    base_n = np.zeros(n_strata, np.int64)
    base_pos = np.zeros(n_strata, np.int64)
    key_count = np.zeros(n_keys, np.int64)
    day_total = np.zeros(early_days, np.int64)
    touched = np.empty(n_keys, np.int64)
    for s in range(selected.size):
        u = selected[s]
        f = first[u]
        if f < 0:
            continue
        y = np.int64(outcome[u])
        n_touched = 0
        score = np.float64(0.0)
        for i in range(offsets[u], offsets[u + 1]):
            day = (np.int64(hours[i]) - f) // HOURS_PER_DAY
            if day < 0 or day >= early_days:
                continue
            k = np.int64(keys[i])
            c = np.int64(counts[i])
            if key_count[k] == 0 and c > 0:
                touched[n_touched] = k
                n_touched += 1
            key_count[k] += c
            score += weights[k] * c
            if activity[k]:
                day_total[day] += c
        for d in range(early_days):
            if day_total[d] > 0:
                score += day_weight
            day_total[d] = 0
        h = np.searchsorted(count_edges, np.int64(np.floor(score + 0.5)), side="right")
        base_n[h] += 1
        base_pos[h] += y
        for t in range(n_touched):
            k = touched[t]
            c = candidate[k]
            if c >= 0:
                for j in range(min(key_count[k], max_k)):
                    reached[c, j, h] += 1
                    reached_pos[c, j, h] += y
            key_count[k] = 0
    return reached, reached_pos, base_n, base_pos


def threshold_tables(
    offsets: np.ndarray, hours: np.ndarray, keys: np.ndarray, counts: np.ndarray,
    first: np.ndarray, outcome: np.ndarray, candidate: np.ndarray, activity: np.ndarray,
    weights: np.ndarray, day_weight: float, selected: np.ndarray, early_days: int,
    max_k: int, count_edges: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 2x2 tables of every candidate x threshold x early-activity stratum.

    ``candidate[key]`` is the key's row in the result (-1: not a candidate); ``selected``
    the users (indexes) to count; ``outcome`` 0/1 per user. A user's activity score is
    ``Σ weights[key] * events of key + day_weight * days active`` over the first
    ``early_days`` days (days active: days with an ``activity`` key's event), all of the
    user's events included; the stratum is the bin of the score rounded to a whole number
    (``count_edges`` ascending: bin ``b`` holds ``count_edges[b-1] <= score <
    count_edges[b]``).

    Returns ``reached[c, k-1, h]`` (users of stratum ``h`` with >= k events of c),
    ``reached_pos`` (of those, with the outcome), ``base_n[h]``, ``base_pos[h]`` (users
    and outcomes per stratum).
    """
    if early_days < 1:
        raise ValueError(f"early_days: must be >= 1, got {early_days}")
    if max_k < 1:
        raise ValueError(f"max_k: must be >= 1, got {max_k}")
    if not np.isfinite(day_weight):
        raise ValueError("day_weight: must be finite")
    offsets, hours, keys, counts, _ = _entries(offsets, hours, keys, counts, None)
    n_users = offsets.size - 1
    n_keys = candidate.shape[0]
    _check_keys(keys, n_keys)
    first = _per_user(first, "first", np.int64, n_users)
    outcome = _per_user(outcome, "outcome", np.int8, n_users)
    selected = _selected(selected, n_users)
    edges = jit.typed_array(count_edges, "count_edges", np.int64, 1, cast_int=True)
    if edges.size and (np.diff(edges) <= 0).any():
        raise ValueError("count_edges: must be strictly ascending")
    return _threshold_tables(
        offsets, hours, keys, counts, jit.readonly(first), jit.readonly(outcome),
        jit.readonly(jit.typed_array(candidate, "candidate", np.int64, 1, cast_int=True)),
        jit.readonly(jit.mask_array(activity, "activity", n_keys)),
        jit.readonly(jit.float_vector(weights, "weights", n_keys)), float(day_weight),
        jit.readonly(selected), int(early_days), int(max_k), jit.readonly(edges),
    )


def _per_user(a: Any, name: str, dtype: type, n_users: int) -> np.ndarray:
    out = jit.typed_array(a, name, dtype, 1, cast_int=True)
    if out.shape[0] != n_users:
        raise ValueError(f"{name}: one value per user ({n_users})")
    return out


def _selected(selected: Any, n_users: int) -> np.ndarray:
    out = jit.typed_array(selected, "selected", np.int64, 1, cast_int=True)
    if out.size and (out.min() < 0 or out.max() >= n_users):
        raise ValueError(f"selected: user indexes must be in [0, {n_users})")
    return out


def _entries(offsets: Any, hours: Any, keys: Any, counts: Any, amounts: Any) -> tuple[Any, ...]:
    offsets = jit.readonly(jit.typed_array(offsets, "offsets", np.int64, 1, cast_int=True))
    if offsets.size < 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise ValueError("offsets: must start at 0 and never decrease")
    n = int(offsets[-1])
    out = [offsets]
    for name, arr, dtype in (("hours", hours, np.uint32), ("keys", keys, np.uint16),
                             ("counts", counts, np.uint16), ("amounts", amounts, np.float64)):
        if arr is None:
            out.append(None)
            continue
        a = jit.typed_array(arr, name, dtype, 1)
        if a.shape[0] != n:
            raise ValueError(f"{name}: {n} entries (offsets[-1]), got {a.shape[0]}")
        out.append(jit.readonly(a))
    return tuple(out)


def _check_keys(keys: np.ndarray, n_keys: int) -> None:
    if keys.size and int(keys.max()) >= n_keys:
        raise ValueError(f"keys: every key must be < {n_keys} (the masks' length)")


def warm_up() -> None:
    """Call each kernel once so no request pays for compilation."""
    offsets = np.array([0, 2], np.int64)
    hours = np.array([10, 40], np.uint32)
    keys = np.array([0, 1], np.uint16)
    counts = np.array([1, 2], np.uint16)
    amounts = np.array([0.0, 1.0])
    ones = np.ones(2, np.uint8)
    first, retained, _ = user_outcomes(offsets, hours, keys, counts, amounts, ones, ones,
                                       (1, 2), ones, 2)
    early_moments(offsets, hours, keys, counts, first, ones, np.array([0]), 2)
    threshold_tables(offsets, hours, keys, counts, first, retained, np.array([0, 1]), ones,
                     np.ones(2), 1.0, np.array([0]), 2, 2, np.array([1, 2]))
