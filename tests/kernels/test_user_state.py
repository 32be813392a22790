"""The ingestion kernel against a slow, obvious NumPy reference on fresh random inputs."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import user_state as u


def reference_records(
    n_users: int,
    rows: np.ndarray,
    slots: np.ndarray,
    times: np.ndarray,
    amounts: np.ndarray,
    hours: np.ndarray,
    half_life: float,
) -> np.ndarray:
    """Compute every user's record from the whole event set at once (order-free)."""
    out = u.new_records(n_users)
    for r in range(n_users):
        mine = rows == r
        if not mine.any():
            continue
        t, k, a, h = times[mine], slots[mine], amounts[mine], hours[mine]
        ref = t.max()
        w = 2.0 ** (-(ref - t) / half_life)
        rec = out[r]
        rec[u.S_EVENT_COUNT] = t.size
        rec[u.S_FIRST_SEEN] = t.min()
        rec[u.S_LAST_SEEN] = ref
        rec[u.S_REF_TIME] = ref
        np.add.at(rec[u.COUNTS : u.COUNTS + u.N_TYPES], k, w)
        np.add.at(rec[u.TOTALS : u.TOTALS + u.N_TYPES], k, 1.0)
        for slot in np.unique(k):
            rec[u.TYPE_LAST + slot] = t[k == slot].max()
        np.add.at(rec[u.HOURS : u.HOURS + u.N_HOURS], h.astype(np.int64), w)
        has = ~np.isnan(a)
        if has.any():
            aa, ta = a[has], t[has]
            rec[u.S_AMOUNT_COUNT] = aa.size
            rec[u.S_AMOUNT_MEAN] = aa.mean()
            rec[u.S_AMOUNT_M2] = ((aa - aa.mean()) ** 2).sum()
            rec[u.S_AMOUNT_MIN] = aa.min()
            rec[u.S_AMOUNT_MAX] = aa.max()
            last = np.flatnonzero(ta == ta.max())[-1]  # ties: the later arrival wins
            rec[u.S_AMOUNT_LAST] = aa[last]
            rec[u.S_AMOUNT_LAST_TIME] = ta[last]
    return out


def random_events(rng: np.random.Generator, n_users: int, n: int):
    rows = rng.integers(0, n_users, n).astype(np.int64)
    slots = rng.integers(0, u.N_TYPES, n).astype(np.int64)
    # Out of order on purpose: event times are shuffled relative to arrival.
    times = 1.7e9 + rng.uniform(0, 30 * 86_400, n)
    amounts = np.where(rng.random(n) < 0.4, rng.lognormal(6, 1.5, n), np.nan)
    hours = rng.uniform(0, 24, n)
    return rows, slots, times, amounts, hours


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_kernel_matches_reference_on_out_of_order_events(seed: int) -> None:
    rng = np.random.default_rng([seed, 20261128])
    n_users, n = 7, 400
    rows, slots, times, amounts, hours = random_events(rng, n_users, n)
    half_life = rng.uniform(3_600, 14 * 86_400)
    state = u.new_records(n_users)
    u.apply_events(state, rows, slots, times, amounts, hours, half_life)
    expected = reference_records(n_users, rows, slots, times, amounts, hours, half_life)
    np.testing.assert_allclose(state, expected, rtol=1e-9, atol=1e-9)


def test_incremental_batches_equal_one_batch() -> None:
    rng = np.random.default_rng()
    rows, slots, times, amounts, hours = random_events(rng, 3, 300)
    whole = u.new_records(3)
    u.apply_events(whole, rows, slots, times, amounts, hours, 86_400.0)
    parts = u.new_records(3)
    for chunk in np.array_split(np.arange(300), 5):
        u.apply_events(
            parts, rows[chunk], slots[chunk], times[chunk], amounts[chunk], hours[chunk], 86_400.0
        )
    np.testing.assert_allclose(parts, whole, rtol=1e-9, atol=1e-9)


def test_read_only_inputs_are_accepted_and_unchanged() -> None:
    rng = np.random.default_rng()
    arrays = random_events(rng, 2, 50)
    copies = [a.copy() for a in arrays]
    for a in arrays:
        a.flags.writeable = False
    state = u.new_records(2)
    u.apply_events(state, *arrays, 3_600.0)
    for a, c in zip(arrays, copies, strict=True):
        np.testing.assert_array_equal(a, c)
    assert state[:, u.S_EVENT_COUNT].sum() == 50


def test_half_life_halves_the_weight_of_an_older_event() -> None:
    state = u.new_records(1)
    rows = np.zeros(2, np.int64)
    slots = np.array([0, 0], np.int64)
    times = np.array([1_000.0, 1_000.0 + 3_600.0])
    u.apply_events(state, rows, slots, times, np.full(2, np.nan), np.zeros(2), 3_600.0)
    assert state[0, u.COUNTS] == pytest.approx(1.5)
    assert state[0, u.S_AMOUNT_COUNT] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.__setitem__(0, np.ones((1, 3))), "state must be float64"),
        (lambda a: a.__setitem__(2, np.array([u.N_TYPES], np.int64)), "type_slots"),
        (lambda a: a.__setitem__(5, np.array([24.0])), "local_hours"),
        (lambda a: a.__setitem__(1, np.array([5], np.int64)), "rows"),
        (lambda a: a.__setitem__(3, np.array([np.inf])), "times"),
        (lambda a: a.__setitem__(4, np.array([1], np.int64)), "amounts"),
    ],
)
def test_wrapper_rejects_bad_inputs(change, message: str) -> None:
    args = [
        u.new_records(1),
        np.zeros(1, np.int64),
        np.zeros(1, np.int64),
        np.ones(1),
        np.ones(1),
        np.zeros(1),
    ]
    change(args)
    with pytest.raises(ValueError, match=message):
        u.apply_events(*args, 3_600.0)


def test_wrapper_rejects_a_read_only_state() -> None:
    state = u.new_records(1)
    state.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        u.apply_events(
            state, np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1), np.ones(1),
            np.zeros(1), 3_600.0,
        )
