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


def warm_up() -> None:
    """Compile (or load) both signatures before the server says SERVING."""
    probe = np.zeros((2, 9), np.float64)
    probe[0, 3] = 1.5
    encode_rows(probe)
    encode_rows(jit.readonly(probe))
