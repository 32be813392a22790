"""What a client needs to reach a protected server: TLS channel credentials and bearer tokens.

The server side (nudge.server.rpc.tls and .auth) checks what these present; this module
only builds it, so the SDK depends on nothing of the server's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import grpc

CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
KEY_MARKER = b"PRIVATE KEY-----"


def read_pem(path: Path | str, setting: str, marker: bytes, what: str) -> bytes:
    """The bytes of a PEM file, or ValueError naming ``setting`` and what is wrong."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{setting}: file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{setting}: {path} is a directory, expected a PEM file") from None
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if marker not in data:
        raise ValueError(f"{setting}: {path} does not hold a PEM {what}")
    return data


def client_channel_credentials(
    ca_file: Path | str | None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    ca_setting: str = "tls_ca_file",
) -> grpc.ChannelCredentials:
    """Credentials for ``grpc.secure_channel``: trust ``ca_file`` (None: the system roots),
    and present ``cert_file``/``key_file`` when the server asks for a client certificate.
    ``ca_setting`` is the name errors give the CA file (a cluster node's is
    ``cluster_ca_file``).
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("tls_cert_file and tls_key_file: give both for a client certificate")
    root = read_pem(ca_file, ca_setting, CERT_MARKER, "CA certificate") if ca_file else None
    cert = key = None
    if cert_file is not None and key_file is not None:
        cert = read_pem(cert_file, "tls_cert_file", CERT_MARKER, "certificate")
        key = read_pem(key_file, "tls_key_file", KEY_MARKER, "private key")
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=cert
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str]]:
    """Call metadata that carries ``token``, for ``stub.Method(request, metadata=...)``."""
    return (("authorization", f"Bearer {token}"),)


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the bearer token to every call: ``grpc.intercept_channel(channel, it)``.

    Works on plaintext loopback channels too, where grpc refuses call credentials.
    """

    def __init__(self, token: str) -> None:
        self._metadata = bearer_metadata(token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), *self._metadata]
        return _Details(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)
