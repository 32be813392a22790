"""TLS and mutual TLS on a real gRPC server, with a throwaway CA made at test time."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from nudge.clients.credentials import client_channel_credentials
from nudge.server.hosts import is_loopback
from nudge.server.rpc.tls import (
    TlsSettings,
    check_plaintext_allowed,
    server_credentials,
)
from nudge.v1 import diagnostics_service_pb2, diagnostics_service_pb2_grpc

pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificates")
from pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Diagnostics(diagnostics_service_pb2_grpc.DiagnosticsServiceServicer):
    def Echo(self, request, context):
        return diagnostics_service_pb2.EchoResponse(payload=request.payload)


@pytest.fixture
def serve_tls() -> Iterator:
    servers: list[grpc.Server] = []

    def _serve(settings: TlsSettings) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        diagnostics_service_pb2_grpc.add_DiagnosticsServiceServicer_to_server(Diagnostics(), server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(settings))
        server.start()
        servers.append(server)
        return port

    yield _serve
    for server in servers:
        server.stop(None)


def _echo(channel: grpc.Channel) -> bytes:
    stub = diagnostics_service_pb2_grpc.DiagnosticsServiceStub(channel)
    return stub.Echo(diagnostics_service_pb2.EchoRequest(payload=b"hi"), timeout=5).payload


def _refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        _echo(channel)
    return info.value.code()


def test_tls_serves_a_client_that_trusts_the_ca(pki: Pki, serve_tls) -> None:
    port = serve_tls(TlsSettings(pki.server_cert, pki.server_key))
    creds = client_channel_credentials(pki.ca)
    for host in ("127.0.0.1", "localhost"):
        with grpc.secure_channel(f"{host}:{port}", creds) as channel:
            assert _echo(channel) == b"hi"
    # A plaintext client, or one that trusts another CA, gets nothing.
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    other = client_channel_credentials(pki.other_ca)
    with grpc.secure_channel(f"127.0.0.1:{port}", other) as channel:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Pki, serve_tls) -> None:
    port = serve_tls(TlsSettings(pki.server_cert, pki.server_key, pki.ca, require_client_cert=True))
    target = f"127.0.0.1:{port}"
    with grpc.secure_channel(target, client_channel_credentials(pki.ca)) as channel:
        assert _refused(channel) == grpc.StatusCode.UNAVAILABLE
    creds = client_channel_credentials(pki.ca, pki.client_cert, pki.client_key)
    with grpc.secure_channel(target, creds) as channel:
        assert _echo(channel) == b"hi"


def test_plaintext_only_on_loopback_unless_allowed() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
        check_plaintext_allowed(host, allow_insecure=False)
    for host in ("0.0.0.0", "::", "[::]", "10.1.2.3", "db.bank.internal", "localhost.evil.com"):
        assert not is_loopback(host), host
        with pytest.raises(ValueError, match="refusing plaintext"):
            check_plaintext_allowed(host, allow_insecure=False)
        check_plaintext_allowed(host, allow_insecure=True)


def test_bad_files_name_the_setting(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=r"tls_cert_file: file .* does not exist"):
        server_credentials(TlsSettings(missing, pki.server_key))
    with pytest.raises(ValueError, match=r"tls_key_file: .* does not hold a PEM private key"):
        server_credentials(TlsSettings(pki.server_cert, pki.server_cert))
    with pytest.raises(ValueError, match="tls_client_ca_file: required"):
        server_credentials(TlsSettings(pki.server_cert, pki.server_key, require_client_cert=True))
    with pytest.raises(ValueError, match=r"tls_client_ca_file: .* is a directory"):
        server_credentials(TlsSettings(pki.server_cert, pki.server_key, tmp_path))
    with pytest.raises(ValueError, match="give both"):
        client_channel_credentials(pki.ca, cert_file=pki.client_cert)
