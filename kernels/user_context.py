"""One user's raw features and context vector for Decide, from the stored record's bytes,
in one kernel call.

Decide used to decode the record (two NumPy views and a kernel), fill the raw row in a
Python loop (one assignment per request number: 31 in bench/worlds.py's campaign), then
call the context kernel through NumPy reshapes: each step a few microseconds of call
overhead between gRPC calls that evict the caches. Here the stored bytes go in as they
are and ``raw`` (what the decision logs) and ``x`` (what the policy scores) come out.

The features are those of ``nudge.server.decisions.features.raw_features`` (the reference
this kernel is tested against) and the standardisation that of
``nudge.kernels.context.build_context``; ``plan`` carries the layout's positions:

    plan[PL_BASE : PL_BASE + 7]   events_total, recency_hours, tenure_days, local_hour_sin,
                                  local_hour_cos, amount_mean, amount_last
    plan[PL_CONTACTS], +1         contacts_7d, contact_recency_hours (-1: not configured)
    plan[PL_COUNTS]               n: decayed count features, then n (position, slot) pairs
                                  (slot -1: the type has no slot, the feature is 0)
    after them                    k: request numbers, then their k positions

``clock`` is ``[now, local hour, half-life seconds]``; ``numbers`` the request's numbers in
the plan's order (NaN: not given). The one signature is exactly what Decide passes
(stored bytes, stats and layout arrays read-only; the per-request arrays writable), so a
call never searches for a conversion. Keeps the GIL (it runs for about a microsecond).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels import user_state as u
from nudge.kernels.context import C_CLIP, C_VAR_FLOOR, standard_score

PL_BASE = 0
PL_CONTACTS = 7
PL_COUNTS = 9
N_BASE = 7
CONTACT_WINDOW_SECONDS = 7 * 86_400.0
CK_NOW = 0
CK_HOUR = 1
CK_HALF_LIFE = 2


@njit(jit.f8_1d(jit.u1_1d_ro, jit.i8), **jit.GIL_NUMPY_ERRORS)
def _decode(record, length):
    """The stored record as ``length`` float64s, from either of codecs.decode_sparse's
    layouts: the dense bytes, or a bitmap of the non-zero slots then their values."""
    if record.shape[0] == 8 * length:
        return record.view(np.float64).copy()
    out = np.zeros(length)
    mask_bytes = (length + 7) // 8
    at = mask_bytes
    for byte_index in range(mask_bytes):
        byte = record[byte_index]
        if byte == 0:
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                i = byte_index * 8 + bit
                if i < length and at + 8 <= record.shape[0]:
                    out[i] = record[at:at + 8].view(np.float64)[0]
                at += 8
    return out


@njit(
    jit.b1(
        jit.u1_1d_ro, jit.i8_1d_ro, jit.f8_1d, jit.f8_1d, jit.f8_1d, jit.i8_1d,
        jit.i8_1d_ro, jit.u1_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro,
        jit.f8_1d, jit.f8_1d,
    ),
    **jit.GIL_NUMPY_ERRORS,
)
def _user_context(record, plan, clock, numbers, contact_times, buckets, offsets, log1p,
                  mean, var, count, params, out_raw, out_x):
    """Fill ``out_raw[m]`` (NaN: missing) and ``out_x[d]``; False (outputs undefined) when
    a raw value is infinite."""
    m = out_raw.shape[0]
    now = clock[CK_NOW]
    for j in range(m):
        out_raw[j] = np.nan
    angle = 2.0 * math.pi * clock[CK_HOUR] / 24.0
    out_raw[plan[PL_BASE + 3]] = math.sin(angle)
    out_raw[plan[PL_BASE + 4]] = math.cos(angle)
    if plan[PL_CONTACTS] >= 0:
        recent = 0
        latest = -np.inf
        for t in contact_times:
            if now - t < CONTACT_WINDOW_SECONDS:
                recent += 1
            if t <= now and t > latest:
                latest = t
        out_raw[plan[PL_CONTACTS]] = float(recent)
        if latest > -np.inf:
            out_raw[plan[PL_CONTACTS + 1]] = (now - latest) / 3600.0
    n_counts = plan[PL_COUNTS]
    at = PL_COUNTS + 1 + 2 * n_counts
    if record.shape[0] > 0:
        r = _decode(record, u.RECORD_LEN)
        out_raw[plan[PL_BASE]] = r[u.S_EVENT_COUNT]
        out_raw[plan[PL_BASE + 1]] = max(0.0, (now - r[u.S_LAST_SEEN]) / 3600.0)
        out_raw[plan[PL_BASE + 2]] = max(0.0, (now - r[u.S_FIRST_SEEN]) / 86400.0)
        if r[u.S_AMOUNT_COUNT] > 0:
            out_raw[plan[PL_BASE + 5]] = r[u.S_AMOUNT_MEAN]
            out_raw[plan[PL_BASE + 6]] = r[u.S_AMOUNT_LAST]
        decay = 2.0 ** (-max(0.0, now - r[u.S_REF_TIME]) / clock[CK_HALF_LIFE])
        for c in range(n_counts):
            position = plan[PL_COUNTS + 1 + 2 * c]
            slot = plan[PL_COUNTS + 2 + 2 * c]
            out_raw[position] = 0.0 if slot < 0 else r[u.COUNTS + slot] * decay
    n_numbers = plan[at]
    for k in range(n_numbers):
        v = numbers[k]
        if not np.isnan(v):
            out_raw[plan[at + 1 + k]] = v
    for j in range(m):
        if np.isinf(out_raw[j]):
            return False
    # Standardise as context._build_contexts does for one row.
    d = out_x.shape[0]
    clip = params[C_CLIP]
    floor = params[C_VAR_FLOOR]
    for i in range(d):
        out_x[i] = 0.0
    out_x[0] = 1.0
    for j in range(m):
        out_x[1 + j] = standard_score(out_raw[j], log1p[j], mean[j], var[j], count[j], clip,
                                      floor)
    for g in range(buckets.shape[0]):
        b = buckets[g]
        if b >= 0:
            out_x[offsets[g] + b] = 1.0
    return True


@njit(
    jit.void(
        jit.u1_1d_ro, jit.i8_1d_ro, jit.i8_1d_ro, jit.f8_2d, jit.f8_2d, jit.f8_1d,
        jit.i8_1d_ro, jit.i8_2d, jit.i8_1d_ro, jit.u1_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro,
        jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_2d, jit.f8_2d, jit.u1_1d,
    ),
    **jit.NOGIL_NUMPY_ERRORS,
)
def _user_contexts(records, record_at, plan, clocks, numbers, contact_times, contact_at,
                   buckets, offsets, log1p, mean, var, count, params, out_raw, out_x, out_ok):
    """:func:`_user_context` for each row ``i`` of a chunk: the record
    ``records[record_at[i]:record_at[i + 1]]`` (empty: no event stored), ``clocks[i]``,
    ``numbers[i]``, the contact times ``contact_times[contact_at[i]:contact_at[i + 1]]`` and
    ``buckets[i]`` into ``out_raw[i]``, ``out_x[i]`` and ``out_ok[i]``."""
    for i in range(out_raw.shape[0]):
        out_ok[i] = _user_context(
            records[record_at[i]:record_at[i + 1]], plan, clocks[i], numbers[i],
            contact_times[contact_at[i]:contact_at[i + 1]], buckets[i], offsets, log1p, mean,
            var, count, params, out_raw[i], out_x[i])


def user_contexts_trusted(
    records: np.ndarray, record_at: np.ndarray, plan: np.ndarray, clocks: np.ndarray,
    numbers: np.ndarray, contact_times: np.ndarray, contact_at: np.ndarray,
    buckets: np.ndarray, offsets: np.ndarray, log1p: np.ndarray, mean: np.ndarray,
    var: np.ndarray, count: np.ndarray, params: np.ndarray, out_raw: np.ndarray,
    out_x: np.ndarray, out_ok: np.ndarray,
) -> None:
    """:func:`user_context_trusted` for a chunk of users in one call (DecideBatch): each
    row bit for bit what the single call gives for that user (the batch kernel calls it).
    Types as declared: the records' bytes concatenated (read-only) with their offsets
    ``record_at[n + 1]``, the contact times likewise, per-user rows of ``clocks``,
    ``numbers`` and ``buckets`` (writable, as the single kernel takes them)."""
    _user_contexts(records, record_at, plan, clocks, numbers, contact_times, contact_at,
                   buckets, offsets, log1p, mean, var, count, params, out_raw, out_x, out_ok)


def user_context_trusted(
    record: np.ndarray, plan: np.ndarray, clock: np.ndarray, numbers: np.ndarray,
    contact_times: np.ndarray, buckets: np.ndarray, offsets: np.ndarray, log1p: np.ndarray,
    mean: np.ndarray, var: np.ndarray, count: np.ndarray, params: np.ndarray,
    out_raw: np.ndarray, out_x: np.ndarray,
) -> bool:
    """The kernel without checks, for a caller that built every input itself (Decide,
    through ``features.user_context``): types as declared, ``plan`` built for the
    layout of ``mean``/``out_raw``/``out_x``. Anything else is undefined."""
    return bool(_user_context(record, plan, clock, numbers, contact_times, buckets, offsets,
                              log1p, mean, var, count, params, out_raw, out_x))


def warm_up() -> None:
    """Call the kernel once on tiny inputs (load from cache before SERVING)."""
    ro = jit.readonly
    record = ro(np.zeros(8 * u.RECORD_LEN, np.uint8))
    sparse = ro(np.zeros((u.RECORD_LEN + 7) // 8, np.uint8))
    plan = ro(np.array([0, 1, 2, 3, 4, 5, 6, -1, -1, 0, 1, 7], np.int64))
    for rec in (record, sparse, ro(np.zeros(0, np.uint8))):
        user_context_trusted(
            rec, plan, np.array([1.0, 12.0, 86_400.0]), np.array([0.5]),
            np.zeros(0), np.zeros(0, np.int64), ro(np.zeros(0, np.int64)),
            ro(np.zeros(8, np.uint8)), ro(np.zeros(8)), ro(np.ones(8)), ro(np.full(8, 3.0)),
            ro(np.array([4.0, 1e-12])), np.empty(8), np.empty(9))
