"""The insights counting kernels against slow, obvious NumPy references on random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import insights as ki


def random_summaries(rng: np.random.Generator, n_users: int, n_keys: int):
    sizes = rng.integers(0, 25, n_users)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = int(offsets[-1])
    base = rng.integers(400_000, 400_500, n_users)
    hours = (np.repeat(base, sizes) + rng.integers(0, 24 * 40, n)).astype(np.uint32)
    keys = rng.integers(0, n_keys, n).astype(np.uint16)
    counts = rng.integers(1, 4, n).astype(np.uint16)
    amounts = rng.uniform(0, 100, n)
    return offsets, hours, keys, counts, amounts


def reference_outcomes(offsets, hours, keys, counts, amounts, activity, retained_keys,
                       window, value_keys, value_to):
    n = offsets.size - 1
    first = np.full(n, -1, np.int64)
    retained = np.zeros(n, np.int8)
    value = np.zeros(n)
    for u in range(n):
        sl = slice(offsets[u], offsets[u + 1])
        h, k, a = hours[sl].astype(np.int64), keys[sl], amounts[sl]
        act = activity[k].astype(bool)
        if not act.any():
            continue
        first[u] = h[act].min()
        day = (h - first[u]) // 24
        retained[u] = np.any((day >= window[0]) & (day < window[1])
                             & retained_keys[k].astype(bool))
        value[u] = a[(day < value_to) & value_keys[k].astype(bool)].sum()
    return first, retained, value


def _early_grid(offsets, hours, keys, counts, first, u, n_keys, early):
    sl = slice(offsets[u], offsets[u + 1])
    day = (hours[sl].astype(np.int64) - first[u]) // 24
    k, c = keys[sl].astype(np.int64), counts[sl].astype(np.int64)
    early_mask = (day >= 0) & (day < early)
    grid = np.zeros((n_keys, early), np.int64)
    np.add.at(grid, (k[early_mask], day[early_mask]), c[early_mask])
    return grid


def reference_moments(offsets, hours, keys, counts, first, activity, selected, early):
    n_keys = activity.size
    rows = []
    for u in selected:
        if first[u] < 0:
            continue
        act = _early_grid(offsets, hours, keys, counts, first, u, n_keys, early) \
            * activity[:, None]
        rows.append(np.append(act.sum(1), (act.sum(0) > 0).sum()).astype(np.float64))
    x = np.array(rows).reshape(-1, n_keys + 1)
    return x.sum(0), x.T @ x, len(rows)


def reference_tables(offsets, hours, keys, counts, first, outcome, candidate, activity,
                     weights, day_weight, selected, early, max_k, edges):
    n_keys = candidate.size
    n_cand = candidate.max() + 1
    n_strata = edges.size + 1
    reached = np.zeros((n_cand, max_k, n_strata), np.int64)
    reached_pos = np.zeros((n_cand, max_k, n_strata), np.int64)
    base_n = np.zeros(n_strata, np.int64)
    base_pos = np.zeros(n_strata, np.int64)
    for u in selected:
        if first[u] < 0:
            continue
        grid = _early_grid(offsets, hours, keys, counts, first, u, n_keys, early)
        days = ((grid * activity[:, None]).sum(0) > 0).sum()
        score = sum(weights[k] * grid[k].sum() for k in range(n_keys)) + day_weight * days
        h = np.searchsorted(edges, int(np.floor(score + 0.5)), "right")
        base_n[h] += 1
        base_pos[h] += outcome[u]
        for key in range(n_keys):
            cand = candidate[key]
            for j in range(max_k if cand >= 0 else 0):
                if grid[key].sum() >= j + 1:
                    reached[cand, j, h] += 1
                    reached_pos[cand, j, h] += outcome[u]
    return reached, reached_pos, base_n, base_pos


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kernels_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_keys = 300, 9
    offsets, hours, keys, counts, amounts = random_summaries(rng, n_users, n_keys)
    activity = np.ones(n_keys, np.uint8)
    activity[n_keys - 2:] = 0  # flow step marks: they mirror an activity entry
    mirrored = np.isin(keys, [n_keys - 2, n_keys - 1])
    # Each mark repeats the entry before it under an activity key (a flow_abandoned event).
    keys = keys.copy()
    keys[np.flatnonzero(mirrored) - 1] = 1
    keys[0] = 1 if mirrored[0] else keys[0]
    hours = hours.copy()
    idx = np.flatnonzero(mirrored)
    idx = idx[idx > 0]
    hours[idx] = hours[idx - 1]
    counts = counts.copy()
    counts[idx] = counts[idx - 1]
    retained_keys = (rng.random(n_keys) < 0.6).astype(np.uint8)
    value_keys = (rng.random(n_keys) < 0.3).astype(np.uint8)
    got = ki.user_outcomes(offsets, hours, keys, counts, amounts, activity, retained_keys,
                           (10, 30), value_keys, 25)
    want = reference_outcomes(offsets, hours, keys, counts, amounts, activity, retained_keys,
                              (10, 30), value_keys, 25)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w)
    first, retained, _ = got
    candidate = np.where(rng.random(n_keys) < 0.7, 0, -1)
    candidate[0] = 0
    candidate[candidate >= 0] = np.arange((candidate >= 0).sum())
    selected = np.flatnonzero(rng.random(n_users) < 0.8)
    edges = np.array([1, 3, 6, 12])
    early, max_k = int(rng.integers(3, 9)), 5
    sums, cross, n = ki.early_moments(offsets, hours, keys, counts, first, activity,
                                      selected, early)
    want_s, want_c, want_n = reference_moments(offsets, hours, keys, counts, first,
                                               activity, selected, early)
    assert n == want_n
    np.testing.assert_allclose(sums, want_s)
    np.testing.assert_allclose(cross, want_c)
    # Weights with fractions, so rounding the score to a bin is exercised too.
    weights = np.where(activity == 1, rng.uniform(0.0, 1.5, n_keys), 0.0)
    day_weight = float(rng.uniform(0.0, 1.0))
    got_t = ki.threshold_tables(offsets, hours, keys, counts, first, retained, candidate,
                                activity, weights, day_weight, selected, early, max_k, edges)
    want_t = reference_tables(offsets, hours, keys, counts, first, retained, candidate,
                              activity, weights, day_weight, selected, early, max_k, edges)
    for g, w in zip(got_t, want_t, strict=True):
        np.testing.assert_array_equal(g, w)
    reached, _, base_n, _ = got_t
    assert reached.sum() > 0 and retained.sum() > 0  # the test exercised something
    assert (base_n > 0).sum() >= 3  # users fell in several strata


def test_bad_inputs_name_the_argument() -> None:
    offsets = np.array([0, 1])
    one = np.array([1], np.uint16)
    with pytest.raises(ValueError, match="keys: every key"):
        ki.user_outcomes(offsets, np.array([1], np.uint32), np.array([5], np.uint16), one,
                         np.zeros(1), np.ones(2, np.uint8), np.ones(2, np.uint8), (0, 1),
                         np.ones(2, np.uint8), 1)
    with pytest.raises(ValueError, match="hours: dtype"):
        ki.user_outcomes(offsets, np.array([1], np.int64), one, one, np.zeros(1),
                         np.ones(2, np.uint8), np.ones(2, np.uint8), (0, 1),
                         np.ones(2, np.uint8), 1)
