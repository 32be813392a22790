"""Closed-loop throughput and the open-loop sweep against an in-process server."""

from __future__ import annotations

from nudge.bench import load, open_loop
from nudge.clients import Client
from nudge.v1 import diagnostics_service_pb2


def test_closed_loop_interleaves_the_floor(client: Client) -> None:
    def prepare(i: int):
        return lambda: client.echo()

    result = load.interleaved_throughput(prepare, {"Same": prepare}, concurrency=2,
                                         seconds=0.2, slices=2)
    assert set(result) == {"Echo", "Same"}
    assert result["Echo"].calls > 0 and result["Same"].per_s > 0
    assert result["Same"].errors == 0


def test_open_loop_counts_latency_from_the_due_time(client: Client) -> None:
    def issue(i: int):
        return client.diagnostics.Echo.future(diagnostics_service_pb2.EchoRequest(), timeout=10)

    config = open_loop.OpenLoopConfig(start_rate=100, growth=2, max_steps=2, step_seconds=0.1,
                                      p99_ms=10_000)
    sweep = open_loop.sweep("Echo", issue, config)
    # Whether a starved client kept a step's schedule depends on the box (a step it could
    # not keep ends the sweep), so the rates are checked against what each step achieved.
    rates = [s.offered_per_s for s in sweep.steps]
    assert rates in ([100], [100, 200])
    assert (rates == [100, 200]) == sweep.steps[0].within(config.p99_ms)
    assert all(s.errors == 0 and s.latency.n == int(s.offered_per_s * 0.1) for s in sweep.steps)
    kept = [s.offered_per_s for s in sweep.steps if s.within(config.p99_ms)]
    assert sweep.max_rate_within_budget == max(kept, default=0.0)
    assert sweep.to_dict()["steps"][0]["latency_us"]["p50"] > 0


def test_sweep_stops_when_the_budget_is_missed(client: Client) -> None:
    def issue(i: int):
        return client.diagnostics.Echo.future(diagnostics_service_pb2.EchoRequest(), timeout=10)

    config = open_loop.OpenLoopConfig(start_rate=50, max_steps=5, step_seconds=0.1,
                                      p99_ms=0.0)  # nothing answers in 0 ms
    sweep = open_loop.sweep("Echo", issue, config)
    assert len(sweep.steps) == 1
    assert sweep.max_rate_within_budget == 0.0
