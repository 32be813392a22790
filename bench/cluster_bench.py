"""``nudge bench cluster``: what cluster mode costs and gives, on loopback.

Against a single embedded node (its fsync'd group commit, the floor) in the same run:

- Track latency of one event, sequential: the embedded fsync path vs the cluster's
  JetStream R3 acknowledgement;
- durable events/s: concurrent Track batches, embedded vs cluster (spread over nodes);
- Decide latency answered locally (the owner) vs forwarded (one extra hop);
- ScoreTransaction latency: embedded vs a cluster owner (which answers once its record
  is in the R3 log) vs forwarded;
- failover: SIGKILL a node, time until every user is answered again (the lease is
  ``LEASE_SECONDS``);
- CPU seconds per event, per nudge node and per NATS server (``/proc/<pid>/stat``
  during the throughput run): the README projects N machines from it.

On one 2-core box every process competes for the same cores, so absolute cluster rates
here are a floor; the CPU cost per event is what carries over to separate machines.

    nudge bench cluster [--events 20000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from nudge.bench.cluster_faults import (
    FAILOVER_SLACK_SECONDS,
    USERS,
    FailoverCheck,
    _wait_settled,
    partition_map,
)
from nudge.bench.server_process import ServerProcess
from nudge.clients import Client, make_event, make_transaction
from nudge.server.cluster.local import LocalCluster
from nudge.server.cluster.partitions import partition_of

LEASE_SECONDS = 3.0
PARTITIONS = 16
BATCH = 500
THREADS = 4


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1e3 * statistics.median(ordered),
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def _track_latency(target: str, n: int, tag: str) -> dict[str, float]:
    samples = []
    with Client(target, timeout=10.0) as client:
        for i in range(n):
            event = make_event(f"U{i % USERS}", "app_opened", event_id=f"{tag}-lat-{i}")
            start = time.perf_counter()
            client.track([event])
            samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _throughput(targets: list[str], events: int, tag: str) -> float:
    """Durable events/s: THREADS callers sending BATCH-event Track calls."""
    per_thread = max(1, events // (THREADS * BATCH))

    def work(index: int) -> None:
        with Client(targets[index % len(targets)], timeout=60.0, retries=5) as client:
            for b in range(per_thread):
                client.track([make_event(f"U{(b * BATCH + i) % USERS}", "app_opened",
                                         event_id=f"{tag}-{index}-{b}-{i}")
                              for i in range(BATCH)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return THREADS * per_thread * BATCH / (time.perf_counter() - start)


def _decide_latency(target: str, users: list[str], n: int,
                    dry_run: bool = True) -> dict[str, float]:
    """Decide latency; ``dry_run=False`` stores the decision (on a cluster node it is
    answered once the replicated log holds its record)."""
    samples = []
    with Client(target, timeout=10.0) as client:
        for i in range(n):
            start = time.perf_counter()
            client.decide(users[i % len(users)], dry_run=dry_run)
            samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def _score_latency(target: str, users: list[str], n: int, tag: str) -> dict[str, float]:
    """ScoreTransaction latency, one new transaction a call (scored and learned)."""
    samples = []
    with Client(target, timeout=10.0) as client:
        for i in range(n):
            tx = make_transaction(users[i % len(users)], 20.0 + i % 50,
                                  transaction_id=f"{tag}-{i}", country="PT",
                                  merchant_category="grocery", channel="card",
                                  device_id="d1")
            start = time.perf_counter()
            client.score_transaction(tx)
            samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def run(events: int = 20_000, samples: int = 200,
        progress: Callable[[str], object] = lambda _line: None) -> dict:
    result: dict = {"lease_seconds": LEASE_SECONDS, "replicas": 3, "partitions": PARTITIONS}
    with tempfile.TemporaryDirectory(prefix="nudge-cluster-bench-") as folder:
        base = Path(folder)
        progress("embedded single node (the fsync floor)")
        single = ServerProcess(base / "single", base / "single.log")
        try:
            result["single_track_latency"] = _track_latency(single.target, samples, "s")
            result["single_events_per_s"] = _throughput([single.target], events, "s")
            result["single_decide_stored"] = _decide_latency(
                single.target, [f"s-{u}" for u in range(USERS)], samples, dry_run=False)
            result["single_score"] = _score_latency(
                single.target, [f"s-{u}" for u in range(USERS)], samples, "s")
        finally:
            single.terminate()
        progress("3 NATS servers + 3 nodes on loopback")
        cluster = LocalCluster(base / "cluster", 3, PARTITIONS, LEASE_SECONDS)
        cluster.start()
        try:
            targets = [n.target for n in cluster.nodes]
            # Every user has an event (GetUser/Decide know them) and partitions are placed.
            with Client(targets[0], timeout=10.0) as client:
                client.track([make_event(f"U{u}", "app_opened") for u in range(USERS)])
            if not _wait_settled(cluster, 60.0):  # the first node up hands partitions over
                raise RuntimeError("partitions not settled over the three nodes in 60 s")
            result["cluster_track_latency"] = _track_latency(targets[0], samples, "c")
            pids = {n.node_id: n.process.pid for n in cluster.nodes if n.process}
            pids.update({s.name: s.process.pid for s in cluster.nats if s.process})
            before = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            rate = _throughput(targets, events, "c")
            # Applying continues after the acks: wait until the owners have applied it all.
            time.sleep(1.0)
            after = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            sent = THREADS * max(1, events // (THREADS * BATCH)) * BATCH
            result["cluster_events_per_s"] = rate
            result["cpu_us_per_event"] = {name: 1e6 * (after[name] - before[name]) / sent
                                          for name in pids}
            owners = partition_map(targets[0])
            users = [f"U{u}" for u in range(USERS)]
            local = [u for u in users if owners.get(partition_of(u, PARTITIONS)) == "node0"]
            remote = [u for u in users if owners.get(partition_of(u, PARTITIONS)) != "node0"]
            result["decide_local"] = _decide_latency(targets[0], local, samples)
            result["decide_forwarded"] = _decide_latency(targets[0], remote, samples)
            result["decide_stored"] = _decide_latency(targets[0], local, samples, dry_run=False)
            result["score_local"] = _score_latency(targets[0], local, samples, "l")
            result["score_forwarded"] = _score_latency(targets[0], remote, samples, "f")
            progress("failover: SIGKILL node1")
            cluster.nodes[1].kill()
            killed = time.monotonic()
            check = FailoverCheck(cluster, killed,
                                  killed + LEASE_SECONDS + FAILOVER_SLACK_SECONDS + 1.0,
                                  killed + 60.0)
            check.start()
            result["failover_seconds"] = check.join()
        finally:
            cluster.stop()
    return result


def summary(result: dict) -> list[str]:
    st, ct = result["single_track_latency"], result["cluster_track_latency"]
    dl, df = result["decide_local"], result["decide_forwarded"]
    cpu = result["cpu_us_per_event"]
    nodes = sum(v for k, v in cpu.items() if k.startswith("node"))
    nats = sum(v for k, v in cpu.items() if k.startswith("nats"))
    failover = result["failover_seconds"]
    return [
        f"Track, 1 event: embedded fsync p50 {st['p50_ms']:.2f} ms / p99 {st['p99_ms']:.2f} ms;"
        f" cluster R3 p50 {ct['p50_ms']:.2f} ms / p99 {ct['p99_ms']:.2f} ms"
        f" ({ct['p50_ms'] / st['p50_ms']:.2f}x)",
        f"durable events/s ({THREADS} callers x {BATCH}-event batches): embedded "
        f"{result['single_events_per_s']:,.0f}; cluster {result['cluster_events_per_s']:,.0f}"
        f" ({result['cluster_events_per_s'] / result['single_events_per_s']:.2f}x)",
        f"Decide: local p50 {dl['p50_ms']:.2f} ms; forwarded p50 {df['p50_ms']:.2f} ms "
        f"(+{df['p50_ms'] - dl['p50_ms']:.2f} ms, one hop)",
        f"Decide, stored (not dry run): embedded p50 {result['single_decide_stored']['p50_ms']:.2f}"
        f" ms; cluster local p50 {result['decide_stored']['p50_ms']:.2f} ms / p99 "
        f"{result['decide_stored']['p99_ms']:.2f} ms (its record in the R3 log first)",
        f"ScoreTransaction: embedded p50 {result['single_score']['p50_ms']:.2f} ms; cluster "
        f"local p50 {result['score_local']['p50_ms']:.2f} / p99 "
        f"{result['score_local']['p99_ms']:.2f} ms (its record in the R3 log first); "
        f"forwarded p50 {result['score_forwarded']['p50_ms']:.2f} ms",
        "failover (SIGKILL a node, every user answered again): "
        + (f"{failover:.2f} s" if failover is not None else "NOT within 60 s")
        + f" with a {result['lease_seconds']:.0f} s lease",
        "CPU per event: " + ", ".join(f"{k} {v:.0f} us" for k, v in sorted(cpu.items()))
        + f"; all nudge nodes {nodes:.0f} us, all NATS servers {nats:.0f} us",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge bench cluster")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    try:
        result = run(args.events, args.samples, progress=print)
    except grpc.RpcError as exc:
        print(f"nudge bench cluster: {exc}", file=sys.stderr)
        return 1
    for line in summary(result):
        print(line)
    return 0 if result["failover_seconds"] is not None else 1


if __name__ == "__main__":
    sys.exit(main())
