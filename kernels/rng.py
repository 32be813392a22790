"""The kernels' random numbers: xoshiro256** seeded by splitmix64, state in a plain array.

No global state: every call builds its generator from a 64-bit seed, so threads calling the
nogil kernels never share one, and the same seed gives the same draws (logging the seed
makes a decision replayable).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nudge.kernels import jit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@njit(jit.u8_1d(jit.i8), **jit.NOGIL)
def rng_state(seed):
    """xoshiro256** state from a 64-bit seed via splitmix64."""
    state = np.empty(4, dtype=np.uint64)
    z = np.uint64(seed)
    for i in range(4):
        z = z + _GOLDEN
        y = z
        y = (y ^ (y >> np.uint64(30))) * _MIX1
        y = (y ^ (y >> np.uint64(27))) * _MIX2
        state[i] = y ^ (y >> np.uint64(31))
    return state


@njit(jit.u8(jit.u8_1d), **jit.NOGIL)
def next_u64(s):
    s1 = s[1]
    r = s1 * np.uint64(5)
    r = ((r << np.uint64(7)) | (r >> np.uint64(57))) * np.uint64(9)
    t = s1 << np.uint64(17)
    s[2] ^= s[0]
    s[3] ^= s1
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = (s[3] << np.uint64(45)) | (s[3] >> np.uint64(19))
    return r


@njit(jit.f8(jit.u8_1d), **jit.NOGIL)
def uniform(s):
    """Uniform on [0, 1) with 53 random bits."""
    return float(next_u64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(jit.void(jit.u8_1d, jit.f8_1d), **jit.NOGIL)
def fill_normals(s, out):
    """Standard normals by the Marsaglia polar method, in pairs."""
    n = out.shape[0]
    i = 0
    while i < n:
        u = 2.0 * uniform(s) - 1.0
        v = 2.0 * uniform(s) - 1.0
        q = u * u + v * v
        if q >= 1.0 or q == 0.0:
            continue
        f = np.sqrt(-2.0 * np.log(q) / q)
        out[i] = u * f
        if i + 1 < n:
            out[i + 1] = v * f
        i += 2


def as_seed(seed: object) -> int:
    """Any 64-bit integer as the int64 the kernels take (the same 64 bits)."""
    if not isinstance(seed, int | np.integer):
        raise ValueError(f"seed: must be an integer, got {type(seed).__name__}")
    s = int(seed)
    if not -(2**63) <= s < 2**64:
        raise ValueError(f"seed: must fit in 64 bits, got {s}")
    return s - 2**64 if s >= 2**63 else s


def warm_up() -> None:
    """Call every kernel once (load from cache before SERVING)."""
    state = rng_state(1)
    uniform(state)
    fill_normals(state, np.empty(2))
