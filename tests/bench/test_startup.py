"""Startup timing starts a real server and always stops it (warm cache only: a cold
compile takes ~15 s and belongs to ``nudge bench startup``)."""

from __future__ import annotations

from nudge.bench import startup


def test_warm_start_reaches_serving() -> None:
    result = startup.run(startup.StartupConfig(cold=False, warm_runs=1))
    assert result["warm_s"] > 0
    assert "cold_s" not in result
    assert result["metrics"]["startup.warm_s"] == result["warm_s"]
