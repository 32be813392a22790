"""TLS and mutual TLS on a real gRPC server, with a throwaway CA made at test time."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from nudge.server.tls import (
    TlsSettings,
    check_plaintext_allowed,
    client_channel_credentials,
    is_loopback,
    server_credentials,
)
from nudge.v1 import diagnostics_service_pb2, diagnostics_service_pb2_grpc

x509 = pytest.importorskip("cryptography.x509", reason="cryptography makes the test certificates")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def _write_cert(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return cert, key


def _leaf(
    cn: str,
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = _ca("nudge test CA")
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server, server_key = _leaf("nudge server", ca, ca_key, ExtendedKeyUsageOID.SERVER_AUTH, san)
    client, client_key = _leaf("fraud-engine", ca, ca_key, ExtendedKeyUsageOID.CLIENT_AUTH)
    other, _ = _ca("someone else's CA")
    return Pki(
        ca=_write_cert(ca, d / "ca.pem"),
        server_cert=_write_cert(server, d / "server.pem"),
        server_key=_write_key(server_key, d / "server.key"),
        client_cert=_write_cert(client, d / "client.pem"),
        client_key=_write_key(client_key, d / "client.key"),
        other_ca=_write_cert(other, d / "other-ca.pem"),
    )


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
