"""Ranking metrics for fraud scores, and River's HalfSpaceTrees as the global peer.

``average_precision``, ``roc_auc`` and ``recall_at_alert_rate`` are NumPy (no scikit-learn
dependency), checked against brute force in the tests; :func:`run_half_space_trees` streams
a world (``bench/risk_worlds.py``) or the older shipped stream (``bench/risk_stream.py``)
through one global River ``HalfSpaceTrees`` when the optional ``river`` package is
installed. The model's own evaluation is ``bench/risk_worlds_eval.py``.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

import numpy as np

from nudge.bench.risk_stream import CHANNELS


class Transactions(Protocol):
    """What HalfSpaceTrees reads of a stream or world (one entry per transaction)."""

    @property
    def user(self) -> np.ndarray: ...
    @property
    def time(self) -> np.ndarray: ...
    @property
    def amount(self) -> np.ndarray: ...
    @property
    def local_hour(self) -> np.ndarray: ...
    @property
    def channel(self) -> np.ndarray: ...
    def __len__(self) -> int: ...


# ---------------------------------------------------------------------------------------
# Metrics (NumPy; no scikit-learn dependency)
# ---------------------------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2),
    via the Mann-Whitney rank sum with average ranks for ties."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("roc_auc needs at least one positive and one negative label")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each tie group
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Sum over distinct thresholds of (recall step) x precision, as scikit-learn's
    ``average_precision_score`` (tied scores enter together)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("average_precision needs at least one positive label")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    tp = np.cumsum(y[order])
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tp = tp[last].astype(np.float64)
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / n_pos
    return float((recall_step * precision).sum())


def recall_at_alert_rate(labels: np.ndarray, scores: np.ndarray, rate: float) -> float:
    """Share of positives among the top ``rate`` share of transactions by score."""
    y = np.asarray(labels).astype(bool)
    k = max(1, int(np.ceil(rate * y.size)))
    top = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")[:k]
    return float(y[top].sum() / max(1, y.sum()))


def run_half_space_trees(stream: Transactions, seed: int = 0) -> np.ndarray | None:
    """One global River HalfSpaceTrees over the stream (score, then learn), or None when
    river is not installed. Features: log amount, hour (sin/cos), channel one-hot, and the
    user's log time since previous transaction and count in the last hour, scaled to [0, 1]
    (a global model is allowed cheap per-user velocity, but no per-user profile)."""
    try:
        from river import anomaly
    except ImportError:
        return None
    model = anomaly.HalfSpaceTrees(n_trees=25, height=12, window_size=250, seed=seed)
    last: dict[int, deque] = {}
    scores = np.empty(len(stream))
    for i in range(len(stream)):
        u = int(stream.user[i])
        t = float(stream.time[i])
        recent = last.setdefault(u, deque())
        while recent and t - recent[0] > 3600.0:
            recent.popleft()
        since = t - recent[-1] if recent else 86400.0 * 30
        h = 2 * np.pi * stream.local_hour[i] / 24.0
        x = {"amount": min(np.log1p(stream.amount[i]) / 10.0, 1.0),
             "hour_sin": 0.5 + 0.5 * np.sin(h), "hour_cos": 0.5 + 0.5 * np.cos(h),
             "since_last": min(np.log1p(max(since, 0.0)) / np.log1p(86400.0 * 30), 1.0),
             "last_hour": min(len(recent) / 10.0, 1.0)}
        for c in CHANNELS:
            x[f"ch_{c}"] = float(stream.channel[i] == c)
        scores[i] = model.score_one(x)
        model.learn_one(x)
        recent.append(t)
    return scores
