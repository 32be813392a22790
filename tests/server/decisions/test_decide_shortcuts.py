"""Decide's shortcuts give what the general path gives: the request numbers read from
the request's bytes (kernels/request_numbers.py) instead of a dict, the guardrails of an
inert campaign answered without the call, the profile decoded once per stored content.
Twin servers with the same seed decide the same requests, one as shipped and one with
every shortcut turned off; replies and stored records must be equal, bit for bit."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_decide import T0

from nudge.bench.worlds import NUMBER_NAMES, campaign_text
from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer, create_server
from nudge.server.clock import ManualClock
from nudge.server.config import Config
from nudge.server.decisions import engine
from nudge.server.decisions.guardrails import apply_guardrails
from nudge.server.storage.tables.users import UserProfile

USERS = [f"u{i}" for i in range(8)]


def _server(tmp_path: Path, name: str) -> tuple[NudgeServer, Client, ManualClock]:
    campaigns = tmp_path / f"campaigns-{name}"
    campaigns.mkdir()
    (campaigns / "worlds.toml").write_text(campaign_text(name="worlds"))
    clock = ManualClock(T0)
    srv = create_server(Config(port=0, data_dir=tmp_path / name, campaigns_dir=campaigns,
                               random_seed=23), clock=clock)
    srv.start()
    client = Client(f"127.0.0.1:{srv.port}")
    tz = ("America/Sao_Paulo", "Europe/Berlin", "UTC", "Asia/Kolkata")
    for i, user in enumerate(USERS[:-1]):  # the last user has no events
        client.track([make_event(user, "app_opened", time=T0 - 3_600 * (i + 1),
                                 numbers={"amount": 10.0 * i},
                                 strings={"tz": tz[i % len(tz)]})])
    return srv, client, clock


def _requests() -> list[dict[str, float]]:
    rng = np.random.default_rng(8)
    out: list[dict[str, float]] = []
    for i in range(24):
        numbers = dict(zip(NUMBER_NAMES, rng.normal(size=len(NUMBER_NAMES)).tolist(),
                           strict=True))
        if i % 4 == 1:
            numbers = {k: v for k, v in numbers.items() if k not in NUMBER_NAMES[::3]}
        if i % 4 == 2:
            numbers["not_a_feature"] = 1.5
        if i % 4 == 3:
            numbers[NUMBER_NAMES[0]] = -0.0
        out.append(numbers)
    return out


def _decide_all(client: Client, clock: ManualClock) -> list[tuple]:
    replies = []
    for i, numbers in enumerate(_requests()):
        clock.advance(61.0)
        reply = client.decide(USERS[i % len(USERS)], campaign="worlds", numbers=numbers)
        replies.append(reply)
    return replies


def test_shortcuts_decide_as_the_general_path(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fast, fast_client, fast_clock = _server(tmp_path, "fast")
    slow, slow_client, slow_clock = _server(tmp_path, "slow")
    try:
        taken: list[bool] = []
        number_plan = fast.decisions.number_plan
        monkeypatch.setattr(fast.decisions, "number_plan",
                            lambda name: taken.append(True) or number_plan(name))
        fast_replies = _decide_all(fast_client, fast_clock)
        fast_replies += _decide_all(fast_client, fast_clock)  # profiles now cached
        assert len(taken) == 48 and len(fast.decisions._profiles) == len(USERS) - 1
        monkeypatch.setattr(slow.decisions, "number_plan", lambda name: None)
        monkeypatch.setattr(slow.decisions, "_profile",
                            lambda raw, remember: UserProfile.from_bytes(
                                None if raw is None else bytes(raw)))
        monkeypatch.setattr(
            engine, "_guardrails",
            lambda plan, user_id, when, consents, contacts, renderable, credit_blocked,
            send_until, send_at=None: apply_guardrails(
                plan.guard, user_id, when, consents, contacts, renderable, credit_blocked,
                send_until, send_at))
        slow_replies = _decide_all(slow_client, slow_clock)
        slow_replies += _decide_all(slow_client, slow_clock)
        assert fast_replies == slow_replies
        assert {r.actions[0].message for r in fast_replies if r.actions}  # decided
        fast.decisions.flush()
        slow.decisions.flush()
        ids = [r.decision_id for r in fast_replies]
        for a, b in zip(fast.decisions.decisions(ids), slow.decisions.decisions(ids),
                        strict=True):
            assert a is not None and b is not None
            assert np.array_equal(np.array(a.x, dtype=float).view(np.uint64),
                                  np.array(b.x, dtype=float).view(np.uint64))
            assert [None if v is None or math.isnan(v) else v for v in a.raw] == [
                None if v is None or math.isnan(v) else v for v in b.raw]
            assert a.__dict__ == {**b.__dict__, "x": a.x, "raw": a.raw}
    finally:
        for srv, client in ((fast, fast_client), (slow, slow_client)):
            client.close()
            srv.stop()
