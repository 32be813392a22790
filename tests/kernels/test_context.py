"""Context kernels against slow NumPy references."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from nudge.kernels import context
from nudge.kernels.context import (
    WINSOR_AFTER,
    WINSOR_Z,
    ContextLayout,
    ContextParams,
    build_context,
    build_contexts,
    hash_bucket,
    initial_stats,
    update_stats,
)

LAYOUT = ContextLayout(numeric=("amount", "sessions", "hour"),
                       strings=(("country", 4), ("device", 3)), log1p=("amount",))


def test_layout() -> None:
    assert LAYOUT.n_features == 1 + 3 + 4 + 3
    assert LAYOUT.offsets().tolist() == [4, 8]
    names = LAYOUT.feature_names()
    assert names[:4] == ["bias", "amount", "sessions", "hour"] and names[-1] == "device#2"
    assert np.isnan(LAYOUT.numeric_vector({"amount": 5.0})[1])
    assert LAYOUT.string_buckets({"device": "ios"}).tolist() == [-1, hash_bucket("device",
                                                                                  "ios", 3)]
    with pytest.raises(ValueError, match="unique"):
        ContextLayout(numeric=("a", "a"))
    with pytest.raises(ValueError, match="log1p"):
        ContextLayout(numeric=("a",), log1p=("b",))


def test_vocabulary_buckets_never_collide_and_name_their_values() -> None:
    segments = ("borrower", "saver", "traveller", "salaried", "gig")
    hashed = {hash_bucket("segment", v, 16) for v in segments}
    assert len(hashed) < len(segments)  # why vocabularies exist: CRC-32 collides here
    layout = ContextLayout(numeric=("a",), strings=(("segment", 6), ("device", 3)),
                           vocabularies=(("segment", segments),))
    assert [layout.string_buckets({"segment": v})[0] for v in segments] == [0, 1, 2, 3, 4]
    assert layout.string_buckets({"segment": "student", "device": "ios"}).tolist() == [
        5, hash_bucket("device", "ios", 3)]
    assert layout.feature_names()[2:8] == [
        "segment=borrower", "segment=saver", "segment=traveller", "segment=salaried",
        "segment=gig", "segment=(other)"]
    assert layout.feature_names()[-1] == "device#2"
    with pytest.raises(ValueError, match=r"len\(values\) \+ 1"):
        ContextLayout(strings=(("segment", 5),), vocabularies=(("segment", segments),))
    with pytest.raises(ValueError, match="not a string feature"):
        ContextLayout(strings=(("s", 2),), vocabularies=(("t", ("x",)),))
    with pytest.raises(ValueError, match="distinct"):
        ContextLayout(strings=(("s", 3),), vocabularies=(("s", ("x", "x")),))


def test_hash_bucket_is_stable() -> None:
    assert hash_bucket("country", "UY", 1000) == zlib.crc32(b"country\x1fUY") % 1000
    assert all(0 <= hash_bucket("x", str(i), 7) < 7 for i in range(100))


def test_running_stats_exact_average_then_forgetting() -> None:
    rng = np.random.default_rng(1)
    raw = rng.normal(3.0, 2.0, size=(500, 3))
    raw[rng.random(raw.shape) < 0.2] = np.nan
    stats = update_stats(LAYOUT, initial_stats(LAYOUT), raw, ContextParams(min_rate=1e-9))
    vals = raw.copy()
    vals[:, 0] = np.sign(vals[:, 0]) * np.log1p(np.abs(vals[:, 0]))
    for j in range(3):
        col = vals[~np.isnan(vals[:, j]), j]
        assert stats.count[j] == len(col)
        assert stats.mean[j] == pytest.approx(col.mean(), rel=1e-10)
        assert stats.var[j] == pytest.approx(col.var(), rel=1e-9)
    # Forgetting: a fixed step once 1/n is below min_rate.
    rate = 0.05
    stats = update_stats(LAYOUT, initial_stats(LAYOUT), raw, ContextParams(min_rate=rate))
    col = raw[:, 1][~np.isnan(raw[:, 1])]
    mean = var = 0.0
    for n, v in enumerate(col, start=1):
        a = max(1.0 / n, rate)
        delta = v - mean
        mean += a * delta
        var = (1 - a) * (var + a * delta * delta)
    assert stats.mean[1] == pytest.approx(mean) and stats.var[1] == pytest.approx(var)


def test_build_contexts_matches_reference() -> None:
    rng = np.random.default_rng(2)
    train = rng.normal(0.0, 3.0, size=(200, 3))
    stats = update_stats(LAYOUT, initial_stats(LAYOUT), train)
    raw = rng.normal(0.0, 6.0, size=(50, 3))
    raw[rng.random(raw.shape) < 0.1] = np.nan
    buckets = np.stack([rng.integers(-1, 4, 50), rng.integers(-1, 3, 50)], axis=1)
    params = ContextParams(clip=2.0)
    got = build_contexts(LAYOUT, stats, raw, buckets, params)
    for t in range(50):
        ref = np.zeros(LAYOUT.n_features)
        ref[0] = 1.0
        for j in range(3):
            v = raw[t, j]
            if np.isnan(v):
                continue
            if j == 0:
                v = np.sign(v) * np.log1p(abs(v))
            ref[1 + j] = np.clip((v - stats.mean[j]) / np.sqrt(stats.var[j]), -2.0, 2.0)
        if buckets[t, 0] >= 0:
            ref[4 + buckets[t, 0]] = 1.0
        if buckets[t, 1] >= 0:
            ref[8 + buckets[t, 1]] = 1.0
        assert np.allclose(got[t], ref, atol=1e-12)
    one = build_context(LAYOUT, stats, raw[3], buckets[3], params)
    assert np.array_equal(one, got[3])


def test_no_information_gives_zero() -> None:
    stats = initial_stats(LAYOUT)
    x = build_context(LAYOUT, stats, np.array([5.0, 1.0, 2.0]))
    assert x.tolist() == [1.0] + [0.0] * (LAYOUT.n_features - 1)
    const = update_stats(LAYOUT, stats, np.ones((10, 3)))
    assert build_context(LAYOUT, const, np.array([5.0, 1.0, 2.0]))[1:4].tolist() == [0, 0, 0]


def test_read_only_inputs_and_validation() -> None:
    stats = update_stats(LAYOUT, initial_stats(LAYOUT), np.random.default_rng(3).random((5, 3)))
    raw = np.ones((2, 3))
    raw.flags.writeable = False
    b = np.zeros((2, 2), dtype=np.int64)
    b.flags.writeable = False
    build_contexts(LAYOUT, stats, raw, b)
    update_stats(LAYOUT, stats, raw)
    assert np.array_equal(raw, np.ones((2, 3)))
    with pytest.raises(ValueError, match="raw: must be float64 of shape"):
        build_contexts(LAYOUT, stats, np.ones((2, 4)))
    with pytest.raises(ValueError, match="raw: must not contain inf"):
        build_contexts(LAYOUT, stats, np.full((1, 3), np.inf))
    with pytest.raises(ValueError, match="buckets: each must be"):
        build_contexts(LAYOUT, stats, np.ones((1, 3)), np.array([[4, 0]]))
    with pytest.raises(ValueError, match="clip"):
        ContextParams(clip=0.0)


def test_warm_up_runs() -> None:
    context.warm_up()


def _stats_reference(col: np.ndarray, rate: float) -> tuple[float, float]:
    """The winsorised running mean and variance, one value at a time (slow)."""
    mean = var = 0.0
    for seen, v in enumerate(col):  # ``seen``: values folded before this one
        delta = v - mean
        if seen > WINSOR_AFTER and var > 0.0:
            delta = float(np.clip(delta, -WINSOR_Z * np.sqrt(var), WINSOR_Z * np.sqrt(var)))
        a = max(1.0 / (seen + 1), rate)
        mean += a * delta
        var = (1 - a) * (var + a * delta * delta)
    return mean, var


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_running_stats_winsorise_wild_values_as_the_reference_does(seed: int) -> None:
    rng = np.random.default_rng(seed)
    raw = rng.standard_cauchy(size=(3_000, 3)) * rng.uniform(1, 100)  # many beyond 8 sd
    raw[rng.random(raw.shape) < 0.1] = np.nan
    rate = float(rng.choice([1e-4, 1e-2]))
    stats = update_stats(LAYOUT, initial_stats(LAYOUT), raw, ContextParams(min_rate=rate))
    for j in (1, 2):  # the columns without log1p
        col = raw[:, j][~np.isnan(raw[:, j])]
        mean, var = _stats_reference(col, rate)
        assert stats.mean[j] == pytest.approx(mean, rel=1e-9, abs=1e-12)
        assert stats.var[j] == pytest.approx(var, rel=1e-9)


def test_one_value_in_the_wrong_unit_does_not_blind_the_feature() -> None:
    """One 1e12 among values near 1,000: unclipped, the sd became 1e10 and every later
    value standardised to 0 for more than 100,000 observations."""
    layout = ContextLayout(numeric=("balance",))
    rng = np.random.default_rng(7)
    stats = update_stats(layout, initial_stats(layout), rng.normal(1_000, 100, (20_000, 1)))
    hit = update_stats(layout, stats, np.array([[1e12]]))
    assert np.sqrt(hit.var[0]) < 1.15 * np.sqrt(stats.var[0])
    assert build_context(layout, hit, np.array([1_200.0]))[1] > 1.7  # 2 sd: still seen


@pytest.mark.parametrize("position", [2, 5, 29])
def test_a_wild_value_among_the_first_ones_does_not_blind_the_feature(position: int) -> None:
    """Clipping started after 30 values until 2026-12-03: 1e17 as the sixth value left a
    variance of 1.2e26 after 100,000 more, every value standardised to 0."""
    layout = ContextLayout(numeric=("balance",))
    rng = np.random.default_rng(position)
    values = rng.normal(1_000, 100, (3_000, 1))
    values[position] = 1e17
    stats = update_stats(layout, initial_stats(layout), values)
    # Clipped to 50 sd, the value still counts: early, with a weight of 1/n, it leaves the
    # sd up to ~1.5x after 3,000 values (fading as 1/n), not 1e15x.
    assert 80 < np.sqrt(stats.var[0]) < 160
    assert build_context(layout, stats, np.array([1_200.0]))[1] > 1.2


def test_early_clipping_catches_up_with_a_scale_two_values_understated() -> None:
    # Two near-equal first values give a tiny sd; genuine values far beyond it are
    # clipped at first, but each clip grows the variance, and the estimate converges.
    layout = ContextLayout(numeric=("balance",))
    rng = np.random.default_rng(11)
    values = np.concatenate([[[1_000.0], [1_000.01]], rng.normal(1_000, 100, (2_000, 1))])
    stats = update_stats(layout, initial_stats(layout), values)
    assert 90 < np.sqrt(stats.var[0]) < 110


def test_a_real_change_of_scale_is_still_followed() -> None:
    layout = ContextLayout(numeric=("balance",))
    rng = np.random.default_rng(8)
    stats = update_stats(layout, initial_stats(layout), rng.normal(1_000, 100, (40_000, 1)))
    later = update_stats(layout, stats, rng.normal(100_000, 10_000, (5_000, 1)))
    assert np.sqrt(later.var[0]) > 10_000  # within the slowest step's 5,000 observations
