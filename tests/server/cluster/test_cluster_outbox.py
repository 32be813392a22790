"""Journeys and the outbox in cluster mode, under SIGKILL: a journey's deliveries go
through the replicated log, each node leases only the deliveries of partitions it serves,
and acknowledgements go through the log. After the node that leased some deliveries is
killed, the new owners stream again exactly the ones never acknowledged (same ids), and
never one acknowledged SENT. (Own cluster: 3 NATS servers + 3 nodes.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from nudge.clients import Client, make_event
from nudge.server.cluster.local import LocalCluster
from nudge.v1 import delivery_service_pb2 as dpb
from nudge.v1 import delivery_service_pb2_grpc as dgrpc

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]
SHIPPED = Path(__file__).parents[3] / "server" / "campaigns" / "loan_abandonment.toml"
USERS = 36


def _campaign_sending_now(folder: Path) -> Path:
    """The shipped journey campaign, sending at once ("now" only) and with no holdout,
    so its deliveries are due while the test runs."""
    text = SHIPPED.read_text()
    start = text.index("[send_times]")
    end = text.index("[", start + len("[send_times]"))
    text = text[:start] + '[send_times]\nnow = "now"\n\n' + text[end:]
    text = text.replace("holdout = 0.05", "holdout = 0.0").replace(
        '[[exclude]]\nchannel = "in_app"\nsend_time = "morning"\n', "")
    folder.mkdir()
    (folder / "loan_abandonment.toml").write_text(text)
    return folder


def _midday_zone() -> str:
    """A zone where it is about noon now: far from the campaign's quiet hours."""
    offset = (12 - datetime.now(UTC).hour + 12) % 24 - 12  # in [-12, 11]
    return "Etc/GMT" + (f"{-offset:+d}" if offset else "")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    campaigns = _campaign_sending_now(tmp_path / "campaigns")
    running = LocalCluster(tmp_path / "c", 3, 8, 2.0, extra_args=["--campaigns", str(campaigns)])
    running.start()
    yield running
    running.stop()


def _stream(target: str, adapter: str, seconds: float) -> list[dpb.Delivery]:
    """What one node leases to an adapter within ``seconds`` (long leases: nothing
    leased here is streamed again by this node during the test)."""
    got: list[dpb.Delivery] = []
    with grpc.insecure_channel(target) as channel:
        stream = dgrpc.DeliveryServiceStub(channel).StreamDeliveries(
            dpb.StreamDeliveriesRequest(adapter_id=adapter, lease_seconds=600), timeout=seconds)
        try:
            for reply in stream:
                got.append(reply.delivery)
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.UNAVAILABLE):
                raise
    return got


def _ack_sent(stub: dgrpc.DeliveryServiceStub, delivery_id: str) -> None:
    """AckDelivery SENT, resent on UNAVAILABLE as a caller does (a partition still being
    applied after a move: the hand-overs of the first seconds)."""
    deadline = time.monotonic() + 20.0
    while True:
        try:
            stub.AckDelivery(dpb.AckDeliveryRequest(
                delivery_id=delivery_id, status=dpb.DELIVERY_STATUS_SENT), timeout=10)
            return
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_a_sent_delivery_is_never_resent_and_an_unacknowledged_one_is(
        cluster: LocalCluster) -> None:
    zone = _midday_zone()
    events = []
    for u in range(USERS):
        user = f"journey-{u}"
        events.append(make_event(user, "app_opened", strings={
            "tz": zone, **{f"consent.{c}": "granted"
                           for c in ("push", "whatsapp", "sms", "email", "in_app")}}))
        events.append(make_event(user, "flow_abandoned", strings={
            "flow": "personal_loan", "step": "documentation"}))
    with Client(cluster.client_target, retries=8) as client:
        assert client.track(events).accepted == 2 * USERS
    time.sleep(3.0)  # the owners apply the triggers and decide the journeys
    leased = {i: _stream(node.target, f"adapter-{i}", 4.0)
              for i, node in enumerate(cluster.nodes)}
    every = [d for got in leased.values() for d in got]
    assert len(every) >= USERS // 3, "the journeys scheduled too few deliveries to test"
    assert len({d.delivery_id for d in every}) == len(every)  # no node leased another's
    # Half of each node's leases are acknowledged SENT (through any node), half not.
    sent: set[str] = set()
    with grpc.insecure_channel(cluster.nodes[0].target) as channel:
        stub = dgrpc.DeliveryServiceStub(channel)
        for got in leased.values():
            for d in got[::2]:
                _ack_sent(stub, d.delivery_id)
                sent.add(d.delivery_id)
    victim = max((i for i in leased if i != 0), key=lambda i: len(leased[i][1::2]))
    unacknowledged = {d.delivery_id for d in leased[victim][1::2]}
    assert unacknowledged
    cluster.nodes[victim].kill()
    # The survivors take its partitions (lease 2 s) and stream what it never got an
    # answer for; what any node acknowledged SENT never comes again.
    again: list[dpb.Delivery] = []
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and not unacknowledged <= {d.delivery_id for d in again}:
        for i, node in enumerate(cluster.nodes):
            if node.running:
                again += _stream(node.target, f"adapter-{i}-after", 2.0)
    streamed = {d.delivery_id for d in again}
    assert not streamed & sent
    assert unacknowledged <= streamed
    assert len(streamed) == len(again)  # each redelivered once
