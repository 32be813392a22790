"""Per-user anomaly scoring for the fraud engine (``RiskService``): Numba kernels + wrappers.

A transaction is scored against *that user's own* behavioural baseline, shrunk toward a
population baseline while the user has little history, and the per-feature contributions
come back so ``nudge.kernels.risk_reasons`` can turn them into reason codes.

Flow per transaction (score first, then learn)
----------------------------------------------
1. **Score** against the baseline as it was *before* this transaction.
2. **Observe**: the velocity counters, the recent-times ring and the last-seen time are
   updated for *every* scored transaction, held or not. A burst is a burst: if held
   transactions did not count, an attacker whose first transaction is held would look
   like a one-off on the second, third, ... transaction, exactly when velocity is the
   strongest evidence. Counting them cannot poison anything, because what a velocity count
   is compared with (the *expected* count, ``VEL_EXPECT``) is learned only from learned
   transactions.
3. **Learn** (fold into amount, hour, country, merchant category, device and channel
   profiles, expected velocity, ``baseline_count``) only if the score is below
   ``RiskParams.guard_threshold``. A held transaction stays out until the caller gets a
   GENUINE label and calls :func:`learn_transaction` with the ``features`` vector the score
   returned (store those ~80 bytes with the pending transaction). Without this guard the
   first transaction of an account-takeover burst teaches the profile the new country and
   device and the rest of the burst looks normal.

The population baseline has the same layout and is updated with the same learn kernel from
all genuine (learned or labelled-genuine) transactions of all users; the score kernels only
read it. Use :meth:`RiskParams.for_population` (a longer amount half-life) when learning it.

Score
-----
The sum of per-feature surprisals in nats, each >= 0:

* amount: ``z**2 / 2`` for ``z = (log1p(amount) - location) / scale`` when ``z > 0``, zero
  below typical (small amounts are not suspicious, so the term is one-sided);
* hour, country, merchant category, device, channel: ``log(p_max / p)``, the surprisal of
  the observed bin relative to the user's most typical bin, under additively smoothed
  counts; the hour profile is circularly smoothed with weights (1/4, 1/2, 1/4);
* velocity: the one-sided Poisson log-likelihood ratio ``n log(n/e) - (n - e)`` of the
  decayed count ``n`` of earlier transactions in a window against the expected count ``e``
  seen at the user's learned transactions; the largest of the three windows counts.

Each is multiplied by its weight, summed to ``total`` and mapped monotonically to
``score = total / (total + score_half)`` in [0, 1). Every user statistic ``u`` is blended
with the population's ``p`` as ``w u + (1 - w) p``, ``w = n / (n + cold_start_k)`` (``w = 1``
while the population is empty; with both empty the amount term is 0: nothing to compare).

State layout (``RISK_STATE_LEN`` = 326 float64 = 2,608 bytes)
------------------------------------------------------------
=================  ========  =========================================================
offset             length    meaning
=================  ========  =========================================================
``VERSION``        1         ``RISK_STATE_VERSION``; a record with another value is refused
``BASELINE_COUNT`` 1         transactions learned (plain count, drives the blend weight)
``LAST_SEEN``      1         time (s) of the latest scored transaction, learned or held
``LAST_LEARN``     1         time (s) the categorical profiles are decayed to
``AMOUNT_LOC``     1         EW mean of log1p(amount), residuals clipped
``AMOUNT_DEV``     1         EW mean absolute deviation of log1p(amount), clipped
``VEL_COUNT``      3         decayed counts, time constants = the 3 velocity windows
``VEL_SUM``        3         decayed sums of amounts, same time constants
``VEL_EXPECT``     3         EW mean of VEL_COUNT seen at learned transactions
``SEEN_COUNT``     1         transactions scored (learned + held)
``RING_POS``       1         next slot of RING
``RING``           16        times of the 16 latest scored transactions (exact counts)
``HOUR_TOTAL``     1         decayed total of HOUR
``HOUR``           24        decayed counts per local hour of day
``COUNTRY_TOTAL``  1, 96     decayed total, then decayed counts per hashed country bin
``MCC_TOTAL``      1, 128    same for merchant category
``DEVICE_TOTAL``   1, 32     same for device id
``CHANNEL_TOTAL``  1, 8      same for channel
=================  ========  =========================================================

Slices (``HOUR``, ``COUNTRY``, ...) name the bins; ``*_TOTAL`` are single offsets.
Strings are hashed into bins by :func:`category_bin` (BLAKE2b, stable across processes);
an empty string means "missing": that feature neither scores nor learns. Hashing means
"new" is "new bin": a value colliding with one of the user's usual few goes unnoticed
(chance about usual/bins, e.g. 1 in 96 for a one-country user). CRC-32 was rejected: its
low bits collide on short codes (US and BR share a bin mod 64 and mod 128).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cached_property

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.jit import float_array

# ---------------------------------------------------------------------------------------
# State layout
# ---------------------------------------------------------------------------------------
RISK_STATE_VERSION = 1.0
N_WINDOWS = 3
RING_LEN = 16
HOUR_BINS = 24
COUNTRY_BINS = 96
MCC_BINS = 128
DEVICE_BINS = 32
CHANNEL_BINS = 8

VERSION = 0
BASELINE_COUNT = 1
LAST_SEEN = 2
LAST_LEARN = 3
AMOUNT_LOC = 4
AMOUNT_DEV = 5
VEL_COUNT_OFF = 6
VEL_SUM_OFF = VEL_COUNT_OFF + N_WINDOWS
VEL_EXPECT_OFF = VEL_SUM_OFF + N_WINDOWS
SEEN_COUNT = VEL_EXPECT_OFF + N_WINDOWS
RING_POS = SEEN_COUNT + 1
RING_OFF = RING_POS + 1
HOUR_TOTAL = RING_OFF + RING_LEN
HOUR_OFF = HOUR_TOTAL + 1
COUNTRY_TOTAL = HOUR_OFF + HOUR_BINS
COUNTRY_OFF = COUNTRY_TOTAL + 1
MCC_TOTAL = COUNTRY_OFF + COUNTRY_BINS
MCC_OFF = MCC_TOTAL + 1
DEVICE_TOTAL = MCC_OFF + MCC_BINS
DEVICE_OFF = DEVICE_TOTAL + 1
CHANNEL_TOTAL = DEVICE_OFF + DEVICE_BINS
CHANNEL_OFF = CHANNEL_TOTAL + 1
RISK_STATE_LEN = CHANNEL_OFF + CHANNEL_BINS

VEL_COUNT = slice(VEL_COUNT_OFF, VEL_COUNT_OFF + N_WINDOWS)
VEL_SUM = slice(VEL_SUM_OFF, VEL_SUM_OFF + N_WINDOWS)
VEL_EXPECT = slice(VEL_EXPECT_OFF, VEL_EXPECT_OFF + N_WINDOWS)
RING = slice(RING_OFF, RING_OFF + RING_LEN)
HOUR = slice(HOUR_OFF, HOUR_OFF + HOUR_BINS)
COUNTRY = slice(COUNTRY_OFF, COUNTRY_OFF + COUNTRY_BINS)
MCC = slice(MCC_OFF, MCC_OFF + MCC_BINS)
DEVICE = slice(DEVICE_OFF, DEVICE_OFF + DEVICE_BINS)
CHANNEL = slice(CHANNEL_OFF, CHANNEL_OFF + CHANNEL_BINS)

# ---------------------------------------------------------------------------------------
# Transaction vector (kernel input), features vector (learn input), details (output)
# ---------------------------------------------------------------------------------------
TX_TIME = 0  # seconds, any epoch, same clock for all calls
TX_AMOUNT = 1  # finite, >= 0
TX_HOUR = 2  # local hour of day in [0, 24), computed by the caller
TX_COUNTRY = 3  # bin index as float, -1 = missing
TX_MCC = 4
TX_DEVICE = 5
TX_CHANNEL = 6
TX_LEN = 7
# features = the transaction vector + the decayed velocity counts seen when it was scored
FEAT_VEL_OFF = TX_LEN
FEAT_LEN = TX_LEN + N_WINDOWS

# contributions, in this order, at DETAIL_CONTRIB_OFF + C_*
C_AMOUNT = 0
C_HOUR = 1
C_COUNTRY = 2
C_MCC = 3
C_DEVICE = 4
C_CHANNEL = 5
C_VELOCITY = 6
N_CONTRIB = 7
CONTRIBUTION_NAMES = ("amount", "hour", "country", "merchant_category", "device", "channel",
                      "velocity")

DETAIL_SCORE = 0
DETAIL_TOTAL = 1  # sum of weighted contributions, nats
DETAIL_CONTRIB_OFF = 2
DETAIL_AMOUNT_RATIO = DETAIL_CONTRIB_OFF + N_CONTRIB  # (1+amount) / exp(blended location)
DETAIL_AMOUNT_Z = DETAIL_AMOUNT_RATIO + 1
DETAIL_BLEND_WEIGHT = DETAIL_AMOUNT_Z + 1  # w = n / (n + k), share of the user's own stats
DETAIL_BASELINE_COUNT = DETAIL_BLEND_WEIGHT + 1  # n before this transaction
# user's own decayed count in the bin; 0 = never seen (or decayed away); -1 = missing
DETAIL_USER_COUNTRY = DETAIL_BASELINE_COUNT + 1
DETAIL_USER_MCC = DETAIL_USER_COUNTRY + 1
DETAIL_USER_DEVICE = DETAIL_USER_MCC + 1
DETAIL_USER_CHANNEL = DETAIL_USER_DEVICE + 1
DETAIL_HOUR_PROB = DETAIL_USER_CHANNEL + 1  # blended smoothed probability of this hour bin
DETAIL_WINDOW_COUNT_OFF = DETAIL_HOUR_PROB + 1  # exact counts in each window, incl. this one
DETAIL_VEL_PRIOR_OFF = DETAIL_WINDOW_COUNT_OFF + N_WINDOWS  # decayed counts before this one
DETAIL_VEL_EXPECT_OFF = DETAIL_VEL_PRIOR_OFF + N_WINDOWS  # blended expected counts
DETAIL_VEL_SUM_OFF = DETAIL_VEL_EXPECT_OFF + N_WINDOWS  # decayed amount sums incl. this one
DETAIL_VEL_WINDOW = DETAIL_VEL_SUM_OFF + N_WINDOWS  # window index with the largest deviance
DETAIL_SINCE_LAST = DETAIL_VEL_WINDOW + 1  # seconds since the previous scored one, -1 = none
DETAIL_GUARDED = DETAIL_SINCE_LAST + 1  # 1 if score >= guard_threshold
DETAIL_LEARNED = DETAIL_GUARDED + 1  # 1 if folded into the baseline now
DETAIL_LEN = DETAIL_LEARNED + 1

MAD_TO_SIGMA = 1.2533141373155003  # sqrt(pi/2): E|X - mu| = sigma * sqrt(2/pi) for a normal

# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
P_AMOUNT_HALF_LIFE = 0
P_AMOUNT_CLIP = 1
P_AMOUNT_SCALE_FLOOR = 2
P_PROFILE_HALF_LIFE = 3
P_SMOOTHING = 4
P_COLD_START_K = 5
P_GUARD = 6
P_SCORE_HALF = 7
P_WINDOW_OFF = 8
P_VEL_FLOOR = P_WINDOW_OFF + N_WINDOWS
P_WEIGHT_OFF = P_VEL_FLOOR + 1
P_LEN = P_WEIGHT_OFF + N_CONTRIB


@dataclass(frozen=True)
class RiskParams:
    """Configuration of the risk kernels; passed to every kernel as a float64 array.

    Attributes:
        amount_half_life_tx: half-life, in learned transactions, of the amount statistics
            and of the expected velocity counts (the first ones are exact running means).
        amount_clip: residuals of log amount are clipped at this many scales when learning,
            so one huge purchase moves the baseline by a bounded step.
        amount_scale_floor: minimum scale of log1p(amount); stops a very regular user from
            turning small wobbles into large z.
        profile_half_life_days: half-life of the hour / country / merchant / device /
            channel counts; habits from a year ago weigh little.
        smoothing: additive pseudo-count per bin (Dirichlet prior) for every categorical.
        cold_start_k: blend weight of the user's own stats is n / (n + cold_start_k).
        guard_threshold: a transaction scoring at or above this is not learned (held until
            labelled). Set above 1 to switch the guard off (every transaction is learned).
        score_half: total surprisal (nats) that maps to score 0.5.
        velocity_windows_s: time constants of the three decayed velocity counters.
        velocity_floor: lower bound on an expected velocity count.
        weights: multipliers for the contributions, in ``CONTRIBUTION_NAMES`` order. The
            amount term is halved by default: amounts have heavier tails than the normal
            behind z**2/2, and at full weight genuine big purchases outranked takeovers.

    Defaults were chosen on ``nudge.bench.risk_stream`` (seeds 0 and 1): a lower guard
    keeps more of a burst out of the profile (better precision) but holds more genuine
    transactions until labelled (0.4: ~1.5% held; 0.3: ~8%).
    """

    amount_half_life_tx: float = 30.0
    amount_clip: float = 3.0
    amount_scale_floor: float = 0.25
    profile_half_life_days: float = 90.0
    smoothing: float = 0.02
    cold_start_k: float = 5.0
    guard_threshold: float = 0.4
    score_half: float = 12.0
    velocity_windows_s: tuple[float, float, float] = (600.0, 3600.0, 86400.0)
    velocity_floor: float = 0.05
    weights: tuple[float, ...] = field(default=(0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0))

    def __post_init__(self) -> None:
        positive = ("amount_half_life_tx", "amount_clip", "amount_scale_floor",
                    "profile_half_life_days", "smoothing", "cold_start_k", "score_half",
                    "velocity_floor")
        for f in fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, tuple) else (value,)
            if not all(np.isfinite(v) for v in values):
                raise ValueError(f"RiskParams.{f.name} must be finite, got {value!r}")
            if f.name in positive and not value > 0:
                raise ValueError(f"RiskParams.{f.name} must be > 0, got {value!r}")
        if len(self.velocity_windows_s) != N_WINDOWS or min(self.velocity_windows_s) <= 0:
            raise ValueError(f"RiskParams.velocity_windows_s must be {N_WINDOWS} values > 0, "
                             f"got {self.velocity_windows_s!r}")
        if len(self.weights) != N_CONTRIB or min(self.weights) < 0:
            raise ValueError(f"RiskParams.weights must be {N_CONTRIB} values >= 0 "
                             f"(order {CONTRIBUTION_NAMES}), got {self.weights!r}")

    def to_array(self) -> np.ndarray:
        """The read-only float64 vector the kernels take (cached: built once per object)."""
        return self._array

    @cached_property
    def _array(self) -> np.ndarray:
        a = np.empty(P_LEN, dtype=np.float64)
        a[P_AMOUNT_HALF_LIFE] = self.amount_half_life_tx
        a[P_AMOUNT_CLIP] = self.amount_clip
        a[P_AMOUNT_SCALE_FLOOR] = self.amount_scale_floor
        a[P_PROFILE_HALF_LIFE] = self.profile_half_life_days * 86400.0
        a[P_SMOOTHING] = self.smoothing
        a[P_COLD_START_K] = self.cold_start_k
        a[P_GUARD] = self.guard_threshold
        a[P_SCORE_HALF] = self.score_half
        a[P_WINDOW_OFF:P_WINDOW_OFF + N_WINDOWS] = self.velocity_windows_s
        a[P_VEL_FLOOR] = self.velocity_floor
        a[P_WEIGHT_OFF:P_WEIGHT_OFF + N_CONTRIB] = self.weights
        a.flags.writeable = False
        return a

    def for_population(self, amount_half_life_tx: float = 5000.0) -> RiskParams:
        """Params for learning the population row: same, with a much longer amount memory
        (a 30-transaction half-life is a user's habit but only noise across all users)."""
        return replace(self, amount_half_life_tx=amount_half_life_tx)


DEFAULT_PARAMS = RiskParams()

# ---------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------
# A state, population, transaction or features vector comes writable or read-only (an LMDB
# view); the kernels take either.
_RO_RW = (jit.f8_1d_ro, jit.f8_1d)


@njit([jit.f8_pair(jit.f8_1d, p, jit.i8, jit.i8, jit.i8, jit.i8, jit.f8, jit.f8) for p in _RO_RW],
      **jit.NOGIL_NUMPY_ERRORS)
def _categorical(state, pop, total_off, bins_off, n_bins, b, w, alpha):
    """(log(p_max / p_b), user's count in bin b) under the blended smoothed distribution."""
    fu = w / (state[total_off] + alpha * n_bins)
    fp = (1.0 - w) / (pop[total_off] + alpha * n_bins)
    p_max = 0.0
    for j in range(n_bins):
        p = fu * (state[bins_off + j] + alpha) + fp * (pop[bins_off + j] + alpha)
        if p > p_max:
            p_max = p
    p_b = fu * (state[bins_off + b] + alpha) + fp * (pop[bins_off + b] + alpha)
    return np.log(p_max / p_b), state[bins_off + b]


@njit([jit.f8_pair(jit.f8_1d, p, jit.i8, jit.f8, jit.f8) for p in _RO_RW],
      **jit.NOGIL_NUMPY_ERRORS)
def _hour(state, pop, b, w, alpha):
    """(log(p_max / p_b), p_b) for the circularly smoothed (1/4, 1/2, 1/4) hour profile."""
    n = HOUR_BINS
    fu = w / (state[HOUR_TOTAL] + alpha * n)
    fp = (1.0 - w) / (pop[HOUR_TOTAL] + alpha * n)
    p_max = 0.0
    p_b = 0.0
    for j in range(n):
        jm = (j + n - 1) % n
        jp = (j + 1) % n
        su = (0.25 * state[HOUR_OFF + jm] + 0.5 * state[HOUR_OFF + j]
              + 0.25 * state[HOUR_OFF + jp])
        sp = 0.25 * pop[HOUR_OFF + jm] + 0.5 * pop[HOUR_OFF + j] + 0.25 * pop[HOUR_OFF + jp]
        p = fu * (su + alpha) + fp * (sp + alpha)
        if p > p_max:
            p_max = p
        if j == b:
            p_b = p
    return np.log(p_max / p_b), p_b


@njit(jit.void(jit.f8_1d, jit.f8_1d, jit.f8_1d_ro), **jit.NOGIL_NUMPY_ERRORS)
def _learn_into(state, feat, params):
    """Fold one transaction's features into a writable state (amount, profiles, expected
    velocity, baseline_count). Velocity counters are not touched: scoring counted it."""
    n = state[BASELINE_COUNT]
    t = feat[TX_TIME]
    x = np.log1p(feat[TX_AMOUNT])
    a = max(1.0 / (n + 1.0), 1.0 - 0.5 ** (1.0 / params[P_AMOUNT_HALF_LIFE]))
    if n == 0.0:
        state[AMOUNT_LOC] = x
        state[AMOUNT_DEV] = 0.0
        for k in range(N_WINDOWS):
            state[VEL_EXPECT_OFF + k] = feat[FEAT_VEL_OFF + k]
        state[LAST_LEARN] = t
        add = 1.0
    else:
        limit = params[P_AMOUNT_CLIP] * max(MAD_TO_SIGMA * state[AMOUNT_DEV],
                                            params[P_AMOUNT_SCALE_FLOOR])
        r = min(max(x - state[AMOUNT_LOC], -limit), limit)
        state[AMOUNT_LOC] += a * r
        state[AMOUNT_DEV] += a * (abs(r) - state[AMOUNT_DEV])
        for k in range(N_WINDOWS):
            e = state[VEL_EXPECT_OFF + k]
            state[VEL_EXPECT_OFF + k] = e + a * (feat[FEAT_VEL_OFF + k] - e)
        tau = params[P_PROFILE_HALF_LIFE] / np.log(2.0)
        dt = t - state[LAST_LEARN]
        if dt > 0.0:
            # decay everything to the new time; a late (out-of-order) learn instead adds a
            # weight already decayed to the state's time, so the result is order-free
            decay = np.exp(-dt / tau)
            for j in range(HOUR_TOTAL, RISK_STATE_LEN):
                state[j] *= decay
            state[LAST_LEARN] = t
            add = 1.0
        else:
            add = np.exp(dt / tau)
    state[HOUR_OFF + int(feat[TX_HOUR])] += add
    state[HOUR_TOTAL] += add
    b = int(feat[TX_COUNTRY])
    if b >= 0:
        state[COUNTRY_OFF + b] += add
        state[COUNTRY_TOTAL] += add
    b = int(feat[TX_MCC])
    if b >= 0:
        state[MCC_OFF + b] += add
        state[MCC_TOTAL] += add
    b = int(feat[TX_DEVICE])
    if b >= 0:
        state[DEVICE_OFF + b] += add
        state[DEVICE_TOTAL] += add
    b = int(feat[TX_CHANNEL])
    if b >= 0:
        state[CHANNEL_OFF + b] += add
        state[CHANNEL_TOTAL] += add
    state[BASELINE_COUNT] = n + 1.0


@njit([jit.void(jit.f8_1d, p, jit.f8_1d, jit.f8_1d_ro, jit.b1, jit.f8_1d, jit.f8_1d)
       for p in _RO_RW],
      **jit.NOGIL_NUMPY_ERRORS)
def _score_into(state, pop, tx, params, learn, out, feat):
    """Score one transaction against a writable state, observe it, learn it unless guarded.

    Writes DETAIL_LEN numbers to ``out`` and the FEAT_LEN learn vector to ``feat``.
    """
    t = tx[TX_TIME]
    n = state[BASELINE_COUNT]
    pop_n = pop[BASELINE_COUNT]
    # an empty population has nothing to lend: the user's own stats get full weight
    w = n / (n + params[P_COLD_START_K]) if pop_n > 0.0 else 1.0
    alpha = params[P_SMOOTHING]
    for j in range(DETAIL_LEN):
        out[j] = 0.0
    for j in range(TX_LEN):
        feat[j] = tx[j]

    # amount: one-sided z against blended robust location / scale
    x = np.log1p(tx[TX_AMOUNT])
    floor = params[P_AMOUNT_SCALE_FLOOR]
    loc = w * state[AMOUNT_LOC] + (1.0 - w) * pop[AMOUNT_LOC]
    scale = (w * max(MAD_TO_SIGMA * state[AMOUNT_DEV], floor)
             + (1.0 - w) * max(MAD_TO_SIGMA * pop[AMOUNT_DEV], floor))
    z = (x - loc) / scale if n + pop_n > 0.0 else 0.0  # nothing learned: nothing to compare
    out[DETAIL_CONTRIB_OFF + C_AMOUNT] = 0.5 * z * z if z > 0.0 else 0.0
    out[DETAIL_AMOUNT_RATIO] = np.exp(x - loc) if n + pop_n > 0.0 else 1.0
    out[DETAIL_AMOUNT_Z] = z

    c, p = _hour(state, pop, int(tx[TX_HOUR]), w, alpha)
    out[DETAIL_CONTRIB_OFF + C_HOUR] = c
    out[DETAIL_HOUR_PROB] = p
    cats = ((TX_COUNTRY, COUNTRY_TOTAL, COUNTRY_OFF, COUNTRY_BINS, C_COUNTRY,
             DETAIL_USER_COUNTRY),
            (TX_MCC, MCC_TOTAL, MCC_OFF, MCC_BINS, C_MCC, DETAIL_USER_MCC),
            (TX_DEVICE, DEVICE_TOTAL, DEVICE_OFF, DEVICE_BINS, C_DEVICE, DETAIL_USER_DEVICE),
            (TX_CHANNEL, CHANNEL_TOTAL, CHANNEL_OFF, CHANNEL_BINS, C_CHANNEL,
             DETAIL_USER_CHANNEL))
    for tx_i, total_off, bins_off, n_bins, c_i, d_i in cats:
        b = int(tx[tx_i])
        if b < 0:
            out[d_i] = -1.0
        else:
            c, cnt = _categorical(state, pop, total_off, bins_off, n_bins, b, w, alpha)
            out[DETAIL_CONTRIB_OFF + c_i] = c
            out[d_i] = cnt

    # velocity: decayed counts of earlier transactions vs the expected count
    seen = state[SEEN_COUNT]
    dt = max(t - state[LAST_SEEN], 0.0) if seen > 0.0 else np.inf
    best = 0.0
    best_k = 0
    for k in range(N_WINDOWS):
        decay = np.exp(-dt / params[P_WINDOW_OFF + k])
        v = state[VEL_COUNT_OFF + k] * decay
        e = max(w * state[VEL_EXPECT_OFF + k] + (1.0 - w) * pop[VEL_EXPECT_OFF + k],
                params[P_VEL_FLOOR])
        dev = v * np.log(v / e) - (v - e) if v > e else 0.0
        if dev > best:
            best = dev
            best_k = k
        feat[FEAT_VEL_OFF + k] = v
        out[DETAIL_VEL_PRIOR_OFF + k] = v
        out[DETAIL_VEL_EXPECT_OFF + k] = e
        out[DETAIL_VEL_SUM_OFF + k] = state[VEL_SUM_OFF + k] * decay + tx[TX_AMOUNT]
        # exact count in the window from the ring of recent times (capped at RING_LEN + 1)
        cnt = 1.0
        for j in range(min(int(seen), RING_LEN)):
            if t - state[RING_OFF + j] < params[P_WINDOW_OFF + k]:
                cnt += 1.0
        out[DETAIL_WINDOW_COUNT_OFF + k] = cnt
    out[DETAIL_CONTRIB_OFF + C_VELOCITY] = best
    out[DETAIL_VEL_WINDOW] = best_k
    out[DETAIL_SINCE_LAST] = dt if seen > 0.0 else -1.0

    total = 0.0
    for k in range(N_CONTRIB):
        out[DETAIL_CONTRIB_OFF + k] *= params[P_WEIGHT_OFF + k]
        total += out[DETAIL_CONTRIB_OFF + k]
    score = total / (total + params[P_SCORE_HALF])
    out[DETAIL_SCORE] = score
    out[DETAIL_TOTAL] = total
    out[DETAIL_BLEND_WEIGHT] = w
    out[DETAIL_BASELINE_COUNT] = n

    # observe: every scored transaction counts for velocity (see module docstring)
    for k in range(N_WINDOWS):
        state[VEL_COUNT_OFF + k] = feat[FEAT_VEL_OFF + k] + 1.0
        state[VEL_SUM_OFF + k] = out[DETAIL_VEL_SUM_OFF + k]
    if seen == 0.0 or t > state[LAST_SEEN]:
        state[LAST_SEEN] = t
    pos = int(state[RING_POS])
    state[RING_OFF + pos] = t
    state[RING_POS] = (pos + 1) % RING_LEN
    state[SEEN_COUNT] = seen + 1.0

    guarded = score >= params[P_GUARD]
    out[DETAIL_GUARDED] = 1.0 if guarded else 0.0
    if learn and not guarded:
        _learn_into(state, feat, params)
        out[DETAIL_LEARNED] = 1.0


@njit([jit.void(s, p, jit.f8_1d, jit.f8_1d_ro, jit.b1, jit.f8_1d, jit.f8_1d, jit.f8_1d)
       for s in _RO_RW for p in _RO_RW],
      **jit.GIL_NUMPY_ERRORS)
def _score_one_kernel(state, pop, tx, params, learn, new_state, out, feat):
    """new_state <- state, then score/observe/learn into new_state (inputs never written)."""
    for j in range(RISK_STATE_LEN):
        new_state[j] = state[j]
    _score_into(new_state, pop, tx, params, learn, out, feat)


@njit([jit.void(jit.f8_2d, jit.i8_1d, jit.f8_2d, p, jit.f8_1d_ro, jit.b1, jit.f8_2d, jit.f8_2d)
       for p in _RO_RW],
      **jit.NOGIL_NUMPY_ERRORS)
def _score_batch_kernel(states, rows, txs, pop, params, learn, out, feats):
    """Transactions in order, each scored against (and then folded into) its user's row, so
    the result equals calling the single kernel transaction by transaction."""
    for i in range(txs.shape[0]):
        _score_into(states[rows[i]], pop, txs[i], params, learn, out[i], feats[i])


@njit([jit.void(s, jit.f8_1d, jit.f8_1d_ro, jit.f8_1d) for s in _RO_RW], **jit.GIL_NUMPY_ERRORS)
def _learn_one_kernel(state, feat, params, new_state):
    """new_state <- state with one held-then-labelled-genuine transaction folded in."""
    for j in range(RISK_STATE_LEN):
        new_state[j] = state[j]
    _learn_into(new_state, feat, params)


@njit(jit.void(jit.f8_2d, jit.i8_1d, jit.f8_2d, jit.f8_1d_ro), **jit.NOGIL_NUMPY_ERRORS)
def _learn_batch_kernel(states, rows, feats, params):
    """Fold features into rows in order (labels arriving in bulk, population updates)."""
    for i in range(feats.shape[0]):
        _learn_into(states[rows[i]], feats[i], params)


# ---------------------------------------------------------------------------------------
# Python layer: hashing, validation, results
# ---------------------------------------------------------------------------------------
_BIN_CACHE: dict[tuple[str, int], int] = {}


def category_bin(value: str, n_bins: int) -> int:
    """Stable bin of a string (BLAKE2b-64 of its UTF-8, mod n_bins); -1 for "" (missing).

    Python's ``hash()`` is salted per process, so it would scramble stored profiles on
    every restart; BLAKE2b is the same everywhere, forever.
    """
    key = (value, n_bins)
    b = _BIN_CACHE.get(key)
    if b is None:
        if not isinstance(value, str):
            raise ValueError(f"category value must be a str, got {type(value).__name__}")
        digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
        b = -1 if value == "" else int.from_bytes(digest, "little") % n_bins
        if len(_BIN_CACHE) < 1_000_000:  # device ids are unbounded: cap the memo
            _BIN_CACHE[key] = b
    return b


def new_risk_state() -> np.ndarray:
    """An empty per-user (or population) state: zeros with the layout version stamped."""
    s = np.zeros(RISK_STATE_LEN, dtype=np.float64)
    s[VERSION] = RISK_STATE_VERSION
    return s


def encode_transaction(amount: float, time: float, local_hour: float, country: str,
                       merchant_category: str, device_id: str, channel: str) -> np.ndarray:
    """The TX_LEN kernel vector for one transaction, validated; strings hashed into bins.

    Args:
        amount: finite, >= 0, in the account's currency (one currency per user).
        time: seconds on one clock (e.g. Unix time) used for every call.
        local_hour: hour of day in [0, 24) in the user's local time; the caller knows the
            time zone, the kernel does not.
        country, merchant_category, device_id, channel: raw strings; "" = unknown.
    """
    _check_scalar("amount", amount, nonnegative=True)
    _check_scalar("time", time)
    _check_scalar("local_hour", local_hour)
    if not 0.0 <= local_hour < 24.0:
        raise ValueError(f"local_hour must be in [0, 24), got {local_hour!r}")
    return np.array([time, amount, local_hour, category_bin(country, COUNTRY_BINS),
                     category_bin(merchant_category, MCC_BINS),
                     category_bin(device_id, DEVICE_BINS),
                     category_bin(channel, CHANNEL_BINS)], dtype=np.float64)


def encode_transactions(amount: np.ndarray | Sequence[float], time: np.ndarray | Sequence[float],
                        local_hour: np.ndarray | Sequence[float],
                        country: np.ndarray | Sequence[str],
                        merchant_category: np.ndarray | Sequence[str],
                        device_id: np.ndarray | Sequence[str],
                        channel: np.ndarray | Sequence[str]) -> np.ndarray:
    """Column-wise :func:`encode_transaction`: an (n, TX_LEN) matrix for the batch kernel."""
    amount = _column("amount", amount)
    n = amount.shape[0]
    out = np.empty((n, TX_LEN), dtype=np.float64)
    out[:, TX_AMOUNT] = amount
    out[:, TX_TIME] = _column("time", time, n)
    out[:, TX_HOUR] = _column("local_hour", local_hour, n)
    for name, values, col, n_bins in (("country", country, TX_COUNTRY, COUNTRY_BINS),
                                      ("merchant_category", merchant_category, TX_MCC, MCC_BINS),
                                      ("device_id", device_id, TX_DEVICE, DEVICE_BINS),
                                      ("channel", channel, TX_CHANNEL, CHANNEL_BINS)):
        if len(values) != n:
            raise ValueError(f"{name} must have one value per transaction ({n}), "
                             f"got {len(values)}")
        uniq, inverse = np.unique(np.asarray(values, dtype=object), return_inverse=True)
        bins = np.array([category_bin(v, n_bins) for v in uniq], dtype=np.float64)
        out[:, col] = bins[inverse.reshape(-1)] if n else bins[:0]
    _check_tx_matrix(out)
    return out


@dataclass(frozen=True)
class RiskScore:
    """One scored transaction.

    ``state`` is the user's new state (store it back; it is a fresh array, the input is
    untouched). ``features`` is what :func:`learn_transaction` needs if the transaction was
    held (``learned`` False, ``guarded`` True) and is later labelled genuine; ``details`` is
    the DETAIL_LEN vector that ``risk_reasons.explain`` reads.
    """

    score: float
    learned: bool
    guarded: bool
    baseline_count: int
    state: np.ndarray
    features: np.ndarray
    details: np.ndarray

    @property
    def contributions(self) -> dict[str, float]:
        """Weighted surprisal per feature, nats."""
        c = self.details[DETAIL_CONTRIB_OFF:DETAIL_CONTRIB_OFF + N_CONTRIB]
        return dict(zip(CONTRIBUTION_NAMES, c.tolist(), strict=True))


@dataclass(frozen=True)
class RiskBatch:
    """A scored batch: per-transaction ``scores``, ``learned``, ``details`` (n, DETAIL_LEN)
    and ``features`` (n, FEAT_LEN), plus the updated ``states`` matrix."""

    scores: np.ndarray
    learned: np.ndarray
    details: np.ndarray
    features: np.ndarray
    states: np.ndarray


def score_transaction(state: np.ndarray, population: np.ndarray, transaction: np.ndarray,
                      params: RiskParams = DEFAULT_PARAMS, *, learn: bool = True) -> RiskScore:
    """Score one transaction against the user's state, then observe and (unless guarded)
    learn it into a *new* state.

    Args:
        state: the user's RISK_STATE_LEN float64 vector (read-only LMDB views are fine; it is
            never written). A user seen for the first time: :func:`new_risk_state`.
        population: the population state (same layout), only read.
        transaction: the TX_LEN vector from :func:`encode_transaction`.
        params: configuration; ``guard_threshold`` decides what is held.
        learn: False scores and observes (velocity) but never learns, e.g. for a replay.
    """
    s = _check_state("state", state)
    p = _check_state("population", population)
    tx = _check_vector("transaction", transaction, TX_LEN)
    _check_tx_row(tx.tolist())
    new_state = np.empty(RISK_STATE_LEN, dtype=np.float64)
    out = np.empty(DETAIL_LEN, dtype=np.float64)
    feat = np.empty(FEAT_LEN, dtype=np.float64)
    _score_one_kernel(s, p, tx, params.to_array(), bool(learn), new_state, out, feat)
    return RiskScore(score=float(out[DETAIL_SCORE]), learned=bool(out[DETAIL_LEARNED]),
                     guarded=bool(out[DETAIL_GUARDED]),
                     baseline_count=int(out[DETAIL_BASELINE_COUNT]), state=new_state,
                     features=feat, details=out)


def score_transactions(states: np.ndarray, rows: np.ndarray | Sequence[int],
                       population: np.ndarray, transactions: np.ndarray,
                       params: RiskParams = DEFAULT_PARAMS, *, learn: bool = True,
                       inplace: bool = False) -> RiskBatch:
    """Score a batch in order; each transaction sees the state its user's earlier
    transactions in the batch left behind (batch == one-by-one :func:`score_transaction`).

    Args:
        states: (n_users, RISK_STATE_LEN) float64, one row per distinct user in the batch.
            Copied unless ``inplace`` (then it must be a writable C-contiguous array).
        rows: int, one per transaction: the row of ``states`` holding its user.
        population: the population state, only read.
        transactions: (n, TX_LEN) from :func:`encode_transactions`.
    """
    states = _check_states("states", states, inplace)
    txs = _check_matrix("transactions", transactions, TX_LEN)
    _check_tx_matrix(txs)
    rows_ = _check_rows(rows, txs.shape[0], states.shape[0])
    p = _check_state("population", population)
    n = txs.shape[0]
    out = np.empty((n, DETAIL_LEN), dtype=np.float64)
    feats = np.empty((n, FEAT_LEN), dtype=np.float64)
    _score_batch_kernel(states, rows_, txs, p, params.to_array(), bool(learn), out, feats)
    return RiskBatch(scores=out[:, DETAIL_SCORE].copy(),
                     learned=out[:, DETAIL_LEARNED].astype(bool), details=out,
                     features=feats, states=states)


def learn_transaction(state: np.ndarray, features: np.ndarray,
                      params: RiskParams = DEFAULT_PARAMS) -> np.ndarray:
    """Fold a held transaction (labelled GENUINE later) into a user's or the population's
    state; returns a new state, the input is untouched.

    ``features`` is ``RiskScore.features`` from when it was scored: it carries the velocity
    counts of that moment, so late learning teaches the same expected velocity as on-time.
    Never call this for confirmed fraud: keeping it out is the point of the guard.
    """
    s = _check_state("state", state)
    f = _check_vector("features", features, FEAT_LEN)
    values = f.tolist()
    _check_tx_row(values[:TX_LEN])
    if min(values[FEAT_VEL_OFF:]) < 0:
        raise ValueError("features velocity counts must be >= 0; pass RiskScore.features")
    new_state = np.empty(RISK_STATE_LEN, dtype=np.float64)
    _learn_one_kernel(s, f, params.to_array(), new_state)
    return new_state


def learn_transactions(states: np.ndarray, rows: np.ndarray | Sequence[int],
                       features: np.ndarray, params: RiskParams = DEFAULT_PARAMS, *,
                       inplace: bool = False) -> np.ndarray:
    """Batch :func:`learn_transaction`, in order; ``rows`` maps each features row to a state
    row (all zeros to feed many transactions into one population state). Returns the states
    (a copy unless ``inplace``)."""
    states = _check_states("states", states, inplace)
    f = _check_matrix("features", features, FEAT_LEN)
    _check_features(f)
    rows_ = _check_rows(rows, f.shape[0], states.shape[0])
    _learn_batch_kernel(states, rows_, f, params.to_array())
    return states


def warm_up() -> None:
    """Call every kernel (every signature the wrappers use) once on tiny inputs, so no
    request pays for compilation or first-call set-up; run before reporting SERVING."""
    params = DEFAULT_PARAMS
    rw = new_risk_state()
    ro = new_risk_state()
    ro.flags.writeable = False
    tx = encode_transaction(10.0, 0.0, 12.0, "US", "5411", "d", "pos")
    for s in (rw, ro):
        for p in (rw, ro):
            r = score_transaction(s, p, tx, params)
        learn_transaction(s, r.features, params)
    for p in (rw, ro):
        b = score_transactions(rw.reshape(1, -1), np.zeros(1, np.int64), p, tx.reshape(1, -1),
                               params)
    learn_transactions(b.states, np.zeros(1, np.int64), b.features, params)


# validation helpers: each names the argument and the rule ---------------------------------


def _check_scalar(name: str, value: float, nonnegative: bool = False) -> None:
    if value.__class__ is not float and (  # the common case first: it runs per transaction
        isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer)
    ):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _column(name: str, values: np.ndarray | Sequence[float], n: int | None = None) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"{name} must have one value per transaction ({n}), got {a.shape[0]}")
    return a


def _check_tx_matrix(txs: np.ndarray) -> None:
    if not np.isfinite(txs).all():
        raise ValueError("transaction time, amount and local_hour must be finite")
    if (txs[:, TX_AMOUNT] < 0).any():
        raise ValueError("transaction amount must be >= 0")
    hours = txs[:, TX_HOUR]
    if ((hours < 0) | (hours >= 24)).any():
        raise ValueError("transaction local_hour must be in [0, 24)")
    for col, n_bins, name in _BIN_LIMITS:
        b = txs[:, col]
        if ((b < -1) | (b >= n_bins) | (b != np.floor(b))).any():
            raise ValueError(f"transaction {name} bin must be an integer in [-1, {n_bins}); "
                             "build transactions with encode_transaction(s)")


_BIN_LIMITS = ((TX_COUNTRY, COUNTRY_BINS, "country"), (TX_MCC, MCC_BINS, "merchant_category"),
               (TX_DEVICE, DEVICE_BINS, "device_id"), (TX_CHANNEL, CHANNEL_BINS, "channel"))


def _check_tx_row(v: list[float]) -> None:
    """The single-transaction twin of _check_tx_matrix on plain floats (~1 µs, not ~15)."""
    if not all(map(math.isfinite, v)):
        raise ValueError("transaction time, amount and local_hour must be finite")
    if v[TX_AMOUNT] < 0:
        raise ValueError("transaction amount must be >= 0")
    if not 0.0 <= v[TX_HOUR] < 24.0:
        raise ValueError("transaction local_hour must be in [0, 24)")
    for col, n_bins, name in _BIN_LIMITS:
        b = v[col]
        if not (-1 <= b < n_bins and b == int(b)):
            raise ValueError(f"transaction {name} bin must be an integer in [-1, {n_bins}); "
                             "build transactions with encode_transaction(s)")


def _check_features(feats: np.ndarray) -> None:
    _check_tx_matrix(feats[:, :TX_LEN])
    if (feats[:, FEAT_VEL_OFF:] < 0).any():
        raise ValueError("features velocity counts must be >= 0; pass RiskScore.features")


def _check_state(name: str, state: np.ndarray) -> np.ndarray:
    s = float_array(state, name, 1)
    if s.shape[0] != RISK_STATE_LEN:
        raise ValueError(f"{name} must have RISK_STATE_LEN={RISK_STATE_LEN} values, "
                         f"got {s.shape[0]}")
    if s[VERSION] != RISK_STATE_VERSION:
        raise ValueError(f"{name} layout version must be {RISK_STATE_VERSION}, got "
                         f"{s[VERSION]!r}; start from new_risk_state()")
    return s


def _check_states(name: str, states: np.ndarray, inplace: bool) -> np.ndarray:
    s = float_array(states, name, 2)
    if s.shape[1] != RISK_STATE_LEN:
        raise ValueError(f"{name} must have RISK_STATE_LEN={RISK_STATE_LEN} columns, "
                         f"got {s.shape[1]}")
    if (s[:, VERSION] != RISK_STATE_VERSION).any():
        raise ValueError(f"{name} layout version must be {RISK_STATE_VERSION} in every row; "
                         "start from new_risk_state()")
    if inplace:
        if not s.flags.writeable:
            raise ValueError(f"{name} must be writable when inplace=True (pass a copy)")
        return s
    return s.copy()


def _check_vector(name: str, v: np.ndarray, length: int) -> np.ndarray:
    a = float_array(v, name, 1)
    if a.shape[0] != length:
        raise ValueError(f"{name} must have {length} values, got {a.shape[0]}")
    return a if a.flags.writeable else a.copy()


def _check_matrix(name: str, m: np.ndarray, width: int) -> np.ndarray:
    a = float_array(m, name, 2)
    if a.shape[1] != width:
        raise ValueError(f"{name} must have {width} columns, got {a.shape[1]}")
    return a if a.flags.writeable else a.copy()


def _check_rows(rows: np.ndarray | Sequence[int], n: int, n_states: int) -> np.ndarray:
    r = np.asarray(rows)
    if r.ndim != 1 or r.shape[0] != n:
        raise ValueError(f"rows must be 1-D with one entry per transaction ({n}), "
                         f"got shape {r.shape}")
    if r.size and not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"rows must be integers, got {r.dtype}")
    if r.size and (r.min() < 0 or r.max() >= n_states):
        raise ValueError(f"rows must be in [0, {n_states}) (one state row per user)")
    return np.array(r, dtype=np.int64)  # a fresh writable copy: the kernel signature wants one
