"""The audience bench end to end on a small base: every user decided once, in order,
every decision logged and found in the store after the server's graceful stop."""

from __future__ import annotations

from nudge.bench.audience import MILLION, AudienceConfig, run


def test_a_small_audience_is_decided_logged_and_stored() -> None:
    result = run(AudienceConfig(users=300, history=50, per_message=128))
    assert result["decisions"] == result["logged"] == result["stored"] == 300
    assert result["history"] == 50
    metrics = result["metrics"]
    assert metrics["audience.unlogged"] == 0
    assert metrics["audience.decide_batch_s_per_million"] == MILLION / result["per_s"]
