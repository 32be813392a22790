"""Cluster mode under SIGKILL, and ``nudge cluster up``: each test runs a cluster of its
own (3 NATS servers + 3 nodes), so none shares the two cores with another cluster.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nudge.bench import cli, cluster_faults
from nudge.clients import Client, make_event

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def test_kill_a_node_then_a_nats_server_loses_and_doubles_nothing(tmp_path: Path) -> None:
    # Round 0 SIGKILLs a nudge node, round 1 a NATS server (see bench/cluster_faults.py).
    report = cluster_faults.run(2, tmp_path / "run", seed=2)
    assert report.problems == []
    assert [k[:4] for k in report.kills] == ["node", "nats"]
    # Writes went on after each kill (run() waits for them, whatever the box's speed).
    after = 2 * len(report.kills) * cluster_faults.MIN_BATCHES_AFTER_KILL
    assert report.events >= after * cluster_faults.BATCH
    assert report.decisions > 10 and report.outcomes > 5
    # Snapshots were stored and the log purged behind them all along, and the killed
    # node's partitions were rebuilt on the survivors from snapshots + the log after.
    assert report.snapshots_stored > 0 and report.snapshots_restored > 0
    lease = cluster_faults.LEASE_SECONDS
    assert len(report.failover_seconds) == 1 and len(report.nats_failover_seconds) == 1
    assert report.failover_seconds[0] <= lease + cluster_faults.FAILOVER_SLACK_SECONDS
    assert report.nats_failover_seconds[0] <= lease + cluster_faults.NATS_ELECTION_SECONDS


def test_nudge_cluster_up_starts_and_stops_everything(tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    with open(log, "wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "nudge.clients.cli", "cluster", "up", "--nodes", "3",
             "--port", "0", "--partitions", "4", "--dir", str(tmp_path / "c")],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while b"Ctrl-C stops" not in log.read_bytes():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        target = re.search(r"node1: (\S+)", log.read_text())
        assert target is not None
        with Client(target.group(1), retries=8) as client:
            assert client.track([make_event("up-user", "app_opened")]).accepted == 1
        children = _children(up.pid)
        assert len(children) == 6  # 3 NATS servers, 3 nodes
        up.send_signal(signal.SIGINT)
        assert up.wait(60) == 0
        assert "stopped" in log.read_text()
        assert not [pid for pid in children if _alive(pid)]
    finally:
        if up.poll() is None:
            up.kill()


def _children(pid: int) -> list[int]:
    found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(p) for p in found]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_nudge_bench_faults_has_a_cluster_mode() -> None:
    args = cli._parser().parse_args(["faults", "--cluster", "--rounds", "3"])
    assert (args.section, args.cluster, args.rounds) == ("faults", True, 3)
