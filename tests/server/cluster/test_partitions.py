"""Partitions by user and who should own them: stable, spread, and moving only what must."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nudge.server.cluster.node import ClusterNode
from nudge.server.cluster.partitions import partition_of, preferred_owner
from nudge.server.config import Config, ConfigError, load_config
from nudge.server.storage.ingest import EventWriter
from nudge.server.storage.store import Store


def test_partition_of_is_the_same_in_another_process() -> None:
    # Python's own hash is salted per process; ours must not be.
    ids = [f"user-{i}" for i in range(50)]
    here = [partition_of(u, 64) for u in ids]
    code = ("from nudge.server.cluster.partitions import partition_of;"
            f"print([partition_of(u, 64) for u in {ids!r}])")
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={"PYTHONHASHSEED": "123"}).stdout
    assert there.strip() == str(here)


def test_partitions_are_evenly_spread() -> None:
    counts = Counter(partition_of(f"customer-{i:08d}", 64) for i in range(64_000))
    assert set(counts) == set(range(64))
    assert all(800 < n < 1_200 for n in counts.values())  # 1,000 expected each


def test_losing_a_node_moves_only_its_partitions() -> None:
    nodes = ["a", "b", "c"]
    before = {p: preferred_owner(p, nodes) for p in range(256)}
    assert set(Counter(before.values())) == set(nodes)
    assert all(40 < n < 130 for n in Counter(before.values()).values())
    after = {p: preferred_owner(p, ["a", "c"]) for p in range(256)}
    moved = {p for p in before if before[p] != after[p]}
    assert moved == {p for p in before if before[p] == "b"}
    assert preferred_owner(0, []) is None


def test_cluster_table_of_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nudge.toml"
    path.write_text('[server]\nport = 50051\n[cluster]\n'
                    'urls = ["nats://h1:4222", "nats://h2:4222"]\nnode_id = "h1"\n'
                    'partitions = 32\nlease_seconds = 3\nreplicas = 3\n'
                    'snapshot_seconds = 600\nsnapshot_records = 500\n')
    config = load_config(path, environ={})
    assert config.cluster == "nats://h1:4222,nats://h2:4222"
    assert (config.node_id, config.partitions, config.cluster_lease_seconds) == ("h1", 32, 3.0)
    assert (config.cluster_snapshot_seconds, config.cluster_snapshot_records) == (600.0, 500)
    path.write_text('[cluster]\nurl = "nats://h1:4222"\n')
    with pytest.raises(ConfigError, match=r"\[cluster\]\.url is not a setting"):
        load_config(path, environ={})


def test_cluster_mode_is_one_process_per_node() -> None:
    with pytest.raises(ConfigError, match="cluster: one process per node"):
        load_config(environ={}, overrides={"cluster": "nats://h1:4222", "workers": 2})
    with pytest.raises(ConfigError, match="partitions"):
        load_config(environ={}, overrides={"cluster": "nats://h1:4222", "partitions": 0})
    for name, bad in (("cluster_snapshot_seconds", -1.0), ("cluster_snapshot_records", 0)):
        with pytest.raises(ConfigError, match=name):
            load_config(environ={}, overrides={"cluster": "nats://h1:4222", name: bad})
    assert load_config(environ={}).cluster is None  # embedded mode stays the default


def test_a_partition_with_no_known_owner_names_its_preferred_owner_as_likely(
    tmp_path: Path,
) -> None:
    """A lease view with no owner for a partition (a hand-over in flight, or a view a NATS
    outage keeps stale) routes a single call to the preferred owner, where hand-overs go;
    the route still says there is no owner, and never names this node."""
    config = Config(cluster="nats://127.0.0.1:1", node_id="n1", advertise="127.0.0.1:7001",
                    partitions=16, data_dir=tmp_path / "d")
    store = Store(tmp_path / "d")
    writer = EventWriter(store, 86_400.0)
    node = ClusterNode(config, store, writer)  # never connected: only its lease view is set
    try:
        members = {"n1": "127.0.0.1:7001", "n2": "127.0.0.1:7002", "n3": "127.0.0.1:7003"}
        node._members = dict(members)
        node._owners = {0: "n3"}
        assert node.route_partition(0).address == members["n3"]  # a known owner: as before
        for partition in range(1, 16):
            route = node.route_partition(partition)
            assert not route.local and route.address is None
            assert "no live owner" in route.reason
            preferred = preferred_owner(partition, members)
            if preferred == "n1":
                assert route.likely_address is None
            else:
                assert route.likely_address == members[preferred]
        node._members = {}
        assert node.route_partition(5).likely_address is None
    finally:
        node._loop.close()  # the loop a connected node runs on its thread
        writer.close()
        store.close()
