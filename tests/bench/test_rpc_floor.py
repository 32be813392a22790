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


def test_rpc_floor_reads_handler_time_and_writes_profiles(tmp_path) -> None:
    from nudge.bench.report import markdown

    config = rpc_floor.RpcConfig(calls=20, events=1_000, batch=500, users=10, handler_calls=20,
                                 durable_calls=5, stream_events=5, concurrency=2,
                                 profile_dir=tmp_path / "profile", profile_seconds=0.3)
    result = rpc_floor.run_config(config)
    handler = result["handler_us"]
    assert {"Echo", "GetUser", "ScoreTransaction", "Decide", "Decide3600.squarecb",
            "Track", "TrackStream"} <= set(handler)
    assert handler["Decide3600.squarecb"]["calls"] == 20  # its own pass, not all Decides
    for t in handler.values():
        assert t["mean_us"] > 0 and t["cpu_mean_us"] > 0
        assert t["p50_le_us"] <= t["p99_le_us"]
    assert result["metrics"]["rpc.GetUser.handler_mean_us"] == handler["GetUser"]["mean_us"]
    assert "Decide handler mean µs, 3,600 combinations, SquareCB" in result["budgets"]
    for rpc in rpc_floor.PROFILED:
        assert (tmp_path / "profile" / f"{rpc}.prof").stat().st_size > 0
        top = result["profile"]["top"][rpc]
        assert len(top["cumulative"]) == 25 and len(top["tottime"]) == 25
    text = markdown({"meta": {"started": "now", "command": "test", "elapsed_s": 1.0,
                              "machine": {"cpu": "x", "cores": 1, "memory_gib": 1.0, "os": "x",
                                          "python": "3", "libraries": {}}},
                     "sections": {"rpc": result}, "budgets": []})
    assert "handler CPU µs" in text
    assert "### Decide: top 25 by cumulative" in text
    assert "### TrackStream: top 25 by tottime" in text
