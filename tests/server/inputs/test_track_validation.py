"""Every Track input rule: INVALID_ARGUMENT naming the event and field; nothing stored."""

from __future__ import annotations

import time

import grpc
import pytest

from nudge.clients import Client, make_event
from nudge.server.app import NudgeServer
from nudge.v1 import event_pb2


def good(i: int = 0) -> event_pb2.Event:
    return make_event("u1", "app_opened", event_id=f"good-{i}", numbers={"amount": 1.0})


def with_time(seconds: int, nanos: int = 0) -> event_pb2.Event:
    e = good(9)
    e.time.seconds, e.time.nanos = seconds, nanos
    return e


def mutate(**fields) -> event_pb2.Event:
    e = good(9)
    for name, value in fields.items():
        if name in ("numbers", "strings"):
            getattr(e, name).update(value)
        else:
            setattr(e, name, value)
    return e


CASES = [
    (mutate(event_id=""), "events[1].event_id: must not be empty"),
    (mutate(event_id="x" * 129), "events[1].event_id: must be at most 128 bytes"),
    (mutate(event_id="é" * 65), "events[1].event_id: must be at most 128 bytes"),
    (mutate(user_id=""), "events[1].user_id: must not be empty"),
    (mutate(user_id="u" * 129), "events[1].user_id: must be at most 128 bytes"),
    (mutate(type=""), "events[1].type: must match"),
    (mutate(type="AppOpened"), "events[1].type: must match"),
    (mutate(type="1st_event"), "events[1].type: must match"),
    (mutate(type="app-opened"), "events[1].type: must match"),
    (mutate(type="a" * 65), "events[1].type: must match"),
    (mutate(numbers={"x": float("nan")}), 'events[1].numbers["x"]: must be finite'),
    (mutate(numbers={"x": float("inf")}), 'events[1].numbers["x"]: must be finite'),
    (mutate(numbers={"x": float("-inf")}), 'events[1].numbers["x"]: must be finite'),
    # Finite but past what the running moments hold: once made every Decide INTERNAL.
    (mutate(numbers={"amount": 1.7e308}), 'events[1].numbers["amount"]: must be at most 1e+18'),
    (mutate(numbers={"amount": -2e18}), 'events[1].numbers["amount"]: must be at most 1e+18'),
    (mutate(numbers={"x": 1.7e308}), 'events[1].numbers["x"]: must be at most 1e+18'),
    (mutate(numbers={f"n{i}": 1.0 for i in range(40)},
            strings={f"s{i}": "v" for i in range(25)}), "events[1]: at most 64"),
    (mutate(numbers={"": 1.0}), "events[1].numbers: property keys must not be empty"),
    (mutate(strings={"k" * 65: "v"}), "keys must be at most 64 bytes"),
    (mutate(strings={"note": "v" * 1025}), 'events[1].strings["note"]: must be at most 1024'),
    (mutate(strings={"tz": "Mars/Olympus"}), 'events[1].strings["tz"]: must be an IANA'),
    # A name ZoneInfo would open as a 1,000-byte file name (OSError: was INTERNAL), and
    # names a system zone folder holds that mean the host, not a place.
    (mutate(strings={"tz": "a" * 1000}), 'events[1].strings["tz"]: must be an IANA'),
    (mutate(strings={"tz": "localtime"}), 'events[1].strings["tz"]: must be an IANA'),
    (mutate(strings={"tz": "posixrules"}), 'events[1].strings["tz"]: must be an IANA'),
    (mutate(strings={"consent.push": "yes"}), 'events[1].strings["consent.push"]: must be'),
    (mutate(strings={"consent.": "granted"}), 'events[1].strings["consent."]: must be'),
    (with_time(int(time.time()) + 2 * 86_400), "events[1].time: must not be more than one day"),
    (with_time(-5), "events[1].time: must not be before 1970"),
]


@pytest.mark.parametrize(("bad", "message"), CASES)
def test_invalid_event_rejects_the_whole_request(
    server: NudgeServer, client: Client, bad: event_pb2.Event, message: str
) -> None:
    before = server.store.counts()
    with pytest.raises(grpc.RpcError) as err:
        client.track([good(0), bad, good(2)])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert server.store.counts() == before
    with pytest.raises(grpc.RpcError) as err:
        client.get_user("u1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_invalid_stream_message_names_the_message(server: NudgeServer, client: Client) -> None:
    with pytest.raises(grpc.RpcError) as err:
        client.track_stream([[good(0)], [good(1), mutate(type="Bad")]])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "messages[1].events[1].type" in err.value.details()
    # The first message was valid and is committed; replaying it is safe.
    assert client.track([good(0)]).duplicates == 1
    assert client.get_user("u1").event_count == 1


def test_limits_themselves_are_accepted(client: Client) -> None:
    e = make_event("u" * 128, "a" + "b" * 63, event_id="e" * 128,
                   numbers={f"n{i}": (-1) ** i * 1e18 for i in range(32)},
                   strings={f"s{i}": "v" * 1024 for i in range(32)})
    e.time.seconds = int(time.time()) + 86_000
    assert client.track([e]).accepted == 1


def test_get_user_rejects_bad_ids(client: Client) -> None:
    for user_id, rule in (("", "must not be empty"), ("x" * 129, "must be at most 128 bytes")):
        with pytest.raises(grpc.RpcError) as err:
            client.get_user(user_id)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"user_id: {rule}" in err.value.details()


def test_a_transaction_id_too_long_for_a_key_is_refused_and_fails_no_one_else(
    client, server
) -> None:
    from nudge.clients import make_event

    bad = make_event("u1", "transaction", numbers={"amount": 10.0},
                     strings={"transaction_id": "t" * 600})
    with pytest.raises(grpc.RpcError) as err:
        client.track([bad])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert 'events[0].strings["transaction_id"]' in err.value.details()
    nul = make_event("u1", "app_opened", event_id="a\x00b")
    with pytest.raises(grpc.RpcError) as err:
        client.track([nul])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert server.store.get_user("u1") is None
    assert client.track([make_event("u2", "app_opened")]).accepted == 1


def test_event_ids_are_per_user(client, server) -> None:
    from nudge.clients import make_event

    first = client.track([make_event("ana", "app_opened", event_id="e-1")])
    other = client.track([make_event("bea", "app_opened", event_id="e-1")])
    replay = client.track([make_event("ana", "app_opened", event_id="e-1")])
    assert (first.accepted, other.accepted, replay.duplicates) == (1, 1, 1)
    assert client.get_user("bea").event_count == 1
    assert client.get_user("ana").event_count == 1
