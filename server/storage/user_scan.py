"""Finding one user's records in the logs that have no index by user, off the serving
interpreter.

Erasure must find every logged event and decision record of one user, and neither log is
indexed by user (an index would cost every Track commit a randomly keyed write per
event). So the logs are scanned: about 1 µs of Python per logged event, 30 s for a
30,000,000-event log. In the serving process that scan holds the GIL the request
handlers need; measured beside a 1,000,000-event log (three erasures, Decide in a loop),
Decide's p99 went from 4.3 to 10.8 ms and one call waited 281 ms.

A big log is therefore scanned in a short-lived child process (``spawn``) that opens the
store read-only with LMDB's reader lock (``ReadOnlyStore``, as ``nudge explain`` does
beside a running server): its read transaction sees one snapshot, the serving process
only waits on a pipe (no GIL held), and the scan runs on another core. A small log is
scanned in process: starting a child (about a second of imports) would cost more than
the scan. If a child cannot be started or dies, the scan runs in process: an erasure is
never refused for want of a process.

What the scan returns is a snapshot; the erasure's write job rescans the events logged
after it (``scanned_to``) inside its write transaction, as before.
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import lmdb

from nudge.server.storage.readonly import ReadOnlyStore
from nudge.server.storage.store import Store
from nudge.server.storage.tables import decisions, events

log = logging.getLogger(__name__)

# Logs with more events than this are scanned in a child process (~0.2 s of scan in
# process; a child's start costs more than that).
CHILD_SCAN_FROM_EVENTS = 200_000


@dataclass(frozen=True)
class UserRecords:
    """Where one user's records were in a snapshot of the logs: the sequences of their
    logged events, the ids of their decision records, and ``scanned_to``, the first
    event sequence the snapshot did not hold."""

    scanned_to: int
    events: list[int]
    decisions: list[str]


def scan(txn: lmdb.Transaction, dbs: dict, user_id: str) -> UserRecords:
    """The scan itself, in ``txn``'s snapshot."""
    scanned_to = events.last_sequence(txn, dbs) + 1
    return UserRecords(scanned_to, events.of_user(txn, dbs, user_id),
                       decisions.of_user(txn, dbs, user_id))


def _scan_readonly(path: str, user_id: str) -> UserRecords:
    """(Child process.) Open the store read-only beside its server and scan it."""
    with ReadOnlyStore(path) as store, store.read() as txn:
        return scan(txn, store.dbs, user_id)


def scan_in_child(path: Path | str, user_id: str) -> UserRecords:
    """The scan of the store at ``path`` in a fresh child process (raises what the child
    raised; ``BrokenProcessPool`` when it died)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_scan_readonly, str(path), user_id).result()


def user_records(
    store: Store, user_id: str, child_from_events: int | None = None
) -> UserRecords:
    """Every logged event and decision record of ``user_id`` in a snapshot of ``store``:
    scanned in this process when the log holds fewer than ``child_from_events`` events
    (default ``CHILD_SCAN_FROM_EVENTS``), else in a child process."""
    if child_from_events is None:
        child_from_events = CHILD_SCAN_FROM_EVENTS
    with store.read() as txn:
        if events.last_sequence(txn, store.dbs) < child_from_events:
            return scan(txn, store.dbs, user_id)
    try:
        return scan_in_child(store.path, user_id)
    except (BrokenProcessPool, OSError) as exc:
        log.warning("erasure scan in a child process failed (%s); scanning in process", exc)
    with store.read() as txn:
        return scan(txn, store.dbs, user_id)
