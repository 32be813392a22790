"""Track, TrackStream and GetUser end to end on a real server and a real store."""

from __future__ import annotations

import threading

import grpc
import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer

T0 = 1_795_482_000.0  # 2026-11-24 01:00 UTC


def test_track_then_get_user_shows_the_event(client: Client) -> None:
    reply = client.track([
        make_event("u1", "loan_simulated", numbers={"amount": 5000.0},
                   strings={"step": "documentation", "tz": "America/Sao_Paulo",
                            "consent.push": "granted"}, time=T0),
    ])
    assert (reply.accepted, reply.duplicates) == (1, 0)
    user = client.get_user("u1")
    assert user.user_id == "u1"
    assert user.event_count == 1
    assert [t.type for t in user.event_types] == ["loan_simulated"]
    assert user.event_types[0].count == 1
    assert user.amounts.mean == 5000.0
    assert user.time_zone == "America/Sao_Paulo"
    assert dict(user.consents) == {"push": True}
    assert user.local_hour_profile[22] == 1.0
    assert user.first_seen.seconds == int(T0)


def test_replayed_events_are_duplicates_and_change_nothing(client: Client) -> None:
    events = [make_event("u1", "app_opened", time=T0 + i) for i in range(3)]
    assert client.track(events).accepted == 3
    before = client.get_user("u1")
    reply = client.track(events)
    assert (reply.accepted, reply.duplicates) == (0, 3)
    assert client.get_user("u1") == before


def test_unknown_user_is_not_found(client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.get_user("nobody")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "user_id" in err.value.details()


def test_out_of_order_events_give_the_same_state(client: Client) -> None:
    times = [T0 + 3_600 * k for k in (5, 1, 3, 0, 4, 2)]
    client.track([make_event("a", "app_opened", time=t) for t in times])
    client.track([make_event("b", "app_opened", time=t) for t in sorted(times)])
    a, b = client.get_user("a"), client.get_user("b")
    assert a.event_types[0].decayed_count == pytest.approx(b.event_types[0].decayed_count)
    assert list(a.local_hour_profile) == pytest.approx(list(b.local_hour_profile))
    assert a.first_seen == b.first_seen and a.last_seen == b.last_seen


def test_track_stream_ingests_many_batches(client: Client) -> None:
    batches = [
        [make_event(f"user-{j % 50}", "transaction", numbers={"amount": float(j)}, time=T0 + j)
         for j in range(i * 200, (i + 1) * 200)]
        for i in range(10)
    ]
    reply = client.track_stream(batches)
    assert (reply.accepted, reply.duplicates) == (2_000, 0)
    assert client.get_user("user-7").event_count == 40
    again = client.track_stream(batches[:2])
    assert (again.accepted, again.duplicates) == (0, 400)


def test_concurrent_calls_share_group_commits(server: NudgeServer, client: Client) -> None:
    commits_before = server.writer.commits
    errors: list[Exception] = []

    def send(k: int) -> None:
        try:
            for i in range(10):
                client.track([make_event(f"c{k}", "app_opened", event_id=f"c{k}-{i}", time=T0)])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(client.get_user(f"c{k}").event_count == 10 for k in range(8))
    # 80 acknowledged calls, each durable on reply, needed fewer commits than calls.
    assert server.writer.commits - commits_before < 80
