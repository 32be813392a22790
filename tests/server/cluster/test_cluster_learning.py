"""What the cluster keeps across a SIGKILL besides events and decisions: one model, with
outcomes reported through every node learned once by the cluster's one learner (a
lease-elected node), every node deciding with the same model version; and the scored
transactions and labels of a partition, through the log. (Own cluster: 3 NATS servers +
3 nodes, shared by the tests of this file, which restart what they kill; snapshots every
second, so what a killed node held comes back from a snapshot plus the log after it.)
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import nats
import nats.js.errors
import pytest

from nudge.clients import Client, make_event, make_transaction
from nudge.server.cluster.local import LocalCluster, NudgeNode
from nudge.server.cluster.model_sync import REWARDS_STREAM
from nudge.server.cluster.node import EVENTS_SUBJECT, STREAM
from nudge.server.cluster.partitions import partition_of
from nudge.server.decisions.guardrails import SUPPRESS_NOTHING_BEST
from nudge.v1 import diagnostics_service_pb2 as dpb
from nudge.v1 import diagnostics_service_pb2_grpc as dgrpc

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
T = TypeVar("T")
USERS = 30


# conftest's ``cluster``, snapshotting every partition that moved every second.
CLUSTER_ENV = {"NUDGE_CLUSTER_SNAPSHOT_SECONDS": "1", "NUDGE_CLUSTER_SNAPSHOT_RECORDS": "1"}



def _info(node: NudgeNode) -> dpb.GetServerInfoResponse:
    with grpc.insecure_channel(node.target) as channel:
        return dgrpc.DiagnosticsServiceStub(channel).GetServerInfo(
            dpb.GetServerInfoRequest(), timeout=5)


def _learned(node: NudgeNode) -> int:
    """The node's ``nudge_cluster_learned_outcomes`` (metrics of its latest start)."""
    url = re.findall(r"metrics on (http://\S+/metrics)", node.log_path.read_text())[-1]
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found = re.search(r"^nudge_cluster_learned_outcomes (\S+)$", text, re.M)
    assert found is not None
    return int(float(found.group(1)))


def _report_through(nodes: list[NudgeNode], users: list[str], tag: str) -> int:
    """Decide for each user through one node and report its outcome through the next;
    resent until acknowledged. Returns how many outcomes the learner must learn
    (attributed, and the policy decided, not a guardrail)."""
    must_learn = 0
    for i, user in enumerate(users):
        deadline = time.monotonic() + 30.0
        while True:
            try:
                with Client(nodes[i % len(nodes)].target, retries=8) as client:
                    decision = client.decide(user)
                with Client(nodes[(i + 1) % len(nodes)].target, retries=8) as client:
                    attributed = client.report_outcome(decision.decision_id, 1.0)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE and (
                    time.monotonic() < deadline), f"{tag} {user}: {exc.code()} {exc.details()}"
                time.sleep(0.1)
        assert attributed
        # A guardrail's decision is not learned; the policy's "nothing" is.
        must_learn += decision.suppressed_reason in ("", SUPPRESS_NOTHING_BEST)
    return must_learn


def _converged(nodes: list[NudgeNode], learned: int, timeout: float = 30.0) -> list[str]:
    """Every node decides with the same model versions, learned from exactly ``learned``
    outcomes; returns the versions."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [_info(n) for n in nodes]
        counts = [_learned(n) for n in nodes]
        versions = [sorted(i.model_versions.items()) for i in infos]
        if counts == [learned] * len(nodes) and all(v == versions[0] for v in versions):
            assert sum(i.leader for i in infos) <= 1
            return [v for _, v in versions[0]]
        assert time.monotonic() < deadline, f"not converged: {counts} {versions} ({learned})"
        time.sleep(0.2)


async def _rewards_logged(urls: str) -> int:
    nc = await nats.connect(servers=urls.split(","))
    try:
        return int((await nc.jetstream().stream_info(REWARDS_STREAM)).state.messages)
    finally:
        await nc.close()


async def _log_end(urls: str, partition: int) -> int:
    """The stream sequence of the partition's last record in NUDGE_LOG (0: none left)."""
    nc = await nats.connect(servers=urls.split(","))
    try:
        found = await nc.jetstream().get_last_msg(STREAM, f"{EVENTS_SUBJECT}.{partition}")
        return int(found.seq)
    except nats.js.errors.NotFoundError:
        return 0
    finally:
        await nc.close()


def test_one_model_learns_every_outcome_once_across_a_learner_kill(
        cluster: LocalCluster) -> None:
    users = [f"learn-{u}" for u in range(USERS)]
    with Client(cluster.nodes[0].target, retries=8) as client:
        client.track([make_event(u, "app_opened") for u in users])
    time.sleep(1.0)  # the owners apply the events
    third = USERS // 3
    must_learn = _report_through(cluster.nodes, users[:third], "before")
    first = _converged(cluster.nodes, must_learn)
    assert all(not v.endswith("/v0") for v in first)  # learned something
    leader = next(n for n in cluster.nodes if _info(n).leader)
    # More outcomes, and at once SIGKILL the learner: it dies having learned some of them
    # (or not yet), published or not; its successor learns each exactly once.
    must_learn += _report_through(cluster.nodes, users[third:2 * third], "before the kill")
    leader.kill()
    survivors = [n for n in cluster.nodes if n is not leader]
    must_learn += _report_through(survivors, users[2 * third:], "after the kill")
    after = _converged(survivors, must_learn)
    assert after != first
    assert asyncio.run(_rewards_logged(cluster.urls)) == must_learn
    leader.start()  # the killed node rejoins and adopts the same models
    leader.wait_serving()
    assert _converged(cluster.nodes, must_learn) == after


def _all_owned(cluster: LocalCluster, timeout: float = 30.0) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        owners = dict(_info(cluster.nodes[0]).partition_owners)
        live = {n.node_id for n in cluster.nodes}
        if len(owners) == cluster.partitions and set(owners.values()) == live:
            return owners
        assert time.monotonic() < deadline, owners
        time.sleep(0.2)


def _until_answered(call: Callable[[], T], timeout: float = 30.0) -> T:
    """``call()`` once the survivors serve the partition (UNAVAILABLE meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, (
                exc.code(), exc.details())
            time.sleep(0.1)


def test_scored_transactions_and_labels_survive_their_owner(cluster: LocalCluster) -> None:
    owners = _all_owned(cluster)
    owner = cluster.nodes[2]
    user = next(f"card-{i}" for i in range(500)
                if owners[partition_of(f"card-{i}", cluster.partitions)] == owner.node_id)

    def tx(i: int) -> Any:
        return make_transaction(user, 20.0 + i, transaction_id=f"t{i}", country="PT",
                                merchant_category="grocery", channel="card", device_id="d1")

    with Client(cluster.nodes[0].target, retries=8) as client:  # forwarded to the owner
        first = [client.score_transaction(tx(i)) for i in range(6)]
        client.label_transaction("t1", "genuine", user_id=user)
    # What the owner's baseline learned: every transaction not held, and t1 (GENUINE).
    learned = sum(not r.held for r in first) + first[1].held
    _, population = _agreed(cluster)  # the owner's learning is in every node's population
    # A snapshot of the user's partition as of its last log record (the log behind it
    # purged): the survivor that takes the partition rebuilds the customer from it.
    # (A log left empty was purged behind a snapshot that holds all of it.)
    partition = partition_of(user, cluster.partitions)
    deadline = time.monotonic() + 30
    while (last := asyncio.run(_log_end(cluster.urls, partition))) and (
            f"snapshot part.{partition}.{last} stored" not in owner.log_path.read_text()):
        assert time.monotonic() < deadline, f"no snapshot of partition {partition} at {last}"
        time.sleep(0.1)
    owner.kill()
    with Client(cluster.nodes[0].target, retries=2) as client:
        again = _until_answered(lambda: client.score_transaction(tx(0)))
        assert (again.score, again.baseline_count, again.held) == (
            first[0].score, first[0].baseline_count, first[0].held)  # the stored answer
        after = _until_answered(lambda: client.score_transaction(tx(6)))
        assert after.baseline_count == learned  # the dead owner's history, learned here
        # t1's GENUINE label came through the log: labelled again it stays in the baseline.
        assert _until_answered(lambda: client.label_transaction("t1", "fraud", user_id=user))
        with pytest.raises(grpc.RpcError) as raised:
            client.label_transaction("never-scored", "fraud", user_id=user)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    # The new owner folded the dead owner's history into the customer's row, not again
    # into the population (the dead owner had shipped it): only t6 is new there.
    survivors = [n for n in cluster.nodes if n is not owner]
    _until_same_population(survivors, population + (not after.held))
    assert any(f"partition {partition} restored from snapshot" in n.log_path.read_text()
               for n in survivors)
    owner.start()
    owner.wait_serving()
    _all_owned(cluster)


def _population(node: NudgeNode) -> tuple[float, float]:
    """(NUDGE_POPULATION position, genuine transactions learned) of the fraud population
    the node scores with (its metrics)."""
    url = re.findall(r"metrics on (http://\S+/metrics)", node.log_path.read_text())[-1]
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    found = [re.search(rf"^nudge_cluster_population_{name} (\S+)$", text, re.M)
             for name in ("position", "transactions")]
    assert found[0] is not None and found[1] is not None
    return float(found[0].group(1)), float(found[1].group(1))


def _agreed(cluster: LocalCluster, timeout: float = 30.0) -> tuple[float, float]:
    deadline = time.monotonic() + timeout
    while True:
        seen = [_population(n) for n in cluster.nodes]
        if all(s == seen[0] for s in seen):
            return seen[0]
        assert time.monotonic() < deadline, f"populations differ: {seen}"
        time.sleep(0.2)


def _until_same_population(nodes: list[NudgeNode], expected: float,
                           timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = [_population(n)[1] for n in nodes]
        if seen == [expected] * len(nodes):
            return
        assert time.monotonic() < deadline, f"{seen} != {expected} on every node"
        time.sleep(0.2)


def test_every_node_scores_with_the_population_of_every_partition(
        cluster: LocalCluster) -> None:
    """Each node learns the transactions of its own partitions; the population each scores
    with counts them all (population_sync.py), not only its own third."""
    owners = _all_owned(cluster)
    _, before = _agreed(cluster)
    users = [f"pop-{i}" for i in range(30)]
    assert len({owners[partition_of(u, cluster.partitions)] for u in users}) == 3
    learned = 0
    for i, user in enumerate(users):
        with Client(cluster.nodes[i % 3].target, retries=8) as client:
            for j in range(2):
                reply = client.score_transaction(make_transaction(
                    user, 30.0 + j, transaction_id=f"{user}-t{j}", country="PT",
                    merchant_category="grocery", channel="card", device_id=f"d-{user}"))
                learned += not reply.held
    assert learned > 30
    _until_same_population(cluster.nodes, before + learned)
