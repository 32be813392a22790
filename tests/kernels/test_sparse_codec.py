"""The batch record encoder against the one-vector NumPy encoding, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels import jit, sparse_codec
from nudge.server.storage.tables.codecs import decode_sparse, encode_sparse


def reference(row: np.ndarray) -> bytes:
    """Slow and obvious: the bitmap bit by bit (first slot = most significant bit)."""
    nonzero = [j for j, v in enumerate(row) if v != 0.0 or np.isnan(v)]
    mask_bytes = (len(row) + 7) // 8
    if mask_bytes + 8 * len(nonzero) >= 8 * len(row):
        return row.astype(np.float64).tobytes()
    mask = bytearray(mask_bytes)
    for j in nonzero:
        mask[j // 8] |= 1 << (7 - j % 8)
    return bytes(mask) + b"".join(row[j].tobytes() for j in nonzero)


@pytest.mark.parametrize("seed", range(4))
def test_every_row_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    length = int(rng.integers(1, 230))
    n = int(rng.integers(1, 60))
    density = rng.uniform(0, 1, n)[:, None]
    values = np.where(rng.random((n, length)) < density, rng.normal(0, 1e3, (n, length)), 0.0)
    values[rng.random((n, length)) < 0.02] = np.nan
    values[0] = 0.0  # an all-zero row: a bitmap alone
    buffer, offsets = sparse_codec.encode_rows(values)
    assert offsets.shape == (n + 1,) and offsets[-1] == buffer.size
    raw = buffer.tobytes()
    for i in range(n):
        got = raw[offsets[i]:offsets[i + 1]]
        assert got == reference(values[i]) == encode_sparse(values[i])
        np.testing.assert_array_equal(decode_sparse(got, length), values[i])


def test_read_only_input_and_no_rows() -> None:
    values = np.zeros((3, 10))
    values[1, 9] = 2.0
    buffer, offsets = sparse_codec.encode_rows(jit.readonly(values))
    assert buffer.tobytes()[offsets[1]:offsets[2]] == encode_sparse(values[1])
    buffer, offsets = sparse_codec.encode_rows(np.zeros((0, 10)))
    assert buffer.size == 0 and offsets.tolist() == [0]


def test_wrong_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="values"):
        sparse_codec.encode_rows(np.zeros((2, 3), np.float32))
