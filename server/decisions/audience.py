"""DecideBatch's audiences: a segment of the stored users, read in chunks, and the
per-user outcome of a decision that could not be made.

A segment is read a chunk of users per short read transaction (never one transaction
over the whole base: a long reader pins every page the batch's own decision records
replace, and the map would grow by the whole base's worth).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from nudge.kernels import user_state as u
from nudge.server.storage.store import Store
from nudge.server.storage.tables import users

# Users per read transaction (and per chunk handed to the decision engine).
SEGMENT_CHUNK = 1_000


@dataclass(frozen=True)
class Segment:
    """Stored users with at least one event of each of ``event_types``, whose last event
    is at or after ``seen_since`` (None: any time)."""

    event_types: tuple[str, ...] = ()
    seen_since: float | None = None


def segment_users(store: Store, segment: Segment, chunk: int = SEGMENT_CHUNK
                  ) -> Iterator[list[str]]:
    """The ids of the segment's users in key (byte) order, ``chunk`` at a time (the last
    chunk may be shorter; none when nobody matches)."""
    slots = [store.type_slots.get(t) for t in segment.event_types]
    if any(s is None for s in slots):
        return  # a type never stored: nobody has had an event of it
    columns = [u.TOTALS + s for s in slots if s is not None]
    since = segment.seen_since
    after: bytes | None = None
    while True:
        found: list[str] = []
        scanned = 0
        with store.read() as txn:
            cursor = txn.cursor(db=store.dbs[users.USERS])
            positioned = cursor.set_range(after) if after is not None else cursor.first()
            if positioned and after is not None and bytes(cursor.key()) == after:
                positioned = cursor.next()
            while positioned and scanned < chunk:
                key = bytes(cursor.key())
                scanned += 1
                after = key
                record = users.decode_record(cursor.value())
                if all(record[c] > 0 for c in columns) and (
                        since is None or record[u.S_LAST_SEEN] >= since):
                    found.append(key.decode())
                positioned = cursor.next()
        if found:
            yield found
        if scanned < chunk:
            return
