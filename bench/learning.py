"""``nudge bench learning``: does it learn, and can a team trust its offline estimates?

Two checks from the issue "Does it learn?", as budgets beside the latency ones:

- the bank simulator (``bench/bank_sim.py``, the shipped world, 50,000 decisions, seed 0):
  nudge's conversion rate in the last fifth against the oracle's and the rulebook's, and
  its opt-outs against the rulebook's — the same run ``nudge simulate`` prints;
- ``nudge evaluate``'s estimators against obp's on the Open Bandit Dataset sample
  (``bench/ope_obp_check.py``), when the optional obp is importable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LearningConfig:
    decisions: int = 50_000
    seed: int = 0
    obp_draws: int = 100_000  # Monte Carlo draws of the BTS policy in the obp check


def run(config: LearningConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    from nudge.bench import bank_sim

    results = {}
    for policy in bank_sim.POLICIES:
        progress(f"learning: bank simulator, {policy}, {config.decisions:,} decisions")
        results[policy] = bank_sim.run_policy(policy, config.decisions, config.seed)
    report = bank_sim.compare(results)
    metrics: dict[str, float] = {
        "learning.nudge_vs_oracle_last_fifth": report["nudge_vs_oracle_last_fifth"],
        "learning.nudge_vs_rulebook_last_fifth": report["nudge_vs_rulebook_last_fifth"],
        "learning.opt_outs_vs_rulebook": float(report["opt_outs_vs_rulebook"]),
    }
    out: dict[str, Any] = {"bank_sim": report, "metrics": metrics}
    progress("learning: nudge evaluate against obp on the Open Bandit Dataset sample")
    out["obp"] = _obp_check(config, metrics)
    return out


def _obp_check(config: LearningConfig, metrics: dict[str, float]) -> dict:
    from nudge.bench import ope_obp_check

    reason = ope_obp_check.obp_unavailable_reason()
    if reason is not None:
        return {"skipped": f"obp is not importable ({reason})"}
    rows, facts = ope_obp_check.run(n_sim=config.obp_draws, seed=12345)
    worst = max(r.relative_difference for r in rows)
    metrics["learning.ope_max_relative_difference_vs_obp"] = worst
    return {"rows": [{"policy": r.policy, "estimator": r.estimator, "nudge": r.nudge,
                      "obp": r.obp, "relative_difference": r.relative_difference}
                     for r in rows],
            "facts": facts, "max_relative_difference": worst}
