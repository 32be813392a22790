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


def test_an_abandoned_flow_step_at_the_string_limits_is_accepted(client: Client) -> None:
    """Flow and step strings of 1,024 bytes each are valid; the insights key they make is
    longer than an LMDB key, which once failed the whole commit as UNAVAILABLE (a poison
    event a producer would retry for ever)."""
    strings = {"flow": "f" * 1024, "step": "ü" * 512}
    reply = client.track([make_event("long-flow", "flow_abandoned", strings=strings,
                                     time=T0)])
    assert (reply.accepted, reply.duplicates) == (1, 0)
    again = client.track([make_event("long-flow-2", "flow_abandoned", strings=strings,
                                     time=T0)])
    assert again.accepted == 1
    assert client.get_user("long-flow").event_count == 1


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


@pytest.mark.parametrize("registered", [True, False])
def test_get_user_bytes_parse_as_the_field_by_field_reply(
        server: NudgeServer, client: Client, registered: bool) -> None:
    """GetUser hands grpc its reply as bytes (user_report.reply_bytes): a generated stub
    (grpc's registered-method lookup) and a plain call by method name (the generic lookup)
    parse them equal to the reply set field by field from the same stored record; consent
    channels with quotes and backslashes take the reply kernel's slow path."""
    from nudge.server.rpc.user_report import user_state_message
    from nudge.server.storage.tables import users
    from nudge.server.storage.tables.users import UserProfile
    from nudge.v1 import decision_service_pb2 as pb

    client.track([
        make_event("plain", "card_payment", numbers={"amount": 12.5},
                   strings={"tz": "America/Sao_Paulo", "consent.push": "granted",
                            "consent.sms": "revoked"}, time=T0),
        make_event("plain", "login", time=T0 + 60.0),
        make_event("escaped", "login", strings={"consent.a\"b\\c": "granted",
                                                "consent.café": "revoked"}, time=T0),
        make_event("bare", "login", time=T0),
    ])
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    get_user = channel.unary_unary(
        "/nudge.v1.DecisionService/GetUser", _registered_method=registered,
        request_serializer=pb.GetUserRequest.SerializeToString,
        response_deserializer=pb.GetUserResponse.FromString)
    try:
        for user_id in ("plain", "escaped", "bare"):
            got = get_user(pb.GetUserRequest(user_id=user_id), timeout=10)
            with server.store.read() as txn:
                record = users.record(txn, server.store.dbs, user_id)
                profile = users.profile(txn, server.store.dbs, user_id)
            assert record is not None
            expected = pb.GetUserResponse(user=user_state_message(
                user_id, record.tolist(), profile, server.store.type_names(),
                server.config.half_life_seconds))
            assert got == expected
            assert got.user.event_count >= 1
        assert dict(get_user(pb.GetUserRequest(user_id="escaped"), timeout=10).user.consents
                    ) == {"a\"b\\c": True, "café": False}
        assert UserProfile().tz == get_user(pb.GetUserRequest(user_id="bare"),
                                            timeout=10).user.time_zone
    finally:
        channel.close()
