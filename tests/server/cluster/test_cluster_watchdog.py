"""A partition whose consumer is gone is subscribed to again (ClusterNode's watchdog):
one node in process on one real NATS server (JetStream, R1), its consumer removed under
it, events logged after that still reach its store."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nudge.clients import make_event
from nudge.server.cluster.node import ClusterNode
from nudge.server.config import Config
from nudge.server.inputs.events import validate_event
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store

pytestmark = [pytest.mark.timeout(120)]
LEASE = 1.0


def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_partition_whose_consumer_is_gone_is_subscribed_to_again(
        nats_url: str, tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data", cluster=nats_url, partitions=1,
                    cluster_lease_seconds=LEASE, cluster_replicas=1, node_id="solo",
                    advertise="127.0.0.1:1")
    store = Store(config.data_dir)
    writer = EventWriter(store, config.half_life_seconds, config.max_batch_events)
    node = ClusterNode(config, store, writer)
    try:
        node.connect()
        node.start()
        _until(lambda: node.ready_partitions() == [0], "partition 0 never served")

        def track(tag: str, n: int) -> None:
            now = time.time()
            events = [validate_event(make_event(f"u{i}", "app_opened", event_id=f"{tag}{i}"),
                                     i, now) for i in range(n)]
            assert node.publish_events(events).result(10).accepted == n

        track("a", 5)
        owned = node._owned[0]
        _until(lambda: owned.applied >= owned.queued > 0, "the first events never applied")
        first = owned.applied
        node.run(owned.subscription.unsubscribe(), 10)  # the consumer is gone
        track("b", 5)
        # Logged, not delivered: the watchdog notices within STALL_LEASES leases and
        # subscribes again from what was applied.
        _until(lambda: owned.applied > first, "events logged after the consumer was gone "
                                              "never reached the store", timeout=10 * LEASE)
        assert node.resubscribed == 1
    finally:
        node.close()
        writer.close()
        store.close()
