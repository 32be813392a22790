"""`nudge demo` tells the DESIGN.md story (it runs a real server in simulated time)."""

from __future__ import annotations

from datetime import timedelta

from nudge.bench.demo import TUESDAY_22H, run_demo

STORY_TEXT = "Your USD 5,000 loan is ready. Just one document left."


def test_the_three_users_timelines() -> None:
    lines: list[str] = []
    timeline = run_demo(out=lines.append)
    ana, carla = timeline.deliveries["ana"], timeline.deliveries["carla"]
    assert "bruno" not in timeline.deliveries
    assert len(ana) == 1 and len(carla) == 1
    # After quiet hours (08:00), within the 24 h journey window.
    for when in timeline.delivered_at["ana"] + timeline.delivered_at["carla"]:
        assert TUESDAY_22H + timedelta(hours=10) <= when <= TUESDAY_22H + timedelta(hours=24)
    assert carla[0].channel != "push"  # no push consent
    assert ana[0].text == STORY_TEXT  # the learned best message, filled from her events
    assert any("bruno" in line and "nothing sent" in line for line in lines)
    assert lines[0].startswith("learned from 600 earlier journeys")
    assert any("chosen with p=" in line for line in lines)
