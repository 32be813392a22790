"""Offline evaluation of the likelihood-ratio fraud model on the world family.

Run: ``python -m nudge.bench.risk_worlds_eval [--worlds launch mature ...] [--seeds 1 2 3]
[--no-river] [--speed]``. Tuning was done on seed 0 only; report other seeds.

Each world runs in time order the way a server would: labels that have arrived (their
``label_time`` passed) are applied first (FRAUD: the transaction is never learned, the
takeover model and the supervised weights train; GENUINE: a held transaction is learned
now and the weights train), then held transactions whose hold delay passed without a FRAUD
label are folded in as genuine, once, then the next hour of transactions is scored and
learned (held ones wait). Metrics are on transactions after the world's warm-up.
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from nudge.bench.risk_eval import average_precision, recall_at_alert_rate, run_half_space_trees
from nudge.bench.risk_worlds import DAY, WORLDS, World, generate_world
from nudge.kernels.risk import encode_transactions
from nudge.kernels.risk_model import (
    D_HELD,
    DETAIL_LEN,
    FEAT_LEN,
    N_EVIDENCE,
    P_W,
    ModelParams,
    apply_labels,
    learn_held,
    new_population_state,
    new_user_state,
    score_and_learn,
)

HISTORY_BUCKETS = ((0, 4), (5, 19), (20, None))


@dataclass(frozen=True)
class ModelRun:
    """Per-transaction scores and details, how often each was learned (0 or 1), the final
    population state and the kernel wall time."""

    scores: np.ndarray
    details: np.ndarray
    learned: np.ndarray
    population: np.ndarray
    seconds: float


def run_model(world: World, params: ModelParams | None = None, hold_delay_s: float = 7 * DAY,
              chunk_s: float = 3600.0) -> ModelRun:
    """Stream the world through the model (see the module docstring)."""
    params = params or ModelParams()
    txs = encode_transactions(world.amount, world.time, world.local_hour, world.country,
                              world.merchant_category, world.device_id, world.channel)
    n = len(world)
    users = np.tile(new_user_state(), (world.n_users, 1))
    pop = new_population_state()
    details = np.empty((n, DETAIL_LEN))
    feats = np.empty((n, FEAT_LEN))
    learned = np.zeros(n, np.int64)
    fraud_labelled = np.zeros(n, bool)
    scored = np.zeros(n, bool)
    held: deque[int] = deque()
    li = 0
    kernel_s = 0.0
    edges = np.searchsorted(world.time, np.arange(world.time[0], world.time[-1] + chunk_s,
                                                  chunk_s))
    bounds = np.r_[edges[1:], n]
    i0 = 0
    for i1 in bounds:
        if i1 <= i0:
            continue
        now = world.time[i0]
        j = li
        while j < world.label_time.size and world.label_time[j] <= now:
            j += 1
        idx = world.label_index[li:j]
        idx_ok = idx[scored[idx]]
        y = world.label_value[li:j][scored[idx]]
        li = j
        t = time.perf_counter()
        if idx_ok.size:
            apply_labels(pop, feats[idx_ok], y.astype(np.float64), params)
            fraud_labelled[idx_ok[y == 1]] = True
            gen = idx_ok[(y == 0) & (learned[idx_ok] == 0)]
            if gen.size:
                learn_held(users, world.user[gen], pop, feats[gen], params)
                learned[gen] += 1
        due = []
        while held and world.time[held[0]] + hold_delay_s <= now:
            k = held.popleft()
            if not fraud_labelled[k] and learned[k] == 0:
                due.append(k)
        if due:
            d = np.array(due, np.int64)
            learn_held(users, world.user[d], pop, feats[d], params)
            learned[d] += 1
        b = score_and_learn(users, world.user[i0:i1], pop, txs[i0:i1], params)
        kernel_s += time.perf_counter() - t
        details[i0:i1] = b.details
        feats[i0:i1] = b.features
        scored[i0:i1] = True
        learned[i0:i1] += ~b.held
        held.extend((np.flatnonzero(b.held) + i0).tolist())
        i0 = i1
    if learned.max(initial=0) > 1:
        raise AssertionError("a transaction was learned twice")
    return ModelRun(scores=details[:, 0].copy(), details=details, learned=learned,
                    population=pop, seconds=kernel_s)


def reliability(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """Per score decile (lowest first): (mean predicted, observed fraud rate, count)."""
    order = np.argsort(p, kind="mergesort")
    return [(float(p[c].mean()), float(y[c].mean()), int(c.size))
            for c in np.array_split(order, bins) if c.size]


def evaluate_world(world: World, params: ModelParams | None = None, alert_rate: float = 0.005,
                   thresholds: tuple[float, ...] = (0.5, 0.05), with_river: bool = False
                   ) -> dict:
    """Every number of the report for one world, as a dict."""
    params = params or ModelParams()
    run = run_model(world, params)
    m = world.time >= world.warmup_s
    y = world.label[m].astype(np.int64)
    s = run.scores[m]
    h = world.history[m]
    r: dict = {"world": world.name, "seed": world.seed, "n": int(m.sum()),
               "n_fraud": int(y.sum()), "ap": average_precision(y, s),
               "recall": recall_at_alert_rate(y, s, alert_rate),
               "tx_per_s": len(world) / run.seconds}
    for lo, hi in HISTORY_BUCKETS:
        sel = (h >= lo) if hi is None else (h >= lo) & (h <= hi)
        key = f"ap_{lo}_{hi or 'up'}"
        r[key] = average_precision(y[sel], s[sel]) if y[sel].sum() else float("nan")
        r[f"fraud_{lo}_{hi or 'up'}"] = int(y[sel].sum())
    rel = reliability(y, s)
    r["reliability"] = rel
    r["top_decile_pred"], r["top_decile_obs"] = rel[-1][0], rel[-1][1]
    # genuine alert rate per week at a fixed threshold (whole stream, warm-up included)
    g = world.label == 0
    week = (world.time // (7 * DAY)).astype(np.int64)
    weeks = [k for k in range(week.max() + 1) if (g & (week == k)).any()]
    r["weekly_genuine_alert"] = {th: [float((run.scores[g & (week == k)] >= th).mean())
                                      for k in weeks] for th in thresholds}
    r["held_genuine"] = float(run.details[m & (world.label == 0), D_HELD].mean())
    r["weights"] = run.population[P_W:P_W + N_EVIDENCE].round(2).tolist()
    if with_river:
        hst = run_half_space_trees(world)
        r["ap_river"] = None if hst is None else average_precision(y, hst[m])
    return r


def format_row(r: dict) -> str:
    river = r.get("ap_river")
    ratio = f"{r['ap'] / river:6.1f}x" if river else "    n/a"
    weekly = "  ".join(f"gen.alert>={th:g} by week " + " ".join(f"{x:.2%}" for x in v)
                       for th, v in r["weekly_genuine_alert"].items())
    return (f"{r['world']:<15}{r['seed']:>3}{r['n_fraud']:>6}  AP {r['ap']:.3f}  "
            f"rec@0.5% {r['recall']:.3f}  AP<5 {r['ap_0_4']:.3f} ({r['fraud_0_4']:>3})  "
            f"AP5-19 {r['ap_5_19']:.3f}  AP20+ {r['ap_20_up']:.3f}  "
            f"top10% pred {r['top_decile_pred']:.4f} obs {r['top_decile_obs']:.4f}  "
            f"river {ratio}\n   {weekly}")


def measure_speed(repeats: int = 5) -> dict[str, float]:
    """Kernel speed on this machine, best of ``repeats``: the single-score kernel on
    read-only state views and through :func:`score_one` (µs), the single score+observe+learn
    kernel (µs), and batch :func:`score_and_learn` over a launch world (tx/s)."""
    from nudge.kernels import risk_model as M

    M.warm_up()
    w = generate_world("launch", 9)
    txs = encode_transactions(w.amount, w.time, w.local_hour, w.country, w.merchant_category,
                              w.device_id, w.channel)
    best = np.inf
    for _ in range(repeats):
        users = np.tile(new_user_state(), (w.n_users, 1))
        pop = new_population_state()
        t = time.perf_counter()
        score_and_learn(users, w.user, pop, txs)
        best = min(best, time.perf_counter() - t)
    result = {"batch_tx_per_s": len(w) / best}
    one = users[int(w.user[-1])].copy()
    one.flags.writeable = False  # as an LMDB view
    ro_pop = pop.copy()
    ro_pop.flags.writeable = False
    tx = txs[-1].copy()
    p = ModelParams().to_array()
    out = np.empty(DETAIL_LEN)
    feat = np.empty(FEAT_LEN)
    k = 20_000
    for name, call in (
        ("single_kernel_us", lambda: M._score_one_kernel(one, ro_pop, tx, p, out, feat)),
        ("single_wrapper_us", lambda: M.score_one(one, ro_pop, tx)),
        ("single_learn_kernel_us",
         lambda: M._score_learn_one_kernel(users[0], pop, tx, p, True, True, out, feat)),
    ):
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(k):
                call()
            best = min(best, (time.perf_counter() - t) / k)
        result[name] = best * 1e6
    return result


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every (world, seed), print one row each."""
    ap = argparse.ArgumentParser(prog="python -m nudge.bench.risk_worlds_eval",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", nargs="*", default=list(WORLDS))
    ap.add_argument("--seeds", nargs="*", type=int, default=[1, 2, 3])
    ap.add_argument("--river", action="store_true", help="also run River HalfSpaceTrees")
    ap.add_argument("--reliability", action="store_true", help="print the decile tables")
    ap.add_argument("--speed", action="store_true", help="only measure kernel speed")
    args = ap.parse_args(argv)
    if args.speed:
        sp = measure_speed()
        print(f"single score kernel {sp['single_kernel_us']:.2f} µs (budget 5); score_one "
              f"{sp['single_wrapper_us']:.2f} µs; single score+learn kernel "
              f"{sp['single_learn_kernel_us']:.2f} µs; batch score+learn "
              f"{sp['batch_tx_per_s']:,.0f} tx/s (target 500,000)")
        return 0
    for name in args.worlds:
        for seed in args.seeds:
            t = time.perf_counter()
            r = evaluate_world(generate_world(name, seed), with_river=args.river)
            print(format_row(r), f"({time.perf_counter() - t:.0f} s)", flush=True)
            if args.reliability:
                print("   deciles (pred/obs): " + "  ".join(
                    f"{p:.4f}/{o:.4f}" for p, o, _ in r["reliability"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
