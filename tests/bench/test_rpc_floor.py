"""The foundation benchmark runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

from nudge.bench import rpc_floor


def test_rpc_floor_reports_ratios_and_throughput() -> None:
    result = rpc_floor.run(None, calls=50, events=2_000, batch=500, users=20)
    assert result["echo_us"]["n"] == 50
    assert result["get_user_ratio_to_echo"]["p50"] > 0
    assert result["track_stream_events_per_s"] > 0
    assert set(result["budgets"]) == {"get_user_p50_ratio", "track_stream_events_per_s"}
