"""Which hosts are this machine: the rule that decides where plain text is allowed, for
the gRPC port (rpc/tls.py) and for the NATS servers a cluster node reaches (cluster/node.py)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1 (also written ``[::1]`` or ``::ffff:127.x``).

    Names other than ``localhost`` are not resolved: DNS can say anything, and a name that
    resolves to loopback today may not tomorrow.
    """
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
