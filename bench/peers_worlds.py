"""Peers on bench/worlds.py's family: the same customers, the same 3,600 combinations and
"nothing", side by side with nudge's policy.

- **nudge**: the campaign's kernels as Decide and the learner call them
  (:func:`nudge.bench.worlds.run_in_process`, SquareCB at the campaign defaults).
- **Vowpal Wabbit** ``--cb_explore_adf --squarecb``: one ADF example per decision, the 31
  numbers as shared features, each combination as its dimension values and its two cells
  (channel × send time, message × offer), crossed with the numbers (``-q UA``): the
  structure nudge's model is given. Rewards reach it in the same batches as nudge's learner.
  VW scores 3,600 actions per decision in a few milliseconds, so it runs inside a time box
  and its curve stops where the box ended.
- **Offline logistic regression** (scikit-learn, L2, lbfgs): the correctly specified model
  of the dense worlds — every dimension value × (1, numbers), the two cells' intercepts and
  "nothing" × (1, numbers) on a logit link — fitted on the first ``k`` decisions of a
  *uniformly random* log of the same world, then choosing greedily for held-out customers.
  It is what a team could do with a random-exploration period and a batch fit, and it
  bounds what the data of ``k`` decisions say (its ``C`` was chosen on seed 0).

The figure is the same as the worlds' table: expected reward of the choices over the
oracle's, in the 1,000 decisions before each mark (the offline fit: over the held-out
customers, after ``k`` training decisions).

    python -m nudge.bench.peers_worlds [--world dense types] [--seed 1] [--vw-seconds 120]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nudge.bench import worlds as w

# sklearn's C (inverse L2 strength) of the offline fit, chosen on seed 0 of the dense world
# from 0.001–1: 0.003 was best at 30,000 decisions on a random log and on nudge's log.
OFFLINE_C = 0.003


@dataclass(frozen=True)
class WorldPeersConfig:
    worlds: tuple[str, ...] = ("dense", "types")
    seed: int = 1
    decisions: int = 30_000
    batch: int = 250
    vw_seconds: float = 120.0  # time box of VW per world
    vw_gamma_scale: float = 10.0  # VW's --gamma_scale (its default)
    holdout: int = 1_000  # customers the offline fit is scored on


def _values() -> np.ndarray:
    """``[N_COMBOS, 5]`` dimension value indices of every combination (C order)."""
    return np.array(np.unravel_index(np.arange(w.N_COMBOS), w.DIMS)).T


# -- Vowpal Wabbit ----------------------------------------------------------------------------


def _vw_actions() -> tuple[list[str], np.ndarray]:
    """ADF lines of the allowed combinations and "nothing", and each line's combination."""
    values = _values()
    combos = np.flatnonzero(w.ALLOWED_ALL)
    lines = []
    for a in combos:
        if a == w.N_COMBOS:
            lines.append("|A nothing")
            continue
        m, c, t, f, o = (int(v) for v in values[a])
        lines.append(f"|A m{m} c{c} t{t} f{f} o{o} ct{c}_{t} mo{m}_{o}")
    return lines, combos


def run_vowpal_wabbit(cfg: w.RunConfig, seconds: float, gamma_scale: float) -> w.RunResult:
    """VW ``--cb_explore_adf --squarecb`` on one world until ``seconds`` run out (whole
    batches); the result covers the decisions made."""
    import vowpalwabbit

    world, h, x, coins = w._customers(cfg)
    actions, combos = _vw_actions()
    vw = vowpalwabbit.Workspace(f"--cb_explore_adf --squarecb --gamma_scale {gamma_scale:g} "
                                f"-q UA --quiet --random_seed {cfg.seed}")
    rng = np.random.default_rng([cfg.seed, 5])
    n = cfg.decisions
    result = w.RunResult(cfg.world, cfg.seed, n, "VW squarecb", np.empty(n), np.empty(n),
                         np.empty(n), np.zeros(n, bool), np.zeros(n, bool))
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    done = 0
    try:
        for start in range(0, n, cfg.batch):
            stop = min(start + cfg.batch, n)
            prob = world.probabilities(h[start:stop], start)
            logged = []
            for i in range(start, stop):
                shared = "shared |U " + " ".join(f"z{j}:{v:.4f}" for j, v in enumerate(x[i]))
                pmf = np.asarray(vw.predict([shared, *actions]), dtype=np.float64)
                k = int(rng.choice(pmf.size, p=pmf / pmf.sum()))
                choice = int(combos[k])
                p = prob[i - start]
                result.record(i, p, choice, float(pmf[k]))
                logged.append((shared, k, float(pmf[k]), float(coins[i] < p[choice])))
            for shared, k, pk, reward in logged:
                lines = [shared, *actions]
                lines[1 + k] = f"0:{-reward}:{pk} {actions[k]}"
                vw.learn(lines)
            done = stop
            if time.perf_counter() > deadline:
                break
    finally:
        vw.finish()
    result.seconds = time.perf_counter() - started
    return _truncated(result, done)


def _truncated(r: w.RunResult, n: int) -> w.RunResult:
    return w.RunResult(r.world, r.seed, n, r.exploration, r.policy[:n], r.oracle[:n],
                       r.random[:n], r.chose_nothing[:n], r.nothing_best[:n],
                       r.invalid_propensities, r.propensity_min, r.seconds)


# -- offline logistic regression --------------------------------------------------------------


def _design(x: np.ndarray, a: np.ndarray) -> Any:
    """Sparse design rows for contexts ``x[n, 31]`` and combinations ``a[n]``
    (``N_COMBOS`` = nothing): per dimension its value's block × (1, x), then the channel ×
    send-time and message × offer cells (intercepts), then nothing × (1, x)."""
    import scipy.sparse as sp

    n, m = x.shape
    x1 = np.concatenate([np.ones((n, 1)), x], axis=1)
    values = _values()[np.minimum(a, w.N_COMBOS - 1)]
    offsets = np.concatenate([[0], np.cumsum(w.DIMS)])
    width = m + 1
    n_main = int(offsets[-1]) * width
    nothing = a == w.N_COMBOS
    rows, cols, data = [], [], []
    idx = np.arange(n)
    for d in range(len(w.DIMS)):
        base = (offsets[d] + values[:, d]) * width
        rows.append(np.repeat(idx, width))
        cols.append((base[:, None] + np.arange(width)[None, :]).ravel())
        data.append(x1.ravel())
    rows += [idx, idx]
    cols += [n_main + values[:, 1] * 6 + values[:, 2], n_main + 30 + values[:, 0] * 5
             + values[:, 4]]
    data += [np.ones(n), np.ones(n)]
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    v = np.concatenate(data)
    keep = ~np.isin(r, np.flatnonzero(nothing))
    r, c, v = r[keep], c[keep], v[keep]
    n_cols = n_main + 30 + 40 + width
    nr = np.flatnonzero(nothing)
    r = np.concatenate([r, np.repeat(nr, width)])
    c = np.concatenate([c, np.tile(n_main + 70 + np.arange(width), nr.size)])
    v = np.concatenate([v, x1[nr].ravel()])
    return sp.csr_matrix((v, (r, c)), shape=(n, n_cols))


def _greedy_scores(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``[n, N_COMBOS + 1]`` fitted logits of every combination (and nothing, last)."""
    n, m = x.shape
    width = m + 1
    x1 = np.concatenate([np.ones((n, 1)), x], axis=1)
    offsets = np.concatenate([[0], np.cumsum(w.DIMS)])
    n_main = int(offsets[-1]) * width
    per_value = x1 @ coef[:n_main].reshape(-1, width).T  # [n, 27]
    total = np.zeros((n, *w.DIMS))
    for d, size in enumerate(w.DIMS):
        shape = [n] + [1] * len(w.DIMS)
        shape[1 + d] = size
        total += per_value[:, offsets[d]:offsets[d + 1]].reshape(shape)
    total += coef[n_main:n_main + 30].reshape(1, 1, 5, 6, 1, 1)
    mo = coef[n_main + 30:n_main + 70].reshape(8, 5)
    total += mo[None, :, None, None, None, :]
    nothing = x1 @ coef[n_main + 70:]
    return np.concatenate([total.reshape(n, w.N_COMBOS), nothing[:, None]], axis=1)


def run_offline_logistic(cfg: w.RunConfig, marks: tuple[int, ...], holdout: int,
                         c: float = OFFLINE_C, log: np.ndarray | None = None
                         ) -> dict[str, float]:
    """Ratio to the oracle of a logistic regression fitted on the first ``k`` decisions of a
    log of the same world and customers — uniformly random, or ``log`` (another learner's
    choices; the rewards are the same coins) — greedy on ``holdout`` fresh customers."""
    from sklearn.linear_model import LogisticRegression

    world, h, x, coins = w._customers(cfg)
    rng = np.random.default_rng([cfg.seed, 13])
    allowed = np.flatnonzero(w.ALLOWED_ALL)
    n = max(marks)
    a = rng.choice(allowed, n) if log is None else log[:n]
    p = np.concatenate([world.probabilities(h[s:s + 5_000], s)[np.arange(min(5_000, n - s)),
                                                              a[s:s + 5_000]]
                        for s in range(0, n, 5_000)])
    y = (coins[:n] < p).astype(float)
    design = _design(x[:n], a)
    hh, hx = world.users(np.random.default_rng([cfg.seed, 17]), holdout)
    truth = world.probabilities(hh, n)
    oracle = truth[:, w.ALLOWED_ALL].max(axis=1).sum()
    out = {}
    for k in marks:
        fit = LogisticRegression(C=c, max_iter=500).fit(design[:k], y[:k])
        scores = _greedy_scores(fit.coef_[0], hx)
        scores[:, ~w.ALLOWED_ALL] = -np.inf
        pick = scores.argmax(axis=1)
        out[str(k)] = float(truth[np.arange(holdout), pick].sum() / oracle)
    return out


# -- the section --------------------------------------------------------------------------------


def run(config: WorldPeersConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    """Each world: nudge (in process), VW (time box) and the offline fit's learning curves."""
    from nudge.bench.peers import missing

    rows = []
    for name in config.worlds:
        cfg = w.RunConfig(world=name, seed=config.seed, decisions=config.decisions,
                          batch=config.batch)
        progress(f"peers: world {name}, nudge ({config.decisions:,} decisions, in process)")
        ours = w.run_in_process(cfg)
        rows.append({"world": name, "learner": "nudge (SquareCB, defaults)", **_curve(ours)})
        if missing("vowpalwabbit") is None:
            progress(f"peers: world {name}, VW --cb_explore_adf --squarecb "
                     f"(time box {config.vw_seconds:g} s)")
            vw = run_vowpal_wabbit(cfg, config.vw_seconds, config.vw_gamma_scale)
            rows.append({"world": name, "learner": "VW --cb_explore_adf --squarecb",
                         **_curve(vw), "nudge_same": ours.ratio(0, vw.decisions)})
        if missing("sklearn") is None:
            progress(f"peers: world {name}, offline logistic regression on a random log")
            marks = tuple(k for k in w.CURVE_AT if k <= config.decisions)
            rows.append({"world": name, "learner": "offline logistic regression, random log",
                         "decisions": config.decisions, "last_fifth": None,
                         "from_5k_to_10k": None,
                         "curve": run_offline_logistic(cfg, marks, config.holdout)})
            rows.append({"world": name, "learner": "offline logistic regression, nudge's log",
                         "decisions": config.decisions, "last_fifth": None,
                         "from_5k_to_10k": None,
                         "curve": run_offline_logistic(cfg, marks, config.holdout,
                                                       log=ours.choices)})
    return {"worlds": rows, "seed": config.seed}


def _curve(r: w.RunResult) -> dict[str, Any]:
    s = r.summary()
    n = r.decisions
    return {"decisions": n, "last_fifth": s["last_fifth"] if n >= 5_000 else None,
            "from_5k_to_10k": s["from_5k_to_10k"], "curve": s["curve"],
            "all": r.ratio(0, n) if n else None, "seconds": round(r.seconds, 1)}


def format_table(rows: list[dict]) -> str:
    lines = ["| world | learner | decisions | @2k | @5k | @10k | @30k | 5k–10k | last fifth | "
             "all its decisions (nudge on the same) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c = r["curve"]
        same = f" ({r['nudge_same']:.3f})" if "nudge_same" in r else ""
        lines.append(f"| {r['world']} | {r['learner']} | {r['decisions']:,} | "
                     + " | ".join(w._f(c.get(str(k))) for k in w.CURVE_AT)
                     + f" | {w._f(r['from_5k_to_10k'])} | {w._f(r['last_fifth'])} | "
                     + f"{w._f(r.get('all'))}{same} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nudge.bench.peers_worlds",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", nargs="+", choices=w.WORLDS,
                        default=list(WorldPeersConfig.worlds))
    parser.add_argument("--seed", type=int, default=WorldPeersConfig.seed)
    parser.add_argument("--decisions", type=int, default=WorldPeersConfig.decisions)
    parser.add_argument("--vw-seconds", type=float, default=WorldPeersConfig.vw_seconds)
    args = parser.parse_args(argv)
    out = run(WorldPeersConfig(worlds=tuple(args.world), seed=args.seed,
                               decisions=args.decisions, vw_seconds=args.vw_seconds),
              progress=print)
    print(json.dumps(out["worlds"]))
    print(format_table(out["worlds"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
