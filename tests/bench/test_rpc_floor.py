"""The RPC benchmark runs end to end (tiny sizes; no timing is asserted here)."""

from __future__ import annotations

from nudge.bench import rpc_floor


def test_rpc_floor_reports_ratios_and_throughput() -> None:
    result = rpc_floor.run(None, calls=50, events=2_000, batch=500, users=20)
    assert result["latency_us"]["Echo"]["n"] == 250  # one Echo per measured call
    assert set(result["ratio_to_echo"]) == {"GetUser", "ScoreTransaction", "Decide",
                                            "Decide3600.squarecb", "Decide3600.thompson"}
    assert "Decide p50 / floor, 3,600 combinations, Thompson" in result["budgets"]
    assert result["ratio_to_echo"]["ScoreTransaction"]["p50"] > 0
    assert result["track_stream_events_per_s"] > 0
    assert "TrackStream events/s" in result["budgets"]
    assert "ScoreTransaction" in rpc_floor.report(result)
