"""Partition snapshots (cluster/snapshots.py), in process on one real NATS server: the
owner stores a snapshot and compacts the log behind it; a node with an empty store that
takes the partitions afterwards rebuilds them from the snapshot plus the log after it,
and holds what the first node held."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import nats.js.errors
import pytest

from nudge.clients import make_event
from nudge.kernels import user_state
from nudge.server.cluster.node import EVENTS_SUBJECT, STREAM, ClusterNode
from nudge.server.cluster.snapshots import Snapshot
from nudge.server.config import Config
from nudge.server.inputs.events import validate_event
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store
from nudge.server.storage.tables import events as event_table
from nudge.server.storage.tables import meta, users

pytestmark = [pytest.mark.timeout(180)]
LEASE = 1.0
PARTITIONS = 2
TOTALS = user_state.TOTALS
USERS = [f"u{i}" for i in range(40)]


def _until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


class Running:
    def __init__(self, nats_url: str, path: Path, name: str, snapshot_seconds: float,
                 types_first: tuple[str, ...] = ()) -> None:
        self.config = Config(data_dir=path, cluster=nats_url, partitions=PARTITIONS,
                             cluster_lease_seconds=LEASE, cluster_replicas=1, node_id=name,
                             advertise="127.0.0.1:1", cluster_snapshot_seconds=snapshot_seconds,
                             cluster_snapshot_records=1)
        self.store = Store(path)
        self.writer = EventWriter(self.store, self.config.half_life_seconds)
        if types_first:  # registered before anything else: slots unlike another store's
            self.writer.name_types(types_first).result(10)
        self.node = ClusterNode(self.config, self.store, self.writer)
        self.node.connect()
        self.node.start()

    def track(self, tag: str, types: list[str]) -> None:
        now = time.time()
        events = [validate_event(make_event(u, types[i % len(types)], event_id=f"{tag}{i}"),
                                 i, now) for i, u in enumerate(USERS)]
        assert self.node.publish_events(events).result(10).accepted == len(USERS)

    def applied_all(self) -> bool:
        return (self.node.ready_partitions() == list(range(PARTITIONS))
                and self.node.replication_lag() == 0)

    def view(self) -> dict[str, object]:
        """Each user's state by event type name, and the events logged, by id."""
        out: dict[str, object] = {}
        dbs = self.store.dbs
        with self.store.read() as txn:
            slots = meta.type_slots(txn, dbs)
            for u in USERS:
                rec = users.record(txn, dbs, u)
                assert rec is not None, u
                out[u] = (rec[:4].tolist(), {
                    name: float(rec[TOTALS + s]) for name, s in slots.items() if rec[TOTALS + s]})
            out["events"] = sorted(event_table.event_ids(bytes(p))
                                   for _, p in txn.cursor(db=dbs["events"]))
        return out

    def close(self) -> None:
        self.node.close()
        self.writer.close()
        self.store.close()


def _first_logged(node: ClusterNode, partition: int) -> int:
    """The stream sequence of the partition's oldest record still in the log (0: none)."""
    async def first() -> int:
        try:
            msg = await node.js.get_msg(STREAM, seq=1, subject=f"{EVENTS_SUBJECT}.{partition}",
                                        next=True)
        except nats.js.errors.NotFoundError:
            return 0
        return int(msg.seq)

    return node.run(first(), 10)


def test_a_new_node_rebuilds_partitions_from_snapshots_and_the_log_after_them(
        nats_url: str, tmp_path: Path) -> None:
    first = Running(nats_url, tmp_path / "a", "a", snapshot_seconds=0.5)
    second: Running | None = None
    try:
        _until(first.applied_all, "the first node never served every partition")
        first.track("a", ["login", "card_tx"])
        _until(first.applied_all, "the first events never applied")
        snapshots = first.node.snapshots
        assert snapshots is not None
        _until(lambda: snapshots.taken >= PARTITIONS, "no snapshot of every partition")
        stored = first.node.run(snapshots.stored(), 10)
        assert sorted(stored) == list(range(PARTITIONS))
        for p, [newest, *_] in stored.items():
            # The log below the snapshot is gone; what is left is after it.
            first_left = _first_logged(first.node, p)
            assert first_left == 0 or first_left > newest.position
        # Later records stay in the log, after the snapshot.
        first.node.snapshot_seconds = 0.0
        first.track("b", ["loan_view"])
        # (Acknowledged by JetStream is not yet applied here: wait for the store.)
        _until(lambda: len(first.view()["events"]) == 2 * len(USERS),
               "the later events never applied")
        want = first.view()
        first.close()
        first = None  # type: ignore[assignment]

        # A node with an empty store, which numbers types otherwise (it met another type
        # first), takes every partition: snapshot + log tail.
        second = Running(nats_url, tmp_path / "b", "b", snapshot_seconds=0.0,
                         types_first=("a_first", "loan_view"))
        _until(lambda: second.applied_all() and second.view() == want,
               "the second node never held what the first did")
        assert second.node.snapshots is not None
        assert second.node.snapshots.restored == PARTITIONS
        # And it goes on applying the log.
        second.track("c", ["login"])
        _until(lambda: second.applied_all() and len(second.view()["events"]) == 3 * len(USERS),
               "events after the restore never applied")
    finally:
        if first is not None:
            first.close()
        if second is not None:
            second.close()


def test_snapshot_names_carry_partition_and_position() -> None:
    snap = Snapshot(7, 12345)
    assert Snapshot.parse(snap.name) == snap
    assert Snapshot.parse("part.x.1") is None and Snapshot.parse("other.1.2") is None
