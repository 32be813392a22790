"""Model quality budgets: the fraud model on every regime of ``bench/risk_worlds.py``, and the
decision policy's reward against the oracle on a world with a known best combination.

Risk: each regime (launch, mature, travel, low_slow, bursts, merchant_mix, labels_fraud,
labels_genuine) is drawn with seeds 1–6 (the model was tuned on seed 0 only) and streamed
through ``nudge.kernels.risk_model`` as the server runs it (``bench/risk_worlds_eval.py``:
labels as they arrive, held transactions folded in after the 7-day hold delay, once).
Per regime, the mean over seeds of: average precision, recall at a 0.5% alert rate, AP
split by the customer's history length (0–4, 5–19, 20+ earlier transactions), the top score
decile's observed fraud rate over its mean predicted P(fraud) (calibration), and the drift
of the weekly genuine alert rate at the hold threshold (mean of the later half of the
scored weeks minus the earlier half: positive means alerts on genuine customers grow);
and, because a mean can hide a bad world, the worst single seed's AP and AP for 0–4
earlier transactions.
River's HalfSpaceTrees (the optional ``peers`` extra) costs ~0.5 ms per transaction, so it
runs beside the model on a smaller draw of each regime (``river_customers``, seed 1).
Budgets take the worst regime.

The policy world is ``bench/policy_sim.py`` at its defaults (3,600 combinations, 50,000
decisions, late rewards), run with SquareCB and Thompson sampling at the campaign defaults
(SquareCB local, as a campaign without [exploration] runs it); then ``bench/worlds.py``'s
family through a real server. A speed budget met by a model that stopped catching fraud or
stopped learning would be worthless, so the bench checks both.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from nudge.bench.risk_worlds import WORLDS

if TYPE_CHECKING:
    from nudge.kernels.policy import PolicyParams
    from nudge.server.decisions.campaign import Exploration

HISTORY_KEYS = ("ap_0_4", "ap_5_19", "ap_20_up")


@dataclass(frozen=True)
class QualityConfig:
    regimes: tuple[str, ...] = tuple(WORLDS)
    seeds: tuple[int, ...] = (1, 2, 3, 4, 5, 6)
    customers: int | None = None  # None: each regime's own size (900-1,500 customers)
    river_customers: int = 200
    seed: int = 0  # the policy simulation's
    policy_decisions: int = 50_000
    with_river: bool = True  # River HalfSpaceTrees beside the model, when installed
    # bench/worlds.py's family, through a real server at the campaign defaults (no
    # [exploration] table); seed 1 was not used for tuning (seed 0 was). 0: skip.
    worlds_decisions: int = 30_000
    worlds_seed: int = 1
    worlds: tuple[str, ...] = ("types", "dense", "sparse", "misspecified", "drift", "nothing")
    # The insights' planted-truth worlds (bench/insight_worlds.py): seeds per world, and
    # whether one seed per world also goes through a real server's Track.
    insights_seeds: tuple[int, ...] = tuple(range(11, 21))
    insights_track: bool = True


def _drift(weekly: list[float], warmup_days: float) -> float:
    """Later half of the scored weeks' genuine alert rate minus the earlier half's."""
    w = weekly[math.ceil(warmup_days / 7.0):]
    if len(w) < 2:
        return 0.0
    half = len(w) // 2
    return float(np.mean(w[half:]) - np.mean(w[:half]))


def evaluate_regime(regime: str, config: QualityConfig) -> dict:
    """One row of the regime table (means over the seeds)."""
    from nudge.bench.risk_worlds import generate_world
    from nudge.bench.risk_worlds_eval import evaluate_world
    from nudge.kernels.risk_model import DEFAULT_MODEL_PARAMS

    spec = WORLDS[regime]
    if config.customers is not None:
        spec = replace(spec, n_customers=config.customers)
    runs = [evaluate_world(generate_world(regime, seed, spec))
            for seed in config.seeds]
    hold = DEFAULT_MODEL_PARAMS.hold_threshold

    def mean(key: str) -> float:
        values = [r[key] for r in runs if not math.isnan(r[key])]
        return float(np.mean(values)) if values else float("nan")

    pred, obs = mean("top_decile_pred"), mean("top_decile_obs")
    row = {
        "regime": regime, "seeds": list(config.seeds), "customers": spec.n_customers,
        "transactions": int(np.mean([r["n"] for r in runs])),
        "fraud": int(np.mean([r["n_fraud"] for r in runs])),
        "ap": mean("ap"), "ap_min_seed": float(min(r["ap"] for r in runs)),
        "ap_0_4_min_seed": float(min((r["ap_0_4"] for r in runs
                                      if not math.isnan(r["ap_0_4"])), default=math.nan)),
        "recall": mean("recall"),
        **{k: mean(k) for k in HISTORY_KEYS},
        "fraud_0_4": int(np.mean([r["fraud_0_4"] for r in runs])),
        "top_decile_pred": pred, "top_decile_obs": obs,
        "top_decile_ratio": obs / pred if pred > 0 else float("nan"),
        "genuine_alert_drift": float(np.mean([
            _drift(r["weekly_genuine_alert"][hold], spec.warmup_days) for r in runs])),
        "genuine_alert_rate": float(np.mean([
            np.mean(r["weekly_genuine_alert"][hold]) for r in runs])),
        "reliability": [[p, o] for p, o, _ in runs[0]["reliability"]],
        "river_ap": None, "river_nudge_ap": None,
    }
    if config.with_river and _river_installed():
        small = generate_world(regime, config.seeds[0],
                               replace(spec, n_customers=config.river_customers))
        r = evaluate_world(small, with_river=True)
        row["river_ap"], row["river_nudge_ap"] = r["ap_river"], r["ap"]
    return row


def _river_installed() -> bool:
    try:
        import river  # noqa: F401
    except ImportError:
        return False
    return True


def risk_metrics(rows: list[dict]) -> dict[str, float]:
    """Per-regime metrics and the worst regime's, which the budgets bound."""
    m: dict[str, float] = {}
    for r in rows:
        for key in ("ap", "recall", *HISTORY_KEYS, "top_decile_ratio", "genuine_alert_drift"):
            m[f"quality.risk.{r['regime']}.{key}"] = r[key]
    if not rows:
        return m

    def finite(values: list[float]) -> list[float]:
        return [v for v in values if not math.isnan(v)]

    m["quality.risk.ap_worst_regime"] = min(r["ap"] for r in rows)
    m["quality.risk.ap_history_0_4_worst_regime"] = min(finite([r["ap_0_4"] for r in rows]))
    m["quality.risk.recall_at_0_5pct_worst_regime"] = min(r["recall"] for r in rows)
    m["quality.risk.ap_worst_regime_seed"] = min(r["ap_min_seed"] for r in rows)
    m["quality.risk.ap_history_0_4_worst_regime_seed"] = min(
        finite([r["ap_0_4_min_seed"] for r in rows]))
    m["quality.risk.top_decile_log2_ratio_worst_regime"] = max(
        abs(math.log2(r["top_decile_ratio"])) for r in rows)
    m["quality.risk.genuine_alert_drift_worst_regime"] = max(
        r["genuine_alert_drift"] for r in rows)
    pairs = [(r["river_nudge_ap"], r["river_ap"]) for r in rows if r["river_ap"]]
    if pairs:
        m["quality.risk.ap_vs_half_space_trees"] = min(a / b for a, b in pairs)
    return m


def run(config: QualityConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    from nudge.bench import policy_sim
    from nudge.kernels import policy
    from nudge.kernels.learner import LearnerParams
    from nudge.server.decisions.campaign import Exploration

    rows = []
    for regime in config.regimes:
        progress(f"quality: risk regime {regime}, seeds {', '.join(map(str, config.seeds))}")
        rows.append(evaluate_regime(regime, config))
    metrics = risk_metrics(rows)
    policies = {}
    for mode in (policy.MODE_SQUARECB, policy.MODE_THOMPSON):
        progress(f"quality: policy simulation, {mode}, {config.policy_decisions:,} decisions")
        e = Exploration()
        sim = policy_sim.run(policy_sim.SimConfig(
            n_decisions=config.policy_decisions, seed=config.seed,
            policy=_campaign_default(mode, len(policy_sim.DIMS)),
            learner=LearnerParams(forgetting=e.forgetting, link=e.link,
                                  prior_groups=_prior_groups(e), credit=e.credit),
            prior_precision=e.prior_precision, slope_precision=e.slope_precision,
            intercept_variance=e.intercept_variance))
        policies[mode] = {"policy_last_fifth": sim.policy_last, "oracle_last_fifth":
                          sim.oracle_last, "random_last_fifth": sim.random_last,
                          "ratio_to_oracle": sim.ratio}
        metrics[f"quality.policy_{mode}.ratio_to_oracle"] = sim.ratio
    worlds = _worlds(config, progress, metrics)
    found = _insights(config, progress, metrics)
    return {"worlds": worlds, **found,
            "risk": {"regimes": rows, "river_customers": config.river_customers},
            "policy": policies, "metrics": metrics}


def _prior_groups(e: Exploration) -> tuple[tuple[int, int], ...]:
    """The groups a campaign with these settings learns a prior for, in policy_sim's space
    (as ``CampaignModel.learner_params`` would give them)."""
    from nudge.bench import policy_sim
    from nudge.kernels import learner

    if e.link != learner.LINK_LOGISTIC or e.learned_prior != learner.LEARNED_PRIOR_CELLS:
        return ()
    return learner.pair_cell_groups(policy_sim.DIMS, policy_sim.PAIRS)


def _insights(config: QualityConfig, progress: Callable[[str], None],
              metrics: dict[str, float]) -> dict:
    """The insights on their planted-truth worlds (bench/insights_bench.py)."""
    if not config.insights_seeds:
        return {}
    from nudge.bench import insights_bench

    found = insights_bench.quality(insights_bench.InsightsConfig(
        seeds=config.insights_seeds, track=config.insights_track), progress)
    metrics.update(found.pop("metrics"))
    return {"insights": found}


def _worlds(config: QualityConfig, progress: Callable[[str], None],
            metrics: dict[str, float]) -> list[dict]:
    """Each world of the family through a real server: the learning curve as metrics."""
    from nudge.bench import worlds

    out = []
    for name in config.worlds if config.worlds_decisions > 0 else ():
        progress(f"quality: world {name}, {config.worlds_decisions:,} decisions "
                 f"through a server (seed {config.worlds_seed})")
        s = worlds.run(worlds.RunConfig(world=name, seed=config.worlds_seed,
                                        decisions=config.worlds_decisions)).summary()
        out.append(s)
        key = f"quality.worlds.{name}"
        metrics[f"{key}.last_fifth"] = s["last_fifth"]
        if s["from_5k_to_10k"] is not None:
            metrics[f"{key}.from_5k_to_10k"] = s["from_5k_to_10k"]
        for at, ratio in s["curve"].items():
            metrics[f"{key}.at_{at}"] = ratio
        if s["nothing_rate_where_best"] is not None:
            metrics[f"{key}.nothing_rate_where_best"] = s["nothing_rate_where_best"]
        metrics[f"{key}.invalid_propensities"] = float(s["invalid_propensities"])
    return out


def _campaign_default(mode: str, n_dims: int) -> PolicyParams:
    """The policy a campaign without an [exploration] table (but this algorithm) runs."""
    from nudge.kernels import policy
    from nudge.server.decisions.campaign import Exploration

    e = Exploration()
    return policy.PolicyParams(mode=mode, noise_variance=e.noise_variance,
                               gamma_scale=e.gamma_scale, explore_all=e.explore_all,
                               local_dims=n_dims if e.neighbourhood else 0,
                               mc_samples=e.propensity_samples,
                               mc_max_samples=e.propensity_samples, optimism=e.optimism)
