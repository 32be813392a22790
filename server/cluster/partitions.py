"""Which partition a user belongs to, and which live node should own each partition.

Partitions are a stable hash of the user id (the id as stored: the pseudonym when
pseudonymisation is on), so every node, every restart and every release of nudge puts a
user in the same partition. BLAKE2b rather than Python's ``hash`` (salted per process) or
CRC32 (poorly spread on short, similar ids).

Who should own a partition is rendezvous (highest random weight) hashing over the live
nodes: every node computes the same answer from the same member list without talking,
and when a node leaves or joins only the partitions it owned (or will own) move — about
1/N of them — instead of the reshuffle a ``hash mod N`` would cause.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

DEFAULT_PARTITIONS = 64


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of ``user_id`` among ``partitions``."""
    digest = blake2b(user_id.encode(), digest_size=8, person=b"nudge-part").digest()
    return int.from_bytes(digest, "big") % partitions


def _weight(partition: int, node: str) -> int:
    digest = blake2b(f"{partition}/{node}".encode(), digest_size=8, person=b"nudge-own").digest()
    return int.from_bytes(digest, "big")


def preferred_owner(partition: int, nodes: Iterable[str]) -> str | None:
    """The node that should own ``partition`` among the live ``nodes`` (None: no node)."""
    best: tuple[int, str] | None = None
    for node in nodes:
        candidate = (_weight(partition, node), node)
        if best is None or candidate > best:
            best = candidate
    return None if best is None else best[1]
