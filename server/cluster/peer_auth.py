"""Calls only the cluster's own nodes may make (``ClusterService``), told apart from a
client's.

A node-to-node call carries the caller's token (so it needs the caller's scope), but a
token is not enough for ``ReadSummaries``: it returns every user's summary entries (no
ids, but one row per user), while the insights scope promises aggregates only. So the
nodes share a secret, created once by the first node in the KV bucket ``nudge_cluster``
(same replicas as the log; anyone able to read it can already read the whole log), and
sign each call to another node with it: header ``nudge-peer`` = ``<unix time>:<HMAC-
SHA256(secret, method + time)>``, accepted within ``MAX_SKEW_SECONDS`` of the receiver's
clock. A client holding any token, without access to NATS, cannot make one.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import time
from typing import Any

import nats.js.errors
from nats.js.api import KeyValueConfig

from nudge.server.cluster.jetstream import ensure_key_value

PEER_HEADER = "nudge-peer"
BUCKET = "nudge_cluster"
KEY = "peer_key"
MAX_SKEW_SECONDS = 60.0


async def load_peer_key(js: Any, replicas: int) -> bytes:
    """The cluster's shared secret (created by the first node to ask)."""
    kv = await ensure_key_value(js, KeyValueConfig(bucket=BUCKET, replicas=replicas,
                                                   history=1))
    with contextlib.suppress(nats.js.errors.KeyWrongLastSequenceError):
        await kv.create(KEY, os.urandom(32).hex().encode())  # another node's stays
    entry = await kv.get(KEY)
    return bytes.fromhex(entry.value.decode())


def sign(key: bytes | None, method: str, now: float | None = None) -> str:
    """The ``nudge-peer`` value for a call of ``method`` now ("" before the key is known)."""
    if not key:
        return ""
    stamp = str(int(time.time() if now is None else now))
    digest = hmac.new(key, f"{method}\x00{stamp}".encode(), hashlib.sha256).hexdigest()
    return f"{stamp}:{digest}"


def verify(key: bytes | None, method: str, value: str, now: float | None = None) -> bool:
    """Whether ``value`` is a fresh signature of ``method`` by a node of this cluster."""
    if not key or ":" not in value:
        return False
    stamp, _, digest = value.partition(":")
    if not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > MAX_SKEW_SECONDS:
        return False
    expected = hmac.new(key, f"{method}\x00{stamp}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, digest)
