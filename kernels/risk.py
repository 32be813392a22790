"""The transaction vector every fraud kernel takes: hashing of categorical values into bins
and validation (``encode_transaction`` / ``encode_transactions``).

The model itself is :mod:`nudge.kernels.risk_model`; this module only turns a transaction
into its ``TX_LEN`` float64 vector. Strings are hashed into bins by :func:`category_bin`
(BLAKE2b, stable across processes); an empty string means "missing": that feature neither
scores nor learns. Hashing means "new" is "new bin": a value colliding with one of the
customer's usual few goes unnoticed (chance about usual/bins, e.g. 1 in 96 for a
one-country customer). CRC-32 was rejected: its low bits collide on short codes (US and BR
share a bin mod 64 and mod 128). The bin counts are part of the stored layouts of
:mod:`nudge.kernels.risk_model`: changing one changes them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

COUNTRY_BINS = 96
MCC_BINS = 128
DEVICE_BINS = 32
CHANNEL_BINS = 8

# The transaction vector (kernel input)
TX_TIME = 0  # seconds, any epoch, same clock for all calls
TX_AMOUNT = 1  # finite, >= 0
TX_HOUR = 2  # local hour of day in [0, 24), computed by the caller
TX_COUNTRY = 3  # bin index as float, -1 = missing
TX_MCC = 4
TX_DEVICE = 5
TX_CHANNEL = 6
TX_LEN = 7

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


def encode_transaction_trusted(amount: float, time: float, local_hour: float, country: str,
                               merchant_category: str, device_id: str,
                               channel: str) -> np.ndarray:
    """:func:`encode_transaction` without its checks, for a caller that validated every
    input itself (ScoreTransaction: amount finite and >= 0, time finite, the local hour
    from ``local_hour`` in [0, 24), strings from a protobuf message): its seven Python
    calls of checks and bins on a hot path become memo lookups. The same vector (and an
    hour outside [0, 24) still raises, through the checked path)."""
    if not 0.0 <= local_hour < 24.0:
        return encode_transaction(amount, time, local_hour, country, merchant_category,
                                  device_id, channel)
    cache = _BIN_CACHE
    c = cache.get((country, COUNTRY_BINS))
    m = cache.get((merchant_category, MCC_BINS))
    d = cache.get((device_id, DEVICE_BINS))
    h = cache.get((channel, CHANNEL_BINS))
    return np.array([
        time, amount, local_hour,
        category_bin(country, COUNTRY_BINS) if c is None else c,
        category_bin(merchant_category, MCC_BINS) if m is None else m,
        category_bin(device_id, DEVICE_BINS) if d is None else d,
        category_bin(channel, CHANNEL_BINS) if h is None else h,
    ], dtype=np.float64)


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


_BIN_LIMITS = ((TX_COUNTRY, COUNTRY_BINS, "country"), (TX_MCC, MCC_BINS, "merchant_category"),
               (TX_DEVICE, DEVICE_BINS, "device_id"), (TX_CHANNEL, CHANNEL_BINS, "channel"))
