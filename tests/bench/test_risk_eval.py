"""The takeover stream generator, the ranking metrics and the River peer (small and fast)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from nudge.bench.risk_eval import (
    average_precision,
    recall_at_alert_rate,
    roc_auc,
    run_half_space_trees,
)
from nudge.bench.risk_stream import generate_stream

SMALL = {"n_users": 700, "days": 40.0, "warmup_days": 15.0, "seed": 0}


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for threshold in np.unique(s)[::-1]:
        flagged = s >= threshold
        recall = (y[flagged] == 1).sum() / (y == 1).sum()
        ap += (recall - prev_recall) * (y[flagged] == 1).mean()
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_brute_force_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.1).astype(int)
    s = np.round(rng.normal(y * 1.0, 1.0), 1)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)


def test_metric_edge_cases() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert average_precision(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.zeros(4)) == 0.5
    assert recall_at_alert_rate(y, np.array([0.1, 0.2, 0.3, 0.9]), 0.25) == 0.5
    with pytest.raises(ValueError, match="at least one positive"):
        roc_auc(np.zeros(3), np.zeros(3))


def test_generator_is_deterministic_per_seed() -> None:
    a = generate_stream(n_users=60, days=20.0, warmup_days=5.0, seed=3)
    b = generate_stream(n_users=60, days=20.0, warmup_days=5.0, seed=3)
    c = generate_stream(n_users=60, days=20.0, warmup_days=5.0, seed=4)
    for name in ("time", "user", "amount", "local_hour", "country", "merchant_category",
                 "device_id", "channel", "label", "burst", "tag"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert len(a) != len(c) or not np.array_equal(a.amount, c.amount)
    assert (np.diff(a.time) >= 0).all()
    assert ((a.local_hour >= 0) & (a.local_hour < 24)).all() and (a.amount >= 0).all()
    assert a.label.sum() > 0 and (a.burst[a.label == 1] >= 0).all()
    assert (a.time[a.label == 1] >= a.warmup_s).all()  # fraud only after the warm-up


def test_half_space_trees_scores_every_transaction_when_installed() -> None:
    stream = generate_stream(n_users=20, days=10.0, warmup_days=3.0, seed=0)
    scores = run_half_space_trees(stream)
    if importlib.util.find_spec("river") is None:
        assert scores is None
    else:
        assert scores is not None and scores.shape == (len(stream),)
        assert np.isfinite(scores).all()
