"""SIGKILL in a loop, in cluster mode: 3 NATS servers (one JetStream cluster, R3) and 3
nudge nodes on loopback; every round kills one process and checks that nothing
acknowledged was lost or counted twice and that every user is answered again in time.

Each round, producers stream Track batches and Decide calls through one ``Client`` given
every node's address (round robin over the nodes that are up: the producer knows nothing
of who owns what or who died); a batch is resent with the same event ids until it is
acknowledged (as a producer does), so at the end of a round every event sent is
acknowledged. During the round one process is SIGKILLed: a nudge
node in even rounds, a NATS server in odd ones. Then the harness checks:

- failover: Decide answers for every user (through the survivors) within
  ``LEASE_SECONDS`` + ``FAILOVER_SLACK_SECONDS`` of a node's kill, and within
  ``LEASE_SECONDS`` + ``NATS_ELECTION_SECONDS`` of a NATS server's: when the dead server
  led the lease bucket (or the log), JetStream first elects a new leader (4-6 s measured
  here), no lease can be renewed meanwhile, and the nodes take their partitions again;
- exactly once: every user's stored ``event_count`` (GetUser, answered by the partition's
  current owner) equals the number of distinct events acknowledged for that user;
- outcomes: every other decision gets a ReportOutcome, resent (same decision id) until
  acknowledged; afterwards each acknowledged outcome, reported again through the
  cluster, must find its decision (not NOT_FOUND: the decision survived the kill) already
  settled (attributed=false: its outcome survived and was settled exactly once); and a
  sample of acknowledged decisions left without an outcome must still be known;
- one model: every live node decides with the same model versions, learned (by the
  cluster's one learner, whose node may be the one killed) from exactly the outcomes
  settled, each once;

and restarts the killed process (same data or store folder), which rejoins: a node takes
its partitions back from the survivors after catching up from the log.

Snapshots run all along (``SNAPSHOT_SECONDS``, cluster/snapshots.py): each owner stores a
snapshot of every partition that moved and purges the log behind it, so a survivor
taking a dead node's partitions, and a restarted node taking its own back, rebuild them
from a snapshot plus the log after it — the checks above then hold through compaction.

    nudge bench faults --cluster [--rounds 6] [--seed 1]
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from nudge.clients import Client, make_event
from nudge.server.cluster.local import LocalCluster, NudgeNode
from nudge.server.cluster.partitions import preferred_owner
from nudge.server.decisions.guardrails import SUPPRESS_NOTHING_BEST
from nudge.v1 import diagnostics_service_pb2 as dpb
from nudge.v1 import diagnostics_service_pb2_grpc as dgrpc

USERS = 40
BATCH = 20
PARTITIONS = 16
LEASE_SECONDS = 2.0
# What failover may take beyond the lease: a lease round (a quarter lease), the new
# owner's catch-up from the log, and the other nodes' next read of the leases.
FAILOVER_SLACK_SECONDS = 5.0
# A NATS server's death may also cost JetStream's election of a new stream leader.
NATS_ELECTION_SECONDS = 12.0
CHECK_TIMEOUT_SECONDS = 30.0
# Batches each producer has acknowledged after a round's kill before the round ends: the
# cluster must take writes again, whatever the box's speed (on a loaded day a fixed time
# saw few of them).
MIN_BATCHES_AFTER_KILL = 5
# How long a call naming an acknowledged decision may be answered UNAVAILABLE after a kill
# (its new owner applying the log: retryable) before it counts as a problem. NOT_FOUND for
# one is a problem at once: the decision was lost, or a node said "unknown" too early.
CATCH_UP_SECONDS = 20.0
# Snapshots (and the log purged behind them) this often, of any partition that moved.
SNAPSHOT_SECONDS = 1.0
RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass
class Report:
    rounds: int = 0
    events: int = 0
    decisions: int = 0
    outcomes: int = 0
    problems: list[str] = field(default_factory=list)
    failover_seconds: list[float] = field(default_factory=list)  # node kills
    nats_failover_seconds: list[float] = field(default_factory=list)  # NATS server kills
    # Per round, the longest a Track batch waited for its acknowledgement (resent with the
    # same ids meanwhile): reported, not bounded: JetStream acknowledges nothing until the
    # log's partition has a leader again, and a batch is never lost meanwhile.
    track_wait_seconds: list[float] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)
    # Decisions answered UNAVAILABLE (or not within the call's deadline) after a kill, then
    # found when asked again within CATCH_UP_SECONDS (their owner catching up: retryable).
    late_decisions: list[str] = field(default_factory=list)
    learned: int = 0  # outcomes the cluster's one model learned, each once
    snapshots_stored: int = 0  # over every node's life in the run (their logs)
    snapshots_restored: int = 0
    # From the outcomes check's end (its own outcomes the last) to every node deciding
    # with models that learned them all.
    learn_seconds: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Producer:
    """Tracks events through every live node until stopped; every batch is resent (same
    ids) until acknowledged, so what it counts is exactly what must be stored."""

    def __init__(self, cluster: LocalCluster, rng: random.Random, tag: str) -> None:
        self.cluster = cluster
        self.rng = rng
        self.tag = tag
        self.acked: Counter[str] = Counter()
        self.decisions = 0
        self.reported: list[str] = []  # decisions whose outcome was acknowledged
        self.unreported: list[str] = []  # acknowledged decisions left without one
        self.attempted: list[str] = []  # an outcome sent, not acknowledged by the round's end
        # Decision id -> whether its outcome is learned (the policy decided, not a
        # guardrail: a guardrail's decision is not learned).
        self.learnable: dict[str, bool] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        # The longest a batch waited from its first send to its acknowledgement: Track's
        # unavailability around a kill, as a producer resending with the same ids sees it.
        self.longest_track_wait = 0.0
        self.acked_at: list[float] = []  # when each batch was acknowledged (monotonic)
        self._thread = threading.Thread(target=self._run, name=f"producer-{tag}")

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        with Client(self.cluster.client_target, timeout=5.0, retries=3) as client:
            while not self.stop.is_set():
                batch = [make_event(f"U{self.rng.randrange(USERS)}", "app_opened",
                                    event_id=f"{self.tag}-{n}-{i}") for i in range(BATCH)]
                n += 1
                self._send_until_acked(client, batch)
                try:
                    decision = client.decide(f"U{self.rng.randrange(USERS)}")
                    self.decisions += 1
                    self.learnable[decision.decision_id] = decision.suppressed_reason in (
                        "", SUPPRESS_NOTHING_BEST)
                except grpc.RpcError:
                    continue  # a failover in progress: the failover check times it
                if n % 2:
                    self._report_until_acked(client, decision.decision_id)
                else:
                    self.unreported.append(decision.decision_id)

    def _report_until_acked(self, client: Client, decision_id: str) -> None:
        """Resend until acknowledged; once the round ends, an outcome still not
        acknowledged is left (its decision is checked like one never reported, always), so
        that waiting on it does not delay the failover check."""
        deadline = time.monotonic() + 60.0
        while time.monotonic() < deadline:
            try:
                client.report_outcome(decision_id, 1.0)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # decided and acknowledged
                    self.errors.append(f"decision {decision_id}: NOT_FOUND right after "
                                       f"it was acknowledged ({self.tag})")
                    return
                if self.stop.is_set():
                    self.attempted.append(decision_id)
                    return
                time.sleep(0.05)
                continue
            self.reported.append(decision_id)
            return
        self.errors.append(f"an outcome was not acknowledged in 60 s ({self.tag})")

    def _send_until_acked(self, client: Client, batch: list) -> None:
        first = time.monotonic()
        deadline = first + 60.0
        while time.monotonic() < deadline:
            try:
                client.track(batch)
            except grpc.RpcError:
                time.sleep(0.05)
                continue
            self.longest_track_wait = max(self.longest_track_wait, time.monotonic() - first)
            self.acked_at.append(time.monotonic())
            for ev in batch:
                self.acked[ev.user_id] += 1
            return
        self.errors.append(f"a batch was not acknowledged in 60 s ({self.tag})")


def _until_written_after(producers: list[Producer], since: float, deadline: float,
                         what: str, problems: list[str]) -> None:
    """Wait until every producer has ``MIN_BATCHES_AFTER_KILL`` batches acknowledged after
    ``since`` (the kill); a producer still short at ``deadline`` is a problem."""
    def after(p: Producer) -> int:
        return sum(t > since for t in list(p.acked_at))

    while any(after(p) < MIN_BATCHES_AFTER_KILL for p in producers):
        if time.monotonic() > deadline:
            problems.append(f"{what}: batches acknowledged after the kill per producer "
                            f"{[after(p) for p in producers]} < {MIN_BATCHES_AFTER_KILL}")
            return
        time.sleep(0.05)


class FailoverCheck:
    """Decide (dry run) for every user, pass after pass on a thread of its own, from the
    kill until ``until`` (the failover bound and a little more): failover ends with the
    first pass in which every user was answered *and after which none failed again*, so
    an answer that comes back and is lost again (a lease fenced while JetStream elects a
    leader, seconds after the kill) counts to the end of that second outage."""

    def __init__(self, cluster: LocalCluster, killed_at: float, until: float,
                 deadline: float) -> None:
        self._spent: float | None = None
        # The last call that failed: when, for whom, and how (a problem report names it).
        self.last_failure = ""

        def check() -> None:
            users = [f"U{u}" for u in range(USERS)]
            recovered_at: float | None = None
            with Client(cluster.client_target, timeout=2.0, retries=0) as client:
                while time.monotonic() < deadline:
                    clean = True
                    for user in users:
                        try:
                            client.decide(user, dry_run=True)
                        except grpc.RpcError as exc:
                            clean = False
                            self.last_failure = (
                                f"+{time.monotonic() - killed_at:.1f}s {user}: "
                                f"{exc.code().name} {(exc.details() or '')[:160]}")
                    now = time.monotonic()
                    if not clean:
                        recovered_at = None
                    elif recovered_at is None:
                        recovered_at = now
                    if clean and now >= until:
                        break
                    time.sleep(0.05)
            if recovered_at is not None:
                self._spent = recovered_at - killed_at

        self._thread = threading.Thread(target=check, name="failover-check")

    def start(self) -> None:
        self._thread.start()

    def join(self) -> float | None:
        """Seconds from the kill to the end of the last outage; None: some user was still
        not answered at the deadline."""
        self._thread.join()
        return self._spent


def _stored_counts(cluster: LocalCluster) -> Counter[str]:
    counts: Counter[str] = Counter()
    targets = [n.target for n in cluster.nodes if n.running]
    with Client(targets[0], timeout=5.0, retries=8, backoff=0.2) as client:
        for u in range(USERS):
            try:
                counts[f"U{u}"] = client.get_user(f"U{u}").event_count
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
    return counts


def _converged(cluster: LocalCluster, expected: Counter[str]) -> list[str]:
    """Mismatches between what is stored and what was acknowledged, once the owners have
    applied the log (waits while some user has fewer; more is never fixed by waiting)."""
    deadline = time.monotonic() + CHECK_TIMEOUT_SECONDS
    while True:
        try:
            stored = _stored_counts(cluster)
        except grpc.RpcError as exc:
            if time.monotonic() > deadline:
                return [f"GetUser failed: {exc.code().name}"]
            time.sleep(0.2)
            continue
        users = sorted(set(expected) | set(stored))
        doubled = [u for u in users if stored[u] > expected[u]]
        missing = [u for u in users if stored[u] < expected[u]]
        if doubled or not missing or time.monotonic() > deadline:
            return [f"{u}: stored {stored[u]}, acknowledged {expected[u]}"
                    for u in doubled + missing]
        time.sleep(0.2)


def _outcomes_kept(cluster: LocalCluster, reported: list[str],
                   unreported: list[str], late: list[str]) -> list[str]:
    """Each acknowledged outcome's decision is known and settled (reporting it again
    attributes nothing); acknowledged decisions without an outcome are still known."""
    problems: list[str] = []
    with Client(cluster.client_target, timeout=5.0, retries=8, backoff=0.2) as client:
        for decision_id, must_be_settled in ([(d, True) for d in reported]
                                             + [(d, False) for d in unreported]):
            deadline = time.monotonic() + CATCH_UP_SECONDS
            while True:
                try:
                    attributed = client.report_outcome(decision_id, 1.0)
                    break
                except grpc.RpcError as exc:
                    # UNAVAILABLE while the decision's new owner is still applying the
                    # log after a kill, or a call past its 5 s deadline on a loaded box
                    # (seen once at load average ~20 after a NATS server's death): counted,
                    # then asked again with the same id (as a caller does; the outcome is
                    # idempotent). Still failing after CATCH_UP_SECONDS is a problem.
                    if (exc.code() in RETRIED_CODES
                            and time.monotonic() < deadline):
                        late.append(decision_id)
                        time.sleep(0.5)
                        continue
                    problems.append(f"decision {decision_id}: {exc.code().name} ("
                                    f"{'outcome acknowledged' if must_be_settled else 'decided'})")
                    attributed = None
                    break
            if attributed is None:
                continue
            if must_be_settled and attributed:
                problems.append(f"decision {decision_id}: its acknowledged outcome was lost")
    return problems


def _learned(node: NudgeNode) -> int:
    """``nudge_cluster_learned_outcomes`` of a node's latest start: outcomes the models it
    decides with learned."""
    url = re.findall(r"metrics on (http://\S+/metrics)", node.log_path.read_text())[-1]
    with urllib.request.urlopen(url, timeout=10) as reply:
        found = re.search(r"^nudge_cluster_learned_outcomes (\S+)$", reply.read().decode(),
                          re.M)
    return -1 if found is None else int(float(found.group(1)))


def _learned_everywhere(cluster: LocalCluster, must_learn: int) -> list[str]:
    """Every live node decides with the same model versions, learned from exactly the
    outcomes settled (once each); waits for the learner and the nodes' adoption."""
    deadline = time.monotonic() + CHECK_TIMEOUT_SECONDS
    while True:
        try:
            nodes = [n for n in cluster.nodes if n.running]
            counts = [_learned(n) for n in nodes]
            versions = [sorted(_info(n.target).model_versions.items()) for n in nodes]
        except (grpc.RpcError, OSError, IndexError):
            counts, versions = [], [[]]
        if counts and all(c == must_learn for c in counts) and all(
                v == versions[0] for v in versions):
            return []
        if any(c > must_learn for c in counts) or time.monotonic() > deadline:
            return [f"learned outcomes per node {counts}, {must_learn} settled; model "
                    f"versions {versions}"]
        time.sleep(0.2)


def _info(target: str) -> dpb.GetServerInfoResponse:
    with grpc.insecure_channel(target) as channel:
        return dgrpc.DiagnosticsServiceStub(channel).GetServerInfo(
            dpb.GetServerInfoRequest(), timeout=5.0)


def partition_map(target: str) -> dict[int, str]:
    return dict(_info(target).partition_owners)


def _wait_settled(cluster: LocalCluster, timeout: float = 60.0) -> bool:
    """Every partition held by its preferred owner among the live nodes, ready there, and
    every live node's lease view saying so: no hand-over in flight.

    A round's kill comes after this, so its failover is measured from a settled cluster.
    A hand-over still in flight when a NATS server dies waits for JetStream's election
    before the new owner can read the partition's log end (two fresh-clone CI runs:
    14.5 s and 15.5 s against the 14 s bound, each a partition handed back to the node
    restarted after round 0 within a second of the kill): that case is described in the
    README, not folded into the bound for a NATS server's death."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [n for n in cluster.nodes if n.running]
        ids = [n.node_id for n in live]
        wanted = {p: preferred_owner(p, ids) for p in range(cluster.partitions)}
        try:
            infos = {n.node_id: _info(n.target) for n in live}
        except grpc.RpcError:
            infos = {}
        if infos and all(dict(i.partition_owners) == wanted for i in infos.values()) and all(
                sorted(i.ready_partitions) == sorted(p for p, o in wanted.items() if o == node)
                for node, i in infos.items()):
            return True
        time.sleep(0.2)
    return False


def run(rounds: int, base_dir: Path, seed: int = 1,
        progress: Callable[[str], object] = lambda _line: None) -> Report:
    rng = random.Random(seed)
    report = Report()
    cluster = LocalCluster(base_dir, 3, PARTITIONS, LEASE_SECONDS,
                           extra_args=["--metrics-port", "0"],
                           env={"NUDGE_CLUSTER_SNAPSHOT_SECONDS": str(SNAPSHOT_SECONDS),
                                "NUDGE_CLUSTER_SNAPSHOT_RECORDS": "1"})
    cluster.start()
    expected: Counter[str] = Counter()
    reported: list[str] = []
    unreported: list[str] = []
    learnable: dict[str, bool] = {}
    try:
        if not _wait_settled(cluster):
            report.problems.append("partitions not settled after start")
        for r in range(rounds):
            producers = [Producer(cluster, random.Random(rng.random()), f"r{r}p{i}")
                         for i in range(2)]
            for p in producers:
                p.start()
            time.sleep(0.5 + rng.random())
            if r % 2 == 0:
                victim = rng.randrange(len(cluster.nodes))
                what = f"node{victim}"
                cluster.nodes[victim].kill()
            else:
                victim = rng.randrange(len(cluster.nats))
                what = f"nats{victim}"
                cluster.nats[victim].kill()
            killed_at = time.monotonic()
            report.kills.append(what)
            node_round = what.startswith("node")
            bound = LEASE_SECONDS + (FAILOVER_SLACK_SECONDS if node_round
                                     else NATS_ELECTION_SECONDS)
            # The failover clock runs beside the producers, from the kill: their Track
            # batches wait for JetStream (a dead server's stream leaders re-elected) and
            # must not be counted in how soon Decide answers again.
            failover = FailoverCheck(cluster, killed_at, killed_at + bound + 1.0,
                                      killed_at + bound + 30.0)
            failover.start()
            time.sleep(0.5 + rng.random())
            _until_written_after(producers, killed_at, killed_at + bound + CHECK_TIMEOUT_SECONDS,
                                 f"round {r} ({what})", report.problems)
            for p in producers:
                p.join()
                expected.update(p.acked)
                report.events += sum(p.acked.values())
                report.decisions += p.decisions
                report.outcomes += len(p.reported)
                reported += p.reported
                # Every decision an outcome was sent for is checked (and so settled):
                # the learned count must then be exact.
                unreported += p.unreported[:10] + p.attempted
                learnable.update(p.learnable)
                report.problems += p.errors
            report.track_wait_seconds.append(max(p.longest_track_wait for p in producers))
            spent = failover.join()
            if spent is not None:
                (report.failover_seconds if node_round
                 else report.nats_failover_seconds).append(spent)
                if spent > bound:
                    report.problems.append(
                        f"round {r}: Decide answered every user {spent:.1f}s after killing "
                        f"{what} (bound {bound:.1f}s; last failure {failover.last_failure})")
            else:
                report.problems.append(f"round {r}: some user not answered after killing "
                                       f"{what} (last failure {failover.last_failure})")
            wrong = _converged(cluster, expected)
            report.problems += [f"round {r} (killed {what}): {w}" for w in wrong[:10]]
            lost = _outcomes_kept(cluster, reported, unreported, report.late_decisions)
            report.problems += [f"round {r} (killed {what}): {w}" for w in lost[:10]]
            # Reported now (by the check itself): the next rounds check them as settled.
            reported += unreported
            unreported = []
            must_learn = sum(learnable.get(d, False) for d in set(reported))
            asked = time.monotonic()
            wrong = _learned_everywhere(cluster, must_learn)
            report.problems += [f"round {r} (killed {what}): {w}" for w in wrong]
            report.learned = must_learn
            if not wrong:
                report.learn_seconds.append(time.monotonic() - asked)
            # Bring the victim back (same folders) and let it rejoin before the next round.
            if what.startswith("node"):
                node = cluster.nodes[victim]
                node.start()
                node.wait_serving()
            else:
                cluster.nats[victim].start()
            if not _wait_settled(cluster):
                report.problems.append(f"round {r}: partitions not settled after restart")
            report.rounds += 1
            last = time.monotonic() - killed_at
            progress(f"round {r + 1}/{rounds}: killed {what}; "
                     f"{report.events} events acknowledged so far; round {last:.1f}s; "
                     f"{len(report.problems)} problems")
    finally:
        cluster.stop()
        for node in cluster.nodes:
            text = node.log_path.read_text() if node.log_path.exists() else ""
            report.snapshots_stored += text.count("; log compacted below it")
            report.snapshots_restored += text.count(" restored from snapshot ")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nudge bench faults --cluster")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nudge-cluster-faults-") as folder:
        report = run(args.rounds, Path(folder), args.seed, progress=print)
    print(f"{report.rounds} rounds ({', '.join(report.kills)}): {report.events} events "
          f"acknowledged, {report.decisions} decisions, {report.outcomes} outcomes "
          f"acknowledged (lease {LEASE_SECONDS}s)")
    for kind, times in (("a node", report.failover_seconds),
                        ("a NATS server", report.nats_failover_seconds)):
        if times:
            print(f"every user answered again after killing {kind}: max {max(times):.2f}s, "
                  f"median {sorted(times)[len(times) // 2]:.2f}s ({len(times)} rounds)")
    if report.track_wait_seconds:
        print(f"longest a Track batch waited for its acknowledgement (resent meanwhile): "
              f"max {max(report.track_wait_seconds):.2f}s over the rounds")
    print(f"the cluster's one model learned {report.learned} outcomes, each once, on every "
          f"node; every node had adopted it {max(report.learn_seconds, default=0):.2f}s "
          "(max) after the last outcome")
    print(f"snapshots stored (the log purged behind them): {report.snapshots_stored}; "
          f"partitions rebuilt from a snapshot and the log after it: "
          f"{report.snapshots_restored}")
    if report.late_decisions:
        print(f"UNAVAILABLE or past the call deadline, then found within "
              f"{CATCH_UP_SECONDS:.0f}s (the owner catching up after a kill): "
              f"{len(set(report.late_decisions))} decisions")
    for problem in report.problems:
        print(f"PROBLEM: {problem}")
    print("OK: no acknowledged event, decision or outcome lost or doubled" if report.ok else
          f"{len(report.problems)} problems")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
