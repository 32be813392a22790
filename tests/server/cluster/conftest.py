"""A three-node loopback cluster (3 NATS servers + 3 nudge nodes) per test module that
asks for the ``cluster`` fixture: starting one costs seconds, so a module's tests share it;
and one bare NATS server (JetStream on, in a temp folder) per test that asks for
``nats_url``."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nudge.server.cluster.local import LocalCluster, free_ports, nats_server_binary

# Few partitions: every node owns several, and moves settle fast.
PARTITIONS = 8
LEASE_SECONDS = 2.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """The module's ``CLUSTER_ENV`` (NUDGE_* settings), if any, for every node."""
    running = LocalCluster(tmp_path_factory.mktemp("cluster"), 3, PARTITIONS, LEASE_SECONDS,
                           extra_args=["--metrics-port", "0"],
                           env=dict(getattr(request.module, "CLUSTER_ENV", {})))
    running.start()
    yield running
    running.stop()


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    (port,) = free_ports(1)
    log = tmp_path / "nats.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js",
             "-sd", str(tmp_path / "js")], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while b"Server is ready" not in log.read_bytes():
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait(10)
