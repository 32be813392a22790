"""The RPC benchmark runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

from nudge.bench import rpc_floor


def test_rpc_floor_reports_ratios_and_throughput() -> None:
    result = rpc_floor.run(None, calls=50, events=2_000, batch=500, users=20)
    assert result["latency_us"]["Echo"]["n"] == 150  # one Echo per measured call
    assert set(result["ratio_to_echo"]) == {"GetUser", "ScoreTransaction", "Decide"}
    assert result["ratio_to_echo"]["ScoreTransaction"]["p50"] > 0
    assert result["track_stream_events_per_s"] > 0
    assert "TrackStream events/s" in result["budgets"]
    assert "ScoreTransaction" in rpc_floor.report(result)
