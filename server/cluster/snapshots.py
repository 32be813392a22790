"""Partition snapshots in JetStream's object store, and the log compacted behind them.

Without them a partition's log grows forever, and a node taking a partition it never held
applies it from the stream's first record: failover time and disk both grow with the
cluster's age. With them:

- **Taking.** Every ``cluster_snapshot_seconds`` a node exports each partition it serves
  whose store applied past its newest snapshot by at least ``cluster_snapshot_records``
  log sequences (``storage/partition_rows.py``: every table's rows of the partition,
  store-local numbers named, read in one transaction so the rows and the applied position
  agree; one pass over the store for every partition due) and stores them as the object
  ``part.<p>.<position>`` of the bucket ``nudge_snapshots`` (the log's replicas).
- **Compacting.** Only once that object is stored, the partition's subject of
  ``NUDGE_LOG`` is purged below the position (a purge with a subject filter and a
  sequence: what the snapshot holds goes, everything after it stays), then the
  partition's older snapshots are deleted. So every record acknowledged is, at any
  moment, in the log or in a stored snapshot that holds its effect. A purge may also make
  JetStream forget the ``Nats-Msg-Id`` of what it removed (it keeps no message to compare
  with; nats-server issues 3272, 6782): a call retried after its records were purged is
  logged again and dropped when applied (seen event ids, stored decisions, settled
  outcomes), as any replay past the duplicate window already is.
- **Restoring.** A node that takes a partition reads the newest snapshot's position. When
  it is past what the node's store applied (a node that never held the partition, or
  held it long ago), it imports the rows — replacing whatever it kept of the partition —
  in one commit with that position, then applies the log after it. A store at or past the
  snapshot (its owner until just now, restarted) applies the log after its own position,
  which no purge reaches. A node that cannot read the snapshots gives the partition back
  and tries again at its next lease round: it cannot tell whether the log still holds the
  records its store lacks.
- **Newest wins.** An object's name carries its position and no object is overwritten, so
  an old owner's late snapshot (a round that began before the partition moved) only adds
  an older object; readers take the highest position, and only positions below the
  newest are ever deleted.

What a snapshot does not hold: what is not a partition's — the models and the fraud
population (published whole by the learner's leader, ``model_sync.py``), and the rewards
and population streams, which their own consumers' positions trim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import nats.js.errors
from nats.js.api import ObjectStoreConfig, StorageType

from nudge.server.cluster.jetstream import ensure_object_store
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.partition_rows import (
    PartitionOf,
    PartitionRows,
    export,
    stale_rows,
)
from nudge.server.storage.store import Store

log = logging.getLogger("nudge.server.cluster")

BUCKET = "nudge_snapshots"
PREFIX = "part."


@dataclass(frozen=True)
class Snapshot:
    """A stored snapshot: the partition, the log position its rows reflect, its name."""

    partition: int
    position: int

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.partition}.{self.position}"

    @classmethod
    def parse(cls, name: str) -> Snapshot | None:
        if not name.startswith(PREFIX):
            return None
        partition, _, position = name[len(PREFIX):].partition(".")
        if not (partition.isdigit() and position.isdigit()):
            return None
        return cls(int(partition), int(position))


class PartitionSnapshots:
    """A node's snapshots: taking them for the partitions it serves, compacting the log
    behind them, restoring a partition it takes (see the module docstring)."""

    def __init__(self, js: Any, store: Store, writer: EventWriter, partition_of: PartitionOf,
                 replicas: int, every_seconds: float, min_records: int, stream: str,
                 subject: str, flush_engines: Callable[[], None]) -> None:
        self.js = js
        self.store = store
        self.writer = writer
        self.partition_of = partition_of
        self.replicas = replicas
        self.every_seconds = every_seconds
        self.min_records = min_records
        self.stream = stream
        self.subject = subject  # the partition's log subject is "<subject>.<partition>"
        # Stores what the engines hold in memory (decisions and risk rows written behind).
        self.flush_engines = flush_engines
        self.taken = 0  # snapshots this node stored
        self.restored = 0  # partitions this node rebuilt from a snapshot
        self._objects: Any = None

    async def setup(self) -> None:
        self._objects = await ensure_object_store(self.js, ObjectStoreConfig(
            bucket=BUCKET, replicas=self.replicas, storage=StorageType.FILE,
            description="nudge: partition snapshots (rows as of a log position)"))

    async def stored(self) -> dict[int, list[Snapshot]]:
        """Every stored snapshot by partition, newest first."""
        try:
            infos = await self._objects.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            return {}
        out: dict[int, list[Snapshot]] = {}
        for info in infos:
            found = Snapshot.parse(info.name)
            if found is not None and not info.deleted:
                out.setdefault(found.partition, []).append(found)
        for snapshots in out.values():
            snapshots.sort(key=lambda s: s.position, reverse=True)
        return out

    # -- restoring (a partition this node takes) -------------------------------------------

    async def restore(self, partition: int, applied: int,
                      after: Callable[[Iterable[str]], None]) -> int:
        """Import the partition's newest snapshot when it is past ``applied`` (what the
        store holds); returns the position the log is to be applied after. The engines
        store what they hold in memory first (nothing of the partition may be written
        after the import); ``after`` gets the users whose rows changed (caches to drop).
        Raises when the snapshots cannot be read."""
        newest = (await self.stored()).get(partition)
        if not newest or newest[0].position <= applied:
            return applied
        snapshot = newest[0]
        started = time.monotonic()
        result = await self._objects.get(snapshot.name)
        rows = await asyncio.to_thread(PartitionRows.from_bytes, result.data)
        if (rows.partition, rows.position) != (partition, snapshot.position):
            raise ValueError(f"snapshot {snapshot.name} holds partition {rows.partition} at "
                             f"{rows.position}")
        await asyncio.to_thread(self.flush_engines)
        stale = await asyncio.to_thread(self._stale, partition)
        imported = await asyncio.wrap_future(self.writer.import_partition(rows, stale))
        after(imported.users)
        self.restored += 1
        log.info("cluster: partition %d restored from snapshot %s (%d rows, %d bytes, "
                 "store had applied %d) in %.2fs", partition, snapshot.name, rows.count(),
                 len(result.data), applied, time.monotonic() - started)
        return rows.position

    # -- taking and compacting -------------------------------------------------------------

    async def run(self, serving: Callable[[], dict[int, int]],
                  serves: Callable[[int], bool]) -> None:
        """Snapshot rounds every ``every_seconds``; ``serving()``: partition -> applied
        position, of the partitions this node serves now; ``serves(p)``: still now."""
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await self.round(serving, serves)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cluster: snapshot round failed: %r", exc)

    async def round(self, serving: Callable[[], dict[int, int]],
                    serves: Callable[[int], bool]) -> list[Snapshot]:
        """Snapshot every served partition due, compact its log, drop its older
        snapshots; returns what was stored.

        The purge is sent only while this node still serves the partition (checked with
        no wait between the check and the request): a node that took it meanwhile read
        the snapshots after this one was stored (the lease moved after the check), so it
        restores from this one or a newer one, never from a position the purge passed."""
        stored = await self.stored()
        due = {p: applied for p, applied in serving().items()
               if applied - (stored[p][0].position if stored.get(p) else 0) >= self.min_records}
        if not due:
            return []
        # A snapshot is labelled with the position applied *before* the engines were
        # flushed: every record up to it is then in the store (a decision made here, or a
        # scored transaction, is applied before its row leaves memory). Rows of records
        # applied after it may be in the export too: the importer applies those records
        # again, and applying a record twice changes nothing (seen event ids, stored
        # decisions, settled outcomes, stored transactions).
        await asyncio.to_thread(self.flush_engines)
        exported = await asyncio.to_thread(self._export, due)
        out = []
        for partition, rows in sorted(exported.items()):
            older = stored.get(partition, [])
            if older and older[0].position >= rows.position:
                continue  # another node stored one at least as new meanwhile
            snapshot = Snapshot(partition, rows.position)
            blob = await asyncio.to_thread(rows.to_bytes)  # compressing: off the loop
            await self._objects.put(snapshot.name, blob)
            self.taken += 1
            out.append(snapshot)
            if not serves(partition):
                log.info("cluster: snapshot %s stored; partition %d moved meanwhile: its "
                         "log is left for its owner to compact", snapshot.name, partition)
                continue
            await self.js.purge_stream(self.stream, seq=rows.position + 1,
                                       subject=f"{self.subject}.{partition}")
            for old in older:
                if old.position < snapshot.position:
                    await self._objects.delete(old.name)
            log.info("cluster: snapshot %s stored (%d rows, %d bytes); log compacted below it",
                     snapshot.name, rows.count(), len(blob))
        return out

    def _stale(self, partition: int) -> list[tuple[str, bytes]]:
        with self.store.read() as txn:
            return stale_rows(txn, self.store.dbs, self.partition_of, partition)

    def _export(self, positions: dict[int, int]) -> dict[int, PartitionRows]:
        with self.store.read() as txn:
            return export(txn, self.store.dbs, self.partition_of, positions, positions)
