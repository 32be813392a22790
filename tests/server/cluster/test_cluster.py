"""Cluster mode end to end: 3 NATS servers (one JetStream cluster, R3) and 3 nudge nodes
on loopback, real processes. Any node answers for any user; Track is acknowledged from
the replicated log and applied once by the owner. (Killing processes: test_cluster_faults.py.)
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from datetime import UTC, datetime

import grpc
import nats
import pytest

from nudge.clients import Client, make_event
from nudge.server.cluster import peer_auth
from nudge.server.cluster.local import LocalCluster
from nudge.server.cluster.node import CONTACTS, DECISION, EVENTS_SUBJECT, KIND, STREAM
from nudge.server.cluster.partitions import partition_of
from nudge.server.cluster.peer_auth import load_peer_key
from nudge.server.decisions.guardrails import SUPPRESS_CAP, SUPPRESS_HOLDOUT
from nudge.server.storage.tables.decisions import DecisionRecord
from nudge.v1 import cluster_service_pb2 as cpb
from nudge.v1 import cluster_service_pb2_grpc as cpb_grpc
from nudge.v1 import decision_service_pb2 as pb
from nudge.v1 import decision_service_pb2_grpc as pb_grpc
from nudge.v1 import diagnostics_service_pb2 as dpb
from nudge.v1 import diagnostics_service_pb2_grpc as dgrpc
from nudge.v1 import insights_service_pb2 as ipb
from nudge.v1 import insights_service_pb2_grpc as ipb_grpc

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]



def _info(target: str) -> dpb.GetServerInfoResponse:
    with grpc.insecure_channel(target) as channel:
        return dgrpc.DiagnosticsServiceStub(channel).GetServerInfo(dpb.GetServerInfoRequest())


def _settled(cluster: LocalCluster, timeout: float = 20.0) -> list[dpb.GetServerInfoResponse]:
    """Every node's view once every partition is served by exactly one node and every
    node serves some (the first node up takes them all, then hands them over)."""
    deadline = time.monotonic() + timeout
    while True:
        infos = [_info(n.target) for n in cluster.nodes]
        ready = sorted(p for info in infos for p in info.ready_partitions)
        maps = [dict(info.partition_owners) for info in infos]
        spread = set(maps[0].values()) == {n.node_id for n in cluster.nodes}
        if ready == list(range(cluster.partitions)) and all(m == maps[0] for m in maps) and spread:
            return infos
        assert time.monotonic() < deadline, f"not settled: {ready} {maps}"
        time.sleep(0.2)


def test_every_node_answers_for_every_user(cluster: LocalCluster) -> None:
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    assert set(owners.values()) == {"node0", "node1", "node2"}  # spread over all three
    for info in infos:  # each serves exactly the partitions the map gives it
        assert sorted(info.ready_partitions) == sorted(
            p for p, node in owners.items() if node == info.node_id)
    users = [f"everyone-{u}" for u in range(24)]
    with Client(cluster.nodes[0].target) as client:
        reply = client.track([make_event(u, "app_opened") for u in users for _ in range(2)])
    assert reply.accepted == 48
    for node in cluster.nodes:  # the owner answers, through whichever node was asked
        with Client(node.target, retries=8) as client:
            for user in users:
                assert _event_count(client, user) == 2
                assert client.decide(user, dry_run=True).model_version


def _event_count(client: Client, user: str, timeout: float = 10.0) -> int:
    """GetUser's event_count once the owner has applied the log (it lags the ack a little)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.get_user(user).event_count
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_replay_through_another_node_counts_once(cluster: LocalCluster) -> None:
    _settled(cluster)
    batch = [make_event("replayer", "app_opened") for _ in range(5)]
    with Client(cluster.nodes[1].target) as client:
        assert client.track(batch).accepted == 5
    with Client(cluster.nodes[2].target) as client:
        again = client.track(batch)
        assert (again.accepted, again.duplicates) == (0, 5)
        time.sleep(0.5)
        assert _event_count(client, "replayer") == 5


def test_a_forwarded_call_is_never_forwarded_again(cluster: LocalCluster) -> None:
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    user = next(f"hop-{i}" for i in range(100)
                if owners[partition_of(f"hop-{i}", cluster.partitions)] != "node0")
    with grpc.insecure_channel(cluster.nodes[0].target) as channel:
        stub = pb_grpc.DecisionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Decide(pb.DecideRequest(user_id=user, dry_run=True),
                        metadata=[("nudge-forwarded", "elsewhere")])
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        # Without the mark the same call is forwarded to the owner and answered.
        assert stub.Decide(pb.DecideRequest(user_id=user, dry_run=True)).model_version


def test_metrics_show_what_each_node_serves(cluster: LocalCluster) -> None:
    infos = _settled(cluster)
    for node, info in zip(cluster.nodes, infos, strict=True):
        found = re.search(r"metrics on (http://\S+/metrics)", node.log_path.read_text())
        assert found is not None
        with urllib.request.urlopen(found.group(1), timeout=10) as reply:
            text = reply.read().decode()
        served = re.search(r"^nudge_cluster_partitions_served (\S+)$", text, re.M)
        assert served is not None and float(served.group(1)) == len(info.ready_partitions)
        moves = re.search(r"^nudge_cluster_partition_moves (\S+)$", text, re.M)
        assert moves is not None and float(moves.group(1)) >= len(info.ready_partitions)
        assert re.search(r"^nudge_cluster_replication_lag_entries \S+$", text, re.M)


def test_an_outcome_reaches_the_node_that_made_the_decision(cluster: LocalCluster) -> None:
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    user = next(f"outcome-{i}" for i in range(100)
                if owners[partition_of(f"outcome-{i}", cluster.partitions)] == "node1")
    with Client(cluster.nodes[0].target, retries=8) as client:
        client.track([make_event(user, "app_opened")])
        _event_count(client, user)
        decision = client.decide(user)  # forwarded: node1 makes and keeps the decision
    assert decision.decision_id
    with Client(cluster.nodes[2].target) as client:  # knows nothing of it: asks the others
        assert client.report_outcome(decision.decision_id, 1.0) is True
        assert client.report_outcome(decision.decision_id, 1.0) is False  # settled: once
        with pytest.raises(grpc.RpcError) as raised:
            client.report_outcome("no-such-decision", 1.0)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_malformed_bytes_are_invalid_argument_on_a_cluster_node(cluster: LocalCluster) -> None:
    with grpc.insecure_channel(cluster.nodes[0].target) as channel:
        call = channel.unary_unary("/nudge.v1.DecisionService/Decide")
        with pytest.raises(grpc.RpcError) as raised:
            call(b"\xff\xff\xff\xff", timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_logged_decision_its_owner_has_not_applied_yet_is_never_not_found(
        cluster: LocalCluster) -> None:
    """What a new owner sees after a move: a decision record in the log (made by the old
    owner) behind a backlog it is still applying. ReportOutcome naming it must not say
    NOT_FOUND (the caller would not retry): it waits for the owner to catch up and
    answers, or is UNAVAILABLE until then; an id in no partition of the log is NOT_FOUND."""
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    user = next(f"late-{i}" for i in range(100)
                if owners[partition_of(f"late-{i}", cluster.partitions)] == "node1")
    partition = partition_of(user, cluster.partitions)
    with Client(cluster.nodes[0].target, retries=8) as client:
        client.track([make_event(user, "app_opened")])
        _event_count(client, user)
        made = client.decide(user)
    logged = asyncio.run(_logged_decision(cluster.urls, partition, made.decision_id))
    for r in range(3):
        copy = DecisionRecord.from_bytes(logged.to_bytes())
        copy.decision_id = f"{made.decision_id}-late{r}"
        with Client(cluster.nodes[2].target) as client:  # a backlog for the owner to apply
            # (2,500 events: without the catch-up wait the next call is NOT_FOUND)
            for b in range(5):
                client.track([make_event(user, "app_opened", event_id=f"late{r}-{b}-{i}")
                              for i in range(500)])
        asyncio.run(_publish_decision(cluster.urls, partition, copy))
        deadline = time.monotonic() + 30.0
        with Client(cluster.nodes[0].target, retries=0) as client:  # not the owner
            while True:
                try:
                    assert client.report_outcome(copy.decision_id, 1.0) is True
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
    with Client(cluster.nodes[0].target, retries=8) as client:
        with pytest.raises(grpc.RpcError) as raised:
            client.report_outcome(f"{made.decision_id}-never", 1.0)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def _logged_decision(urls: str, partition: int, decision_id: str) -> DecisionRecord:
    nc = await nats.connect(servers=urls.split(","))
    try:
        found = await nc.jetstream().get_last_msg(STREAM, f"{EVENTS_SUBJECT}.{partition}")
        record = DecisionRecord.from_bytes(found.data or b"")
        assert record.decision_id == decision_id
        return record
    finally:
        await nc.close()


async def _publish_decision(urls: str, partition: int, record: DecisionRecord,
                            headers: dict[str, str] | None = None) -> None:
    nc = await nats.connect(servers=urls.split(","))
    try:
        await nc.jetstream().publish(f"{EVENTS_SUBJECT}.{partition}", record.to_bytes(),
                                     headers={KIND: DECISION, **(headers or {})})
    finally:
        await nc.close()


def test_a_logged_decision_s_planned_contacts_count_on_the_owner_that_applies_it(
        cluster: LocalCluster) -> None:
    """What a new owner sees after a failover: a decision it did not make, in the log. The
    contacts that decision planned count against the caps here as they did on the node
    that made it (the shipped campaign allows two messages a day on all channels)."""
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12  # about noon: no quiet hours
    zone = "Etc/GMT" + (f"{-offset:+d}" if offset else "")
    strings = {"tz": zone, **{f"consent.{c}": "granted"
                              for c in ("push", "whatsapp", "sms", "email", "in_app")}}
    with Client(cluster.nodes[0].target, retries=8) as client:
        users = [f"capped-{i}" for i in range(40)
                 if owners[partition_of(f"capped-{i}", cluster.partitions)] == "node1"]
        client.track([make_event(u, "app_opened", strings=strings) for u in users])
        for u in users:
            _event_count(client, u)
        # Two users the policy would contact now (not held out, not capped).
        chosen = [u for u in users
                  if client.decide(u, dry_run=True).suppressed_reason
                  not in (SUPPRESS_HOLDOUT, SUPPRESS_CAP)][:2]
        assert len(chosen) == 2
        maker = next(u for u in users if u not in chosen)
        made = client.decide(maker)
    logged = asyncio.run(_logged_decision(
        cluster.urls, partition_of(maker, cluster.partitions), made.decision_id))
    now = time.time()
    for user, with_contacts in zip(chosen, (True, False), strict=True):
        copy = DecisionRecord.from_bytes(logged.to_bytes())
        copy.user_id, copy.decision_id = user, f"{made.decision_id}-{user}"
        planned = [[now - 60.0, "push", copy.campaign, copy.decision_id],
                   [now - 30.0, "sms", copy.campaign, copy.decision_id]]
        asyncio.run(_publish_decision(
            cluster.urls, partition_of(user, cluster.partitions), copy,
            {CONTACTS: json.dumps(planned)} if with_contacts else {}))
    with Client(cluster.nodes[2].target, retries=8) as client:
        for user in chosen:  # applied by the owner: an outcome for it is attributed
            deadline = time.monotonic() + 20.0
            while True:
                try:
                    assert client.report_outcome(f"{made.decision_id}-{user}", 0.0) is True
                    break
                except grpc.RpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE,
                                          grpc.StatusCode.NOT_FOUND), exc.details()
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
        capped, control = (client.decide(u, dry_run=True).suppressed_reason for u in chosen)
    assert capped == SUPPRESS_CAP
    assert control not in (SUPPRESS_CAP, SUPPRESS_HOLDOUT)



def _noon_strings() -> dict[str, str]:
    """A time zone where it is about noon now (no quiet hours) and consent on every channel."""
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12
    zone = "Etc/GMT" + (f"{-offset:+d}" if offset else "")
    return {"tz": zone, **{f"consent.{c}": "granted"
                           for c in ("push", "whatsapp", "sms", "email", "in_app")}}


def test_decide_batch_decides_each_user_on_its_owner_in_the_order_asked(
        cluster: LocalCluster) -> None:
    """The coordinating node (node0) decides only its own users: the others' are decided
    by their owners, whose contact caps are the proof — users contacted up to the shipped
    campaign's cap today through their owner come back capped, which node0, holding
    none of their contacts, could not know."""
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    users = [f"batch-{i}" for i in range(36)]
    with Client(cluster.nodes[1].target, retries=8) as client:
        client.track([make_event(u, "app_opened", strings=_noon_strings()) for u in users])
        for u in users:
            _event_count(client, u)
        remote = [u for u in users
                  if owners[partition_of(u, cluster.partitions)] != "node0"]
        contacted: list[str] = []
        reasons: list[str] = []
        for u in remote[:8]:  # decided until capped: contacted today up to the cap
            made = 0
            for _ in range(8):
                reason = client.decide(u).suppressed_reason
                reasons.append(reason)
                if reason == SUPPRESS_CAP and made:
                    # (One decision may plan two contacts — twice, at two send times —
                    # and reach the cap alone: waiting for two decisions never ended.)
                    contacted.append(u)
                    break
                made += reason == ""
        assert contacted, reasons
        assert all(
            client.decide(u, dry_run=True).suppressed_reason == SUPPRESS_CAP
            for u in contacted)
    asked = list(reversed(users))
    with Client(cluster.nodes[0].target, retries=8) as client:
        batch = list(client.decide_batch(asked, dry_run=True, per_message=10))
    assert [d.user_id for d in batch] == asked
    # Capped: every user contacted twice, and only users contacted (a contact planned at
    # a send time between the single Decide and the batch may tip one more).
    capped = {d.user_id for d in batch if d.suppressed_reason == SUPPRESS_CAP}
    assert set(contacted) <= capped <= set(remote[:8])
    assert all(d.model_version and d.propensity > 0 for d in batch)


def test_a_segment_batch_covers_every_partition_once(cluster: LocalCluster) -> None:
    _settled(cluster)
    users = [f"seg-{i:02d}" for i in range(30)]
    with Client(cluster.nodes[0].target, retries=8) as client:
        client.track([make_event(u, "segment_probe") for u in users])
        for u in users:
            _event_count(client, u)
    with Client(cluster.nodes[2].target, retries=8) as client:
        batch = list(client.decide_batch(
            segment=pb.Segment(event_types=["segment_probe"]), dry_run=True))
    assert [d.user_id for d in batch] == sorted(users)  # each once, in user id order


def test_a_forwarded_batch_for_a_user_served_elsewhere_is_refused_undecided(
        cluster: LocalCluster) -> None:
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    user = next(f"away-{i}" for i in range(100)
                if owners[partition_of(f"away-{i}", cluster.partitions)] != "node0")
    with grpc.insecure_channel(cluster.nodes[0].target) as channel:
        call = pb_grpc.DecisionServiceStub(channel).DecideBatch(
            iter([pb.DecideBatchRequest(user_ids=[user], dry_run=True)]),
            metadata=[("nudge-forwarded", "elsewhere")])
        with pytest.raises(grpc.RpcError) as raised:
            list(call)
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert dict(raised.value.trailing_metadata() or ())["nudge-undecided"] == "1"


def test_insights_count_every_partition_s_users_once(cluster: LocalCluster) -> None:
    """RetentionDrivers through one node analyses the users of every node's partitions
    (ClusterService.ReadSummaries), each once — not the third its own store holds."""
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    start = datetime(2025, 3, 1, tzinfo=UTC).timestamp()
    users = [f"cohort-{i}" for i in range(45)]
    assert len({owners[partition_of(u, cluster.partitions)] for u in users}) == 3
    events = [make_event(u, "app_opened", time=start + 3600 * i) for i, u in enumerate(users)]
    events += [make_event(u, "card_added", time=start + 3600 * i + 60)
               for i, u in enumerate(users) if i % 3 == 0]
    with Client(cluster.nodes[1].target, retries=8) as client:
        client.track(events)
        for u in users:
            _event_count(client, u)
    request = ipb.RetentionDriversRequest()
    request.cohort_start.FromSeconds(int(start))
    request.cohort_end.FromSeconds(int(start + 86_400 * 3))
    for node in cluster.nodes:
        with grpc.insecure_channel(node.target) as channel:
            reply = ipb_grpc.InsightsServiceStub(channel).RetentionDrivers(request, timeout=30)
        assert reply.cohort_users == len(users)


async def _peer_key(urls: str) -> bytes:
    nc = await nats.connect(servers=urls.split(","))
    try:
        return await load_peer_key(nc.jetstream(), 3)
    finally:
        await nc.close()


def test_read_summaries_is_for_the_cluster_s_nodes_only(cluster: LocalCluster) -> None:
    """Every user's summary entries: a client (any token) is refused; a node's signed call
    gets what that node serves, and is told UNAVAILABLE for what it does not."""
    infos = _settled(cluster)
    owners = dict(infos[0].partition_owners)
    mine = next(p for p, node in owners.items() if node == "node0")
    elsewhere = next(p for p, node in owners.items() if node != "node0")
    method = "/nudge.v1.ClusterService/ReadSummaries"
    key = asyncio.run(_peer_key(cluster.urls))
    with grpc.insecure_channel(cluster.nodes[0].target) as channel:
        stub = cpb_grpc.ClusterServiceStub(channel)
        cases = [([mine], "", grpc.StatusCode.PERMISSION_DENIED),
                 ([mine], peer_auth.sign(b"not the cluster's key", method),
                  grpc.StatusCode.PERMISSION_DENIED),
                 ([mine], peer_auth.sign(key, method, time.time() - 600),
                  grpc.StatusCode.PERMISSION_DENIED),
                 ([elsewhere], peer_auth.sign(key, method), grpc.StatusCode.UNAVAILABLE),
                 ([cluster.partitions], peer_auth.sign(key, method),
                  grpc.StatusCode.INVALID_ARGUMENT)]
        for partitions, signature, code in cases:
            with pytest.raises(grpc.RpcError) as raised:
                list(stub.ReadSummaries(cpb.ReadSummariesRequest(partitions=partitions),
                                        metadata=[("nudge-peer", signature)]))
            assert raised.value.code() == code, (partitions, signature)
        replies = list(stub.ReadSummaries(cpb.ReadSummariesRequest(partitions=[mine]),
                                          metadata=[("nudge-peer", peer_auth.sign(key, method))]))
        assert all(r.key_names for r in replies)
