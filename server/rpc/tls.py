"""TLS for the gRPC port: server credentials, the plaintext rule, and the client's side.

Bank traffic (user ids, amounts, profiles) must not cross a network in the clear, so the
server speaks plaintext only on loopback unless told otherwise (``allow_insecure``, for a
mesh sidecar or load balancer that ends TLS in front of nudge). Errors are ``ValueError``
naming the setting to fix, raised while building the server — never at the first handshake.

Certificates are read once, when the server is built: rotating them needs a restart.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import grpc

from nudge.clients.credentials import (
    CERT_MARKER,
    KEY_MARKER,
    client_channel_credentials,
    read_pem,
)
from nudge.server.hosts import is_loopback

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class TlsSettings:
    """Where the server's certificate and key are, and whether clients must present one.

    ``client_ca_file`` is the CA that signs client certificates; it is required when
    ``require_client_cert`` is true (mutual TLS). Without ``require_client_cert`` the CA,
    if given, is offered to clients but a client without a certificate is still accepted.
    """

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    require_client_cert: bool = False


def _warn_if_key_exposed(path: Path) -> None:
    # A private key other local users can read is a finding in any bank audit; say so
    # loudly but do not refuse (containers often mount secrets 0644 behind other controls).
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "TLS key %s is readable by other users (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(mode),
        )


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """Build credentials for ``grpc.Server.add_secure_port`` from ``settings``.

    Raises ValueError naming the setting (``tls_cert_file``, ``tls_key_file``,
    ``tls_client_ca_file``) when a file is missing, unreadable or not PEM, or when mutual
    TLS is asked for without a client CA.
    """
    cert = read_pem(settings.cert_file, "tls_cert_file", CERT_MARKER, "certificate")
    key = read_pem(settings.key_file, "tls_key_file", KEY_MARKER, "private key")
    _warn_if_key_exposed(Path(settings.key_file))
    client_ca = None
    if settings.client_ca_file is not None:
        client_ca = read_pem(
            settings.client_ca_file, "tls_client_ca_file", CERT_MARKER, "CA certificate"
        )
    elif settings.require_client_cert:
        raise ValueError(
            "tls_client_ca_file: required when tls_require_client_cert is true "
            "(the CA that signs client certificates)"
        )
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=settings.require_client_cert,
    )


def peer_credentials(ca_file: Path, cert_file: Path, key_file: Path
                     ) -> grpc.ChannelCredentials:
    """Cluster mode: how a node calls the others (forwarded calls) when it serves TLS —
    verifying their certificates against ``ca_file`` (``cluster_ca_file``), and presenting
    its own (``tls_cert_file``/``tls_key_file``) to peers that require client
    certificates (for mutual TLS the certificate needs the clientAuth usage as well).
    Raises ValueError naming the setting of a file that is missing or not PEM."""
    return client_channel_credentials(ca_file, cert_file, key_file,
                                      ca_setting="cluster_ca_file")


def check_plaintext_allowed(host: str, allow_insecure: bool) -> None:
    """Refuse a plaintext port on anything but loopback unless ``allow_insecure`` is true.

    ``0.0.0.0``, ``::`` and every routable address count as not loopback.
    """
    if allow_insecure or is_loopback(host):
        return
    raise ValueError(
        f"host: refusing plaintext gRPC on {host!r}; only loopback (127.0.0.0/8, ::1, "
        "localhost) may be plaintext. Set tls_cert_file and tls_key_file, or set "
        "allow_insecure = true if TLS ends in front of nudge (sidecar, load balancer)"
    )
