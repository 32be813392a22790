"""Value encodings more than one table uses.

Sparse float64 vectors: per-user records (state, risk baseline) are fixed-length float64
vectors that are mostly zeros for most users (slots of event types, hours, categories
they never had). Stored as a bitmap of the non-zero slots, then their values; or dense
(raw float64 bytes) when that is not longer. The sparse form is always strictly shorter
than the dense one, so a value as long as the dense vector is dense (which is also how
records stored before this encoding read).
"""

from __future__ import annotations

import numpy as np

from nudge.kernels.sparse_codec import scatter_bits


def encode_sparse(values: np.ndarray) -> bytes:
    """A float64 vector's stored bytes: sparse, or dense when that is not longer."""
    mask = values != 0.0  # NaN is kept as a value
    mask_bytes = (len(values) + 7) // 8
    if mask_bytes + 8 * int(mask.sum()) >= 8 * len(values):
        return np.ascontiguousarray(values, np.float64).tobytes()
    return np.packbits(mask).tobytes() + values[mask].tobytes()


def decode_sparse(raw: bytes | memoryview, length: int) -> np.ndarray:
    """Stored bytes as a new writable float64 vector of ``length`` values."""
    if len(raw) == 8 * length:
        return np.frombuffer(raw, dtype=np.float64).copy()
    # One kernel call (kernels/sparse_codec.py): NumPy's unpack, zeros and masked assignment
    # cost several microseconds of call overhead on every Decide and GetUser.
    mask_bytes = (length + 7) // 8
    return scatter_bits(np.frombuffer(raw, np.uint8, mask_bytes),
                        np.frombuffer(raw, np.float64, offset=mask_bytes), length)
