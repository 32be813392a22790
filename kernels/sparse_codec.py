"""The sparse float64 record encoding, for a whole batch of records at once.

Stored records (users' state, risk baselines) are fixed-length float64 vectors, mostly
zeros; the store keeps each as a bitmap of its non-zero slots (NumPy ``packbits`` order:
the first slot is the most significant bit of the first byte) followed by those slots'
values, or as the raw float64 bytes when that is not longer (see
``nudge.server.storage.tables.codecs``, whose one-vector ``encode_sparse`` is the
reference this kernel must match byte for byte).

Ingest writes one record per user per commit — tens of thousands per second — and
encoding them one by one in NumPy costs more per record (a mask, a sum, packbits, a
boolean index, two ``tobytes``) than the LMDB put of the result. Here every record of a
commit is encoded in one compiled pass into one buffer: record ``i`` is
``buffer[offsets[i]:offsets[i + 1]]``.

Reading goes the other way one record at a time (every Decide and GetUser decodes one,
between gRPC calls that evict the caches, where the NumPy spelling — unpack the bits, a
boolean view, zeros, a masked assignment — costs several microseconds of call overhead):
:func:`scatter_bits` fills the dense vector in one loop over the bitmap.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nudge.kernels import jit


@njit(
    [
        jit.types.Tuple((jit.array(jit.u1, 1), jit.i8_1d))(values)
        for values in (jit.f8_2d, jit.f8_2d_ro)
    ],
    **jit.NOGIL,
)
def _encode_rows(values):
    n, length = values.shape
    mask_bytes = (length + 7) // 8
    dense = 8 * length
    offsets = np.empty(n + 1, np.int64)
    offsets[0] = 0
    for r in range(n):
        nnz = 0
        for j in range(length):
            if values[r, j] != 0.0:  # NaN != 0.0: a NaN is kept as a value
                nnz += 1
        size = mask_bytes + 8 * nnz
        offsets[r + 1] = offsets[r] + (dense if size >= dense else size)
    out = np.zeros(offsets[n], np.uint8)
    for r in range(n):
        start = offsets[r]
        row = values[r]
        raw = np.ascontiguousarray(row).view(np.uint8)
        if offsets[r + 1] - start == dense:
            out[start:start + dense] = raw
            continue
        at = start + mask_bytes
        for j in range(length):
            if row[j] != 0.0:
                out[start + j // 8] |= np.uint8(1 << (7 - j % 8))
                out[at:at + 8] = raw[8 * j:8 * j + 8]
                at += 8
    return out, offsets


def encode_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Encode every row of a float64 matrix: ``(buffer, offsets)``, row ``i`` being
    ``buffer[offsets[i]:offsets[i + 1]]``, each exactly ``codecs.encode_sparse(row)``."""
    values = jit.typed_array(values, "values", np.float64, 2)
    return _encode_rows(values)


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
    """Compile (or load) every signature before the server says SERVING."""
    probe = np.zeros((2, 9), np.float64)
    probe[0, 3] = 1.5
    buffer, offsets = encode_rows(probe)
    encode_rows(jit.readonly(probe))
    first = jit.readonly(buffer[offsets[0]:offsets[1]])
    scatter_bits(first[:2], first[2:].view(np.float64), 9)
