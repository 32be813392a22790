"""A three-node loopback cluster (3 NATS servers + 3 nudge nodes) per test module that
asks for the ``cluster`` fixture: starting one costs seconds, so a module's tests share it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nudge.server.cluster.local import LocalCluster

# Few partitions: every node owns several, and moves settle fast.
PARTITIONS = 8
LEASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    running = LocalCluster(tmp_path_factory.mktemp("cluster"), 3, PARTITIONS, LEASE_SECONDS,
                           extra_args=["--metrics-port", "0"])
    running.start()
    yield running
    running.stop()
