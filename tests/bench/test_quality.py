"""The quality section's regime table on tiny draws (the full run is `nudge bench quality`)."""

from __future__ import annotations

import math

from nudge.bench import quality
from nudge.bench.budgets import judge, load


def test_regime_rows_and_the_budgets_they_feed() -> None:
    config = quality.QualityConfig(regimes=("launch", "labels_fraud"), seeds=(1,),
                                   customers=300, with_river=False)
    rows = [quality.evaluate_regime(r, config) for r in config.regimes]
    for row in rows:
        assert row["fraud"] > 0 and 0.0 < row["ap"] <= 1.0 and 0.0 <= row["recall"] <= 1.0
        assert row["top_decile_pred"] > 0 and len(row["reliability"]) == 10
        assert math.isfinite(row["genuine_alert_drift"])
    metrics = quality.risk_metrics(rows)
    assert metrics["quality.risk.ap_worst_regime"] == min(r["ap"] for r in rows)
    assert metrics["quality.risk.ap_worst_regime_seed"] == min(r["ap_min_seed"] for r in rows)
    assert metrics["quality.risk.ap_history_0_4_worst_regime_seed"] <= metrics[
        "quality.risk.ap_history_0_4_worst_regime"]
    verdicts = {v.budget.metric: v.status for v in judge(load(), metrics)}
    for metric in ("quality.risk.ap_worst_regime", "quality.risk.recall_at_0_5pct_worst_regime",
                   "quality.risk.top_decile_log2_ratio_worst_regime",
                   "quality.risk.genuine_alert_drift_worst_regime",
                   "quality.risk.ap_worst_regime_seed",
                   "quality.risk.ap_history_0_4_worst_regime_seed"):
        assert verdicts[metric] in ("met", "MISSED")
    assert verdicts["quality.risk.ap_vs_half_space_trees"] == "not measured"


def test_drift_compares_later_scored_weeks_with_earlier_ones() -> None:
    assert quality._drift([0.9, 0.9, 0.9, 0.001, 0.002, 0.003, 0.004], 21.0) > 0
    assert quality._drift([0.004, 0.003, 0.002, 0.001], 0.0) < 0
    assert quality._drift([0.5], 0.0) == 0.0
