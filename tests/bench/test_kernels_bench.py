"""Kernel micro-benchmarks run at tiny sizes and report the statistics budgets read."""

from __future__ import annotations

from nudge.bench import kernels_bench
from nudge.bench.timing import measure

TINY = kernels_bench.KernelsConfig(ingest_batches=(3,), policy_combos=(20, 7),
                                   policy_modes=("squarecb", "thompson"), features=4,
                                   learner_batch=5, risk_batch=300, max_time=0.01)


def test_measure_reports_pytest_benchmark_statistics() -> None:
    t = measure(lambda: sum(range(10)), max_time=0.01, items_per_call=10)
    assert t.rounds >= 5 and t.iterations >= 1
    assert 0 < t.min <= t.median <= t.max
    assert t.ops > 0 and t.items_per_s > t.ops
    assert set(t.to_dict()) >= {"mean", "stddev", "iqr", "p50_us", "p99_us", "ops"}


def test_measure_resets_state_outside_the_timed_call() -> None:
    state = {"resets": 0}
    t = measure(lambda: None, max_time=0.0, min_rounds=3,
                reset=lambda: state.__setitem__("resets", state["resets"] + 1))
    assert t.iterations == 1
    assert state["resets"] == t.rounds + 1  # once before the discarded first call


def test_every_case_runs_and_names_budget_metrics() -> None:
    result = kernels_bench.run(TINY)
    names = {c["name"] for c in result["cases"]}
    assert {"ingest_apply_events_3", "policy_kernel_20", "policy_decide_7",
            "policy_thompson_kernel_20", "policy_thompson_decide_20",
            "learner_update", "risk_score_single", "risk_score_single_wrapper",
            "risk_score_batch"} <= names
    m = result["metrics"]
    assert m["kernels.policy_kernel_20.p50_us"] > 0
    assert m["kernels.risk_score_batch.items_per_s"] > 0
    assert m["kernels.learner_update.items_per_s"] > 0


def test_layouts_have_the_asked_number_of_combinations() -> None:
    for n in (20, 200, 3600, 13):
        dims, _ = kernels_bench.layout_for(n)
        product = 1
        for d in dims:
            product *= d
        assert product == n
