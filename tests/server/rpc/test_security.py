"""The server as a bank deploys it: scoped tokens, mutual TLS, overload, metrics."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.clients.cli import main
from nudge.server.app import NudgeServer, create_server
from nudge.server.config import Config, ConfigError
from nudge.server.rpc.auth import TokenStore


@pytest.fixture
def tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "tokens.json"
    store = TokenStore(path)
    made = {
        "risk": store.create("fraud-engine", ("risk",)),
        "track": store.create("core-banking", ("track", "decide")),
        "admin": store.create("support", ("admin",)),
    }
    return path, made


@pytest.fixture
def secured(tmp_path: Path, tokens: tuple[Path, dict[str, str]]) -> Iterator[NudgeServer]:
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", auth_tokens_file=tokens[0],
                               metrics_port=0))
    srv.start()
    yield srv
    srv.stop()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


def test_risk_token_scores_but_cannot_decide_or_read_profiles(
    secured: NudgeServer, tokens: tuple[Path, dict[str, str]]
) -> None:
    target = f"127.0.0.1:{secured.port}"
    with Client(target, token=tokens[1]["track"]) as core:
        core.track([make_event("u1", "app_opened")])
    with Client(target, token=tokens[1]["risk"], retries=0) as fraud:
        assert fraud.score_transaction(make_transaction("u1", 10.0)).baseline_count == 0
        assert code_of(lambda: fraud.decide("u1")) == grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: fraud.get_user("u1")) == grpc.StatusCode.PERMISSION_DENIED
        assert fraud.health() == "SERVING"
    with Client(target, retries=0) as anonymous:
        assert code_of(lambda: anonymous.track([make_event("u1", "x")])) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        assert anonymous.echo(b"ping") == b"ping"
    with Client(target, token=tokens[1]["admin"]) as support:
        assert support.get_user("u1").event_count == 1


def test_metrics_port_shows_rpc_histograms(
    secured: NudgeServer, tokens: tuple[Path, dict[str, str]]
) -> None:
    with Client(f"127.0.0.1:{secured.port}", token=tokens[1]["track"]) as c:
        c.track([make_event("u1", "app_opened")])
    assert secured.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{secured.metrics_port}/metrics") as reply:
        text = reply.read().decode()
    assert 'grpc_server_handling_seconds_bucket{grpc_method="Track"' in text
    assert 'grpc_service="nudge.v1.DecisionService"' in text
    assert "nudge_lmdb_map_size_bytes" in text


def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path) -> None:
    pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificates")
    from pki import make_pki

    pki = make_pki(tmp_path)
    srv = create_server(Config(
        port=0, data_dir=tmp_path / "data", tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key, tls_client_ca_file=pki.ca, tls_require_client_cert=True,
    ))
    srv.start()
    try:
        target = f"localhost:{srv.port}"
        with Client(target, ca_file=pki.ca, cert_file=pki.client_cert,
                    key_file=pki.client_key) as ok:
            assert ok.track([make_event("u1", "app_opened")]).accepted == 1
        with Client(target, ca_file=pki.ca, retries=0, timeout=5) as no_cert:
            assert code_of(lambda: no_cert.echo()) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_plaintext_off_loopback_needs_an_explicit_allowance(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"0\.0\.0\.0"):
        create_server(Config(host="0.0.0.0", port=0, data_dir=tmp_path / "a"))
    srv = create_server(Config(host="0.0.0.0", port=0, data_dir=tmp_path / "b",
                               allow_insecure=True, allow_unauthenticated=True))
    srv.stop()


def test_off_loopback_without_tokens_is_refused_unless_explicitly_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # TLS (or allow_insecure) protects the wire, not who may call: without a tokens file
    # anyone reaching the port could read every user's profile.
    with pytest.raises(ConfigError, match="allow_unauthenticated"):
        create_server(Config(host="0.0.0.0", port=0, data_dir=tmp_path / "a",
                             allow_insecure=True))
    with caplog.at_level("WARNING", logger="nudge.server"):
        srv = create_server(Config(host="0.0.0.0", port=0, data_dir=tmp_path / "b",
                                   allow_insecure=True, allow_unauthenticated=True))
    srv.stop()
    assert any("without authentication" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)
    # Loopback stays open for development, as before.
    create_server(Config(port=0, data_dir=tmp_path / "c")).stop()


def test_overload_is_refused_quickly(tmp_path: Path) -> None:
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", max_concurrent=1,
                               max_queue=0, max_workers=4))
    srv.start()
    release = threading.Event()
    try:
        target = f"127.0.0.1:{srv.port}"
        holder = Client(target, timeout=30)

        # A Track held by a commit that waits: it holds the only slot (streams have
        # slots of their own, see test_overload.py).
        srv.writer.submit_job(lambda txn: release.wait(10))
        done = threading.Thread(
            target=lambda: holder.track([make_event("u1", "app_opened", event_id="held")]))
        done.start()
        with Client(target, retries=0) as other:
            deadline_ok = False
            for _ in range(100):  # wait until the stream holds the only slot
                try:
                    other.echo()
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert "overloaded" in exc.details()
                    deadline_ok = True
                    break
                threading.Event().wait(0.02)
            assert deadline_ok
        release.set()
        done.join(10)
        with Client(target) as after:
            assert after.get_user("u1").event_count == 1
        holder.close()
    finally:
        release.set()
        srv.stop()


def test_token_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "t.json")
    assert main(["token", "--tokens-file", path, "create", "--name", "fraud",
                 "--scopes", "risk"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("nudge_") and token not in Path(path).read_text()
    assert main(["token", "--tokens-file", path, "list"]) == 0
    listed = capsys.readouterr().out
    token_id = listed.split("\t")[0]
    assert "fraud\trisk\tactive" in listed
    assert main(["token", "--tokens-file", path, "revoke", token_id]) == 0
    capsys.readouterr()
    assert main(["token", "--tokens-file", path, "list"]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "--tokens-file", path, "create", "--name", "x",
                 "--scopes", "everything"]) == 1


def test_full_store_is_resource_exhausted_and_reads_go_on(tmp_path: Path) -> None:
    srv = create_server(Config(port=0, data_dir=tmp_path / "data", map_size=1 << 16,
                               max_map_size=1 << 17))
    srv.start()
    try:
        with Client(f"127.0.0.1:{srv.port}", retries=0) as c:
            c.track([make_event("u1", "app_opened")])
            big = [make_event(f"user-{i}", "app_opened") for i in range(5_000)]
            with pytest.raises(grpc.RpcError) as err:
                c.track(big)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "the store is full" in err.value.details()
            assert c.get_user("u1").event_count == 1
    finally:
        srv.stop()


def test_every_request_field_and_batch_has_a_limit(client: Client, server: NudgeServer) -> None:
    from nudge.v1 import decision_service_pb2 as dpb
    from nudge.v1 import delivery_service_pb2 as delpb
    from nudge.v1 import delivery_service_pb2_grpc as delgrpc
    from nudge.v1 import diagnostics_service_pb2 as diag
    from nudge.v1 import risk_service_pb2 as rpb

    def refused(call, request, field: str) -> None:
        with pytest.raises(grpc.RpcError) as err:
            out = call(request, timeout=30)
            for _ in out if not hasattr(out, "ByteSize") else ():
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert field in err.value.details()

    client.track([make_event("limits", "app_opened")])
    decide = client.decisions.Decide
    refused(decide, dpb.DecideRequest(user_id="limits", strings={"note": "x" * 1025}),
            'strings["note"]')
    refused(decide, dpb.DecideRequest(user_id="limits",
                                      strings={f"k{i}": "v" for i in range(65)}),
            "numbers and strings")
    refused(decide, dpb.DecideRequest(user_id="limits", numbers={"k" * 65: 1.0}), "numbers")
    refused(decide, dpb.DecideRequest(user_id="limits", campaign="c" * 200), "campaign")
    refused(client.risk.ScoreTransactions, rpb.ScoreTransactionsRequest(
        transactions=[make_transaction("u", 1.0) for _ in range(1_001)]), "transactions")
    refused(client.diagnostics.Echo, diag.EchoRequest(payload=b"x" * (64 * 1024 + 1)),
            "payload")
    refused(client.decisions.Track, dpb.TrackRequest(
        events=[make_event("u", "app_opened") for _ in range(10_001)]), "events")
    deliveries = delgrpc.DeliveryServiceStub(client.channel)
    refused(deliveries.StreamDeliveries,
            delpb.StreamDeliveriesRequest(adapter_id="a" * 129), "adapter_id")
    refused(deliveries.StreamDeliveries,
            delpb.StreamDeliveriesRequest(channels=["push"] * 6), "channels")
    assert server.store.counts()["decisions"] == 0


def test_a_tokens_file_others_can_read_is_refused_at_load(
    tmp_path: Path, tokens: tuple[Path, dict[str, str]]
) -> None:
    path = tokens[0]
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        create_server(Config(port=0, data_dir=tmp_path / "data", auth_tokens_file=path))
    path.chmod(0o600)
    create_server(Config(port=0, data_dir=tmp_path / "data", auth_tokens_file=path)).stop()


def test_refusals_name_neither_the_token_nor_internal_types(
    secured: NudgeServer, tokens: tuple[Path, dict[str, str]]
) -> None:
    target = f"127.0.0.1:{secured.port}"
    with (Client(target, token=tokens[1]["risk"], retries=0) as fraud,
          pytest.raises(grpc.RpcError) as err):
        fraud.decide("u1")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "fraud-engine" not in err.value.details()
    assert "decide" in err.value.details()


def test_malformed_request_bytes_are_invalid_argument_logged_once(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    raw = client.channel.unary_unary(
        "/nudge.v1.DecisionService/Track",
        request_serializer=lambda b: b, response_deserializer=lambda b: b,
    )
    with caplog.at_level("INFO"):
        for _ in range(5):
            with pytest.raises(grpc.RpcError) as err:
                raw(b"\xff\xff\xff\xff\x0f", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "request" in err.value.details()
    noisy = [r for r in caplog.records if r.levelno >= 30]
    assert len(noisy) <= 1 and not any(r.exc_info for r in noisy)


def test_a_cancelled_track_stream_is_not_an_unhandled_error(
    caplog: pytest.LogCaptureFixture
) -> None:
    """grpc raises a bare RpcError from the request iterator of a stream the client
    cancelled: the caller is gone, nothing to answer or to log as a bug."""
    from types import SimpleNamespace

    from nudge.server.rpc.status import StatusInterceptor

    def cancelled_requests():
        raise grpc.RpcError()
        yield  # pragma: no cover

    def behaviour(request_iterator, context):
        for _ in request_iterator:
            pass

    handler = grpc.stream_unary_rpc_method_handler(behaviour)
    wrapped = StatusInterceptor().intercept_service(
        lambda details: handler,
        SimpleNamespace(method="/nudge.v1.DecisionService/TrackStream",
                        invocation_metadata=()),
    )
    context = SimpleNamespace(is_active=lambda: False, abort=pytest.fail)
    with caplog.at_level("INFO"), pytest.raises(grpc.RpcError):
        wrapped.stream_unary(cancelled_requests(), context)
    assert not [r for r in caplog.records if r.levelno >= 30]


def test_held_times_cache_is_bounded(
    server: NudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nudge.server.risk import engine as risk_engine

    monkeypatch.setattr(risk_engine, "HELD_CACHE", 1_000)
    for k in range(risk_engine.HELD_CACHE * 3):
        server.risk.recently_anomalous(f"user-{k}", 1.7e9)
    assert len(server.risk._held_at) <= risk_engine.HELD_CACHE


def test_an_admin_sees_and_resets_the_event_type_registry(
    client: Client, server: NudgeServer
) -> None:
    from nudge.v1 import admin_service_pb2 as admin

    client.track([make_event("spam", f"junk_{i}") for i in range(80)])
    client.track([make_event("new-user", "loan_completed")])
    listed = client.admin.ListEventTypes(admin.ListEventTypesRequest())
    by_name = {t.name: t for t in listed.event_types}
    assert by_name["loan_completed"].named and by_name["loan_completed"].slot < 63
    assert not by_name["junk_0"].named and listed.other_events > 0
    assert len(listed.event_types) < 63
    assert [t.type for t in client.get_user("new-user").event_types] == ["loan_completed"]
    removed = client.admin.ResetEventTypes(admin.ResetEventTypesRequest()).removed
    assert "junk_0" in removed and "loan_completed" not in removed
    after = client.admin.ListEventTypes(admin.ListEventTypesRequest())
    assert all(t.named for t in after.event_types) and after.other_events == 0
