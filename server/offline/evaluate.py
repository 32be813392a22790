"""``nudge evaluate``: what would another policy have earned on the decisions nudge logged?

Reads the decision log of a store (the LMDB data folder, opened read-only: records are JSON
in the ``decisions`` db with the context ``x``, the ``choice``, its exact ``propensity``, the
``reward`` once settled and the guardrail ``trace``) and estimates the value (conversions
per decision the policy made) of a target policy with IPS, SNIPS and DR
(:mod:`nudge.server.offline.ope`), each with a 95% confidence interval: empirical Bernstein by
default (sound with heavy importance weights; the target policies here are far from the
logging policy, so a few rarely logged actions carry most of the estimate and the normal
approximation under-covers), or the normal approximation (``--interval normal``, as obp).

Only decisions the policy made are evaluated: settled, learnable ones (guardrail
suppressions such as the holdout, consent or caps are no policy's choice). Target policies:

- ``rulebook``: the static segmentation of :mod:`nudge.bench.bank_sim` (the segment is read
  from the user's latest ``profile`` event; the allowed channels and send times from each
  decision's guardrail trace);
- ``uniform``: uniform among the combinations the guardrails allowed;
- ``logged``: the logging policy itself (a sanity check: every weight is 1).

DR's reward model is a ridge regression of the reward on segment × each dimension's value,
fitted on the log.

``--validate N`` checks the estimators against the truth on the simulator: it runs nudge
for N decisions in the bank simulator, estimates the rulebook's value from that log and
compares it with (a) the rulebook's exact expected value on the same logged decisions (the
simulator knows the truth: the estimand of IPS) and (b) the rulebook's conversion rate when
it is actually run in the simulator on the same seed.

    python -m nudge.server.offline.evaluate --data-dir sim-store --policy rulebook
    python -m nudge.server.offline.evaluate --validate 5000
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import orjson

from nudge.bench.bank_sim import (
    CAMPAIGN,
    CHANNELS,
    GAMMA_SCALE,
    MESSAGES,
    PERSONAS,
    SLOT_NAMES,
    Space,
    allowed_from_trace,
    rulebook_choice,
    run_policy,
)
from nudge.server.decisions.campaign import load_campaigns
from nudge.server.offline import ope

TARGETS = ("rulebook", "uniform", "logged")
SEGMENTS = tuple(p.name for p in PERSONAS)
MIN_EFFECTIVE_N = 30
# Under the logging policy the importance weights average 1 for any target policy; a mean
# far from it means the target's actions were rarely possible in the log (missing support),
# whatever the effective sample size says.
MEAN_WEIGHT_BAND = (0.5, 2.0)


@dataclass
class Log:
    """The evaluable part of a decision log, one entry per logged decision."""

    user_id: list[str]
    segment: list[str]
    choice: np.ndarray  # index into Space, -1 for "nothing"
    propensity: np.ndarray
    reward: np.ndarray
    trace: list[list[list[str]]]
    suppressed: list[str]

    def __len__(self) -> int:
        return int(self.reward.shape[0])


def _open(data_dir: Path) -> lmdb.Environment:
    return lmdb.open(str(data_dir), readonly=True, lock=False, max_dbs=32, subdir=True)


def read_log(data_dir: Path, space: Space, campaign: str = CAMPAIGN) -> Log:
    """Settled, learnable decisions of ``campaign`` in the store at ``data_dir``."""
    env = _open(data_dir)
    try:
        decisions = env.open_db(b"decisions", create=False)
        profiles = env.open_db(b"profiles", create=False)
        rows: list[dict[str, Any]] = []
        segments: dict[str, str] = {}
        with env.begin() as txn:
            for _, raw in txn.cursor(db=decisions):
                r = orjson.loads(raw)
                if (r["campaign"] != campaign or r["status"] != "settled" or not r["learn"]
                        or r["reward"] is None):
                    continue
                rows.append(r)
            for r in rows:
                u = r["user_id"]
                if u not in segments:
                    raw = txn.get(u.encode(), db=profiles)
                    props = orjson.loads(raw)["props"] if raw is not None else {}
                    segment = ""
                    for _, _numbers, strings in sorted(props.values(), key=lambda v: v[0]):
                        segment = strings.get("segment", segment)
                    segments[u] = segment
    finally:
        env.close()
    rows.sort(key=lambda r: (r["time"], r["decision_id"]))
    return Log(
        user_id=[r["user_id"] for r in rows],
        segment=[segments[r["user_id"]] for r in rows],
        choice=np.array([space.index.get(r["choice"], -1) for r in rows], dtype=np.int64),
        propensity=np.array([r["propensity"] for r in rows], dtype=np.float64),
        reward=np.array([r["reward"] for r in rows], dtype=np.float64),
        trace=[r["trace"] for r in rows],
        suppressed=[r["suppressed"] for r in rows],
    )


def target_distribution(log: Log, space: Space, policy: str) -> np.ndarray:
    """``[n, n_combos + 1]``: the target's probability of each combination (last: nothing)."""
    n, k = len(log), len(space.combos)
    dist = np.zeros((n, k + 1))
    for i in range(n):
        allowed = allowed_from_trace(log.trace[i], log.suppressed[i])
        if policy == "rulebook":
            c = rulebook_choice(space, log.segment[i], allowed)
            dist[i, k if c is None else c] = 1.0
        elif policy == "uniform":
            mask = allowed.mask(space)
            if mask.any():
                dist[i, :k][mask] = 1.0 / mask.sum()
            else:
                dist[i, k] = 1.0
        elif policy == "logged":
            pass  # see evaluate(): the weights are 1 by definition
        else:
            raise ValueError(f"policy: must be one of {TARGETS}, got {policy!r}")
    return dist


def reward_model(log: Log, space: Space, ridge: float = 1.0) -> np.ndarray:
    """``[n_segments, n_combos + 1]`` predicted reward: ridge on segment × dimension values."""
    k = len(space.combos)
    dims = [(space.msg, len(MESSAGES)), (space.ch, len(CHANNELS)), (space.slot, len(SLOT_NAMES)),
            (space.freq, len(space.frequencies)), (space.offer, len(space.offers))]
    width = 2 + sum(size for _, size in dims)  # intercept, nothing, dimension one-hots
    base = np.zeros((k + 1, width))
    base[:, 0] = 1.0
    base[k, 1] = 1.0
    col = 2
    for values, size in dims:
        base[np.arange(k), col + values] = 1.0
        col += size
    seg_index = {s: j for j, s in enumerate(SEGMENTS)}
    table = np.zeros((len(SEGMENTS) + 1, k + 1))
    overall = float(log.reward.mean()) if len(log) else 0.0
    segs = np.array([seg_index.get(s, len(SEGMENTS)) for s in log.segment])
    actions = np.where(log.choice < 0, k, log.choice)
    for j in range(len(SEGMENTS) + 1):
        rows = segs == j
        if not rows.any():
            table[j] = overall
            continue
        x = base[actions[rows]]
        y = log.reward[rows] - overall
        w = np.linalg.solve(x.T @ x + ridge * np.eye(width), x.T @ y)
        table[j] = np.clip(overall + base @ w, 0.0, 1.0)
    return table


def evaluate(log: Log, space: Space, policy: str, confidence: float = 0.95,
             max_weight: float | None = None, interval: str = "bernstein",
             reward_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """IPS, SNIPS and DR estimates of ``policy``'s value on ``log``."""
    if len(log) < 2:
        raise ValueError("the decision log holds fewer than 2 settled decisions")
    k = len(space.combos)
    dist = target_distribution(log, space, policy)
    actions = np.where(log.choice < 0, k, log.choice)
    rows = np.arange(len(log))
    target = dist[rows, actions]
    table = reward_model(log, space)
    seg_index = {s: j for j, s in enumerate(SEGMENTS)}
    q = table[[seg_index.get(s, len(SEGMENTS)) for s in log.segment]]
    q_logged = q[rows, actions]
    q_target = (dist * q).sum(axis=1)
    if policy == "logged":
        # The logging policy's full distribution is not logged, only its propensity of the
        # logged action: that is its target propensity (every weight is 1).
        target, q_target = log.propensity, q_logged
    kw = {"confidence": confidence, "max_weight": max_weight, "interval": interval,
          "reward_range": reward_range}
    ips = ope.ips(log.reward, log.propensity, target, **kw).to_dict()
    weights = target / log.propensity
    mean_weight = float(weights.mean())
    return {
        "policy": policy,
        "n": len(log),
        # A deterministic target over hundreds of combinations rarely takes the logged
        # action: with few effective samples, or weights that do not average about 1, the
        # intervals are not to be trusted.
        "low_overlap": bool(ips["effective_sample_size"] < MIN_EFFECTIVE_N
                            or not MEAN_WEIGHT_BAND[0] <= mean_weight <= MEAN_WEIGHT_BAND[1]),
        "interval": interval,
        "largest_weight": float(weights.max()),
        "mean_weight": mean_weight,
        "logged_value": float(log.reward.mean()),
        "ips": ips,
        "snips": ope.snips(log.reward, log.propensity, target, **kw).to_dict(),
        "dr": ope.dr(log.reward, log.propensity, target, q_logged, q_target, **kw).to_dict(),
    }


def evaluate_store(data_dir: Path, campaigns_dir: Path | None, policies: list[str],
                   campaign: str = CAMPAIGN, interval: str = "bernstein") -> list[dict[str, Any]]:
    campaigns = load_campaigns(campaigns_dir)
    space = Space(campaigns[campaign])
    log = read_log(data_dir, space, campaign)
    # Every reward the server settles lies between an opt-out's cost and the goal's value.
    goal = campaigns[campaign].goal
    reward_range = (min(-goal.opt_out_cost, 0.0), max(goal.value, 0.0))
    return [evaluate(log, space, p, interval=interval, reward_range=reward_range)
            for p in policies]


def validate(decisions: int, seed: int = 0, users: int | None = None,
             gamma_scale: float = GAMMA_SCALE, interval: str = "bernstein") -> dict[str, Any]:
    """Run nudge in the simulator, estimate the uniform random policy and the rulebook from
    its log, and compare each with its truth: (a) its exact expected value on the same logged
    decisions (the simulator knows the truth; the estimand of IPS) and (b) its conversion
    rate when it is actually run in the simulator on the same seed."""
    with tempfile.TemporaryDirectory(prefix="nudge-eval-") as tmp:
        folder = Path(tmp) / "sim"
        # Rewards are conversions only here (no opt-out cost): the truth compared against
        # is the evaluated policy's conversion value.
        nudge = run_policy("nudge", decisions, seed, users, folder, gamma_scale,
                           opt_out_cost=0.0)
        estimates = evaluate_store(folder / "data", folder / "campaigns",
                                   ["uniform", "rulebook"], interval=interval)
    summary = nudge.summary()
    out: dict[str, Any] = {"decisions": decisions, "seed": seed, "targets": {}}
    for estimate, sim_policy in zip(estimates, ("random", "rulebook"), strict=True):
        counterfactual = summary[f"{sim_policy}_counterfactual_value"]
        on_policy = run_policy(sim_policy, decisions, seed, users).summary()
        running = on_policy["acted_conversion_rate"]
        within = {}
        for name in ("ips", "snips", "dr"):
            e = estimate[name]
            within[name] = {
                "logged_decisions": bool(e["ci_low"] <= counterfactual <= e["ci_high"]),
                "running_policy": bool(e["ci_low"] <= running <= e["ci_high"]),
            }
        out["guardrail_mismatches"] = summary["guardrail_mismatches"]
        out["targets"][estimate["policy"]] = {
            "estimate": estimate, "true_value_on_logged_decisions": counterfactual,
            "true_value_running_policy": running, "within_ci": within,
        }
    return out


def _format(result: dict[str, Any]) -> str:
    lines = [f"policy {result['policy']}: {result['n']} logged decisions, logged policy's "
             f"value {result['logged_value']:.4f}, largest importance weight "
             f"{result['largest_weight']:.1f}"]
    label = {"bernstein": "empirical-Bernstein", "normal": "normal-approximation"}[
        result["interval"]]
    if result["low_overlap"]:
        ess, mean_weight = result["ips"]["effective_sample_size"], result["mean_weight"]
        why = []
        if ess < MIN_EFFECTIVE_N:
            why.append(f"effective sample size {ess:.0f} (below {MIN_EFFECTIVE_N})")
        if not MEAN_WEIGHT_BAND[0] <= mean_weight <= MEAN_WEIGHT_BAND[1]:
            why.append(f"mean importance weight {mean_weight:.2f} (not near 1)")
        lines.append(f"  WARNING: {' and '.join(why)}: the target rarely takes the logged "
                     "actions; do not trust these intervals")
    for name in ("ips", "snips", "dr"):
        e = result[name]
        lines.append(f"  {name:<5} {e['value']:.4f}  95% {label} CI [{e['ci_low']:.4f}, "
                     f"{e['ci_high']:.4f}]  effective n {e['effective_sample_size']:.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, help="the store's data folder (LMDB)")
    parser.add_argument("--campaigns", type=Path, default=None,
                        help="campaigns folder (default: DATA_DIR/../campaigns if present, "
                             "else the shipped campaigns)")
    parser.add_argument("--policy", default="rulebook,uniform",
                        help=f"comma-separated targets: {', '.join(TARGETS)}")
    parser.add_argument("--validate", type=int, metavar="DECISIONS", default=None,
                        help="check the estimators against the simulator's truth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", choices=ope.INTERVALS, default="bernstein",
                        help="confidence intervals: empirical Bernstein (default; sound with "
                             "heavy importance weights) or the normal approximation (as obp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.validate is not None:
        result = validate(args.validate, args.seed, interval=args.interval)
        if args.json:
            print(json.dumps(result, indent=2))
            return 0
        for target in result["targets"].values():
            print(_format(target["estimate"]))
            print(f"  true value on the logged decisions: "
                  f"{target['true_value_on_logged_decisions']:.4f}")
            print(f"  true value running the policy:      "
                  f"{target['true_value_running_policy']:.4f}")
            for name, ok in target["within_ci"].items():
                print(f"  {name:<5} CI holds: logged decisions {ok['logged_decisions']}, "
                      f"running {ok['running_policy']}")
        return 0
    if args.data_dir is None:
        parser.error("--data-dir is required (or --validate)")
    campaigns = args.campaigns
    if campaigns is None and (args.data_dir.parent / "campaigns").is_dir():
        campaigns = args.data_dir.parent / "campaigns"
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    results = evaluate_store(args.data_dir, campaigns, policies, interval=args.interval)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n".join(_format(r) for r in results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
