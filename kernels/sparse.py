"""Sparse float64 vectors: the scatter half of the stored encoding (storage's
``tables/codecs.py`` owns the byte format; this kernel only fills the dense vector).

A stored sparse vector is a bitmap of its non-zero slots (NumPy ``packbits`` order: the
first slot is the high bit of the first byte) and then the values of those slots. Every
Decide and GetUser decodes one, between gRPC calls that evict the caches, where the NumPy
spelling (unpack the bits, a boolean view, zeros, a masked assignment) costs several
microseconds of per-call overhead; one kernel call does it in a loop over the bitmap.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nudge.kernels import jit


@njit(jit.f8_1d(jit.u1_1d_ro, jit.f8_1d_ro, jit.i8), **jit.GIL_NUMPY_ERRORS)
def scatter_bits(mask: np.ndarray, values: np.ndarray, length: int) -> np.ndarray:
    """A new ``length`` float64 vector: slot ``i`` is the next of ``values`` where bit ``i``
    of ``mask`` is set, else 0.0. Raises ValueError unless ``mask`` holds exactly
    ``ceil(length / 8)`` bytes and ``values`` one value per set bit among the first
    ``length``. (Keeps the GIL: it runs for about a microsecond inside a handler.)"""
    if mask.shape[0] != (length + 7) // 8:
        raise ValueError("mask: must hold ceil(length / 8) bytes")
    out = np.zeros(length)
    n = values.shape[0]
    k = 0
    for byte_index in range(mask.shape[0]):
        byte = mask[byte_index]
        if byte == 0:
            continue
        base = byte_index * 8
        for bit in range(8):
            if byte & (0x80 >> bit):
                i = base + bit
                if i >= length:
                    raise ValueError("mask: a bit is set past length")
                if k >= n:
                    raise ValueError("values: fewer than the bits set in mask")
                out[i] = values[k]
                k += 1
    if k != n:
        raise ValueError("values: more than the bits set in mask")
    return out


def warm_up() -> None:
    """Call every kernel once on tiny inputs (load from cache before SERVING)."""
    mask = np.frombuffer(bytes([0b10100000]), np.uint8)
    values = np.frombuffer(np.array([1.0, 2.0]).tobytes(), np.float64)
    scatter_bits(mask, values, 3)
