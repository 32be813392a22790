"""Decide's precomputed guardrail clock against the plain datetime definitions."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from nudge.server.decisions.campaign import load_campaigns
from nudge.server.decisions.guardrails import GuardrailPlan, local_now, slot_times
from nudge.server.storage.ingest import local_hour

ZONES = ["UTC", "Europe/Lisbon", "America/New_York", "America/Sao_Paulo",
         "Australia/Lord_Howe", "America/St_Johns", "Asia/Kolkata"]


@pytest.mark.parametrize("zone", ZONES)
def test_send_times_and_local_clock_match_the_definitions(zone: str) -> None:
    campaign = load_campaigns()["loan_abandonment"]
    plan = GuardrailPlan(campaign)
    tz = ZoneInfo(zone)
    times = []
    for month, day in ((3, 8), (3, 29), (4, 5), (10, 4), (10, 25), (11, 1), (6, 15)):
        start = datetime(2026, month, day, tzinfo=tz).timestamp() - 86_400
        times += [start + k * 1_234.5 for k in range(3 * 86_400 // 1_234)]
        # Exactly at, just before and just after each slot (09:00, 12:30, 19:00).
        for minute in (9 * 60, 12 * 60 + 30, 19 * 60):
            at = datetime(2026, month, day, minute // 60, minute % 60, tzinfo=tz).timestamp()
            times += [at - 1e-6, at, at + 1e-6, at + 0.5]
    for t in times:
        now = local_now(t, zone)
        assert plan.send_times(now) == slot_times(campaign, t, zone), (zone, t)
        assert now.hour == local_hour(t, zone)
