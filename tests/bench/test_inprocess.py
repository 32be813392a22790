"""bench/inprocess.py: a handler timed in process (the tool behind decide_inprocess and
score_inprocess)."""

from __future__ import annotations

from nudge.bench.inprocess import AfterReply, measure, percentile


def test_measure_times_each_call_runs_its_callbacks_after_and_profiles() -> None:
    seen: list[int] = []
    after: list[int] = []

    def handler(request: int, context: AfterReply) -> None:
        sum(range(2_000))  # some CPU
        seen.append(request)
        context.add_callback(lambda: after.append(request))

    lines = measure("Handler", handler, range(50), 0.0, profiled=range(5))
    assert seen == [*range(50), *range(5)] and after == seen
    assert lines[0] == "Handler, 50 calls, 0.0 ms apart (µs):"
    cpu = lines[1].split()
    assert cpu[:2] == ["thread", "CPU"] and float(cpu[cpu.index("p50") + 1]) > 0
    assert "handler" in lines[3]  # the profile names it


def test_percentile_of_sorted_values() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51 and percentile(values, 0.99) == 100
    assert percentile(values, 1.0) == 100 and percentile([7.0], 0.5) == 7


def test_stage_timer_reports_each_stage_own_time() -> None:
    """A stage's nested stages are not counted twice: the outer's own time excludes them."""
    import types

    from nudge.bench.inprocess import StageTimer

    def inner() -> int:
        return sum(range(20_000))

    def outer() -> int:
        return module.inner() + sum(range(20_000))

    module = types.SimpleNamespace(inner=inner, outer=outer)
    timer = StageTimer()
    timer.wrap(module, "inner")
    timer.wrap(module, "outer", "outer (own)")
    for _ in range(20):
        module.outer()
    assert set(timer.totals) == {"inner", "outer (own)"}
    # The two halves do the same work: neither stage holds the other's time.
    assert 0.2 < timer.totals["inner"] / timer.totals["outer (own)"] < 5
    lines = timer.lines(20)
    assert lines[0].startswith("stages") and len(lines) == 3
