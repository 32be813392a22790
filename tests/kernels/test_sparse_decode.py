"""The sparse-vector scatter kernel against NumPy's unpack-and-assign on fresh random
vectors (lengths not a multiple of 8, all-zero, all-set, NaN values), and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from nudge.kernels.sparse_codec import scatter_bits


def reference(mask: np.ndarray, values: np.ndarray, length: int) -> np.ndarray:
    bits = np.unpackbits(mask, count=length).view(np.bool_)
    out = np.zeros(length)
    out[bits] = values
    return out


def encoded(vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask bytes, values) as tables/codecs.py stores them, as read-only views."""
    nonzero = vector != 0.0
    raw = np.packbits(nonzero).tobytes() + vector[nonzero].tobytes()
    mask_bytes = (len(vector) + 7) // 8
    return (np.frombuffer(raw, np.uint8, mask_bytes),
            np.frombuffer(raw, np.float64, offset=mask_bytes))


@pytest.mark.parametrize("seed", range(5))
def test_scatter_matches_numpy_on_random_sparse_vectors(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        length = int(rng.integers(1, 300))
        vector = np.where(rng.random(length) < rng.random(), rng.normal(size=length), 0.0)
        vector[rng.random(length) < 0.02] = np.nan
        mask, values = encoded(vector)
        got = scatter_bits(mask, values, length)
        np.testing.assert_array_equal(got, reference(mask, values, length))
        np.testing.assert_array_equal(got, vector)
        assert got.flags.writeable


@pytest.mark.parametrize("vector", [np.zeros(13), np.arange(1.0, 17.0), np.array([0.0, -0.5])])
def test_scatter_edges(vector: np.ndarray) -> None:
    mask, values = encoded(vector)
    np.testing.assert_array_equal(scatter_bits(mask, values, len(vector)), vector)


def test_scatter_refuses_values_that_do_not_match_the_bits() -> None:
    mask, values = encoded(np.array([1.0, 0.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="fewer"):
        scatter_bits(mask, values[:2], 4)
    with pytest.raises(ValueError, match="more"):
        scatter_bits(mask, np.concatenate([values, values]), 4)
    with pytest.raises(ValueError, match="past length"):
        scatter_bits(mask, values, 3)
    with pytest.raises(ValueError, match="ceil"):
        scatter_bits(mask, values, 9)
