"""Per-user behavioural state: the fixed record layout and the ingestion kernel.

A user's state is one float64 vector of ``RECORD_LEN`` values (``RECORD_LEN * 8`` bytes,
well inside one 4 KiB LMDB page), stored as raw bytes. The server reads it zero-copy with
``np.frombuffer`` and hands plain arrays to kernels; it is never viewed as a structured
array (writing through one over an LMDB buffer can crash the process).

Layout (offsets in float64 slots)::

    [0, N_SCALARS)               scalars, indexed by the S_* constants below
    [COUNTS, COUNTS + N_TYPES)   decayed count per event type, as of S_REF_TIME
    [TOTALS, TOTALS + N_TYPES)   events ever stored per event type
    [TYPE_LAST, ... + N_TYPES)   last event time per type (epoch seconds), 0 if none
    [HOURS, HOURS + 24)          decayed count per local hour of day, as of S_REF_TIME

Decayed counts are kept as of a reference time: the latest event time seen. A count is the
sum over events of ``2 ** (-(ref - t) / half_life)``, which does not depend on the order
events arrive in, so late and out-of-order events land exactly where they belong.
Event types map to slots through a registry kept by the store; the last slot collects
every type beyond the first ``N_TYPES - 1``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nudge.kernels import jit

N_TYPES = 64
OTHER_TYPE_SLOT = N_TYPES - 1
N_HOURS = 24
N_SCALARS = 16

S_EVENT_COUNT = 0
S_FIRST_SEEN = 1
S_LAST_SEEN = 2
S_REF_TIME = 3
S_AMOUNT_COUNT = 4
S_AMOUNT_MEAN = 5
S_AMOUNT_M2 = 6
S_AMOUNT_MIN = 7
S_AMOUNT_MAX = 8
S_AMOUNT_LAST = 9
S_AMOUNT_LAST_TIME = 10

COUNTS = N_SCALARS
TOTALS = COUNTS + N_TYPES
TYPE_LAST = TOTALS + N_TYPES
HOURS = TYPE_LAST + N_TYPES
RECORD_LEN = HOURS + N_HOURS
RECORD_BYTES = RECORD_LEN * 8


# Event columns come writable (built per batch) or read-only; the kernel takes either.
@njit(
    [
        jit.void(jit.f8_2d, rows, slots, times, amounts, hours, jit.f8)
        for rows, slots, times, amounts, hours in (
            (jit.i8_1d, jit.i8_1d, jit.f8_1d, jit.f8_1d, jit.f8_1d),
            (jit.i8_1d_ro, jit.i8_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro),
        )
    ],
    **jit.NOGIL,
)
def _apply_events(state, rows, type_slots, times, amounts, local_hours, half_life):
    n = rows.shape[0]
    for i in range(n):
        r = rows[i]
        t = times[i]
        k = type_slots[i]
        if state[r, S_EVENT_COUNT] == 0.0:
            state[r, S_FIRST_SEEN] = t
            state[r, S_LAST_SEEN] = t
            state[r, S_REF_TIME] = t
        ref = state[r, S_REF_TIME]
        if t > ref:
            shrink = 2.0 ** (-(t - ref) / half_life)
            for j in range(N_TYPES):
                state[r, COUNTS + j] *= shrink
            for j in range(N_HOURS):
                state[r, HOURS + j] *= shrink
            state[r, S_REF_TIME] = t
            ref = t
        weight = 2.0 ** (-(ref - t) / half_life)
        state[r, COUNTS + k] += weight
        state[r, TOTALS + k] += 1.0
        if t > state[r, TYPE_LAST + k]:
            state[r, TYPE_LAST + k] = t
        hour = int(local_hours[i]) % N_HOURS
        state[r, HOURS + hour] += weight
        state[r, S_EVENT_COUNT] += 1.0
        if t < state[r, S_FIRST_SEEN]:
            state[r, S_FIRST_SEEN] = t
        if t > state[r, S_LAST_SEEN]:
            state[r, S_LAST_SEEN] = t
        a = amounts[i]
        if not np.isnan(a):
            c = state[r, S_AMOUNT_COUNT] + 1.0
            if c == 1.0:
                state[r, S_AMOUNT_MIN] = a
                state[r, S_AMOUNT_MAX] = a
            else:
                state[r, S_AMOUNT_MIN] = min(state[r, S_AMOUNT_MIN], a)
                state[r, S_AMOUNT_MAX] = max(state[r, S_AMOUNT_MAX], a)
            delta = a - state[r, S_AMOUNT_MEAN]
            state[r, S_AMOUNT_MEAN] += delta / c
            state[r, S_AMOUNT_M2] += delta * (a - state[r, S_AMOUNT_MEAN])
            state[r, S_AMOUNT_COUNT] = c
            if c == 1.0 or t >= state[r, S_AMOUNT_LAST_TIME]:
                state[r, S_AMOUNT_LAST] = a
                state[r, S_AMOUNT_LAST_TIME] = t


def new_records(n: int) -> np.ndarray:
    """Fresh, writable state matrix for ``n`` users who have no record yet."""
    return np.zeros((n, RECORD_LEN), dtype=np.float64)


def apply_events(
    state: np.ndarray,
    rows: np.ndarray,
    type_slots: np.ndarray,
    times: np.ndarray,
    amounts: np.ndarray,
    local_hours: np.ndarray,
    half_life_seconds: float,
) -> None:
    """Fold events into users' state, in place.

    ``state`` is a writable (n_users, RECORD_LEN) float64 matrix (copies of the stored
    records); event ``i`` belongs to row ``rows[i]``, has slot ``type_slots[i]``, time
    ``times[i]`` (epoch seconds), ``amounts[i]`` (NaN when the event carries none) and
    ``local_hours[i]`` in [0, 24).
    """
    if state.ndim != 2 or state.shape[1] != RECORD_LEN or state.dtype != np.float64:
        raise ValueError(f"state must be float64 of shape (n, {RECORD_LEN}), got {state.shape}")
    if not state.flags.writeable or not state.flags.c_contiguous:
        raise ValueError("state must be a writable C-contiguous copy, not a store view")
    n = rows.shape[0]
    arrays = {
        "rows": (rows, np.int64),
        "type_slots": (type_slots, np.int64),
        "times": (times, np.float64),
        "amounts": (amounts, np.float64),
        "local_hours": (local_hours, np.float64),
    }
    for name, (arr, dtype) in arrays.items():
        if arr.dtype != dtype or arr.ndim != 1 or arr.shape[0] != n:
            raise ValueError(f"{name} must be 1-D {np.dtype(dtype).name} of length {n}")
    if n and (rows.min() < 0 or rows.max() >= state.shape[0]):
        raise ValueError("rows must index rows of state")
    if n and (type_slots.min() < 0 or type_slots.max() >= N_TYPES):
        raise ValueError(f"type_slots must be in [0, {N_TYPES})")
    if not np.all(np.isfinite(times)):
        raise ValueError("times must be finite")
    if n and (local_hours.min() < 0 or local_hours.max() >= N_HOURS):
        raise ValueError("local_hours must be in [0, 24)")
    if not half_life_seconds > 0:
        raise ValueError("half_life_seconds must be positive")
    arrs = [np.ascontiguousarray(a) for a, _ in arrays.values()]
    _apply_events(state, arrs[0], arrs[1], arrs[2], arrs[3], arrs[4], float(half_life_seconds))


def warm_up() -> None:
    """Call the kernel once with each signature so no request pays for compilation."""
    state = new_records(1)
    for writeable in (True, False):
        arrs = [
            np.zeros(1, np.int64),
            np.zeros(1, np.int64),
            np.ones(1, np.float64),
            np.ones(1, np.float64),
            np.zeros(1, np.float64),
        ]
        for a in arrs:
            a.flags.writeable = writeable
        apply_events(state, arrs[0], arrs[1], arrs[2], arrs[3], arrs[4], 3600.0)
