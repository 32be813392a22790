"""``nudge simulate --validate-ope N``: do ``nudge evaluate``'s intervals hold the truth?

Only the simulator knows a policy's true value, so this check lives beside it: it runs nudge
for N decisions in the bank simulator (:mod:`nudge.bench.bank_sim`), evaluates the uniform
random policy and the rulebook (:class:`~nudge.bench.bank_sim.RulebookPolicy`) on that log
with ``nudge evaluate`` (DR's reward model per customer segment, the ``segment`` string sent
with Decide), and compares each estimate with (a) the policy's exact expected value on the
same logged decisions (the estimand of IPS) and (b) its conversion rate when it is actually
run in the simulator on the same seed.

    nudge simulate --validate-ope 5000 [--seed 0] [--json]
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from nudge.bench.bank_sim import GAMMA_SCALE, RulebookPolicy, run_policy
from nudge.server.offline.evaluate import UniformPolicy, evaluate_store, format_result


def validate(decisions: int, seed: int = 0, users: int | None = None,
             gamma_scale: float = GAMMA_SCALE, interval: str = "bernstein") -> dict[str, Any]:
    """Estimate the uniform random policy and the rulebook from nudge's log in the simulator
    and compare each with its truth."""
    with tempfile.TemporaryDirectory(prefix="nudge-eval-") as tmp:
        folder = Path(tmp) / "sim"
        # Rewards are conversions only here (no opt-out cost): the truth compared against
        # is the evaluated policy's conversion value.
        nudge = run_policy("nudge", decisions, seed, users, folder, gamma_scale,
                           opt_out_cost=0.0)
        estimates = evaluate_store(folder / "data", folder / "campaigns",
                                   [UniformPolicy, RulebookPolicy], interval=interval,
                                   dr_context="segment")
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


def format_validation(result: dict[str, Any]) -> str:
    lines = []
    for target in result["targets"].values():
        lines.append(format_result(target["estimate"]))
        lines.append(f"  true value on the logged decisions: "
                     f"{target['true_value_on_logged_decisions']:.4f}")
        lines.append(f"  true value running the policy:      "
                     f"{target['true_value_running_policy']:.4f}")
        for name, ok in target["within_ci"].items():
            lines.append(f"  {name:<5} CI holds: logged decisions {ok['logged_decisions']}, "
                         f"running {ok['running_policy']}")
    return "\n".join(lines)
