"""Model quality budgets: risk scoring's average precision on the shipped synthetic stream,
and the decision policy's reward against the oracle on a world with a known best combination.

The stream is ``bench/risk_stream.py`` at its defaults (1,500 users, 60 days, 60 takeover
bursts, seed 0), streamed through the kernels as the server runs them (``bench/risk_eval.py``).
The policy world is ``bench/policy_sim.py`` at its defaults (3,600 combinations, 50,000
decisions, late rewards), run with SquareCB (the shipped exploration) and Thompson sampling.
A speed budget met by a model that stopped catching fraud or stopped learning would be
worthless, so the bench checks both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class QualityConfig:
    users: int = 1_500
    days: float = 60.0
    seed: int = 0
    policy_decisions: int = 50_000
    with_river: bool = True  # River HalfSpaceTrees on the same stream, when installed


def run(config: QualityConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    from nudge.bench import policy_sim
    from nudge.bench.risk_eval import evaluate
    from nudge.bench.risk_stream import generate_stream
    from nudge.kernels import policy

    progress(f"quality: risk stream, {config.users:,} users × {config.days:g} days")
    stream = generate_stream(n_users=config.users, days=config.days, seed=config.seed)
    r = evaluate(stream, with_river=config.with_river, with_ablation=False)
    metrics = {"quality.risk.average_precision": r["nudge"].average_precision,
               "quality.risk.roc_auc": r["nudge"].roc_auc}
    hst = r.get("hst")
    if hst is not None and hst.average_precision > 0:  # None: River is not installed
        metrics["quality.risk.half_space_trees_average_precision"] = hst.average_precision
        metrics["quality.risk.ap_vs_half_space_trees"] = (
            r["nudge"].average_precision / hst.average_precision)
    policies = {}
    for mode in (policy.MODE_SQUARECB, policy.MODE_THOMPSON):
        progress(f"quality: policy simulation, {mode}, {config.policy_decisions:,} decisions")
        sim = policy_sim.run(policy_sim.SimConfig(
            n_decisions=config.policy_decisions, seed=config.seed,
            policy=policy.PolicyParams(mode=mode)))
        policies[mode] = {"policy_last_fifth": sim.policy_last, "oracle_last_fifth":
                          sim.oracle_last, "random_last_fifth": sim.random_last,
                          "ratio_to_oracle": sim.ratio}
        metrics[f"quality.policy_{mode}.ratio_to_oracle"] = sim.ratio
    return {
        "risk": {"transactions": len(stream), "evaluated": r["n"], "fraud": r["n_fraud"],
                 "bursts": r["n_bursts"], **asdict(r["nudge"]),
                 "half_space_trees_average_precision":
                     None if hst is None else hst.average_precision},
        "policy": policies,
        "metrics": metrics,
    }
