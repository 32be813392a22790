"""The transaction vector: stable hashing of categorical values, and input validation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from nudge.kernels import risk as R


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"amount": -1.0}, "amount must be >= 0"),
    ({"amount": float("nan")}, "amount must be finite"),
    ({"time": float("inf")}, "time must be finite"),
    ({"local_hour": 24.0}, r"local_hour must be in \[0, 24\)"),
    ({"country": 5}, "must be a str"),
])
def test_encode_transaction_rejects_bad_input(kwargs: dict, message: str) -> None:
    args = {"amount": 1.0, "time": 0.0, "local_hour": 1.0, "country": "US",
            "merchant_category": "5411", "device_id": "", "channel": "pos"} | kwargs
    with pytest.raises(ValueError, match=message):
        R.encode_transaction(**args)


def test_encode_transactions_rejects_bad_columns() -> None:
    with pytest.raises(ValueError, match="one value per transaction"):
        R.encode_transactions([1.0, 2.0], [0.0], [0.0, 1.0], ["BR", "BR"], ["", ""], ["", ""],
                              ["", ""])
    with pytest.raises(ValueError, match="amount must be >= 0"):
        R.encode_transactions([-1.0], [0.0], [0.0], ["BR"], [""], [""], [""])


def test_category_bins_are_stable_and_empty_means_missing() -> None:
    def blake(v: bytes, n: int) -> int:
        return int.from_bytes(hashlib.blake2b(v, digest_size=8).digest(), "little") % n

    assert R.category_bin("BR", 96) == blake(b"BR", 96) == 90  # pinned: stored profiles rely on it
    assert R.category_bin("US", 96) != R.category_bin("BR", 96)
    assert R.category_bin("", 64) == -1
    enc = R.encode_transactions([1.0, 2.0], [0.0, 1.0], [0.0, 23.5], ["BR", ""],
                                ["5411", "5411"], ["a", ""], ["pos", "pos"])
    assert enc[0, R.TX_COUNTRY] == blake(b"BR", 96) and enc[1, R.TX_COUNTRY] == -1
    np.testing.assert_array_equal(
        enc[0], R.encode_transaction(1.0, 0.0, 0.0, "BR", "5411", "a", "pos"))


def test_trusted_encoding_is_the_checked_one() -> None:
    """ScoreTransaction's encoder (no checks, memoised bins) gives the same vector as
    encode_transaction on valid input, first sight of a string or not, and an hour out
    of range still raises."""
    rng = np.random.default_rng(29)
    words = ["", "BR", "US", "5411", "pos", "app", "d-1", "café", "x" * 40]
    for _ in range(500):
        args = (float(rng.exponential(100.0)), float(rng.uniform(0, 2e9)),
                float(rng.uniform(0, 24)), *(str(rng.choice(words)) + str(rng.integers(0, 3))
                                             * int(rng.integers(0, 2)) for _ in range(4)))
        np.testing.assert_array_equal(R.encode_transaction_trusted(*args),
                                      R.encode_transaction(*args))
    with pytest.raises(ValueError, match=r"local_hour must be in \[0, 24\)"):
        R.encode_transaction_trusted(1.0, 0.0, 24.0, "BR", "", "", "")
