"""Context features for the policy: raw numbers and strings → one normalised vector ``x``.

Layout of ``x`` (``d = 1 + m + Σ buckets``)::

    x[0]                    1.0 (bias)
    x[1 : 1 + m]            the m numeric features, standardised and clipped
    x[1 + m + offset_g …]   one-hot of string feature g's hash bucket (all 0 when missing)

Numeric feature ``j`` (user-state features and request numbers, NaN = missing) is optionally
sent through a signed ``log1p`` (for heavy-tailed amounts), then standardised with running
statistics, ``z = (v − mean_j) / sqrt(var_j)`` clipped to ``±clip``. A missing value, or a
feature with fewer than two observations or no variance yet, gives ``z = 0`` (the mean).

Running statistics are exponentially weighted: with ``n`` observations of the feature so
far, the step is ``a = max(1/n, min_rate)``, so the first observations average exactly and
later ones forget slowly (memory ≈ ``1 / min_rate``)::

    mean ← mean + a·δ,   var ← (1 − a)·(var + a·δ²),   δ = v − mean

**One wild value must not blind a feature.** Once a feature has more than ``WINSOR_AFTER``
observations (from its third value on: two give a spread to measure against), δ is
clipped to ±``WINSOR_Z`` running standard deviations before the update (winsorised, as a
Huber M-estimator of location and scale would). Without it, one request
number sent in the wrong unit (1e12 among values near 1,000 with sd 100) moved the sd to
1e10, so every later value of that feature standardised to 0: the feature was lost to the
policy for more than 100,000 observations. With it, one such value multiplies the variance
by at most ``1 + a·(WINSOR_Z² − 1)`` (at a = 1e-4: 1.25; the sd of that example became
111), while a genuine change of scale is still followed: values that stay beyond the bound
grow the variance by that factor each. Why 50 and not a tighter bound: a sparse 0/1
feature whose 1s come at rate p sits 1/√p sd from its mean, and a bound below that makes
its variance collapse; at 50 only features rarer than 1 in 2,500 are clipped (at 8, 1 in
64 were, and the bank simulator's logging policy changed measurably). Gaussian data never
comes near 50 sd.

Why from the third value and not after thirty (as until 2026-12-03): a wild value among a
feature's first thirty blinded it just the same, for good — 1e17 as the sixth value among
values near 1,000 left a mean of 1.2e9 and a variance of 1.2e26 after 100,000 more, every
value standardised to 0 — and a campaign's first day is when a producer's unit mistake is
likeliest. The price is small and passes: an sd measured on two or three values can be too
small, so a genuine third value may be clipped; each clipped step multiplies the variance
by up to ``1 + a·(WINSOR_Z² − 1)`` (×834 at a = 1/3), so the estimate catches up within a
step or two, and the first values' weight in the mean falls as 1/n. A feature whose values
so far are all equal (variance 0: no spread to measure against) is not clipped.

Statistics are part of the published model: the learner updates them in batches into copies
(:func:`update_stats` returns new :class:`ContextStats`), deciders only read them.

Strings are hashed with CRC-32 of ``"name\\x1fvalue"`` (stable across processes, unlike
``hash()``) into a fixed number of buckets per feature.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit

from nudge.kernels import jit
from nudge.kernels.jit import readonly

# Layout of the context parameter array.
C_CLIP = 0
C_VAR_FLOOR = 1
N_CONTEXT_PARAMS = 2
# Robust running statistics (see the module docstring): δ clipped to ±WINSOR_Z running sd
# once a feature has more than WINSOR_AFTER observations (two values give it a spread).
WINSOR_Z = 50.0
WINSOR_AFTER = 1.0

@njit(jit.f8(jit.f8, jit.u1), **jit.NOGIL)
def _transform(v, log1p):
    if log1p != 0:
        return np.log1p(v) if v >= 0.0 else -np.log1p(-v)
    return v


@njit(jit.f8(jit.f8, jit.u1, jit.f8, jit.f8, jit.f8, jit.f8, jit.f8), **jit.NOGIL)
def standard_score(v, log1p, mean, var, count, clip, floor):
    """One number's entry in ``x``: its transformed z-score against the running stats,
    clipped to ±``clip``; 0.0 (the missing value's entry) when ``v`` is NaN or the stats
    cannot standardise it yet (fewer than 2 values, variance at or below ``floor``).
    Shared by every kernel that builds a context row, so they cannot drift apart."""
    if np.isnan(v) or count < 2.0 or not var > floor:
        return 0.0
    z = (_transform(v, log1p) - mean) / np.sqrt(var)
    if z > clip:
        return clip
    if z < -clip:
        return -clip
    return z


@njit(
    jit.void(
        jit.f8_2d_ro, jit.i8_2d_ro, jit.i8_1d_ro, jit.u1_1d_ro, jit.f8_1d_ro, jit.f8_1d_ro,
        jit.f8_1d_ro, jit.f8_1d_ro, jit.f8_2d,
    ),
    **jit.NOGIL,
)
def _build_contexts(raw, buckets, offsets, log1p, mean, var, count, params, out):
    """``out[n, d]`` context vectors from ``raw[n, m]`` numbers (NaN = missing) and
    ``buckets[n, s]`` string hash buckets (-1 = missing); ``offsets[s]`` is where each string
    feature's one-hot block starts in ``x``."""
    n, m = raw.shape
    d = out.shape[1]
    clip = params[C_CLIP]
    floor = params[C_VAR_FLOOR]
    for t in range(n):
        row = out[t]
        for i in range(d):
            row[i] = 0.0
        row[0] = 1.0
        for j in range(m):
            row[1 + j] = standard_score(raw[t, j], log1p[j], mean[j], var[j], count[j],
                                        clip, floor)
        for g in range(buckets.shape[1]):
            b = buckets[t, g]
            if b >= 0:
                row[offsets[g] + b] = 1.0


@njit(
    jit.void(jit.f8_2d_ro, jit.u1_1d_ro, jit.f8, jit.f8_1d, jit.f8_1d, jit.f8_1d),
    **jit.NOGIL,
)
def _update_stats(raw, log1p, min_rate, mean, var, count):
    """Fold ``raw[n, m]`` (NaN = missing) into the running statistics, row by row, each
    deviation winsorised at ±WINSOR_Z sd once the feature has WINSOR_AFTER values."""
    n, m = raw.shape
    for t in range(n):
        for j in range(m):
            v = raw[t, j]
            if np.isnan(v):
                continue
            v = _transform(v, log1p[j])
            delta = v - mean[j]
            if count[j] > WINSOR_AFTER and var[j] > 0.0:
                bound = WINSOR_Z * np.sqrt(var[j])
                if delta > bound:
                    delta = bound
                elif delta < -bound:
                    delta = -bound
            count[j] += 1.0
            a = 1.0 / count[j]
            if a < min_rate:
                a = min_rate
            mean[j] += a * delta
            var[j] = (1.0 - a) * (var[j] + a * delta * delta)


# --------------------------------------------------------------------------- public API


def hash_bucket(name: str, value: str, n_buckets: int) -> int:
    """Stable hash bucket of one string feature value (CRC-32, salted by the name)."""
    if n_buckets < 1:
        raise ValueError(f"n_buckets: must be >= 1, got {n_buckets}")
    return zlib.crc32(f"{name}\x1f{value}".encode()) % n_buckets


@dataclass(frozen=True)
class ContextLayout:
    """Which raw features make up ``x``: ``numeric`` names (user state and request
    numbers, in order), ``strings`` as ``(name, n_buckets)``, ``log1p`` the numeric names to
    pass through a signed log1p before standardising.

    ``vocabularies`` names the string features whose values are known in advance, as
    ``(name, values)``: value ``i`` gets bucket ``i`` and any other value the last one
    (``n_buckets == len(values) + 1``). Hashing a handful of known values into a few buckets
    collides (CRC-32 puts three of five customer segments into one of 16 buckets), and the
    policy then cannot tell those segments apart; a vocabulary never collides and names its
    features by value."""

    numeric: tuple[str, ...] = ()
    strings: tuple[tuple[str, int], ...] = ()
    log1p: tuple[str, ...] = ()
    vocabularies: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        names = list(self.numeric) + [s for s, _ in self.strings]
        if len(set(names)) != len(names):
            raise ValueError(f"numeric, strings: feature names must be unique, got {names}")
        for s, k in self.strings:
            if k < 1:
                raise ValueError(f"strings: {s!r} needs n_buckets >= 1, got {k}")
        unknown = set(self.log1p) - set(self.numeric)
        if unknown:
            raise ValueError(f"log1p: names must be numeric features, unknown {sorted(unknown)}")
        buckets = dict(self.strings)
        for s, values in self.vocabularies:
            if s not in buckets:
                raise ValueError(f"vocabularies: {s!r} is not a string feature")
            if len(set(values)) != len(values) or buckets[s] != len(values) + 1:
                raise ValueError(f"vocabularies: {s!r} needs distinct values and "
                                 f"n_buckets == len(values) + 1, got {len(values)} values "
                                 f"for {buckets[s]} buckets")

    @cached_property
    def value_buckets(self) -> dict[str, dict[str, int]]:
        """Per vocabulary feature: value -> bucket (a value not listed takes the last)."""
        return {s: {v: i for i, v in enumerate(values)} for s, values in self.vocabularies}

    def bucket(self, name: str, value: str, n_buckets: int) -> int:
        """The bucket of one string feature's value: its vocabulary position, else its hash."""
        vocab = self.value_buckets.get(name)
        if vocab is None:
            return hash_bucket(name, value, n_buckets)
        return vocab.get(value, n_buckets - 1)

    @property
    def n_numeric(self) -> int:
        return len(self.numeric)

    @property
    def n_features(self) -> int:
        return 1 + len(self.numeric) + sum(k for _, k in self.strings)

    def offsets(self) -> np.ndarray:
        """Where each string feature's one-hot block starts in ``x``."""
        sizes = [k for _, k in self.strings]
        return (1 + self.n_numeric + np.concatenate([[0], np.cumsum(sizes)[:-1]])).astype(
            np.int64
        ) if sizes else np.zeros(0, dtype=np.int64)

    def log1p_mask(self) -> np.ndarray:
        return np.array([n in self.log1p for n in self.numeric], dtype=np.uint8)

    @cached_property
    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(offsets, log1p_mask, n_buckets)`` as read-only arrays, built once: the
        per-request path (:func:`build_context_trusted`) must not rebuild them."""
        arrays = (self.offsets(), self.log1p_mask(),
                  np.array([k for _, k in self.strings], dtype=np.int64))
        for a in arrays:
            a.flags.writeable = False
        return arrays

    def feature_names(self) -> list[str]:
        """Names of the ``d`` entries of ``x`` (``"bias"``, numeric names, ``"name#bucket"``
        for hashed strings, ``"name=value"`` and ``"name=(other)"`` for vocabularies)."""
        out = ["bias", *self.numeric]
        vocab = dict(self.vocabularies)
        for s, k in self.strings:
            if s in vocab:
                out.extend([*(f"{s}={v}" for v in vocab[s]), f"{s}=(other)"])
            else:
                out.extend(f"{s}#{b}" for b in range(k))
        return out

    def numeric_vector(self, numbers: Mapping[str, float]) -> np.ndarray:
        """Raw numeric row in layout order, NaN where a feature is absent."""
        return np.array([float(numbers.get(n, np.nan)) for n in self.numeric])

    def string_buckets(self, strings: Mapping[str, str]) -> np.ndarray:
        """Bucket per string feature (:meth:`bucket`), -1 where absent."""
        return np.array(
            [self.bucket(s, strings[s], k) if s in strings else -1 for s, k in self.strings],
            dtype=np.int64,
        )


@dataclass(frozen=True)
class ContextStats:
    """Running statistics of the numeric features (read-only arrays of length m):
    ``mean``/``var`` of the (transformed) values, ``count`` observations seen."""

    mean: np.ndarray
    var: np.ndarray
    count: np.ndarray

    def __post_init__(self) -> None:
        m = np.asarray(self.mean).shape
        for name in ("mean", "var", "count"):
            a = np.asarray(getattr(self, name))
            if a.dtype != np.float64 or a.ndim != 1 or a.shape != m:
                raise ValueError(f"{name}: must be float64 of shape {m}, got {a.dtype} {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{name}: must be finite")
            object.__setattr__(self, name, readonly(a))
        if (self.var < 0).any() or (self.count < 0).any():
            raise ValueError("var, count: must be >= 0")


@dataclass(frozen=True)
class ContextParams:
    """``clip``: standardised values are clipped to ±clip. ``var_floor``: features whose
    running variance is not above it are left at 0. ``min_rate``: slowest step of the running
    statistics (memory ≈ 1/min_rate observations)."""

    clip: float = 4.0
    var_floor: float = 1e-12
    min_rate: float = 1e-4

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError(f"clip: must be finite and > 0, got {self.clip!r}")
        if not (np.isfinite(self.var_floor) and self.var_floor >= 0):
            raise ValueError(f"var_floor: must be finite and >= 0, got {self.var_floor!r}")
        if not (0.0 < self.min_rate <= 1.0):
            raise ValueError(f"min_rate: must be in (0, 1], got {self.min_rate!r}")

        # Built once: the kernel's parameter array (read-only, shared by every call).
        array = np.array([self.clip, self.var_floor])
        array.flags.writeable = False
        object.__setattr__(self, "_array", array)

    def as_array(self) -> np.ndarray:
        """``[clip, var_floor]`` (indices ``C_*``), as the kernels take it (read-only)."""
        return self._array  # type: ignore[attr-defined]


_DEFAULT_PARAMS = ContextParams()


def initial_stats(layout: ContextLayout) -> ContextStats:
    m = layout.n_numeric
    return ContextStats(mean=np.zeros(m), var=np.zeros(m), count=np.zeros(m))


def update_stats(
    layout: ContextLayout,
    stats: ContextStats,
    raw: np.ndarray,
    params: ContextParams | None = None,
) -> ContextStats:
    """New statistics with the rows of ``raw[n, m]`` folded in (``stats`` is untouched)."""
    params = params or _DEFAULT_PARAMS
    r = _raw_rows(raw, layout.n_numeric)
    mean, var, count = stats.mean.copy(), stats.var.copy(), stats.count.copy()
    _update_stats(r, layout.kernel_arrays[1], params.min_rate, mean, var, count)
    return ContextStats(mean=mean, var=var, count=count)


def build_contexts(
    layout: ContextLayout,
    stats: ContextStats,
    raw: np.ndarray,
    buckets: np.ndarray | None = None,
    params: ContextParams | None = None,
) -> np.ndarray:
    """Context matrix ``[n, d]`` from raw numeric rows ``[n, m]`` (NaN = missing) and string
    buckets ``[n, s]`` (int, -1 = missing; see :meth:`ContextLayout.string_buckets`)."""
    params = params or _DEFAULT_PARAMS
    r = _raw_rows(raw, layout.n_numeric)
    n = r.shape[0]
    s = len(layout.strings)
    if stats.mean.shape != (layout.n_numeric,):
        raise ValueError(f"stats: built for {stats.mean.shape[0]} numeric features, the "
                         f"layout has {layout.n_numeric}")
    if buckets is None:
        b = np.full((n, s), -1, dtype=np.int64)
    else:
        b = np.asarray(buckets)
        if b.dtype.kind not in "iu" or b.shape != (n, s):
            raise ValueError(f"buckets: must be integers of shape ({n}, {s}), got {b.dtype} "
                             f"{b.shape}")
        b = np.ascontiguousarray(b, dtype=np.int64)
        sizes = layout.kernel_arrays[2]
        if s and ((b < -1).any() or (b >= sizes).any()):
            raise ValueError("buckets: each must be -1 (missing) or in [0, n_buckets)")
    out = np.empty((n, layout.n_features))
    offsets, log1p, _ = layout.kernel_arrays
    _build_contexts(r, b, offsets, log1p, stats.mean, stats.var, stats.count, params.as_array(),
                    out)
    return out


def build_context(
    layout: ContextLayout,
    stats: ContextStats,
    raw: np.ndarray,
    buckets: np.ndarray | None = None,
    params: ContextParams | None = None,
) -> np.ndarray:
    """One context vector ``[d]`` from a raw numeric row ``[m]`` and buckets ``[s]``."""
    r = np.asarray(raw, dtype=np.float64)
    if r.shape != (layout.n_numeric,):
        raise ValueError(f"raw: must have shape ({layout.n_numeric},), got {r.shape}")
    b = None if buckets is None else np.asarray(buckets)[None, :]
    return build_contexts(layout, stats, r[None, :], b, params)[0]


def build_context_trusted(
    layout: ContextLayout,
    stats: ContextStats,
    raw: np.ndarray,
    buckets: np.ndarray,
    params: ContextParams | None = None,
) -> np.ndarray:
    """:func:`build_context` without its checks, for callers that built the inputs
    themselves (Decide, where every checked call shows in the latency): ``raw`` float64
    C-contiguous ``[m]`` without inf, ``buckets`` int64 C-contiguous ``[s]``, each -1 or in
    ``[0, n_buckets)``, ``stats`` built for this layout. Anything else is undefined."""
    params = params or _DEFAULT_PARAMS
    offsets, log1p, _ = layout.kernel_arrays
    out = np.empty((1, layout.n_features))
    _build_contexts(raw.reshape(1, -1), buckets.reshape(1, -1), offsets, log1p, stats.mean,
                    stats.var, stats.count, params.as_array(), out)
    return out[0]


def _raw_rows(raw: object, m: int) -> np.ndarray:
    r = np.asarray(raw)
    if r.dtype != np.float64 or r.ndim != 2 or r.shape[1] != m:
        raise ValueError(f"raw: must be float64 of shape (n, {m}), got {r.dtype} {r.shape}")
    if np.isinf(r).any():
        raise ValueError("raw: must not contain inf (use NaN for a missing value)")
    return np.ascontiguousarray(r)


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING)."""
    layout = ContextLayout(numeric=("a", "b"), strings=(("s", 2),), log1p=("b",))
    raw = np.array([[1.0, 2.0], [3.0, np.nan]])
    stats = update_stats(layout, initial_stats(layout), raw)
    build_contexts(layout, stats, raw, np.array([[0], [-1]]))

