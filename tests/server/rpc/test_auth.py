"""Per-client tokens and scopes, checked by AuthInterceptor on a real gRPC server."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nudge.clients.credentials import BearerTokenInterceptor, bearer_metadata
from nudge.server.rpc.auth import (
    AuthInterceptor,
    Principal,
    TokenStore,
    scope_for,
)
from nudge.server.rpc.status import StatusInterceptor
from nudge.v1 import (
    decision_service_pb2,
    decision_service_pb2_grpc,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    diagnostics_service_pb2,
    diagnostics_service_pb2_grpc,
    risk_service_pb2,
    risk_service_pb2_grpc,
)


class Decisions(decision_service_pb2_grpc.DecisionServiceServicer):
    def Decide(self, request, context):
        return decision_service_pb2.DecideResponse(decision_id="d1")

    def GetUser(self, request, context):
        return decision_service_pb2.GetUserResponse()

    def TrackStream(self, request_iterator, context):
        n = sum(len(r.events) for r in request_iterator)
        return decision_service_pb2.TrackStreamResponse(accepted=n)


class Risk(risk_service_pb2_grpc.RiskServiceServicer):
    def ScoreTransaction(self, request, context):
        return risk_service_pb2.ScoreTransactionResponse(score=0.5)


class Deliveries(delivery_service_pb2_grpc.DeliveryServiceServicer):
    def StreamDeliveries(self, request, context):
        yield delivery_service_pb2.StreamDeliveriesResponse()


# A method the scope map does not know, as a newly added RPC would be.
UNMAPPED = "/nudge.v1.Extra/Ping"
_extra = grpc.method_handlers_generic_handler(
    "nudge.v1.Extra", {"Ping": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"pong")}
)


class Diagnostics(diagnostics_service_pb2_grpc.DiagnosticsServiceServicer):
    def Echo(self, request, context):
        return diagnostics_service_pb2.EchoResponse(payload=request.payload)


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "tokens.json")


@pytest.fixture
def target(store: TokenStore) -> Iterator[str]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=4),
        interceptors=[AuthInterceptor(store), StatusInterceptor()],
    )
    decision_service_pb2_grpc.add_DecisionServiceServicer_to_server(Decisions(), server)
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(Risk(), server)
    delivery_service_pb2_grpc.add_DeliveryServiceServicer_to_server(Deliveries(), server)
    diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(Diagnostics(), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    server.add_generic_rpc_handlers((_extra,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as ch:
        yield ch


def _code(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_no_token_is_unauthenticated(channel: grpc.Channel) -> None:
    stub = decision_service_pb2_grpc.DecisionServiceStub(channel)
    code, details = _code(lambda: stub.Decide(decision_service_pb2.DecideRequest(), timeout=5))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer" in details


def test_bad_or_malformed_token_is_unauthenticated(
    channel: grpc.Channel, store: TokenStore
) -> None:
    stub = decision_service_pb2_grpc.DecisionServiceStub(channel)
    real = store.create("core-banking", ["decide"])
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    for token in (forged, "nudge_ffff_nope", "garbage"):
        code, _ = _code(
            lambda t=token: stub.Decide(
                decision_service_pb2.DecideRequest(), metadata=bearer_metadata(t), timeout=5
            )
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
    code, details = _code(
        lambda: stub.Decide(
            decision_service_pb2.DecideRequest(),
            metadata=(("authorization", f"Basic {real}"),),
            timeout=5,
        )
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in details


def test_risk_token_scores_but_cannot_decide_or_read_profiles(
    channel: grpc.Channel, store: TokenStore
) -> None:
    token = store.create("fraud-engine", ["risk"])
    md = bearer_metadata(token)
    risk = risk_service_pb2_grpc.RiskServiceStub(channel)
    decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)

    reply = risk.ScoreTransaction(risk_service_pb2.ScoreTransactionRequest(), metadata=md)
    assert reply.score == 0.5

    code, details = _code(
        lambda: decisions.Decide(decision_service_pb2.DecideRequest(), metadata=md, timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'decide'" in details and "fraud-engine" not in details  # no token names
    code, details = _code(
        lambda: decisions.GetUser(decision_service_pb2.GetUserRequest(), metadata=md, timeout=5)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "'admin'" in details


def test_streaming_methods_are_checked_too(channel: grpc.Channel, store: TokenStore) -> None:
    risk_md = bearer_metadata(store.create("fraud-engine", ["risk"]))
    track_md = bearer_metadata(store.create("app-backend", ["track"]))
    decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
    deliveries = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
    batches = [decision_service_pb2.TrackStreamRequest()] * 3

    # stream-unary
    code, _ = _code(lambda: decisions.TrackStream(iter(batches), metadata=risk_md, timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert decisions.TrackStream(iter(batches), metadata=track_md, timeout=5).accepted == 0
    # unary-stream
    request = delivery_service_pb2.StreamDeliveriesRequest()
    code, _ = _code(lambda: list(deliveries.StreamDeliveries(request, timeout=5)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = _code(lambda: list(deliveries.StreamDeliveries(request, metadata=risk_md, timeout=5)))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_admin_may_call_everything(channel: grpc.Channel, store: TokenStore) -> None:
    channel = grpc.intercept_channel(
        channel, BearerTokenInterceptor(store.create("ops", ["admin"]))
    )
    decisions = decision_service_pb2_grpc.DecisionServiceStub(channel)
    assert decisions.Decide(decision_service_pb2.DecideRequest(), timeout=5).decision_id == "d1"
    decisions.GetUser(decision_service_pb2.GetUserRequest(), timeout=5)
    batches = iter([decision_service_pb2.TrackStreamRequest()])
    decisions.TrackStream(batches, timeout=5)
    risk = risk_service_pb2_grpc.RiskServiceStub(channel)
    risk.ScoreTransaction(risk_service_pb2.ScoreTransactionRequest(), timeout=5)
    deliveries = delivery_service_pb2_grpc.DeliveryServiceStub(channel)
    assert (
        len(list(deliveries.StreamDeliveries(delivery_service_pb2.StreamDeliveriesRequest()))) == 1
    )
    assert channel.unary_unary(UNMAPPED)(b"ping", timeout=5) == b"pong"


def test_method_without_a_scope_is_admin_only(channel: grpc.Channel, store: TokenStore) -> None:
    ping = channel.unary_unary(UNMAPPED)
    md = bearer_metadata(store.create("fraud-engine", ["risk", "track", "decide"]))
    code, details = _code(lambda: ping(b"ping", metadata=md, timeout=5))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "no scope" in details


def test_echo_and_health_need_no_token(channel: grpc.Channel) -> None:
    echo = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    assert echo.Echo(diagnostics_service_pb2.EchoRequest(payload=b"x"), timeout=5).payload == b"x"
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_revoked_token_is_refused(channel: grpc.Channel, store: TokenStore) -> None:
    token = store.create("fraud-engine", ["risk"])
    risk = risk_service_pb2_grpc.RiskServiceStub(channel)
    request = risk_service_pb2.ScoreTransactionRequest()
    risk.ScoreTransaction(request, metadata=bearer_metadata(token), timeout=5)
    token_id = token.split("_")[1]
    store.revoke(token_id)
    code, _ = _code(
        lambda: risk.ScoreTransaction(request, metadata=bearer_metadata(token), timeout=5)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert [t.revoked is not None for t in store.tokens()] == [True]
    with pytest.raises(KeyError):
        store.revoke("0000")


def test_file_holds_hashes_only_and_is_private(store: TokenStore) -> None:
    token = store.create("fraud-engine", ["risk", "track"])
    text = store.path.read_text()
    secret = token.split("_", 2)[2]
    assert secret not in text and token not in text
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    entry = next(iter(json.loads(text)["tokens"].values()))
    assert entry["hash"].startswith("sha256:")
    assert entry["scopes"] == ["risk", "track"] and entry["name"] == "fraud-engine"
    assert store.verify(token) == Principal(
        "fraud-engine", frozenset({"risk", "track"}), token.split("_")[1]
    )


def test_another_process_sees_new_and_revoked_tokens(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    server_view = TokenStore(path, reload_interval=0.0)  # what a running server holds
    cli_view = TokenStore(path)  # what `nudge token create` opens
    token = cli_view.create("app-backend", ["decide"])
    assert server_view.verify(token) is not None
    cli_view.revoke(token.split("_")[1])
    assert server_view.verify(token) is None


def test_bad_scope_and_name_are_refused(store: TokenStore) -> None:
    with pytest.raises(ValueError, match="unknown root"):
        store.create("x", ["root"])
    with pytest.raises(ValueError, match="at least one"):
        store.create("x", [])
    with pytest.raises(ValueError, match="name"):
        store.create(" ", ["risk"])


def test_malformed_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="auth_tokens_file"):
        TokenStore(path)


def test_scope_map() -> None:
    assert scope_for("/nudge.v1.DecisionService/Track") == "track"
    assert scope_for("/nudge.v1.DecisionService/TrackStream") == "track"
    assert scope_for("/nudge.v1.DecisionService/ReportOutcome") == "decide"
    assert scope_for("/nudge.v1.DecisionService/GetUser") == "admin"
    assert scope_for("/nudge.v1.RiskService/LabelTransaction") == "risk"
    assert scope_for("/nudge.v1.DeliveryService/AckDelivery") == "deliveries"
    assert scope_for("/grpc.health.v1.Health/Watch") == ""
    assert scope_for("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") == ""
    assert scope_for("/nudge.v1.DecisionService/SomethingNew") is None
