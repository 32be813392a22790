"""Evaluation of the per-user risk kernels on the synthetic takeover stream.

Run: ``python -m nudge.bench.risk_eval [--users N] [--days D] [--seed S]``; ``--speed``
measures the kernels instead (single-score µs per transaction, batch transactions/s).

The stream goes through the kernels in time order, the way the server would run it:
score, observe, learn unless guarded. Guarded (held) transactions get their label
``--label-delay-hours`` later; genuine ones are then folded into the user's baseline and the
population, fraud is dropped. Unguarded transactions are learned at once whatever their
label, as in production, where nobody knows yet. The population baseline learns every
learned or labelled-genuine transaction (at the end of each ``--chunk-minutes`` batch).

Reported on the transactions after the warm-up: ROC-AUC, average precision, recall at a
fixed alert rate, bursts caught (at least one alert), each reason code's firing rate on
fraud vs genuine, the same with the guard switched off (the poisoning it prevents), and,
when the optional ``river`` package is importable, one global ``HalfSpaceTrees`` on the same
stream.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np

from nudge.bench.risk_stream import CHANNELS, RiskStream, generate_stream
from nudge.kernels.risk import (
    DETAIL_LEARNED,
    DETAIL_LEN,
    FEAT_LEN,
    RiskParams,
    encode_transactions,
    learn_transactions,
    new_risk_state,
    score_transactions,
)
from nudge.kernels.risk_reasons import REASON_CODES, reason_flags

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


# ---------------------------------------------------------------------------------------
# Running the stream
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelRun:
    """Per-transaction results of streaming through the kernels."""

    scores: np.ndarray
    details: np.ndarray
    seconds: float  # wall time of the kernel calls (score + learn)


def run_kernels(stream: RiskStream, params: RiskParams, label_delay_s: float = 86400.0,
                chunk_s: float = 3600.0) -> KernelRun:
    """Stream through the batch kernels in time order with held-until-labelled learning."""
    txs = encode_transactions(stream.amount, stream.time, stream.local_hour, stream.country,
                              stream.merchant_category, stream.device_id, stream.channel)
    n = len(stream)
    states = np.tile(new_risk_state(), (stream.n_users, 1))
    population = new_risk_state().reshape(1, -1)
    pop_rows_cache = np.zeros(0, np.int64)
    pop_params = params.for_population()
    details = np.empty((n, DETAIL_LEN))
    feats = np.empty((n, FEAT_LEN))
    pending: deque[int] = deque()
    bounds = np.searchsorted(stream.time, np.arange(stream.time[0], stream.time[-1] + chunk_s,
                                                    chunk_s), side="left")
    bounds = np.r_[bounds[1:], n]
    kernel_s = 0.0
    i0 = 0
    for i1 in bounds:
        if i1 <= i0:
            continue
        # labels that have arrived: genuine ones are learned now, fraud stays out
        arrived = []
        while pending and stream.time[pending[0]] + label_delay_s <= stream.time[i0]:
            arrived.append(pending.popleft())
        idx = np.array([i for i in arrived if stream.label[i] == 0], dtype=np.int64)
        t = time.perf_counter()
        if idx.size:
            learn_transactions(states, stream.user[idx], feats[idx], params, inplace=True)
        batch = score_transactions(states, stream.user[i0:i1], population[0], txs[i0:i1],
                                   params, inplace=True)
        details[i0:i1] = batch.details
        feats[i0:i1] = batch.features
        learned = np.flatnonzero(batch.details[:, DETAIL_LEARNED] > 0) + i0
        to_pop = np.r_[learned, idx]
        if pop_rows_cache.size < to_pop.size:
            pop_rows_cache = np.zeros(to_pop.size * 2, np.int64)
        learn_transactions(population, pop_rows_cache[:to_pop.size], feats[to_pop],
                           pop_params, inplace=True)
        kernel_s += time.perf_counter() - t
        pending.extend((np.flatnonzero(batch.details[:, DETAIL_LEARNED] == 0) + i0).tolist())
        i0 = i1
    return KernelRun(scores=details[:, 0].copy(), details=details, seconds=kernel_s)


def run_half_space_trees(stream: RiskStream, seed: int = 0) -> np.ndarray | None:
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


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """Ranking quality on the evaluated transactions."""

    roc_auc: float
    average_precision: float
    recall_at_rate: float
    bursts_caught: float  # share of attack bursts with at least one alert at that rate


def metrics(stream: RiskStream, scores: np.ndarray, mask: np.ndarray,
            alert_rate: float) -> Metrics:
    """Metrics on ``stream[mask]`` for one score vector."""
    y = stream.label[mask]
    s = scores[mask]
    k = max(1, int(np.ceil(alert_rate * y.size)))
    alerted = np.zeros(y.size, bool)
    alerted[np.argsort(-s, kind="mergesort")[:k]] = True
    bursts = stream.burst[mask]
    ids = np.unique(bursts[bursts >= 0])
    caught = np.unique(bursts[alerted & (bursts >= 0)])
    return Metrics(roc_auc=roc_auc(y, s), average_precision=average_precision(y, s),
                   recall_at_rate=recall_at_alert_rate(y, s, alert_rate),
                   bursts_caught=caught.size / max(1, ids.size))


def reason_rates(stream: RiskStream, details: np.ndarray, mask: np.ndarray,
                 params: RiskParams) -> dict[str, tuple[float, float]]:
    """Per reason code: (firing rate on fraud, firing rate on genuine)."""
    flags = reason_flags(details[mask], params)
    y = stream.label[mask].astype(bool)
    return {c: (float(flags[c][y].mean()), float(flags[c][~y].mean())) for c in REASON_CODES}


def evaluate(stream: RiskStream, params: RiskParams | None = None, alert_rate: float = 0.01,
             label_delay_s: float = 86400.0, with_river: bool = True,
             with_ablation: bool = True) -> dict:
    """Everything the report prints, as a dict (the test uses it directly)."""
    params = params or RiskParams()
    mask = stream.time >= stream.warmup_s
    run = run_kernels(stream, params, label_delay_s)
    result: dict = {
        "n": int(mask.sum()), "n_fraud": int(stream.label[mask].sum()),
        "n_bursts": int(np.unique(stream.burst[mask & (stream.burst >= 0)]).size),
        "nudge": metrics(stream, run.scores, mask, alert_rate),
        "reasons": reason_rates(stream, run.details, mask, params),
        "kernel_tx_per_s": len(stream) / run.seconds,
        "held_genuine_share": float((run.details[mask & (stream.label == 0), DETAIL_LEARNED]
                                     == 0).mean()),
    }
    if with_ablation:
        off = run_kernels(stream, replace(params, guard_threshold=2.0), label_delay_s)
        result["nudge_no_guard"] = metrics(stream, off.scores, mask, alert_rate)
    if with_river:
        hst = run_half_space_trees(stream)
        result["hst"] = None if hst is None else metrics(stream, hst, mask, alert_rate)
    return result


def measure_speed(n_batch: int = 200_000, repeats: int = 5) -> dict[str, float]:
    """Kernel speed on this machine (best of ``repeats``): the single-score kernel alone and
    through its validating wrapper (µs per transaction), and batch throughput (tx/s)."""
    from nudge.kernels import risk as R

    R.warm_up()
    stream = generate_stream(n_users=max(50, n_batch // 100), days=60.0, seed=1)
    n = min(n_batch, len(stream))
    txs = encode_transactions(stream.amount[:n], stream.time[:n], stream.local_hour[:n],
                              stream.country[:n], stream.merchant_category[:n],
                              stream.device_id[:n], stream.channel[:n])
    rows = stream.user[:n]
    pop = new_risk_state()
    warm = score_transactions(np.tile(pop, (stream.n_users, 1)), rows, pop, txs)
    pop = learn_transactions(pop.reshape(1, -1), np.zeros(n, np.int64), warm.features,
                             RiskParams().for_population())[0]
    pop.flags.writeable = False
    states = warm.states
    params = RiskParams()
    result: dict[str, float] = {}

    one = states[int(rows[-1])].copy()
    one.flags.writeable = False  # as an LMDB view
    new_state = np.empty(R.RISK_STATE_LEN)
    out = np.empty(R.DETAIL_LEN)
    feat = np.empty(R.FEAT_LEN)
    tx = txs[-1].copy()
    p = params.to_array()
    k = 20_000
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(k):
            R._score_one_kernel(one, pop, tx, p, True, new_state, out, feat)
        best = min(best, (time.perf_counter() - t) / k)
    result["single_kernel_us"] = best * 1e6
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(k // 4):
            R.score_transaction(one, pop, tx, params)
        best = min(best, (time.perf_counter() - t) / (k // 4))
    result["single_wrapper_us"] = best * 1e6
    best = np.inf
    for _ in range(repeats):
        s = states.copy()
        t = time.perf_counter()
        score_transactions(s, rows, pop, txs, params, inplace=True)
        best = min(best, time.perf_counter() - t)
    result["batch_tx_per_s"] = n / best
    return result


def _format(name: str, m: Metrics, alert_rate: float) -> str:
    return (f"{name:<34} ROC-AUC {m.roc_auc:.3f}   AP {m.average_precision:.3f}   "
            f"recall@{alert_rate:.0%} {m.recall_at_rate:.3f}   bursts caught "
            f"{m.bursts_caught:.0%}")


def main(argv: list[str] | None = None) -> int:
    """Parse options, generate the stream, print the report."""
    ap = argparse.ArgumentParser(prog="python -m nudge.bench.risk_eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=1500)
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--alert-rate", type=float, default=0.01)
    ap.add_argument("--label-delay-hours", type=float, default=24.0)
    ap.add_argument("--no-river", action="store_true", help="skip HalfSpaceTrees")
    ap.add_argument("--speed", action="store_true",
                    help="only measure kernel speed (single µs/tx, batch tx/s) and exit")
    args = ap.parse_args(argv)
    if args.speed:
        sp = measure_speed()
        print(f"single score kernel: {sp['single_kernel_us']:.2f} µs/tx (budget 5); through "
              f"score_transaction (validation, allocation): {sp['single_wrapper_us']:.1f} µs/tx")
        print(f"batch score_transactions incl. learning: {sp['batch_tx_per_s']:,.0f} tx/s "
              "(target 500,000)")
        return 0

    t = time.perf_counter()
    stream = generate_stream(n_users=args.users, days=args.days, seed=args.seed)
    print(f"stream: {len(stream):,} transactions, {args.users:,} users, {args.days:g} days, "
          f"seed {args.seed} ({time.perf_counter() - t:.1f} s)")
    r = evaluate(stream, alert_rate=args.alert_rate, label_delay_s=args.label_delay_hours * 3600,
                 with_river=not args.no_river)
    print(f"evaluated after warm-up: {r['n']:,} transactions, {r['n_fraud']} fraud in "
          f"{r['n_bursts']} takeover bursts ({r['n_fraud'] / r['n']:.2%})")
    print(f"kernel throughput incl. learning and labels: {r['kernel_tx_per_s']:,.0f} tx/s; "
          f"genuine held by the guard: {r['held_genuine_share']:.2%}")
    print()
    print(_format("nudge per-user risk", r["nudge"], args.alert_rate))
    print(_format("nudge, guard off (poisoned)", r["nudge_no_guard"], args.alert_rate))
    hst = r.get("hst")
    if hst is None:
        print("River HalfSpaceTrees: skipped: the optional 'river' package is not installed "
              "(pip install river)" if not args.no_river else "River: skipped (--no-river)")
    else:
        print(_format("River HalfSpaceTrees (global)", hst, args.alert_rate))
        ratio = r["nudge"].average_precision / max(hst.average_precision, 1e-12)
        print(f"AP ratio nudge / HalfSpaceTrees: {ratio:.1f}x")
    print()
    print(f"{'reason code':<24}{'fires on fraud':>16}{'on genuine':>12}{'ratio':>9}")
    for code, (f, g) in r["reasons"].items():
        ratio = f"{f / g:.0f}x" if g > 0 else "inf"
        print(f"{code:<24}{f:>16.1%}{g:>12.2%}{ratio:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
