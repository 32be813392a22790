"""Storage: bytes the store holds per user, streaming one event for each of N new users.

The events go through the server's own writer (``EventWriter``: validation done, the same
group commit, state kernel, profile, event log and seen id as Track), in batches like
TrackStream's, then one retention pass with the default policy runs (it finds nothing old
in a store written just now: this is the footprint for the retention window). Reported:

- per database, the bytes of the B-tree pages it uses, divided by N (``pages``);
- ``used``: the map's high-water mark (last page × page size, free pages included) / N —
  what the disk holds, the figure the goal is stated in;
- ``compact``: a ``nudge backup`` copy (live pages only) / N.

A new user here has one event: the state record (sparse), the profile (time zone, consent,
the event's properties), the logged event and its seen id. Risk baselines, transactions,
decisions and deliveries add to a user only when they transact or are decided for.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nudge.server.clock import SystemClock
from nudge.server.inputs.events import validate_event
from nudge.server.storage.backup import backup
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.retention import Retention, RetentionPolicy
from nudge.server.storage.store import Store
from nudge.v1 import event_pb2

GOAL_BYTES_PER_USER = 2_500


@dataclass(frozen=True)
class StorageConfig:
    users: int = 1_000_000
    batch: int = 10_000


def _event(user: int, now: float) -> event_pb2.Event:
    return event_pb2.Event(
        event_id=str(uuid.uuid4()), user_id=f"customer-{user:010d}", type="loan_simulated",
        numbers={"amount": 5000.0},
        strings={"tz": "America/Sao_Paulo", "consent.push": "granted",
                 "step": "documentation", "currency": "USD"},
    )


def run(config: StorageConfig, progress: Callable[[str], None] = lambda _: None) -> dict:
    with tempfile.TemporaryDirectory(prefix="nudge-storage-") as tmp:
        store = Store(Path(tmp) / "data", map_size=1 << 30)
        writer = EventWriter(store, 7 * 86_400.0)
        t0 = time.perf_counter()
        try:
            now = time.time()
            for start in range(0, config.users, config.batch):
                stop = min(config.users, start + config.batch)
                events = [validate_event(_event(u, now), 0, now) for u in range(start, stop)]
                writer.submit(events).result()
                progress(f"storage: {stop:,} / {config.users:,} users")
            write_s = time.perf_counter() - t0
            Retention(writer, RetentionPolicy(), SystemClock()).run_once()
            page = int(store.env.stat()["psize"])
            databases = {}
            with store.read() as txn:
                for name, db in store.dbs.items():
                    st = txn.stat(db)
                    pages = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
                    if st["entries"]:
                        databases[name] = {"entries": int(st["entries"]),
                                           "bytes_per_user": pages * page / config.users}
            used = store.used_bytes()
        finally:
            writer.close()
            store.close()
        copied = backup(Path(tmp) / "data", Path(tmp) / "copy")
    per_user = used / config.users
    return {
        "users": config.users,
        "write_s": write_s,
        "databases": databases,
        "used_bytes_per_user": per_user,
        "compact_bytes_per_user": copied.bytes / config.users,
        "goal_bytes_per_user": GOAL_BYTES_PER_USER,
        "metrics": {"storage.bytes_per_user": per_user},
    }
