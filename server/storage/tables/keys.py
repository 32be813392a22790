"""Key layouts more than one table uses."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import lmdb


def millis(t: float) -> bytes:
    """Epoch seconds as 8-byte big-endian milliseconds: keys that sort in time order."""
    return int(t * 1000).to_bytes(8, "big")


def pair(owner: str, item: str) -> bytes:
    """``owner`` + NUL + ``item``: an index of items by owner (ids contain no NUL)."""
    return f"{owner}\x00{item}".encode()


def pairs(owners: Iterable[str], items: Iterable[str]) -> list[bytes]:
    """``pair`` of each owner and item, in one comprehension (no call per key: ingest
    makes one per event)."""
    return [f"{owner}\x00{item}".encode() for owner, item in zip(owners, items, strict=True)]


def with_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes) -> Iterator[tuple[bytes, Any]]:
    """(key, value) of every entry whose key starts with ``prefix``, in key order (the
    keys copied out of the transaction's buffers; the values as LMDB gives them)."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix):
        return
    for raw_key, value in cursor:
        key = bytes(raw_key)
        if not key.startswith(prefix):
            return
        yield key, value


def items_of(txn: lmdb.Transaction, db: Any, owner: str) -> list[str]:
    """The items paired with ``owner`` in an index of ``pair`` keys, in key order."""
    prefix = f"{owner}\x00".encode()
    return [key[len(prefix):].decode() for key, _ in with_prefix(txn, db, prefix)]
