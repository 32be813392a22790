"""``nudge bench background`` at a tiny size: every phase is timed on a real server, the
feeds really ran beside it (their work was acknowledged), and the server's own handler
time is read for each timed RPC. No timing is asserted (a shared box's figures are noise)."""

from __future__ import annotations

from nudge.bench import background


def test_every_phase_is_timed_while_its_feed_runs() -> None:
    config = background.BackgroundConfig(calls=40, users=20, ingest_rate=500.0,
                                         outcome_rate=50.0, switch_intervals_ms=(1.0,),
                                         settle_seconds=0.5)
    result = background.run(config)
    assert set(result["servers"]) == {"1 ms"}
    for phases in result["servers"].values():
        assert set(phases) == set(background.PHASES)
        for phase, data in phases.items():
            assert set(data["latency"]) == set(background.RPCS)
            # An Echo before every timed call: the floor has a sample per call of each.
            assert [data["latency"][rpc]["n"] for rpc in background.RPCS] == [80, 40, 40]
            assert set(data["handler"]) == set(background.RPCS)
            assert all(data["handler"][rpc]["calls"] >= 40 for rpc in background.RPCS)
            if phase == "quiet":
                assert "feed" not in data
        assert phases["ingest"]["feed"]["accepted"] > 0
        assert phases["outcomes"]["feed"]["reported"] > 0
    assert set(result["metrics"]) == {"background.ingest.decide_p99_over_quiet",
                                      "background.outcomes.decide_p99_over_quiet"}
    assert "| outcomes | Decide3600 |" in background.report(result)
