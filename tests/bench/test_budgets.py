"""The budgets file holds every target the issues name, and judging is strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from nudge.bench import budgets

# Metric, bound and value of every target named by the other issues.
ISSUE_TARGETS = {
    "rpc.TrackStream.events_per_s": ("min", 30_000),
    "rpc.GetUser.p50_ratio": ("max", 1.2),
    "kernels.risk_score_single.p50_us": ("max", 5.0),
    "kernels.risk_score_batch.items_per_s": ("min", 500_000),
    "rpc.ScoreTransaction.p50_ratio": ("max", 1.2),
    "kernels.policy_kernel_3600.p50_us": ("max", 25.0),
    "kernels.learner_update.items_per_s": ("min", 50_000),
    "rpc.Decide.p50_ratio": ("max", 1.3),
    "rpc.Decide.p99_ratio": ("max", 1.5),
    "quality.risk.ap_worst_regime": ("min", 0.8),
    "quality.risk.ap_history_0_4_worst_regime": ("min", 0.5),
    "quality.risk.recall_at_0_5pct_worst_regime": ("min", 0.8),
    "quality.risk.top_decile_log2_ratio_worst_regime": ("max", 1.0),
    "quality.risk.ap_vs_half_space_trees": ("min", 10.0),
    "quality.policy_squarecb.ratio_to_oracle": ("min", 0.85),
    "learning.nudge_vs_oracle_last_fifth": ("min", 0.85),
    "learning.nudge_vs_rulebook_last_fifth": ("min", 1.3),
    "learning.opt_outs_vs_rulebook": ("max", 0),
    "learning.ope_max_relative_difference_vs_obp": ("max", 0.01),
    **{f"quality.worlds.{w}.last_fifth": ("min", 0.85)
       for w in ("types", "dense", "sparse", "misspecified", "drift", "nothing")},
    **{f"quality.worlds.{w}.from_5k_to_10k": ("min", 0.6)
       for w in ("types", "dense", "sparse", "misspecified", "drift", "nothing")},
    **{f"quality.worlds.{w}.invalid_propensities": ("max", 0)
       for w in ("types", "dense", "sparse", "misspecified", "drift", "nothing")},
    "quality.worlds.nothing.nothing_rate_where_best": ("min", 0.8),
    "rpc.Decide3600.squarecb.p50_ratio": ("max", 1.3),
    "rpc.Decide3600.squarecb.p99_ratio": ("max", 1.5),
    "rpc.Decide3600.thompson.p50_ratio": ("max", 1.3),
    "rpc.Decide3600.thompson.p99_ratio": ("max", 1.5),
}


def test_shipped_file_has_every_issue_target() -> None:
    shipped = budgets.load()
    for metric, (bound, value) in ISSUE_TARGETS.items():
        b = shipped.by_metric(metric)
        assert b is not None, metric
        assert getattr(b, bound) == value, metric
    assert shipped.open_loop_p99_ms > 0


def test_judge_met_missed_and_not_measured() -> None:
    shipped = budgets.load()
    verdicts = {v.budget.metric: v for v in budgets.judge(shipped, {
        "rpc.GetUser.p50_ratio": 1.1, "rpc.TrackStream.events_per_s": 10.0,
        "rpc.Decide.p50_ratio": float("nan")})}
    assert verdicts["rpc.GetUser.p50_ratio"].status == "met"
    assert verdicts["rpc.TrackStream.events_per_s"].status == "MISSED"
    assert verdicts["rpc.Decide.p50_ratio"].status == "MISSED"  # NaN never passes
    assert verdicts["kernels.policy_kernel_3600.p50_us"].status == "not measured"
    assert not budgets.all_met(list(verdicts.values()))
    assert budgets.all_met([verdicts["rpc.GetUser.p50_ratio"],
                            verdicts["kernels.policy_kernel_3600.p50_us"]])


@pytest.mark.parametrize("body, error", [
    ("schema = 2\n", "schema must be 1"),
    ('schema = 1\n[[budget]]\nname = "x"\nmetric = "m"\nkind = "ratio"\n', "missing issue"),
    ('schema = 1\n[[budget]]\nname = "x"\nmetric = "m"\nkind = "fast"\nissue = "i"\nmax = 1\n',
     "kind must be"),
    ('schema = 1\n[[budget]]\nname = "x"\nmetric = "m"\nkind = "ratio"\nissue = "i"\n',
     "exactly one of max or min"),
])
def test_bad_files_name_the_rule(tmp_path: Path, body: str, error: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=error):
        budgets.load(path)
