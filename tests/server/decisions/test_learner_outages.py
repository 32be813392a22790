"""The learner thread through an outage of where it sends what it settled (cluster mode's
rewards stream): it keeps retrying, and says so once per UNAVAILABLE_LOG_SECONDS, not
once per attempt."""

from __future__ import annotations

import logging
import time

import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer
from nudge.server.decisions import learner as learner_module
from nudge.server.errors import Unavailable


def test_an_unavailable_ship_is_retried_and_logged_once(
        server: NudgeServer, client: Client, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[int] = []

    def ship(records: list[object]) -> None:
        attempts.append(len(records))
        raise Unavailable("cluster: settled outcomes not shipped yet (test); retried")

    server.learner.ship = ship
    client.track([make_event("outage-user", "app_opened")])
    decision = client.decide("outage-user")
    caplog.set_level(logging.WARNING, logger=learner_module.log.name)
    assert client.report_outcome(decision.decision_id, 1.0)
    deadline = time.monotonic() + 10
    while len(attempts) < 5:  # retried every interval
        assert time.monotonic() < deadline, attempts
        time.sleep(0.05)
    server.learner.ship = None  # the outage ends: learned on one machine again
    steps = [r for r in caplog.records if r.name == learner_module.log.name]
    assert [r.levelno for r in steps] == [logging.WARNING]  # once, not per attempt
    assert "not shipped yet" in steps[0].getMessage() and steps[0].exc_info is None
