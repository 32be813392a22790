"""Property-based fuzzing of every RPC's messages: odd numbers, huge maps, odd unicode,
missing fields, times far away. Never UNKNOWN or INTERNAL, never a crash, and a rejected
request leaves the store unchanged."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nudge.clients import Client
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config
from nudge.v1 import decision_service_pb2 as dpb
from nudge.v1 import delivery_service_pb2 as del_pb
from nudge.v1 import delivery_service_pb2_grpc as del_grpc
from nudge.v1 import event_pb2
from nudge.v1 import risk_service_pb2 as rpb

ALLOWED = {
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
text = st.text(max_size=300)
odd_text = st.one_of(text, st.just(""), st.text(min_size=100, max_size=200),
                     st.sampled_from(["\x00", "é" * 70, "👩‍👩‍👧" * 20, "Mars/Olympus", "UTC"]))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                   st.sampled_from([0.0, -0.0, 1e308, -1e308, 5e-324]))
seconds = st.one_of(st.integers(-62_135_596_800, 253_402_300_799),
                    st.sampled_from([0, 1_795_482_000]))
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NudgeServer, Client]]:
    srv = create_server(Config(port=0, data_dir=tmp_path_factory.mktemp("fuzz") / "data"))
    srv.start()
    c = Client(f"127.0.0.1:{srv.port}", retries=0, timeout=10)
    yield srv, c
    c.close()
    srv.stop()


def call(fn, request) -> grpc.StatusCode:
    try:
        fn(request, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@st.composite
def events(draw) -> event_pb2.Event:
    ev = event_pb2.Event(
        event_id=draw(odd_text), user_id=draw(odd_text),
        type=draw(st.one_of(st.sampled_from(["app_opened", "transaction", "loan_completed"]),
                            odd_text)),
        numbers=draw(st.dictionaries(odd_text, number, max_size=70)),
        strings=draw(st.dictionaries(odd_text, odd_text, max_size=5)),
    )
    if draw(st.booleans()):
        ev.time.seconds = draw(seconds)
        ev.time.nanos = draw(st.integers(-5, 1_000_000_005))
    return ev


@given(st.lists(events(), max_size=4))
@FUZZ
def test_track_never_fails_badly(served, batch: list[event_pb2.Event]) -> None:
    srv, c = served
    before = srv.store.counts()
    code = call(c.decisions.Track, dpb.TrackRequest(events=batch))
    assert code in ALLOWED
    if code != grpc.StatusCode.OK:
        assert srv.store.counts() == before


@given(st.builds(
    dpb.DecideRequest, user_id=odd_text, campaign=st.one_of(st.just(""), odd_text),
    top_k=st.integers(-5, 40), numbers=st.dictionaries(odd_text, number, max_size=4),
    strings=st.dictionaries(odd_text, odd_text, max_size=4), dry_run=st.booleans(),
))
@FUZZ
def test_decide_never_fails_badly(served, request: dpb.DecideRequest) -> None:
    assert call(served[1].decisions.Decide, request) in ALLOWED


@given(st.builds(
    rpb.Transaction, transaction_id=odd_text, user_id=odd_text, amount=number,
    currency=odd_text, merchant_category=odd_text, country=odd_text, channel=odd_text,
    device_id=odd_text,
))
@FUZZ
def test_score_never_fails_badly(served, tx: rpb.Transaction) -> None:
    c = served[1]
    code = call(c.risk.ScoreTransaction, rpb.ScoreTransactionRequest(transaction=tx))
    assert code in ALLOWED


@given(odd_text, number, st.integers(-3, 5))
@FUZZ
def test_outcomes_labels_and_acks_never_fail_badly(served, some_id: str, value: float,
                                                   enum: int) -> None:
    _, c = served
    assert call(c.decisions.ReportOutcome,
                dpb.ReportOutcomeRequest(decision_id=some_id, reward=value)) in ALLOWED
    assert call(c.risk.LabelTransaction,
                rpb.LabelTransactionRequest(transaction_id=some_id, label=enum)) in ALLOWED
    stub = del_grpc.DeliveryServiceStub(c.channel)
    assert call(stub.AckDelivery,
                del_pb.AckDeliveryRequest(delivery_id=some_id, status=enum)) in ALLOWED
    assert call(c.decisions.GetUser, dpb.GetUserRequest(user_id=some_id)) in ALLOWED


# Sizes around every documented limit (README "Limits"): just under, at, just over.
around = st.sampled_from
big_text = st.builds(lambda n: "é" * n, around([0, 511, 512, 513, 1_024, 1_100]))


@given(st.builds(
    dpb.DecideRequest, user_id=st.sampled_from(["fuzz-u", "x" * 129, "a\x00b"]),
    campaign=st.one_of(st.just(""), st.builds(lambda n: "c" * n, around([64, 65, 300]))),
    numbers=st.dictionaries(st.text(max_size=70), number, max_size=70),
    strings=st.dictionaries(st.text(max_size=70), big_text, max_size=70),
))
@FUZZ
def test_decide_limits_are_invalid_argument_and_store_nothing(
    served, request: dpb.DecideRequest
) -> None:
    srv, c = served
    srv.decisions.flush()  # earlier examples' decisions
    before = srv.store.counts()["decisions"]
    code = call(c.decisions.Decide, request)
    assert code in ALLOWED
    if code != grpc.StatusCode.OK:
        srv.decisions.flush()
        assert srv.store.counts()["decisions"] == before


@given(around([0, 1, 999, 1_000, 1_001]), around([0, 65_536, 65_537]),
       around([1, 10_000, 10_001]))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_batch_and_payload_limits(served, transactions: int, payload: int, events: int) -> None:
    from nudge.v1 import diagnostics_service_pb2 as diag

    srv, c = served
    tx = rpb.Transaction(transaction_id="t", user_id="fuzz-batch", amount=1.0)
    code = call(c.risk.ScoreTransactions, rpb.ScoreTransactionsRequest(
        transactions=[tx] * transactions))
    assert code == (grpc.StatusCode.OK if 0 < transactions <= 1_000
                    else grpc.StatusCode.INVALID_ARGUMENT)
    code = call(c.diagnostics.Echo, diag.EchoRequest(payload=b"x" * payload))
    assert code == (grpc.StatusCode.OK if payload <= 65_536 else grpc.StatusCode.INVALID_ARGUMENT)
    def ingested() -> tuple[int, ...]:  # (the scores above may still be flushing)
        counts = srv.store.counts()
        return counts["events"], counts["seen"], counts["users"]

    before = ingested()
    batch = [event_pb2.Event(event_id="", user_id="u", type="app_opened")] * events
    code = call(c.decisions.Track, dpb.TrackRequest(events=batch))
    assert code == grpc.StatusCode.INVALID_ARGUMENT  # too many, or an empty event_id
    assert ingested() == before


def test_garbage_bytes_and_half_open_connections_do_not_take_it_down(served) -> None:
    srv, c = served
    junk = [b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", bytes(range(256)),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]
    sockets = []
    for payload in junk:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        s.sendall(payload)
        sockets.append(s)  # left half-open on purpose
    for s in sockets:
        s.shutdown(socket.SHUT_WR)
    assert c.echo(b"still here") == b"still here"
    assert c.health() == "SERVING"
    for s in sockets:
        s.close()
